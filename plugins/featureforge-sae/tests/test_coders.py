"""Transcoders and crosscoders: the conformance suite for trainers with target/sites roles, the
planted transcoder truth recovered, the skip term, site scales folded into saved weights, role
mapping refusals, and the crosscoder report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import featureforge
from featureforge import BadInputError, OptionError
from featureforge.testing import RoleTrainerTests, planted_roles, train_steps
from featureforge_sae import CrosscoderTrainer, TranscoderTrainer
from featureforge_sae.coder_report import (CrosscoderEvaluator, SiteFVU, decoder_norm_shares, target_truth,
                                           transcoder_truth_metrics)


class TestTranscoderTopK(RoleTrainerTests):
    trainer = "transcoder"
    options = {"k": 4, "d_dict": 64}
    distribution = "featureforge-sae"


class TestSkipTranscoderBatchTopK(RoleTrainerTests):
    trainer = "transcoder"
    options = {"k": 4, "d_dict": 64, "activation": "batchtopk", "skip": True}
    distribution = "featureforge-sae"


class TestTranscoderJumpReLU(RoleTrainerTests):
    trainer = "transcoder"
    options = {"d_dict": 64, "activation": "jumprelu", "l0_warmup_rows": 0, "skip": True}
    distribution = "featureforge-sae"


class TestCrosscoder(RoleTrainerTests):
    trainer = "crosscoder"
    options = {"k": 6, "d_dict": 64}
    distribution = "featureforge-sae"


class TestCrosscoderBatchTopK(RoleTrainerTests):
    trainer = "crosscoder"
    options = {"k": 6, "d_dict": 64, "activation": "batchtopk"}
    distribution = "featureforge-sae"


def _batches(data, roles, batch=512, steps=None):
    n = len(data["acts"]) // batch if steps is None else steps
    return [{r: torch.from_numpy(data[r][i * batch:(i + 1) * batch]) for r in roles} for i in range(n)]


def _train_transcoder(data, options, steps, lr=None, seed=0):
    trainer = TranscoderTrainer(options)
    trainer.sites_for(["in", "out"], None)
    torch.manual_seed(seed)
    d = trainer.build(data["acts"].shape[1])
    batches = _batches(data, ("acts", "target"), steps=steps)
    with torch.no_grad():
        trainer.initialize(d, batches[0])
    out, _ = train_steps(trainer, d, batches, lr=lr)
    return trainer, d.eval(), out


def test_transcoder_recovers_the_planted_map():
    """The planted truth: out = codes @ F_out from the codes that made in = codes @ F_in. The
    decoder rows of a transcoder trained on (in -> out) find F_out (MMCS), a random decoder does not."""
    data = planted_roles(160 * 512, d=16, n_features=32, mean_active=2.0, seed=3)
    _, d, _ = _train_transcoder(data, {"k": 3, "d_dict": 128}, steps=160, lr=1e-2)
    truth = {"features": data["F_in"], "features_out": data["F_out"]}  # as the synthetic source's planted transcoder truth
    got = transcoder_truth_metrics(d.decoder_directions, target_truth(truth))
    random = transcoder_truth_metrics(torch.randn(128, 16), data["F_out"])
    assert got["mmcs_target"] > 0.9 and got["recovered_target"] > 0.75, got
    assert random["mmcs_target"] < 0.75, random


def test_skip_term_learns_the_linear_part_a_plain_transcoder_cannot():
    """A target that is a dense linear map of the source: with W_skip the FVU falls far below the
    plain transcoder's at the same k."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40 * 512, 16, generator=g)
    a = torch.randn(16, 16, generator=g) / 4
    y = x @ a.T
    data = {"acts": x.numpy(), "target": (y * (16 / y.pow(2).sum(1).mean()) ** 0.5).numpy()}
    fvu = {}
    for skip in (False, True):
        _, _, out = _train_transcoder(data, {"k": 2, "d_dict": 64, "skip": skip}, steps=40, lr=1e-2)
        fvu[skip] = float(out.metrics["fvu_train"])
    assert fvu[True] < 0.1 < fvu[False], fvu


