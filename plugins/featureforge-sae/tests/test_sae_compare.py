"""``featureforge compare`` on real trained SAEs (the core verb, exercised with this plugin's trainers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featureforge as ff
from featureforge.cli import cli
from featureforge.comparison import best_matches
from featureforge.testing import synthetic_store

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("cmp") / "store", rows=16384, n_features=24, mean_active=2.0)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """Two topk runs on the store that differ only in their initialisation seed, trained in one pass (--seed 0,1)."""
    out = tmp_path_factory.mktemp("runs") / "seeds"
    runs = ff.train("topk", {"k": 3, "d_dict": 32}, store=store.url, out=str(out), seed="0,1", progress=False, batch_size=256)
    return [Path(r) for r in runs]


def _permuted_copy(run, out, perm):
    """A copy of ``run`` whose latents are reordered by ``perm`` (latent k of the copy = latent perm[k])."""
    d = ff.load(run)
    with torch.no_grad():
        d.encoder.weight.copy_(d.encoder.weight[perm])
        d.encoder.bias.copy_(d.encoder.bias[perm])
        d.W_dec.copy_(d.W_dec[perm])
    cfg = json.loads((run / "config.json").read_text())
    d.save(out, cfg)
    return out


def test_a_run_against_its_permuted_copy_matches_every_latent_to_its_twin(trained, store, tmp_path):
    perm = np.random.default_rng(4).permutation(32)
    twin = _permuted_copy(trained[0], tmp_path / "twin", torch.from_numpy(perm))
    report = ff.compare([trained[0], twin], store=store.url, out=tmp_path / "cmp", progress=False)
    pair = report["pairs"][0]
    for kind in ("decoder", "encoder"):
        assert pair[kind]["shared_fraction"]["0.9"] == 1.0
    assert pair["paulo_belrose"]["shared_fraction"] == 1.0
    data = json.loads((tmp_path / "cmp" / pair["file"]).read_text())
    expected = np.argsort(perm)  # latent i of the run is latent argsort(perm)[i] of the twin
    assert data["a_decoder"]["matched"] == expected.tolist()
    live = np.array(data["a_firing_frequency"]) > 0
    assert (np.array(data["a_activation"]["matched"])[live] == expected[live]).all()
    assert pair["activation"]["shared_fraction_live"]["0.9"] == 1.0


def test_two_seeds_share_part_of_their_latents_and_the_files_say_which(trained, store, tmp_path):
    report = ff.compare(trained, store=store.url, out=tmp_path / "cmp", progress=False)
    assert report["rows"]["selection"] == "holdout"  # both runs hold out the same chunks of their store
    pair = report["pairs"][0]
    shared = pair["paulo_belrose"]["shared_fraction"]
    assert 0.0 < shared < 1.0
    assert pair["decoder"]["shared_fraction"]["0.5"] >= pair["decoder"]["shared_fraction"]["0.9"]
    for plot in report["plots"]:
        assert (tmp_path / "cmp" / plot).stat().st_size > 1000
    matches = best_matches(tmp_path / "cmp", trained[1], latent=3)
    (row,) = matches[3]
    data = json.loads((tmp_path / "cmp" / pair["file"]).read_text())
    assert row["run"] == "seed=0" and row["latent"] == data["b_activation"]["best"][3]


def test_bounded_memory_gives_the_same_matches_as_one_pass(trained, store, tmp_path):
    whole = ff.compare(trained, store=store.url, out=tmp_path / "a", progress=False)
    tight = ff.compare(trained, store=store.url, out=tmp_path / "b", progress=False, memory=600, dense_limit=0)
    assert tight["pairs"][0]["activation"]["match"] == "sparse"
    for kind in ("decoder", "activation"):
        for t, v in whole["pairs"][0][kind]["shared_fraction"].items():
            assert tight["pairs"][0][kind]["shared_fraction"][t] == pytest.approx(v, abs=0.04)
        assert tight["pairs"][0][kind]["mean_best"] == pytest.approx(whole["pairs"][0][kind]["mean_best"], abs=1e-3)


def test_cli_compare_prints_the_shared_fractions_and_writes_the_folder(trained, store, tmp_path):
    out = tmp_path / "c"
    result = CliRunner().invoke(cli, ["compare", str(trained[0]), str(trained[1]), "--store", store.url, "--out", str(out), "--threshold", "0.7"])
    assert result.exit_code == 0, result.output
    assert "seed=0 vs seed=1: decoder shared@0.7" in result.output
    report = json.loads((out / "compare.json").read_text())
    assert list(report["pairs"][0]["decoder"]["shared_fraction"]) == ["0.7"]
    assert (out / "runs" / "0.json").exists() and (out / "pairs" / "0-1.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--store", "S"], "at least two runs"),
    (["--store", "S", "--store", "S", "--store", "S", "R2"], "3 stores for 2 runs"),
    (["--store", "S", "R2", "--rule-threshold", "2"], "must lie in"),
])
def test_cli_compare_bad_input_is_one_line(trained, store, args, message):
    args = [a.replace("S", store.url).replace("R2", str(trained[1])) if a in ("S", "R2") else a for a in args]
    result = CliRunner().invoke(cli, ["compare", str(trained[0]), *args])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_stores_without_token_ids_cannot_be_compared_across(trained, store, tmp_path):
    other = synthetic_store(tmp_path / "other", rows=16384, n_features=24, mean_active=2.0, seed=5)
    with pytest.raises(ff.BadInputError, match="records no token ids"):
        ff.compare(trained, store=[store.url, other.url], progress=False)


def test_a_seed_member_of_the_one_pass_sweep_is_the_run_of_that_seed_alone(trained, store, tmp_path):
    [alone] = ff.train("topk", {"k": 3, "d_dict": 32}, store=store.url, out=str(tmp_path / "alone"), seed=0, progress=False, batch_size=256)
    a, b = ff.load(alone), ff.load(trained[0])
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    other = ff.load(trained[1])
    assert not torch.equal(other.W_dec, b.W_dec)
    cfgs = [json.loads((r / "config.json").read_text()) for r in trained]
    assert [c["training"]["seed"] for c in cfgs] == [0, 1] and cfgs[1]["sweep_label"] == "seed=1"


def test_seed_list_must_be_distinct_integers(store, tmp_path):
    for bad in ("0,0", "0,x"):
        with pytest.raises(ff.OptionError, match="--seed"):
            ff.train("topk", {"k": 3, "d_dict": 32}, store=store.url, out=str(tmp_path / "bad"), seed=bad, progress=False)


def test_planted_features_shared_fraction_agrees_with_features_both_seeds_recovered(trained, store, tmp_path):
    """Ground truth known: a latent pair is shared (decoder cosine > 0.9) where both seeds recovered the same planted feature."""
    from featureforge.evaluation.metrics import cosine_matrix

    truth = torch.from_numpy(store.ground_truth()["features"])
    decoders = [ff.load(r).W_dec.detach() for r in trained]
    recovered = []
    for w in decoders:
        cos = cosine_matrix(truth, w)  # [features, latents]
        best, who = cos.max(dim=1)
        recovered.append({int(f): int(who[f]) for f in torch.nonzero(best > 0.9).flatten()})
    both = {f: (recovered[0][f], recovered[1][f]) for f in recovered[0].keys() & recovered[1].keys()}
    report = ff.compare(trained, store=store.url, out=tmp_path / "cmp", progress=False, thresholds=(0.9,))
    pair = report["pairs"][0]
    shared = round(pair["decoder"]["shared_fraction"]["0.9"] * 32)
    assert len(both) >= 8  # the test means something: most planted features are found by both seeds
    assert abs(shared - len(both)) <= 2, (shared, len(both))
    data = json.loads((tmp_path / "cmp" / pair["file"]).read_text())
    matched = data["a_decoder"]["matched"]
    agree = sum(matched[a] == b for a, b in both.values())
    assert agree >= len(both) - 1  # the matching pairs exactly the latents that found the same feature
    print("planted", len(truth), "recovered", [len(r) for r in recovered], "both", len(both), "shared@0.9", shared, "agree", agree)


def test_compare_uses_the_recorded_store_and_rewrites_only_its_own_folder(trained, tmp_path):
    out = tmp_path / "cmp"
    ff.compare([trained[0], trained[1], trained[0].parent / "seed=1"], out=out, progress=False, baseline=False)
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["0-1.json", "0-2.json", "1-2.json"]
    report = ff.compare(trained, out=out, progress=False)  # no store given: each run's recorded one
    assert report["rows"]["selection"] == "holdout"
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["0-1.json"]  # the earlier comparison's files are gone
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(ff.BadInputError, match="is not a comparison folder"):
        ff.compare(trained, out=other, progress=False)
    assert (other / "mine.txt").read_text() == "keep"
