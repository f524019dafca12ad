"""The run folder's weights.safetensors works on raw activations (issue #14): the store's
normalisation scale is folded into the file, so a user applying the architecture's plain formula
to raw rows (as SAELens users do with its files) gets the FVU that ``featureforge.load`` gets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import featureforge
from featureforge.dictionary import Dictionary

RAW_GAIN = 37.0  # rows far from unit scale, so an unfolded file would be badly wrong


@pytest.fixture(scope="module")
def raw_store(synthetic_store, tmp_path_factory):
    """The synthetic rows times 37, cached through the ``array`` source (scale ~ 1/37)."""
    folder = tmp_path_factory.mktemp("raw-store")
    rows = np.asarray(synthetic_store.read(0, 32768), dtype=np.float32) * RAW_GAIN
    np.save(folder / "acts.npy", rows)
    return featureforge.cache("array", {"path": str(folder / "acts.npy")}, store=str(folder / "raw.zarr"),
                              rows_per_chunk=8192, progress=False)


def plain_formula(arch: str, t: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """x_hat of raw rows from the file's tensors alone (SAELens-style forward, no featureforge)."""
    W_enc, b_enc, W_dec, b_dec = t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"]
    if arch == "topk":
        pre = F.relu((x - b_dec) @ W_enc.T + b_enc)
        top = pre.topk(k, dim=1)
        z = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
    elif arch == "batchtopk":
        pre = F.relu((x - b_dec) @ W_enc.T + b_enc)
        z = pre * (pre > t["threshold"])
    elif arch == "jumprelu":
        pre = x @ W_enc.T + b_enc
        z = pre * (pre > t["log_threshold"].exp())
    else:  # relu
        z = F.relu(x @ W_enc.T + b_enc)
    return z @ W_dec + b_dec


@torch.no_grad()
def clear_selection(arch: str, t: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """Rows whose top-k choice no rounding can flip (k-th and next pre-activation apart by > 1e-4
    relative); in a near tie the two forwards' different summation orders may pick different
    latents, which moves that row's x_hat by a whole decoder row. Other architectures: every row."""
    if arch != "topk":
        return torch.ones(x.shape[0], dtype=torch.bool)
    pre = F.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    top = pre.topk(k + 1, dim=1).values
    return (top[:, k - 1] - top[:, k]) > 1e-4 * top[:, k - 1].abs().clamp_min(1e-6)


@torch.no_grad()
def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_run_folder_weights_work_on_raw_rows(tmp_path, raw_store, arch):
    k = 4
    options = {"d_dict": 128, **({"k": k} if arch in ("topk", "batchtopk") else {})}
    [run] = featureforge.train(arch, options, store=raw_store, out=str(tmp_path / arch), rows=16384, batch_size=1024,
                               threads=1, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    scale = cfg["normalisation"]["scale"]
    assert scale < 0.2  # far from 1: a wrong unit shows
    assert cfg["weights_units"] == {"units": "raw", "input_scale_folded": pytest.approx(scale)}
    tensors = load_file(str(run / "weights.safetensors"))
    assert float(tensors["input_scale"]) == 1.0

    x = torch.as_tensor(raw_store.read(24576, 32768)).float()  # raw store rows
    with torch.no_grad():
        x_hat = featureforge.load(run)(x).x_hat
    plain = plain_formula(arch, tensors, x, k)
    ours = fvu(x, x_hat)
    assert ours < 0.99  # it learned something, so agreement below is not two copies of "predict the mean"
    assert fvu(x, plain) == pytest.approx(ours, rel=1e-4, abs=1e-6)
    rows = clear_selection(arch, tensors, x, k)
    assert rows.float().mean() > 0.99
    torch.testing.assert_close(plain[rows], x_hat[rows], rtol=1e-4, atol=1e-3)

    # the training state stays in training units (--resume continues from it bit for bit)
    ckpt = load_file(str(run / "checkpoint" / "tensors.safetensors"))
    assert float(ckpt["m0.model.input_scale"]) == pytest.approx(scale)


def test_evaluate_and_export_after_folding(tmp_path, raw_store):
    """A folded run evaluates like the dictionary in memory, and its SAELens export (which folds
    once more, by 1) records the store's scale and reproduces the same outputs."""
    [run] = featureforge.train("topk", {"d_dict": 128, "k": 4}, store=raw_store, out=str(tmp_path / "r"), rows=16384,
                               batch_size=1024, threads=1, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    loaded = featureforge.load(run)
    x = torch.as_tensor(raw_store.read(24576, 32768)).float()
    out = featureforge.export(run, "saelens", str(tmp_path / "sl"))
    sl_cfg = json.loads((out / "cfg.json").read_text())
    assert sl_cfg["metadata"]["featureforge"]["input_scale_folded"] == pytest.approx(cfg["normalisation"]["scale"])
    sl = load_file(str(out / "sae_weights.safetensors"))
    t = {"encoder.weight": sl["W_enc"].T, "encoder.bias": sl["b_enc"], "W_dec": sl["W_dec"], "b_dec": sl["b_dec"]}
    rows = clear_selection("topk", t, x, 4)
    assert rows.float().mean() > 0.99
    torch.testing.assert_close(plain_formula("topk", t, x, 4)[rows], loaded(x).x_hat[rows], rtol=1e-4, atol=1e-4)
    report = featureforge.evaluate(run, store=raw_store.url, evaluators=["reconstruction"])
    with torch.no_grad():
        expected = fvu(x, loaded(x).x_hat)
    assert report["evaluators"]["reconstruction"]["metrics"]["fvu"] == pytest.approx(expected, rel=0.1)  # its rows: held-out chunks


class _Unfoldable(Dictionary):
    """A dictionary that declares no fold (the base class's default)."""

    def __init__(self):
        super().__init__(4, 2)
        self.w = torch.nn.Parameter(torch.ones(2, 4))


def test_a_dictionary_that_cannot_fold_keeps_its_scale_and_says_so(tmp_path):
    d = _Unfoldable()
    d.input_scale.fill_(3.0)
    d.save(tmp_path, {"trainer": "none", "d_in": 4, "d_dict": 2})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["weights_units"]["units"] == "training" and cfg["weights_units"]["input_scale"] == 3.0
    assert "_Unfoldable cannot fold" in cfg["weights_units"]["why"]
    assert float(load_file(str(tmp_path / "weights.safetensors"))["input_scale"]) == 3.0


def test_resume_rewrites_the_same_folded_file_from_the_training_units_checkpoint(tmp_path, raw_store):
    """--resume restores from the checkpoint (training units) and folds again: the same bytes."""
    kwargs = dict(store=raw_store, out=str(tmp_path / "r"), rows=16384, batch_size=1024, threads=1, progress=False)
    [run] = featureforge.train("topk", {"d_dict": 128, "k": 4}, **kwargs)
    whole = (run / "weights.safetensors").read_bytes()
    (run / "weights.safetensors").write_bytes(whole[: len(whole) // 2])
    [again] = featureforge.train("topk", {"d_dict": 128, "k": 4}, resume=True, **kwargs)
    assert (again / "weights.safetensors").read_bytes() == whole
    assert json.loads((again / "config.json").read_text())["weights_units"]["units"] == "raw"