def test_transcoder_scales_fold_into_the_saved_weights(tmp_path):
    """Source and target normalised by different scales: the saved run works on raw rows."""
    data = planted_roles(20 * 256, seed=1)
    trainer, d, _ = _train_transcoder(data, {"k": 4, "d_dict": 64, "skip": True}, steps=20)
    d.set_role_scales({"acts": 2.0, "target": 0.25})
    d.save(tmp_path / "run", {"trainer": "transcoder", "options": trainer.options_dict(), "status": "complete"})
    back = featureforge.load(tmp_path / "run")
    assert float(back.input_scale) == 1.0 and float(back.target_scale) == 1.0
    raw = torch.from_numpy(data["acts"][:64]) / 2.0
    with torch.no_grad():
        torch.testing.assert_close(back(raw).x_hat, d(raw).x_hat, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d(raw).x_hat * 0.25, d.reconstruct_normalised(raw * 2.0), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["target"] == "out"


def test_crosscoder_site_scales_fold_and_directions_are_per_site(tmp_path):
    trainer = CrosscoderTrainer({"k": 4, "d_dict": 32})
    trainer.sites_for(["a", "b", "c"], None)
    d = trainer.build(8)
    assert tuple(d.decoder_directions.shape) == (32, 3, 8)
    d.set_role_scales({"sites": [1.0, 2.0, 0.5]})
    d.save(tmp_path / "run", {"trainer": "crosscoder", "options": trainer.options_dict(), "status": "complete"})
    back = featureforge.load(tmp_path / "run")
    x = torch.randn(16, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, d(x).x_hat, rtol=1e-5, atol=1e-5)
    assert back.config["options"]["sites"] == ["a", "b", "c"]
    with pytest.raises(BadInputError, match=r"\[n, 3, 8\]"):
        d(torch.randn(4, 2, 8))


def test_roles_default_and_refusals():
    t = TranscoderTrainer({})
    assert t.sites_for(["h.0.mlp.in", "h.0.mlp.out", "h.1"], None) == {"acts": "h.0.mlp.in", "target": "h.0.mlp.out"}
    assert TranscoderTrainer({}).sites_for(["a", "b", "c"], "b") == {"acts": "b", "target": "c"}
    with pytest.raises(OptionError, match="no site after"):
        TranscoderTrainer({}).sites_for(["only"], None)
    with pytest.raises(OptionError, match="not a site of the store"):
        TranscoderTrainer({"target": "nope"}).sites_for(["a", "b"], None)
    with pytest.raises(OptionError, match="same site"):
        TranscoderTrainer({"source": "a", "target": "a"})
    assert CrosscoderTrainer({}).sites_for(["a", "b", "c"], None) == {"sites": ("a", "b", "c")}
    assert CrosscoderTrainer({"sites": "c,a"}).sites_for(["a", "b", "c"], None) == {"sites": ("c", "a")}
    with pytest.raises(OptionError, match="at least two"):
        CrosscoderTrainer({}).sites_for(["a"], None)
    with pytest.raises(OptionError, match="sites=all is resolved"):
        CrosscoderTrainer({}).build(8)
    with pytest.raises(OptionError):
        CrosscoderTrainer({"activation": "jumprelu"})


def test_transcoder_refuses_a_batch_without_its_target():
    trainer = TranscoderTrainer({"k": 2, "d_dict": 16})
    d = trainer.build(8)
    with pytest.raises(BadInputError, match="'target' batch role"):
        trainer.loss(d, {"acts": torch.randn(4, 8)}, None)
    with pytest.raises(BadInputError, match="d_target"):
        trainer.loss(d, {"acts": torch.randn(4, 8), "target": torch.randn(4, 5)}, None)


def test_transcoder_predicts_a_target_of_another_width():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30 * 256, 12, generator=g)
    y = torch.relu(x @ torch.randn(12, 20, generator=g)) * 0.5
    trainer, d, out = _train_transcoder({"acts": x.numpy(), "target": y.numpy()}, {"k": 6, "d_dict": 64, "d_target": 20}, steps=30, lr=1e-2)
    assert tuple(d(x[:5]).x_hat.shape) == (5, 20) and float(out.metrics["fvu_train"]) < 0.8


