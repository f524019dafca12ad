"""The tiny stdlib GPT-2: benchmarks/train_tiny_lm.py trains a few seconds and saves a folder the
``hf`` source caches (with gradients, as a causal LM); ``featureforge tiny-lm`` trains once, then reuses it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from featureforge_hf import HFSource
from tb_helpers import BENCHMARKS

SCRIPT = BENCHMARKS / "train_tiny_lm.py"


def test_train_tiny_lm_saves_a_model_the_hf_source_caches_with_grads(tmp_path, cli_env):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "0.02", "--max-chars", "100000", "--layers", "1", "--d-model", "32",
         "--heads", "2", "--vocab", "300", "--context", "32", "--batch-size", "4", "--name", "smoke", "--out-root", str(tmp_path)],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] >= 1 and np.isfinite(report["val_loss"]) and report["tokens_per_s"] > 0
    folder = tmp_path / "smoke"
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    source = HFSource(model=str(folder), grads=True, context_size=32, max_docs=2)
    batch = next(iter(source.stream()))
    assert batch["grads"].shape == batch["acts"].shape == (len(batch["token_ids"]), 32)


def test_tiny_lm_command_trains_once_then_reports_the_cached_model(tmp_path, cli_env, monkeypatch):
    import featureforge_testbeds.tiny_lm as train_lm
    from click.testing import CliRunner

    from featureforge.cli import build_cli

    small = dict(max_chars=60_000, layers=1, d_model=32, heads=2, vocab=300, context=32, batch_size=4)
    real = train_lm.TinyLMConfig
    monkeypatch.setattr(train_lm, "TinyLMConfig", lambda **kw: real(**{**small, **kw}))
    out = tmp_path / "lm"
    runner = CliRunner()
    first = runner.invoke(build_cli(), ["tiny-lm", "--out", str(out), "--minutes", "0.01", "--json"], env={"FEATUREFORGE_PROGRESS": "0"})
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["cached"] is False and report["steps"] >= 1 and (out / "config.json").exists()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = runner.invoke(build_cli(), ["tiny-lm", "--out", str(out), "--minutes", "0.01"])
    assert again.exit_code == 0 and "cached" in again.output
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp, "the cached model is not retrained"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    refused = runner.invoke(build_cli(), ["tiny-lm", "--out", str(foreign)])
    assert refused.exit_code == 1 and "did not train" in refused.output


def test_tiny_lm_saves_checkpoints_during_training_that_the_hf_source_reads(tmp_path, monkeypatch):
    import featureforge_testbeds.tiny_lm as train_lm
    from click.testing import CliRunner

    from featureforge.cli import build_cli

    small = dict(max_chars=60_000, heads=2, vocab=300, context=32, batch_size=4)
    real = train_lm.TinyLMConfig
    monkeypatch.setattr(train_lm, "TinyLMConfig", lambda **kw: real(**{**small, **kw}))
    out = tmp_path / "lm"
    done = CliRunner().invoke(build_cli(), ["tiny-lm", "--out", str(out), "--minutes", "0.03", "--checkpoints", "2", "--layers", "1",
                                            "--d-model", "32", "--json"], env={"FEATUREFORGE_PROGRESS": "0"})
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    saved = report["checkpoints"]
    assert len(saved) == 2 and 0 < saved[0]["step"] < saved[1]["step"] <= report["steps"]
    assert report["config"]["n_layer"] == 1 and report["config"]["n_embd"] == 32
    for c in saved:
        source = HFSource(model=c["path"], context_size=32, max_docs=1, hook="transformer.h.0.mlp.act")
        assert next(iter(source.stream()))["acts"].shape[1] == 128  # the MLP's neurons, 4 x d_model
    bad = CliRunner().invoke(build_cli(), ["tiny-lm", "--out", str(tmp_path / "x"), "--checkpoints", "-1"])
    assert bad.exit_code == 1 and "--checkpoints -1 must be 0 or more" in bad.output
