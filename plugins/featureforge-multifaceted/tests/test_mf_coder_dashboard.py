"""`featureforge dashboard` of a transcoder and of a crosscoder run (issue #23), through click's CliRunner.

The transcoder's contexts come from encoding its source site's rows (the MLP's input) of a
multi-site store, its output-token effects from its decoder rows (the MLP's output), and its pages
name both sites; the crosscoder's contexts come from its sites side by side and its pages show
each site's share of the decoder norm.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featureforge as ff
from featureforge.cli import build_cli

pytest.importorskip("featureforge_hf")
pytest.importorskip("featureforge_sae")

from mf_browser import chromium, dump_dom  # noqa: E402

COMMON = {"context_size": 48, "batch_size": 4, "max_docs": 20}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from featureforge_hf import stdlib_documents
    from featureforge_hf.tiny import make_gpt2

    root = tmp_path_factory.mktemp("mf-coder")
    make_gpt2(root / "gpt2", list(itertools.islice(stdlib_documents(), 200)), n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=300)
    return root


def _records(out):
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()[len("ffFeature(") : -3]) for p in (out / "data").glob("feature_*.js")}


def _dashboard(run, store, out):
    result = CliRunner().invoke(build_cli(), ["dashboard", str(run), "--store", store.url, "--out", str(out), "-o", "features=4", "-o", "top_n=16"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out / 'index.html'}" in result.output
    return json.loads((out / "report.json").read_text())["evaluators"]["facets"]["metrics"]


def test_transcoder_dashboard_shows_contexts_of_its_source_site_and_names_both_sites(gpt2, tmp_path):
    store = ff.cache("hf", {"model": str(gpt2 / "gpt2"), "hook": "transformer.h.0", "site": "mlp-io", **COMMON}, store=str(tmp_path / "io.zarr"),
                     rows=1200, rows_per_chunk=400, progress=False)
    [run] = ff.train("transcoder", {"k": 8, "d_dict": 64}, store=store, out=str(tmp_path / "tc"), rows=2400, batch_size=128, threads=1, progress=False, lr=1e-2)
    out = tmp_path / "site"
    m = _dashboard(run, store, out)
    assert m["reads"] == ["transformer.h.0.mlp:input"] and m["writes"] == ["transformer.h.0.mlp"]
    assert m["contexts"] is True and m["output_effects"] is True and "site transformer.h.0.mlp" in m["output_effects_note"]
    assert (out / "index.html").exists() and (out / "feature.html").exists()
    records = _records(out)
    assert len(records) == 4
    tc = ff.load(run)
    source = store.site("transformer.h.0.mlp:input")
    for j, rec in records.items():
        ex = rec["top"][0]
        assert ex["tokens"] and ex["acts"][ex["index"]] == pytest.approx(ex["value"], abs=1e-3)
        # the top value is the latent's code on that row of the MLP's input (not of its output)
        with torch.no_grad():
            code = float(tc.encode(torch.from_numpy(source.read(ex["row"], ex["row"] + 1)))[0, j])
        assert code == pytest.approx(ex["value"], abs=1e-3)
        assert rec["sites"]["reads"] == ["transformer.h.0.mlp:input"] and [w["site"] for w in rec["sites"]["writes"]] == ["transformer.h.0.mlp"]
        assert rec["sites"]["writes"][0]["share"] == 1.0 and len(rec["effects"]["promoted"]) == 10
    if chromium():
        dom, console = dump_dom(out / "feature.html", f"?id={min(records)}")
        assert console == [] and "written at transformer.h.0.mlp" in dom


def test_crosscoder_dashboard_encodes_its_sites_side_by_side_and_shows_decoder_shares(gpt2, tmp_path):
    store = ff.cache("hf", {"model": str(gpt2 / "gpt2"), "hook": "transformer.h.0,transformer.h.1", **COMMON}, store=str(tmp_path / "blocks.zarr"),
                     rows=1200, rows_per_chunk=400, progress=False)
    [run] = ff.train("crosscoder", {"k": 8, "d_dict": 64}, store=store, out=str(tmp_path / "cc"), rows=2400, batch_size=128, threads=1, progress=False, lr=1e-2)
    out = tmp_path / "site"
    m = _dashboard(run, store, out)
    assert m["reads"] == m["writes"] == ["transformer.h.0", "transformer.h.1"] and m["contexts"] is True
    cc = ff.load(run)
    stacked = np.stack([store.site(s).read(0, 1200) for s in m["reads"]], 1)
    for j, rec in _records(out).items():
        ex = rec["top"][0]
        with torch.no_grad():
            code = float(cc.encode(torch.from_numpy(stacked[ex["row"] : ex["row"] + 1]))[0, j])
        assert code == pytest.approx(ex["value"], abs=1e-3)
        shares = [w["share"] for w in rec["sites"]["writes"]]
        assert len(shares) == 2 and sum(shares) == pytest.approx(1.0, abs=1e-3) and all(0 < s < 1 for s in shares)
