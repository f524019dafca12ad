"""benchmarks/moex_dictionary.py runs end to end in its --quick mode and prints the promised JSON.

Slow (about 15-40 s on a busy 2-core machine): ``pytest -m slow``. The benchmarks on the chess,
Othello and text testbeds are checked in featureforge-testbeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _run(script: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    return printed


@pytest.mark.slow
def test_moex_dictionary_quick(tmp_path):
    r = _run("moex_dictionary.py", tmp_path)
    rows = r["trainers"]
    assert {"switch", "moex"} <= set(rows)
    for name, row in rows.items():
        assert row["l0"] == pytest.approx(r["settings"]["k"], abs=0.01), name
        assert row["fvu"] < 1.0 and row["step_rows_per_s"] > 0
    assert rows["switch"]["encoder_flops_vs_topk"] == pytest.approx(1 / 8)
    assert rows["moex"]["encoder_flops_vs_topk"] == pytest.approx(2 / 8)
