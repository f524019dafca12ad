"""Writes the dashboard: per-feature data files as features are analysed, then the index and pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from . import assets

DATA_DIR = "data"


def _js_call(function: str, data: Any) -> str:
    """``function(<json>);``: JSON is a JavaScript expression, so a <script> tag can load it from file://."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"{function}({text});\n"


class SiteWriter:
    """Feature pages are written one at a time (``feature``), the index at the end (``finish``)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        data = self.out_dir / DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        # A rerun into the same folder must not leave pages of features this run did not analyse.
        for old in [*data.glob("feature_*.js"), data / "index.js"]:
            old.unlink(missing_ok=True)
        self.tokens: dict[int, str] = {}

    def feature(self, record: Mapping[str, Any]) -> Path:
        path = self.out_dir / DATA_DIR / f"feature_{int(record['id'])}.js"
        path.write_text(_js_call("ffFeature", record), encoding="utf-8")
        top = [ex["tokens"][ex["index"]] for ex in record.get("top", [])[:3] if "tokens" in ex]
        self.tokens[int(record["id"])] = " | ".join(dict.fromkeys(t.strip() or repr(t) for t in top))
        return path

    def finish(self, summary: Mapping[str, Any], table: Mapping[int, Mapping[str, Any]], title: str) -> Path:
        """Write ``data/index.js``, ``index.html`` and ``feature.html``; return the index page."""
        rows = [[int(i), t["count"], t["density"], t["max_act"], t["facets"], self.tokens.get(int(i), "")] for i, t in sorted(table.items())]
        index = {"title": title, "summary": dict(summary), "columns": ["id", "count", "density", "max_act", "facets", "tokens"], "rows": rows}
        (self.out_dir / DATA_DIR / "index.js").write_text(_js_call("ffIndex", index), encoding="utf-8")
        (self.out_dir / "feature.html").write_text(assets.page("Feature", assets.FEATURE_BODY, assets.FEATURE_JS), encoding="utf-8")
        page = self.out_dir / "index.html"
        page.write_text(assets.page(title, assets.INDEX_BODY, assets.INDEX_JS), encoding="utf-8")
        return page