def test_crosscoder_report_finds_which_site_each_latent_lives_on(tmp_path):
    """Decoder rows planted on one site or on both: the shares say so, and the report's per-site
    FVU matches a direct computation."""
    trainer = CrosscoderTrainer({"k": 2, "d_dict": 6, "sites": "in,out"})
    d = trainer.build(4)
    with torch.no_grad():
        w = torch.zeros(6, 2, 4)
        w[0, 0, 0] = w[1, 0, 1] = 1.0  # site "in" only
        w[2, 1, 2] = 1.0  # site "out" only
        w[3, 0, 3], w[3, 1, 3] = 1.0, 1.0  # both, equally
        d.W_dec.copy_(w.view(6, 8))  # latents 4, 5: no decoder (dead)
    shares = decoder_norm_shares(d.decoder_directions)
    torch.testing.assert_close(shares[3], torch.tensor([0.5, 0.5], dtype=torch.float64))
    x = torch.randn(100, 2, 4)
    stats = SiteFVU(2)
    stats.update(x[:60], d(x[:60]).x_hat)
    stats.update(x[60:], d(x[60:]).x_hat)
    fvu = stats.result(["in", "out"])
    x_hat = d(x).x_hat.detach()
    direct = [float((x[:, s] - x_hat[:, s]).pow(2).sum() / (x[:, s] - x[:, s].mean(0)).pow(2).sum()) for s in range(2)]
    assert fvu["fvu_per_site"]["in"] == pytest.approx(direct[0], rel=1e-6)
    assert fvu["fvu_per_site"]["out"] == pytest.approx(direct[1], rel=1e-6)
    result = CrosscoderEvaluator({}).report(d, fvu, ["in", "out"], tmp_path / "crosscoder.png")
    summary = result.metrics["decoder_norm_shares"]
    assert summary["per_site"]["in"]["latents_exclusive"] == 2 and summary["per_site"]["out"]["latents_exclusive"] == 1
    assert (summary["latents_shared"], summary["latents_without_decoder"]) == (1, 2)
    assert (tmp_path / "crosscoder.png").stat().st_size > 1000
    json.dumps(result.metrics)


def test_crosscoder_learns_a_feature_shared_by_both_sites():
    """Planted codes write into both sites (F_in, F_out): a crosscoder's latents spread their
    decoder norm over both sites, and its per-site FVU is well below 1 on each."""
    data = planted_roles(60 * 512, d=16, n_features=32, mean_active=2.0, seed=4)
    trainer = CrosscoderTrainer({"k": 3, "d_dict": 96, "sites": "in,out"})
    torch.manual_seed(0)
    d = trainer.build(16)
    batches = _batches(data, ("sites",), steps=60)
    with torch.no_grad():
        trainer.initialize(d, batches[0])
    out, _ = train_steps(trainer, d, batches, lr=1e-2)
    assert float(out.metrics["fvu_site_0"]) < 0.3 and float(out.metrics["fvu_site_1"]) < 0.3, out.metrics
    shares = decoder_norm_shares(d.decoder_directions)
    used = d.encode(torch.from_numpy(data["sites"][:4096])).gt(0).any(0)
    assert float(shares[used].min(1).values.median()) > 0.3  # live latents write into both sites


