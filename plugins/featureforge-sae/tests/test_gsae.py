"""The ``gsae`` trainer (gradient-aware TopK; Olmo et al. 2024) and the loop's gradient column."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import featureforge
from featureforge.builtin.synthetic import SyntheticSource
from featureforge.errors import BadInputError
from featureforge.training import check_gradient_store

from featureforge.testing import fresh_state

DOWNSTREAM = {"d_in": 16, "n_features": 64, "mean_active": 4.0, "downstream": True, "important_features": 8, "seed": 3}


@pytest.fixture(scope="module")
def grad_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsae") / "down.zarr"
    return featureforge.cache("synthetic", DOWNSTREAM, store=str(path), rows=40960, rows_per_chunk=4096, progress=False)


def _trainer(**opts):
    from featureforge_sae.gsae import GSAETrainer

    return GSAETrainer({"k": 3, "d_dict": 64, **opts})


# -- the synthetic downstream source -----------------------------------------------------------
def test_synthetic_default_has_no_grads_and_downstream_rows_are_deterministic():
    plain = SyntheticSource(d_in=16, n_features=64)
    assert plain.columns == {} and set(plain.rows(0, 10)) == {"acts"}
    assert "important" not in plain.ground_truth()
    src = SyntheticSource(**DOWNSTREAM)
    a, b = src.rows(5000, 5100), SyntheticSource(**DOWNSTREAM).rows(4090, 5200)
    assert np.array_equal(a["grads"], b["grads"][910:1010]) and np.array_equal(a["acts"], b["acts"][910:1010])
    truth = src.ground_truth()
    f, w = truth["features"], truth["importance"]
    np.testing.assert_allclose(a["grads"], ((a["acts"] @ f.T) * w) @ f, rtol=1e-4, atol=1e-4)
    assert truth["important"].sum() == 8 and np.flatnonzero(truth["important"]).max() < 32


def test_gated_readout_gradient_reads_only_the_features_a_row_contains():
    src = SyntheticSource(**DOWNSTREAM, readout="gated")
    rows, codes = src.rows(0, 2000), src.codes(0, 2000)
    truth = src.ground_truth()
    f, w = truth["features"], truth["importance"]
    np.testing.assert_allclose(rows["grads"], ((rows["acts"] @ f.T) * w * (codes > 0)) @ f, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(rows["acts"], SyntheticSource(**DOWNSTREAM).rows(0, 2000)["acts"])
    # A row with exactly one important feature: its gradient points (almost) along that feature.
    imp = truth["important"]
    one = np.flatnonzero(((codes[:, imp] > 0).sum(1) == 1))
    assert len(one) > 20
    j = np.flatnonzero(imp)[(codes[one][:, imp] > 0).argmax(1)]
    g = rows["grads"][one]
    cos = (g * f[j]).sum(1) / np.linalg.norm(g, axis=1)
    assert np.median(cos) > 0.95


# -- bad input --------------------------------------------------------------------------------
def test_store_without_grads_is_refused_in_one_line(synthetic_store, tmp_path):
    with pytest.raises(BadInputError) as err:
        featureforge.train("gsae", {"k": 4, "d_dict": 64}, store=synthetic_store, out=str(tmp_path / "r"), rows=4096,
                           batch_size=1024, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "grads column" in msg and "downstream=true" in msg


def test_gradients_from_another_hook_or_wrong_shape_are_refused():
    good = types.SimpleNamespace(url="s", columns={"acts": "float32", "grads": "float32"},
                                 group={"acts": np.zeros((8, 4)), "grads": np.zeros((8, 4))},
                                 provenance={"model": "m", "hook": "transformer.h.2", "grads": "dCE/dacts"})
    check_gradient_store(good)
    other_hook = types.SimpleNamespace(**{**vars(good), "provenance": {**good.provenance, "grads_hook": "transformer.h.3"}})
    with pytest.raises(BadInputError, match="same site"):
        check_gradient_store(other_hook)
    other_model = types.SimpleNamespace(**{**vars(good), "provenance": {**good.provenance, "grads_model": "other"}})
    with pytest.raises(BadInputError, match="model"):
        check_gradient_store(other_model)
    shape = types.SimpleNamespace(**{**vars(good), "group": {"acts": np.zeros((8, 4)), "grads": np.zeros((8, 5))}})
    with pytest.raises(BadInputError, match="do not match"):
        check_gradient_store(shape)
    none = types.SimpleNamespace(**{**vars(good), "provenance": {**good.provenance, "grads": None}})
    with pytest.raises(BadInputError, match="grads column"):
        check_gradient_store(none)
    t = _trainer()
    d = t.build(16)
    with pytest.raises(BadInputError, match="do not match"):
        t.loss(d, {"acts": torch.randn(8, 16), "grads": torch.randn(8, 15)}, fresh_state(64))
    with pytest.raises(BadInputError, match="grads=true"):
        t.loss(d, {"acts": torch.randn(8, 16)}, fresh_state(64))


# -- the selection ----------------------------------------------------------------------------
def test_beta_zero_selects_like_topk_and_gradient_promotes_a_quiet_latent():
    from featureforge_sae._kernels import dense_encode
    from featureforge_sae._kernels import gsae_encode

    t = _trainer()
    d = t.build(16)
    x, g = torch.randn(32, 16), torch.randn(32, 16)
    vals, idx, *_ = gsae_encode(d, x, g, 3, 0.0)
    ref_vals, ref_idx, *_ = dense_encode(x, d.encoder.weight, d.encoder.bias, d.b_dec, 3)
    assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)
    torch.testing.assert_close(vals.gather(1, idx.sort(1).indices), ref_vals.gather(1, ref_idx.sort(1).indices))
    # A hand-made dictionary: latent j reads/writes basis direction j. x is loud on 0..2, quiet on 3;
    # the gradient points along 3: plain TopK keeps 0..2, gsae keeps 3 with its z value (not the score).
    with torch.no_grad():
        d.encoder.weight.zero_()
        d.W_dec.zero_()
        for j in range(16):
            d.encoder.weight[j, j] = 1.0
            d.W_dec[j, j] = 1.0
        d.encoder.bias.zero_()
        d.b_dec.zero_()
    x = torch.zeros(1, 16)
    x[0, :4] = torch.tensor([1.0, 0.9, 0.8, 0.2])
    g = torch.zeros(1, 16)
    g[0, 3] = 5.0
    vals, idx, _, _, swapped = gsae_encode(d, x, g, 3, 4.0)
    assert set(idx[0].tolist()) == {0, 1, 3} and float(swapped) == pytest.approx(1 / 3)
    assert float(vals.detach()[0, idx[0].tolist().index(3)]) == pytest.approx(0.2)
    plain = d.encode(x)  # inference: no gradients, plain TopK
    assert set(plain[0].nonzero().flatten().tolist()) == {0, 1, 2}


# -- through the loop ----------------------------------------------------------------------------
def test_loop_passes_grads_in_training_units(grad_store, tmp_path, monkeypatch):
    from featureforge_sae.gsae import GSAETrainer

    seen = []
    original = GSAETrainer.loss

    def spy(self, dictionary, batch, state):
        seen.append((batch["acts"].clone(), batch["grads"].clone()))
        return original(self, dictionary, batch, state)

    monkeypatch.setattr(GSAETrainer, "loss", spy)
    featureforge.train("gsae", {"k": 3, "d_dict": 64}, store=grad_store, out=str(tmp_path / "r"), rows=2048, batch_size=1024,
                       progress=False, threads=1)
    s = float(grad_store.normalisation()["scale"])
    assert s != pytest.approx(1.0)
    truth = grad_store.ground_truth()
    M = torch.from_numpy((truth["features"].T * truth["importance"]) @ truth["features"])
    for x_t, g_t in seen:  # x_t = s*x and g = M x, so dL/dx_t = g/s = M x_t / s^2
        torch.testing.assert_close(g_t, x_t @ M.T / s**2, rtol=1e-3, atol=1e-4)


def test_train_resume_evaluate_and_export(grad_store, tmp_path):
    out = tmp_path / "run"
    kw = dict(store=grad_store, batch_size=1024, progress=False, threads=1, checkpoint_every=8192)
    featureforge.train("gsae", {"k": 3, "d_dict": 64}, out=str(out), rows=16384, **kw)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "gsae_swapped" in lines[-1] and lines[-1]["fvu"] < 1.0
    full = featureforge.load(out).state_dict()
    # Same seed and data: bit-identical weights; --resume of a complete run keeps them.
    half = tmp_path / "half"
    featureforge.train("gsae", {"k": 3, "d_dict": 64}, out=str(half), rows=16384, **kw)
    ckpt_cfg = json.loads((half / "config.json").read_text())
    assert ckpt_cfg["status"] == "complete"
    resumed = featureforge.train("gsae", {"k": 3, "d_dict": 64}, out=str(half), rows=16384, resume=True, **kw)
    for key, value in featureforge.load(resumed[0]).state_dict().items():
        torch.testing.assert_close(value, full[key])
    metrics = featureforge.evaluate(out, grad_store, ["reconstruction"])
    rec = metrics["evaluators"]["reconstruction"]["metrics"]
    # Both modes: plain TopK (inference without gradients) and the training-time gradient selection.
    assert 0 < rec["fvu"] < 1 and 0 < rec["fvu_grads"] < 1 and rec["fvu_grads"] != rec["fvu"]
    d = featureforge.load(out)
    x = torch.from_numpy(grad_store.read(0, 256))
    g = torch.from_numpy(grad_store.read(0, 256, "grads"))
    with torch.no_grad():
        d.beta = 0.0  # beta = 0 selects by z alone: the same reconstruction as plain encode
        torch.testing.assert_close(d.reconstruct_with_grads(x, g), d(x).x_hat, rtol=1e-4, atol=1e-5)
    exp = featureforge.export(out, "saelens", tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    block = cfg["metadata"]["featureforge"]
    assert cfg["architecture"] == "topk" and block["trainer"] == "gsae" and block["selection_used_gradients"] is True
    assert block["options"]["beta"] == 4.0 and exp is not None
    featureforge.export(out, "sparsify", tmp_path / "sp")
    assert json.loads((tmp_path / "sp" / "cfg.json").read_text())["featureforge"]["selection_used_gradients"] is True


GSAE_DDP_SCRIPT = r"""
import featureforge as ff
ff.train("gsae", {{"k": 3, "d_dict": 64}}, store={store!r}, out={out!r}, batch_size=512, rows=16384, progress=False, threads=1)
"""


@pytest.mark.slow
def test_ddp_two_processes_pass_each_rank_its_own_gradients(grad_store, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) trains gsae like one process replaying both data shards."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "ddp_gsae.py"
    script.write_text(GSAE_DDP_SCRIPT.format(store=grad_store.url, out=str(tmp_path / "ddp")))
    env = {**os.environ, "FEATUREFORGE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29527", str(script)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    featureforge.train("gsae", {"k": 3, "d_dict": 64}, store=grad_store, out=str(tmp_path / "single"), batch_size=512, rows=16384,
                       progress=False, threads=1, data_shards=2)
    a, b = load_file(str(tmp_path / "ddp" / "weights.safetensors")), load_file(str(tmp_path / "single" / "weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gsae_recovers_quiet_important_features_better_than_topk_at_equal_k(tmp_path):
    """The issue's synthetic claim, at the benchmark's defaults (docs/methods/gsae.md): gated readout,
    important features at half size, k=8. Seeds 0-2 measured +0.22..+0.28 recovered, FVU within 0.01."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "gsae_vs_topk.py"
    spec = importlib.util.spec_from_file_location("gsae_vs_topk", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(betas=(4.0,), workdir=str(tmp_path))["runs"]
    topk, gsae = res["topk"], res["gsae beta=4.0 grad_norm=row"]
    assert gsae["recovered_important"] >= topk["recovered_important"] + 0.1
    assert gsae["mmcs_important"] > topk["mmcs_important"]
    assert abs(gsae["fvu"] - topk["fvu"]) < 0.02 and gsae["mmcs_other"] > topk["mmcs_other"] - 0.02
