"""featureforge-sae's trainers through the core's verbs: train, evaluate, import (moved here from the
core's tests, which run without plugins)."""

from __future__ import annotations

import json

import pytest

import featureforge as ff
from featureforge.testing import synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("stores") / "toy.zarr", rows=12288, d_in=16, n_features=32, mean_active=3, seed=1)


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_topk_run_evaluates_on_its_held_out_rows(store, tmp_path):
    [run] = ff.train("topk", {"d_dict": 32, "k": 3}, store=store.url, out=str(tmp_path / "topk"), batch_size=256, epochs=2,
                     holdout_rows=1024, progress=False)
    report = ff.evaluate(run, store=store.url)
    assert report["eval_rows"]["selection"] == "holdout"
    rec, gt = report["evaluators"]["reconstruction"]["metrics"], report["evaluators"]["ground-truth"]["metrics"]
    assert 2.5 < rec["l0"] <= 3.0 and 0 < rec["fvu"] < 1  # TopK then ReLU: at most k active
    assert 0.3 < gt["mmcs"] <= 1 and 0 <= gt["recovered"] <= 1 and 0 < gt["mcc"] <= 1


def test_the_loops_dead_after_reaches_auxk_of_a_trainer_without_its_own(store, tmp_path):
    kw = dict(batch_size=256, epochs=2, log_every=5, progress=False)
    [default] = ff.train("topk", {"d_dict": 128, "k": 2}, store=store.url, out=str(tmp_path / "default"), **kw)
    [short] = ff.train("topk", {"d_dict": 128, "k": 2}, store=store.url, out=str(tmp_path / "short"), dead_after=1024, **kw)
    assert json.loads((short / "config.json").read_text())["training"]["dead_after"] == 1024
    assert json.loads((short / "config.json").read_text())["dead_after_rows"] == 1024
    # default: the trainer's horizon for this dictionary, 1,000 mean firing intervals (128 / 2 rows each)
    assert json.loads((default / "config.json").read_text())["dead_after_rows"] == 64_000
    auxk = {run.name: [line["auxk_loss"] for line in _lines(run)] for run in (default, short)}
    assert not any(auxk["default"]), "a 64k-row horizon is never reached by a run of ~20k rows"
    assert any(v > 0 for v in auxk["short"]), "-t dead_after=1024 turns AuxK on"
    assert max(line["dead_fraction"] for line in _lines(short)) > 0, "the log counts dead latents by the same horizon"
    [own] = ff.train("topk", {"d_dict": 128, "k": 2, "dead_after": 10_000_000}, store=store.url, out=str(tmp_path / "own"),
                     dead_after=1024, **kw)
    assert not any(line["auxk_loss"] for line in _lines(own)), "the trainer's own setting wins"


def test_import_into_an_existing_run_needs_overwrite(tmp_path):
    """`featureforge import SRC --out EXISTING_RUN` refuses (nothing changed) unless --overwrite, as train does."""
    from click.testing import CliRunner

    from featureforge.cli import build_cli

    trainer = ff.get_registry().get("trainer", "topk")({"d_dict": 32, "k": 4})
    trainer.build(8).save(tmp_path / "a", {"trainer": "topk", "options": trainer.options_dict()})
    ff.export(tmp_path / "a", "saelens", tmp_path / "exported")
    existing = tmp_path / "existing"
    other = ff.get_registry().get("trainer", "topk")({"d_dict": 16, "k": 2})
    other.build(8).save(existing, {"trainer": "topk", "options": other.options_dict()})
    before = {p.name: p.read_bytes() for p in existing.iterdir()}

    cli = build_cli()
    refused = CliRunner().invoke(cli, ["import", str(tmp_path / "exported"), "--format", "saelens", "--out", str(existing)])
    assert refused.exit_code == 1 and refused.output.strip().count("\n") == 0
    assert "already exists; pass --overwrite to replace it" in refused.output
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before, "the existing run is untouched"

    done = CliRunner().invoke(cli, ["import", str(tmp_path / "exported"), "--format", "saelens", "--out", str(existing), "--overwrite"])
    assert done.exit_code == 0, done.output
    config = json.loads((existing / "config.json").read_text())
    assert config["d_dict"] == 32 and config["imported_from"]["format"] == "saelens"