def test_the_loops_role_widths_and_scales_shape_the_dictionaries():
    """The loop (issue #23) sets role_widths / role_scales on the trainer before build, and passes
    the initialisation sample as one tensor: acts [n, d] or stacked sites [n, S, d]."""
    t = TranscoderTrainer({"k": 2, "d_dict": 16})
    t.role_widths, t.role_scales = {"acts": 8, "target": 5}, {"acts": 2.0, "target": 0.5}
    d = t.build(8)
    assert (d.d_in, d.d_out, float(d.input_scale), float(d.target_scale)) == (8, 5, 2.0, 0.5)
    c = CrosscoderTrainer({"k": 2, "d_dict": 16})
    c.role_widths, c.role_scales = {"sites": (3, 4)}, {"sites": (1.0, 2.0, 4.0)}
    d = c.build(4)
    assert d.n_sites == 3 and d.site_scales.tolist() == [1.0, 2.0, 4.0]
    sample = torch.randn(64, 3, 4) + 5.0
    c.initialize(d, sample)
    assert float(d.b_dec.detach().mean()) > 4.0  # b_dec from the stacked sample (geometric median)


def _transcoder_store(tmp_path):
    synthetic = featureforge.get_registry().get("source", "synthetic")
    if "transcoder" not in synthetic.Options.__dataclass_fields__:
        pytest.skip("the installed synthetic source writes one site (multi-site stores of issue #23 not installed)")
    return featureforge.cache("synthetic", {"d_in": 16, "n_features": 32, "mean_active": 2.0, "seed": 0, "transcoder": True},
                              store=str(tmp_path / "store.zarr"), rows=65536, rows_per_chunk=8192, progress=False)


def test_loop_trained_transcoder_recovers_the_synthetic_planted_map(tmp_path):
    """End to end on the synthetic source's planted transcoder store (sites in, out): train through
    the loop, and the default evaluators include transcoder-ground-truth's MMCS to F_out."""
    store = _transcoder_store(tmp_path)
    [run] = featureforge.train("transcoder", {"k": 3, "d_dict": 128}, store=store, out=str(tmp_path / "run"), rows=65536,
                               batch_size=512, threads=1, progress=False, lr=1e-2)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["options"]["source"], config["options"]["target"]) == ("in", "out")
    report = featureforge.evaluate(run, store, ["reconstruction", "transcoder-ground-truth"])
    truth = report["evaluators"]["transcoder-ground-truth"]["metrics"]
    assert truth["applies"] and truth["mmcs_target"] > 0.9, truth
    assert report["evaluators"]["reconstruction"]["metrics"]["fvu"] < 0.3


def test_loop_trained_crosscoder_reports_per_site_fvu_and_shares(tmp_path):
    store = _transcoder_store(tmp_path)
    [run] = featureforge.train("crosscoder", {"k": 3, "d_dict": 96}, store=store, out=str(tmp_path / "run"), rows=32768,
                               batch_size=512, threads=1, progress=False, lr=1e-2)
    report = featureforge.evaluate(run, store, ["crosscoder"])
    m = report["evaluators"]["crosscoder"]["metrics"]
    assert m["applies"] and m["sites"] == ["in", "out"] and set(m["fvu_per_site"]) == {"in", "out"}
    assert all(v < 0.5 for v in m["fvu_per_site"].values()), m["fvu_per_site"]
    assert (Path(run) / report["evaluators"]["crosscoder"]["artifacts"]["crosscoder"]).stat().st_size > 1000  # relative to the run


def test_a_transcoder_trains_streamed_from_a_two_site_source(tmp_path):
    """Streamed from the live source (no store): the roles come from the source's sites."""

    [run] = featureforge.train("transcoder", {"d_dict": 64, "k": 4, "source": "in", "target": "out"}, source="synthetic",
                     source_options={"d_in": 16, "n_features": 64, "mean_active": 3.0, "transcoder": True}, out=tmp_path / "tc", rows=8192, batch_size=256, holdout_rows=1024, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["sites"] == {"acts": "in", "target": "out"}
    metrics = featureforge.evaluate(run, evaluators=["reconstruction"])["evaluators"]["reconstruction"]["metrics"]
    assert metrics["fvu_of"] == "target" and 0 < metrics["fvu"] < 0.6
