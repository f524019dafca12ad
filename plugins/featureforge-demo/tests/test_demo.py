"""``featureforge demo --quick`` end to end, as a user runs it: a subprocess over a fresh folder, then again.

Needs the featureforge-hf, featureforge-sae and featureforge-multifaceted plugins (``make test`` installs them); skipped without.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("featureforge_hf")
pytest.importorskip("featureforge_sae")


def _demo(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FEATUREFORGE_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    environment.pop("FEATUREFORGE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "featureforge.cli", "demo", "--quick", "--out", str(out), *args], env=environment,
                          capture_output=True, text=True, timeout=600)


def _store_files(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and "acts" in p.parts}


def test_quick_demo_writes_report_plots_and_html_and_reruns(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Wrote the demo report to {out / 'index.html'}" in proc.stdout
    for stage in ("[1/5 cache]", "[2/5 train]", "[3/5 evaluate]", "[4/5 features]", "[5/5 report]", "stage times"):
        assert stage in proc.stdout

    report = json.loads((out / "report.json").read_text())
    rec = report["evaluators"]["reconstruction"]["metrics"]
    down = report["evaluators"]["downstream"]["metrics"]
    assert 0 < rec["fvu"] < 1 and 14 < rec["l0"] <= 16  # TopK then ReLU: at most k active
    assert down["kind"] == "encoder" and down["sequences"] == 8 and down["embedding_score"] > 0
    assert set(report["demo"]["stage_seconds"]) == {"cache", "train", "evaluate", "features", "report", "total"}
    features = report["features"]["features"]
    assert features and all(f["contexts"] for f in features)
    context = features[0]["contexts"][0]
    assert len(context["tokens"]) == len(context["activations"]) and context["activations"][context["max_index"]] > 0
    assert all(isinstance(t, str) for t in context["tokens"]) and not any(re.fullmatch(r" #\d+", t) for t in context["tokens"]), "decoded text, not #id"
    # The demo's store is write-shuffled (neighbouring rows on disk are other sequences): contexts follow
    # each row's own sequence, so they are many tokens wide, as the settings ask, not one.
    import featureforge as ff

    assert ff.open_store(out / "minilm-l3-quick.zarr").write_shuffle_rows > 0
    widths = [len(c["tokens"]) for f in features for c in f["contexts"]]
    assert min(widths) > 1 and sum(widths) / len(widths) > 6, widths
    lines = [json.loads(line) for line in (out / "run-quick" / "metrics.jsonl").read_text().splitlines()]
    assert any("downstream/score" in line for line in lines), "downstream evaluated during training"

    for plot in ("training.png", "latent_density.png", "downstream.png"):
        assert (out / "plots" / plot).stat().st_size > 1000, plot
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert page.count("data:image/png;base64,") == 3, "plots embedded: the page stands alone"
    assert "<script" not in page and 'src="http' not in page and "href=" not in page, "nothing fetched from elsewhere"
    assert page.count("class='feature'") == len(features) and "tok max" in page
    assert f"feature {features[0]['feature']}" in page

    # A second run over the same folder: the store is reused untouched, the run retrained.
    store = out / "minilm-l3-quick.zarr"
    before = _store_files(store)
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _store_files(store) == before, "the cached store is reused, not rewritten"
    again = json.loads((out / "report.json").read_text())
    assert again["evaluators"]["reconstruction"]["metrics"]["fvu"] == pytest.approx(rec["fvu"], rel=1e-4), "same data, same seed"


def test_demo_without_plugins_names_make_demo_in_one_line(tmp_path):
    proc = _demo(tmp_path / "demo", FEATUREFORGE_PLUGINS="demo")  # the demo itself, none of what it needs
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the demo needs")
    assert "make demo" in lines[0] and "pip install featureforge-" in lines[0] and "featureforge-sae" in lines[0] and "plugins/" not in lines[0]
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir()), "nothing written before the check"

    proc = _demo(tmp_path / "demo", FEATUREFORGE_PLUGINS="")  # no demo distribution: the CLI says plugins add commands
    assert proc.returncode == 2 and "no command 'demo'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory) -> str:
    """A randomly initialised 2-layer GPT-2 with a BPE tokenizer trained here on stdlib text (seconds)."""
    import itertools

    from featureforge_hf import stdlib_documents
    from featureforge_hf.tiny import make_gpt2

    folder = tmp_path_factory.mktemp("gpt2")
    make_gpt2(folder, list(itertools.islice(stdlib_documents(), 300)), vocab_size=400)
    return str(folder)


def test_causal_quick_demo_shows_ce_loss_score_and_steering(tmp_path, random_gpt2):
    out = tmp_path / "causal"
    proc = _demo(out, "--causal", "--model", random_gpt2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("[1/7 model]", "[2/7 cache]", "[4/7 evaluate]", "[6/7 steering]", "[7/7 report]"):
        assert stage in proc.stdout
    report = json.loads((out / "report.json").read_text())
    down = report["evaluators"]["downstream"]["metrics"]
    assert down["kind"] == "causal-lm" and math.isfinite(down["ce_loss_score"]) and down["kl_dictionary"] >= 0
    assert report["demo"]["causal"] and report["demo"]["provenance"]["hook"] == "transformer.h.1"
    assert set(report["demo"]["stage_seconds"]) == {"model", "cache", "train", "evaluate", "features", "steering", "report", "total"}
    features = report["features"]["features"]
    assert features and all("steering" in f for f in features), "every shown (live) feature has a steering section"
    section = features[0]["steering"]
    assert [s["alpha"] for s in section["steps"]] == [4.0, 8.0, 16.0] and section["typical"] > 0
    assert all(s["text"] and s["promoted"] and s["suppressed"] and s["kl"] >= 0 for s in section["steps"])
    assert section["steps"][-1]["kl"] > 0, "adding 16x a firing latent's typical value moves the next-token distribution"

    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and 'src="http' not in page, "static and self-contained"
    assert page.count("class='steer'") == len(features) and page.count("class='gen steered'") == 3 * len(features)
    assert "CE-loss score" in page and "promoted" in page and "suppressed" in page
    first_continuation = html.escape(section["steps"][0]["text"].replace("\n", "↵"))
    assert first_continuation in page


def test_demo_model_errors_are_one_line(tmp_path, random_gpt2):
    proc = _demo(tmp_path / "a", "--model", random_gpt2)
    assert proc.returncode == 1 and proc.stderr.strip() == "Error: --model needs --causal (the default demo runs all-MiniLM-L6-v2)"
    proc = _demo(tmp_path / "b", "--causal", "--model", str(tmp_path / "nowhere"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "no config.json" in lines[0] and "--model" in lines[0]


@pytest.mark.slow
def test_causal_demo_trains_the_tiny_lm_on_first_use_then_reuses_it(tmp_path):
    """A clean checkout: no stores/models/stdlib-gpt2 yet, so the demo trains it (here for 3 s) and caches it."""
    env = {**os.environ, "FEATUREFORGE_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "featureforge.cli", "demo", "--causal", "--quick", "--lm-minutes", "0.05"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no trained tiny LM in stores/models/stdlib-gpt2 yet: training it" in first.stdout
    model = tmp_path / "stores" / "models" / "stdlib-gpt2"
    assert (model / "train_report.json").exists() and (model / "model.safetensors").exists()
    report = json.loads((tmp_path / "stores" / "demo-causal" / "report.json").read_text())
    assert report["demo"]["language_model"]["steps"] > 0 and report["demo"]["provenance"]["model"] == str(model.resolve())
    weights = (model / "model.safetensors").stat().st_mtime_ns
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training it" not in second.stdout and (model / "model.safetensors").stat().st_mtime_ns == weights, "cached after the first run"
