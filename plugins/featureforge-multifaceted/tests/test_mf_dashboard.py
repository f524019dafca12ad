"""`featureforge dashboard` as a user runs it, and the site it writes rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import subprocess

import pytest

from featureforge_multifaceted.cli import dashboard
from mf_helpers import FEATUREFORGE
from mf_browser import chromium, dump_dom, screenshot

needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")


def _values(dom: str) -> dict[str, list[float]]:
    """data-key -> the JSON numbers the page shows (each shown cell carries its exact value)."""
    out: dict[str, list[float]] = {}
    for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', dom):
        out.setdefault(key, []).append(json.loads(html.unescape(value)))
    return out


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory, synthetic_store, synthetic_run, cli_env):
    out = tmp_path_factory.mktemp("mf-site") / "site"
    done = subprocess.run([FEATUREFORGE, "dashboard", str(synthetic_run), "--store", synthetic_store.url, "--out", str(out), "-o", "top_n=48"],
                          capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"Wrote {out / 'index.html'}" in done.stdout
    return out


def test_dashboard_writes_a_split_self_contained_site(synthetic_site):
    report = json.loads((synthetic_site / "report.json").read_text())
    metrics = report["evaluators"]["facets"]["metrics"]
    assert metrics["rows"] == 32768 and metrics["d_dict"] == 32 and metrics["analysed"] == metrics["live"] > 0
    assert metrics["rows_per_second"] > 0 and metrics["contexts"] is False  # synthetic rows have no tokens
    data = sorted(p.name for p in (synthetic_site / "data").iterdir())
    assert len(data) == metrics["analysed"] + 1 and "index.js" in data  # one file per feature, loaded on demand
    for page in ("index.html", "feature.html"):
        text = (synthetic_site / page).read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), "the site must not load anything from the network"
        assert "<style>" in text and "<script>" in text
    table = json.loads((synthetic_site / report["evaluators"]["facets"]["artifacts"]["facets"]).read_text())
    assert sum(t["facets"] for t in table["features"].values()) / len(table["features"]) == pytest.approx(metrics["mean_facets"], abs=1e-4)


@needs_chromium
def test_index_and_feature_pages_render_with_the_report_numbers(synthetic_site, tmp_path, record_property):
    report = json.loads((synthetic_site / "report.json").read_text())
    metrics = report["evaluators"]["facets"]["metrics"]
    dom, console = dump_dom(synthetic_site / "index.html")
    assert console == [] and 'data-state="ready"' in dom
    shown = _values(dom)
    for key in ("rows", "live", "dead", "analysed", "mean_facets", "multi_facet_fraction"):
        assert shown[key] == [metrics[key]]
    assert len(re.findall(r'<tr data-id="\d+"', dom)) == metrics["analysed"]
    table = json.loads((synthetic_site / "plots" / "facets.json").read_text())["features"]
    feature = max(table, key=lambda k: table[k]["facets"])
    # Sort and search, opened through the URL as a user would set them on the page.
    dom, console = dump_dom(synthetic_site / "index.html", "?sort=max_act&order=asc")
    ids = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', dom)]
    assert console == [] and ids == sorted(map(int, table), key=lambda i: (table[str(i)]["max_act"], i))
    dom, _ = dump_dom(synthetic_site / "index.html", f"?q={feature}")
    assert re.findall(r'<tr data-id="(\d+)"', dom) == [feature]
    dom, console = dump_dom(synthetic_site / "feature.html", f"?id={feature}")
    assert console == [] and f"ready: feature {feature}" in dom
    shown = _values(dom)
    for key in ("count", "density", "max_act", "mean_act", "facets"):
        assert shown[key] == [table[feature][key]]
    assert dom.count('data-facet="') == table[feature]["facets"]
    assert dom.count("data-facet-point=") == sum(table[feature]["sizes"])  # the 2-D map shows every top example
    shot = screenshot(synthetic_site / "feature.html", tmp_path / f"feature_{feature}.png", f"?id={feature}")
    assert shot.stat().st_size > 10_000
    record_property("screenshot", str(shot))
    print(f"screenshot: {shot}")


def test_rerun_into_the_same_folder_drops_old_feature_files(synthetic_run, synthetic_store, tmp_path):
    out = tmp_path / "site"
    dashboard(str(synthetic_run), synthetic_store.url, str(out), ("latents=1,2,3",))
    dashboard(str(synthetic_run), synthetic_store.url, str(out), ("latents=4",))
    assert sorted(p.name for p in (out / "data").iterdir()) == ["feature_4.js", "index.js"]


@needs_chromium
def test_missing_feature_says_so_without_script_errors(synthetic_site):
    dom, console = dump_dom(synthetic_site / "feature.html", "?id=100000")
    assert 'data-state="missing"' in dom and "was not analysed" in dom
    assert not [c for c in console if "Uncaught" in c]


def test_text_dashboard_has_highlighted_contexts_facet_tokens_and_output_effects(tiny_text, tmp_path):
    store, run = tiny_text
    out = tmp_path / "text-site"
    report = dashboard(str(run), store.url, str(out), ("top_n=48", "features=6"))
    metrics = report["evaluators"]["facets"]["metrics"]
    assert metrics["contexts"] is True and metrics["output_effects"] is True and metrics["analysed"] == 6
    name = sorted((out / "data").glob("feature_*.js"))[0]
    record = json.loads(name.read_text()[len("ffFeature(") : -3])
    ex = record["top"][0]
    assert ex["acts"][ex["index"]] == pytest.approx(ex["value"], abs=1e-3)  # the highlighted token is the top row
    assert len(ex["tokens"]) == len(ex["acts"]) >= 1
    assert record["facets"]["items"][0]["tokens"][0]["count"] >= 1
    assert len(record["effects"]["promoted"]) == 10 and record["effects"]["promoted"][0]["effect"] >= record["effects"]["promoted"][-1]["effect"]
    assert [b["lo"] for b in record["bands"]] == sorted(b["lo"] for b in record["bands"])
    if chromium():
        dom, console = dump_dom(out / "feature.html", f"?id={record['id']}")
        assert console == [] and 'class="tok hit"' in dom and "logit effect" in dom


@pytest.mark.parametrize("embed", ["layer:2", "pooled"])
def test_facets_of_live_model_embeddings(tiny_text, tmp_path, embed):
    store, run = tiny_text
    report = dashboard(str(run), store.url, str(tmp_path / "site"), ("top_n=32", "latents=1,2,3", f"embed={embed}"))
    metrics = report["evaluators"]["facets"]["metrics"]
    assert metrics["embed"] == embed and metrics["analysed"] == 3
    record = json.loads((tmp_path / "site" / "data" / "feature_2.js").read_text()[len("ffFeature(") : -3])
    assert sum(f["size"] for f in record["facets"]["items"]) == min(32, record["count"])


@needs_chromium
def test_index_of_16k_features_loads_one_small_file_per_feature(tmp_path):
    """A 16,384-latent dictionary: the index lists them 200 at a time; a feature page loads one file."""
    from featureforge_multifaceted.dashboard import SiteWriter

    site = SiteWriter(tmp_path)
    table = {}
    for i in range(16384):
        record = {"id": i, "count": 1 + i % 97, "density": (1 + i % 97) / 1e6, "max_act": 1.0 + i % 13, "mean_act": 0.5,
                  "histogram": {"log10_edges": [0.0, 0.05], "counts": [1 + i % 97]}, "top": [], "bands": [],
                  "facets": {"k": 1 + i % 3, "silhouettes": {}, "items": []}, "effects": None}
        site.feature(record)
        table[i] = {k: record[k] for k in ("count", "density", "max_act", "mean_act")} | {"facets": 1 + i % 3, "sizes": []}
    index = site.finish({"rows": 10**6, "analysed": 16384, "output_effects": False, "output_effects_note": "none"}, table, "wide")
    assert max(p.stat().st_size for p in (tmp_path / "data").glob("feature_*.js")) < 2_000
    dom, console = dump_dom(index)
    assert console == [] and 'data-state="ready"' in dom
    assert len(re.findall(r'<tr data-id="\d+"', dom)) == 200 and "200 of 16384 features" in dom
    dom, console = dump_dom(tmp_path / "feature.html", "?id=16383")
    assert console == [] and "ready: feature 16383" in dom


def test_text_dashboard_feature_pages_show_precomputed_steering(tiny_text, tmp_path):
    store, run = tiny_text
    out = tmp_path / "steer-site"
    dashboard(str(run), store.url, str(out), ("top_n=48", "features=2", "steer_tokens=5", "steer_prompt=def "))
    records = [json.loads(p.read_text()[len("ffFeature(") : -3]) for p in sorted((out / "data").glob("feature_*.js"))]
    assert len(records) == 2
    for record in records:
        s = record["steering"]
        assert s["prompt"] == "def " and s["typical"] > 0 and [st["alpha"] for st in s["steps"]] == [2.0, 4.0, 8.0]
        assert isinstance(s["clean"], str) and all(isinstance(st["text"], str) and st["kl"] > 0 for st in s["steps"])
        assert s["steps"][0]["promoted"][0]["gain"] > 0
    if chromium():
        dom, console = dump_dom(out / "feature.html", f"?id={records[0]['id']}")
        assert console == [] and dom.count('class="steered"') == 3 and 'data-state="ready"' in dom


def test_feature_pages_list_best_matches_from_a_comparison(synthetic_run, synthetic_store, tmp_path):
    import featureforge

    neurons = featureforge.train("neurons", store=synthetic_store.url, out=str(tmp_path / "neurons"), progress=False)[0]
    featureforge.compare([synthetic_run, neurons], store=synthetic_store.url, out=tmp_path / "cmp", progress=False)
    out = tmp_path / "site"
    dashboard(str(synthetic_run), synthetic_store.url, str(out), ("latents=1,2", f"compare={tmp_path / 'cmp'}"))
    text = (out / "data" / "feature_2.js").read_text()
    record = json.loads(text[len("ffFeature("):-3])
    pair = json.loads((tmp_path / "cmp" / "pairs" / "0-1.json").read_text())
    (match,) = record["matches"]
    assert match["run"] == "neurons" and match["latent"] == pair["a_activation"]["best"][2]
    assert match["activation"] == pair["a_activation"]["best_score"][2] and match["decoder"] == pair["a_decoder"]["best_score"][2]
    assert "Best matches in compared runs" in (out / "feature.html").read_text()
    if chromium() is not None:  # the page renders the table without script errors
        dom, console = dump_dom(out / "feature.html", "?id=2")
        assert console == [] and dom.count('class="match"') == 1 and _values(dom)["activation"] == [match["activation"]]
    with pytest.raises(featureforge.BadInputError, match="holds no compare.json"):
        dashboard(str(synthetic_run), synthetic_store.url, str(tmp_path / "site2"), ("latents=1", f"compare={tmp_path}"))
