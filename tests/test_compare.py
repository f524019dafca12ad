"""``featureforge compare``: the matching and streaming parts, and the identity (neurons) dictionary, on the core alone.

Runs of trained SAEs are compared in plugins/featureforge-sae/tests/test_sae_compare.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featureforge as ff
from featureforge.cli import cli
from featureforge.comparison._correlation import CrossBlock, Moments
from featureforge.comparison._match import BlockMatcher, cosine_blocks
from featureforge.evaluation.metrics import cosine_matrix, hungarian_match, pearson_matrix
from featureforge.testing import synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("cmp") / "store", rows=16384, n_features=24, mean_active=2.0)


def test_sparse_matching_finds_the_dense_optimum_on_a_planted_permutation():
    rng = np.random.default_rng(0)
    m = 60
    perm = rng.permutation(m)
    score = rng.uniform(-0.3, 0.4, size=(m, m)).astype(np.float32)
    score[np.arange(m), perm] = rng.uniform(0.6, 1.0, size=m)
    dense, sparse = BlockMatcher(m, m), BlockMatcher(m, m, dense_limit=0, candidates=4)
    for lo in range(0, m, 7):  # blocks of rows, as a pass over the rows gives them
        dense.add(lo, score[lo : lo + 7])
        sparse.add(lo, score[lo : lo + 7])
    d, s = dense.result(), sparse.result()
    assert d.method == "dense" and s.method == "sparse"
    np.testing.assert_array_equal(d.matched, perm)
    np.testing.assert_array_equal(s.matched, perm)
    np.testing.assert_allclose(s.matched_score, score[np.arange(m), perm])
    np.testing.assert_array_equal(d.best, score.argmax(axis=1))
    np.testing.assert_array_equal(d.best_b, score.argmax(axis=0))
    np.testing.assert_array_equal(d.same_index, np.diag(score))
    np.testing.assert_array_equal(s.same_index, np.diag(score))
    rows, cols = hungarian_match(score)
    assert float(score[rows, cols].sum()) == pytest.approx(float(d.matched_score.sum()), rel=1e-6)


def test_sparse_matching_of_unequal_sizes_matches_every_latent_of_the_smaller_side():
    rng = np.random.default_rng(1)
    score = rng.uniform(-1, 1, size=(10, 25)).astype(np.float32)
    sparse = BlockMatcher(10, 25, dense_limit=0, candidates=3)
    sparse.add(0, score)
    s = sparse.result()
    assert (s.matched >= 0).all() and len(set(s.matched.tolist())) == 10
    dense = BlockMatcher(10, 25)
    dense.add(0, score)
    # the sparse optimum is over candidates only: never better than the exact one
    assert s.matched_score.sum() <= dense.result().matched_score.sum() + 1e-5


def test_cosine_blocks_equal_the_whole_cosine_matrix():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(37, 8)), rng.normal(size=(23, 8))
    blocks = list(cosine_blocks(a, b, limit_entries=100))
    assert len(blocks) > 1
    whole = np.concatenate([blk for _, blk in blocks])
    np.testing.assert_allclose(whole, cosine_matrix(a, b).numpy(), atol=1e-5)


def test_streamed_correlation_equals_the_whole_pearson_matrix():
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.normal(5.0, 1.0, size=(900, 6)).astype(np.float32))  # large offset, like GELU neurons
    b = torch.from_numpy((rng.normal(size=(900, 5)) + a.numpy()[:, :1]).astype(np.float32))
    ma, mb = Moments(6), Moments(5)
    block = CrossBlock(2, 6, 5)
    for lo in range(0, 900, 128):
        xa, xb = a[lo : lo + 128], b[lo : lo + 128]
        ca, cb = ma.centre(xa), mb.centre(xb)
        ma.update(xa, ca)
        mb.update(xb, cb)
        block.update(ca, cb)
    np.testing.assert_allclose(block.correlation(ma, mb), pearson_matrix(a, b).numpy()[2:6], atol=1e-5)


def test_identity_run_holds_the_units_and_compares_as_a_dictionary(store, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--trainer", "identity", "--store", store.url, "--out", str(tmp_path / "neurons")])
    assert result.exit_code == 0, result.output
    d = ff.load(tmp_path / "neurons")
    x = torch.from_numpy(store.read(0, 64))
    torch.testing.assert_close(d.encode(x), x)
    torch.testing.assert_close(d.decoder_directions, torch.eye(store.d_in))
    cfg = json.loads((tmp_path / "neurons" / "config.json").read_text())
    assert cfg["status"] == "complete" and cfg["holdout"]["chunks"]
    ff.train("neurons", store=store.url, out=str(tmp_path / "neurons2"), progress=False)
    report = ff.compare([tmp_path / "neurons", tmp_path / "neurons2"], store=store.url, out=tmp_path / "cmp", progress=False)
    pair = report["pairs"][0]
    assert pair["activation"]["shared_fraction"]["0.9"] == 1.0
    # The same units against themselves: best correlation 1, so the excess is 1 minus the rotated baseline.
    data = json.loads((tmp_path / "cmp" / pair["file"]).read_text())
    excess = 1.0 - np.array(data["a_baseline"])
    assert pair["activation"]["excess_mean"] == pytest.approx(float(excess.mean()), abs=1e-3)
    assert report["runs"][0]["universal_fraction"] == pytest.approx(float((excess > 0.5).mean()))
    assert 0.0 < np.mean(data["a_baseline"]) < 0.9
    assert pair["same_unit"]["mean_correlation"] == 1.0 and data["a_activation"]["same_index"] == [1.0] * store.d_in


def test_ablate_picks_a_comparisons_units_and_refuses_a_store_without_a_live_model(store, tmp_path):
    """The synthetic source has no model to run: the set is chosen, then the ablation is refused in one line."""
    for name in ("n0", "n1"):
        ff.train("neurons", store=store.url, out=str(tmp_path / name), progress=False)
    ff.compare([tmp_path / "n0", tmp_path / "n1"], store=store.url, out=tmp_path / "cmp", progress=False, baseline=False)
    picked = ff.comparison.select_units(tmp_path / "cmp", "n1", top=0.25, by="best")
    best = json.loads((tmp_path / "cmp" / "runs" / "1.json").read_text())["mean_best_correlation"]
    assert picked["index"] == 1 and len(picked["units"]) == round(0.25 * store.d_in)
    assert min(best[i] for i in picked["units"]) >= max(b for i, b in enumerate(best) if i not in picked["units"])
    runner = CliRunner()
    result = runner.invoke(cli, ["ablate", "n0", "--from-compare", str(tmp_path / "cmp"), "--top", "0.25", "--by", "best"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: store {store.url}'s source 'synthetic' cannot run its model; "
                                     "ablation needs a source with a live model (hf)")
    # compared without the rotated baseline: no excess correlation to pick by
    result = runner.invoke(cli, ["ablate", str(tmp_path / "n0"), "--from-compare", str(tmp_path / "cmp"), "--top", "0.25"])
    assert result.exit_code == 1 and "has no excess correlation for its runs (compared with --no-baseline); compare again with --baseline" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_identity_trainer_refuses_a_sweep_or_resume(store, tmp_path):
    with pytest.raises(ff.OptionError, match="learns nothing"):
        ff.train("identity", store=store.url, out=str(tmp_path / "n"), resume=True, progress=False)



def test_streamed_correlation_of_sparse_codes_takes_the_sparse_product_and_equals_the_whole_matrix():
    rng = np.random.default_rng(5)
    n, ma, mb = 2000, 40, 30
    a = rng.exponential(size=(n, ma)) * (rng.uniform(size=(n, ma)) < 0.02)  # 2% active, like SAE codes
    b = rng.exponential(size=(n, mb)) * (rng.uniform(size=(n, mb)) < 0.03)
    b[:, 0] += a[:, 3]  # one latent of B follows one of A
    a, b = torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))
    ma_, mb_ = Moments(ma), Moments(mb)
    block = CrossBlock(0, ma, mb)
    for lo in range(0, n, 256):
        xa, xb = a[lo : lo + 256], b[lo : lo + 256]
        ca, cb = ma_.centre(xa), mb_.centre(xb)
        ma_.update(xa, ca)
        mb_.update(xb, cb)
        block.update(ca, cb)
    assert ma_.centred is False and torch.equal(ca, xa)  # sparse codes stay sparse (uncentred)
    rho = block.correlation(ma_, mb_)
    np.testing.assert_allclose(rho, pearson_matrix(a, b).numpy(), atol=1e-5)
    assert rho[3, 0] > 0.5
