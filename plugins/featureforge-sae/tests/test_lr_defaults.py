"""Default learning rate: scaled to the run's length, and the optional race of candidate rates."""

from __future__ import annotations

import json

import pytest

import featureforge as ff
from featureforge.evaluation import evaluate


@pytest.fixture(scope="module")
def short_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lr") / "store.zarr"
    ff.cache("synthetic", {"d_in": 32, "n_features": 128, "mean_active": 3.0}, store=str(path), rows=100_000, progress=False)
    return str(path)


def _fvu(run, store) -> float:
    return evaluate(run, store, ["reconstruction"])["evaluators"]["reconstruction"]["metrics"]["fvu"]


def _rates(d_dict, steps, **options):
    from featureforge_sae.trainers import TopKTrainer
    from featureforge_sae.options import TopKOptions

    trainer = TopKTrainer(TopKOptions(d_dict=d_dict, k=8, **options))
    d = trainer.build(64)
    return trainer.learning_rate(d), trainer.learning_rate(d, steps)


def test_topk_default_rate_grows_for_short_runs_and_is_the_width_rule_for_long_ones():
    rule, short = _rates(1024, 100)
    assert short == pytest.approx(2 ** 0.5 * 0.5 / (1024 ** 0.25 * 10))  # 1.25e-2, 16x the width rule
    assert _rates(1024, 1_000_000)[1] == pytest.approx(rule)
    assert _rates(1024, 1)[1] == pytest.approx(32 * rule)
    assert _rates(1024, 400)[1] == pytest.approx(short / 2)  # 1/sqrt(steps)
    # free rows + unit gradient: sqrt(2)x the quarter-power rule at 1,024 latents, 1x at 4,096 (the
    # widths measured), so the rate falls as d_dict^(-1/2) between them ...
    assert _rates(4096, 73)[1] / _rates(1024, 73)[1] == pytest.approx(0.5)
    assert _rates(2048, 73)[1] / _rates(1024, 73)[1] == pytest.approx(0.5 ** 0.5)
    # ... and the factor returns to 1 on either side (the quarter-power rule, as with unit rows)
    for d_dict in (256, 512, 4096, 2**14):
        assert _rates(d_dict, 73)[1] == pytest.approx(_rates(d_dict, 73, decoder="unit")[1])
    assert _rates(768, 73)[1] > _rates(768, 73, decoder="unit")[1]


@pytest.mark.parametrize("options", [{"decoder": "unit"}, {"unit_gradient": False}])
def test_unit_rows_or_the_raw_gradient_keep_the_quarter_power_rule(options):
    rule, short = _rates(1024, 100, **options)
    assert short == pytest.approx(0.5 / (1024 ** 0.25 * 10))  # 8.8e-3, 11x the width rule
    assert short < _rates(1024, 100)[1]
    # short runs: the rate falls as d_dict^(-1/4) with the width, not as the rule's d_dict^(-1/2)
    wide_rule, wide = _rates(4096, 73, **options)
    assert wide / _rates(1024, 73, **options)[1] == pytest.approx(0.25 ** 0.25)
    assert wide > 16 * wide_rule
    assert wide == pytest.approx(_rates(4096, 73)[1])  # the two rules meet at 4,096 latents


def test_default_rate_beats_the_width_rule_on_a_short_run(short_store, tmp_path):
    opts = {"d_dict": 128, "k": 4}
    default = ff.train("topk", opts, store=short_store, out=tmp_path / "default", batch_size=1024, progress=False)[0]
    from featureforge_sae.trainers import TopKTrainer
    from featureforge_sae.options import TopKOptions

    t = TopKTrainer(TopKOptions(**opts))
    rule = t.learning_rate(t.build(32))
    fixed = ff.train("topk", opts, store=short_store, out=tmp_path / "rule", batch_size=1024, lr=rule, progress=False)[0]
    assert json.loads((default / "config.json").read_text())["training"]["lr"] is None
    assert _fvu(default, short_store) < 0.8 * _fvu(fixed, short_store)


def test_lr_race_keeps_the_candidate_with_the_lowest_probe_fvu(short_store, tmp_path):
    run = ff.train("topk", {"d_dict": 128, "k": 4}, store=short_store, out=tmp_path / "race", batch_size=1024, progress=False,
                   lr_search_fraction=0.2, lr_search_factors=(0.1, 1.0, 3.0))[0]
    cfg = json.loads((run / "config.json").read_text())
    race = cfg["lr_search"]
    assert race["probe_steps"] >= 8 and len(race["candidates"]) == 3
    best = min(race["candidates"], key=lambda c: c["fvu"])
    assert race["chosen_lr"] == best["lr"]
    # the kept copy trained on at the chosen rate: the logged rate never exceeds it, and reaches it
    rates = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert max(rates) == pytest.approx(race["chosen_lr"]) and cfg["status"] == "complete"
    assert len({c["fvu"] for c in race["candidates"]}) == 3  # the candidates really trained at different rates


def test_lr_race_settings_are_checked_in_one_line(short_store, tmp_path):
    with pytest.raises(ff.FeatureforgeError, match="lr_search_fraction must be in"):
        ff.train("topk", {"d_dict": 128, "k": 4}, store=short_store, out=tmp_path / "bad", lr_search_fraction=1.5, progress=False)


def test_sweep_progress_shows_every_member_and_evaluations_say_so(short_store, tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "FEATUREFORGE_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "featureforge.cli", "train", "--trainer", "topk", "-o", "d_dict=64", "-o", "k=2,4",
         "--store", short_store, "--out", str(tmp_path / "sweep"), "--batch-size", "1024", "--rows", "40960", "-t", "eval_every=20"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.replace("\r", "\n")
    assert "fvu[k=2]=" in err and "fvu[k=4]=" in err
    assert "evaluating reconstruction [k=4] at step 20" in err
