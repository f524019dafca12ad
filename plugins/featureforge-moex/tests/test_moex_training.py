"""The moex and switch trainers through the featureforge CLI and API on a real synthetic store:
FVU falls, runs load back and evaluate like topk runs, resume continues, export refuses."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import featureforge
from featureforge.cli import cli
from featureforge_moex.dictionaries import MoEXDictionary, SwitchDictionary
from featureforge_moex.trainers import MoEXTrainer, SwitchTrainer


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("trainer", ["moex", "switch"])
def test_cli_train_then_evaluate_reduces_fvu(trainer, moex_synthetic_store, tmp_path):
    run = tmp_path / trainer
    _run("train", "--trainer", trainer, "-o", "d_dict=128", "-o", "k=6", "--store", moex_synthetic_store.url, "--out", run,
         "--batch-size", 256, "--lr", "1e-2", "--threads", 1, "-t", "warmup_steps=5", "-t", "log_every=5", "-t", "holdout_rows=2048")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fvus = [x["fvu_train"] for x in lines if "fvu_train" in x]
    assert fvus[-1] < 0.7 * fvus[0], fvus
    report = json.loads(_run("evaluate", run, "--store", moex_synthetic_store.url, "--json").stdout)
    metrics = report["evaluators"]["reconstruction"]["metrics"]
    assert metrics["fvu"] < 0.7 * fvus[0]
    assert metrics["l0"] == pytest.approx(6, abs=0.01)
    assert metrics["d_dict"] == 128
    loaded = featureforge.load(run)
    assert loaded.config["trainer"] == trainer
    x = torch.randn(10, 32)
    codes = loaded.encode(x)
    assert ((codes != 0).sum(1) <= 6).all()
    assert torch.allclose(loaded.decode(codes), loaded(x).x_hat)


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_reaches_the_same_weights(moex_synthetic_store, tmp_path, monkeypatch):
    common = dict(store=moex_synthetic_store, progress=False, batch_size=512, lr=3e-3, warmup_steps=2, holdout_rows=2048,
                  threads=1, rows=8192, checkpoint_every=2048)
    opts = {"d_dict": 128, "k": 4}
    [ref] = featureforge.train("moex", opts, out=tmp_path / "ref", **common)
    original = MoEXTrainer.after_step

    def crash_at_step_10(self, dictionary, state):
        original(self, dictionary, state)
        if state.step == 10:
            raise Crash("killed")

    monkeypatch.setattr(MoEXTrainer, "after_step", crash_at_step_10)
    with pytest.raises(Crash):
        featureforge.train("moex", opts, out=tmp_path / "crashed", **common)
    monkeypatch.setattr(MoEXTrainer, "after_step", original)
    [resumed] = featureforge.train("moex", opts, out=tmp_path / "crashed", resume=True, **common)
    a, b = featureforge.load(ref).state_dict(), featureforge.load(resumed).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_export_is_refused_in_one_line(moex_synthetic_store, tmp_path):
    [run] = featureforge.train("switch", {"d_dict": 64, "k": 2}, store=moex_synthetic_store, out=tmp_path / "s", rows=2048,
                               progress=False, batch_size=512, holdout_rows=2048, threads=1)
    with pytest.raises(featureforge.OptionError, match="cannot export to 'saelens'") as info:
        featureforge.export(run, "saelens", tmp_path / "out")
    assert "\n" not in str(info.value)


def test_only_routed_encoders_run():
    """The encoder matmuls touch top_k/M of the experts' rows (the FLOPs the benchmark reports)."""
    d = MoEXDictionary(16, n_experts=8, expert_width=32, k=8, top_k=2)
    calls = []
    original = torch.Tensor.__matmul__

    def counting(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return original(a, b)

    torch.Tensor.__matmul__ = counting
    try:
        d.sparse_encode(torch.randn(100, 16))
    finally:
        torch.Tensor.__matmul__ = original
    expert_rows = sum(a[0] for a, b in calls if b == (16, 32))
    assert expert_rows == 200  # 100 rows x 2 routed experts, never 100 x 8


def test_trainer_step_gives_gradients_to_router_and_routed_experts_only():
    trainer = SwitchTrainer(d_dict=64, k=4, n_experts=8, lb_coef=0.0)
    d = trainer.build(16)
    x = torch.randn(6, 16)
    out = trainer.loss(d, {"acts": x}, None)
    out.loss.backward()
    used = set(d.route(x - d.b_dec).indices.flatten().tolist())
    assert d.W_router.grad.abs().sum() > 0
    for j in range(8):
        assert (float(d.W_enc.grad[j].abs().sum()) > 0) == (j in used)


@pytest.mark.parametrize("cls, extra", [(MoEXDictionary, {"top_k": 2}), (SwitchDictionary, {})])
def test_routed_codes_equal_all_experts_then_mask_then_topk(cls, extra):
    d = cls(12, n_experts=4, expert_width=6, k=5, **extra)
    with torch.no_grad():
        d.b_enc.normal_()
        d.b_dec.normal_()
    x = torch.randn(40, 12)
    route = d.route(x - d.b_dec)
    hidden = torch.relu(torch.einsum("nd,mhd->nmh", x - d.b_dec, d.W_enc) + d.b_enc)  # every expert
    gates = torch.zeros(40, 4).scatter(1, route.indices, route.weights)
    wide = (hidden * gates.unsqueeze(-1)).reshape(40, 24)
    values, idx = wide.topk(5, dim=1)
    want = torch.zeros(40, 24).scatter(1, idx, values)
    assert torch.allclose(d.encode_normalised(x), want, atol=1e-6)
    assert torch.allclose(d.decode_normalised(want), want @ d.W_dec + d.b_dec)


def test_switch_router_is_a_softmax_on_x_minus_b_router_and_gates_with_the_top_probability():
    d = SwitchDictionary(8, n_experts=4, expert_width=4, k=2)
    with torch.no_grad():
        d.b_router.normal_()
        d.b_dec.normal_()
    x = torch.randn(10, 8)
    route = d.route(x - d.b_dec)
    probs = torch.softmax((x - d.b_router) @ d.W_router.T, -1)
    assert torch.allclose(route.probs, probs, atol=1e-6)
    assert torch.equal(route.indices[:, 0], probs.argmax(1))
    assert torch.allclose(route.weights[:, 0], probs.max(1).values)
