"""Training behaviour: decoder geometry, AuxK, BatchTopK threshold, L1 warm-up, quality, persistence."""

from __future__ import annotations

import time

import pytest
import torch

import featureforge
from featureforge.dictionary import load as load_run
from featureforge_sae import BatchTopKTrainer, ReLUTrainer, TopKTrainer
from featureforge.evaluation.metrics import mmcs
from featureforge.testing import fresh_state, train_steps


def _rows(n=512, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 0.5


@pytest.mark.parametrize("cls", [TopKTrainer, BatchTopKTrainer])
def test_decoder_rows_stay_unit_norm(cls):
    trainer = cls(d_dict=96, k=6, decoder="unit")
    d = trainer.build(24)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)
    train_steps(trainer, d, [_rows(seed=s) for s in range(5)], lr=1e-2)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)


def test_free_decoder_rows_start_small_and_keep_the_norm_adam_gives_them():
    trainer = TopKTrainer(d_dict=96, k=6)  # topk's default: decoder="free", init_decoder_norm=0.1
    d = trainer.build(24)
    trainer.initialize(d, _rows())
    w = d.encoder.weight
    assert torch.allclose(d.W_dec, 0.1 * w / w.norm(dim=1, keepdim=True), atol=1e-6)
    state = fresh_state(96)
    trainer.loss(d, {"acts": _rows()}, state).loss.backward()
    grads = [p.grad.clone() for p in d.parameters()]
    trainer.before_step(d, state)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for before, p in zip(grads, d.parameters()):  # nothing projected out; only the global scale changes
        assert torch.allclose(p.grad, before / norm, rtol=1e-5, atol=1e-9)
    train_steps(trainer, d, [_rows(seed=s) for s in range(5)], lr=1e-2)
    norms = d.W_dec.norm(dim=1)
    assert (norms - 0.1).abs().max() > 1e-3 and (norms - 1).abs().min() > 1e-2  # neither held at 0.1 nor renormalised


def test_unit_gradient_scales_every_parameter_together_and_can_be_turned_off():
    for unit in (True, False):
        trainer = TopKTrainer(d_dict=96, k=6, unit_gradient=unit)
        d = trainer.build(24)
        state = fresh_state(96)
        (trainer.loss(d, {"acts": _rows()}, state).loss * 7.0).backward()
        before = [p.grad.clone() for p in d.parameters()]
        trainer.before_step(d, state)
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in d.parameters()]))
        if unit:
            assert abs(float(total) - 1.0) < 1e-5
        else:
            assert all(torch.equal(p.grad, b) for p, b in zip(d.parameters(), before))


def test_gradient_parallel_to_decoder_rows_is_removed():
    trainer = TopKTrainer(d_dict=96, k=6, decoder="unit")
    d = trainer.build(24)
    state = fresh_state(96)
    out = trainer.loss(d, {"acts": _rows()}, state)
    out.loss.backward()
    before = (d.W_dec.grad * d.W_dec).sum(1).abs().max()
    trainer.before_step(d, state)
    after = (d.W_dec.grad * d.W_dec).sum(1).abs().max()
    assert before > 1e-4
    assert after < 1e-6 * max(1.0, float(d.W_dec.grad.abs().max()))


def test_encoder_starts_as_decoder_transpose_and_b_dec_at_geometric_median():
    x = _rows(2000)
    x[:50] += 100.0  # outliers pull the mean, not the median
    for how, expect in [("geometric_median", None), ("mean", x.mean(0)), ("zeros", torch.zeros(24))]:
        trainer = TopKTrainer(d_dict=48, k=4, b_dec_init=how)
        d = trainer.build(24)
        w = d.encoder.weight
        assert torch.allclose(d.W_dec, w / w.norm(dim=1, keepdim=True), atol=1e-6)
        trainer.initialize(d, x)
        if expect is not None:
            assert torch.allclose(d.b_dec, expect, atol=1e-5)
        else:  # much nearer the bulk of the rows than the outlier-dragged mean
            bulk = x[50:].mean(0)
            assert (d.b_dec - bulk).norm() < 0.2 * (x.mean(0) - bulk).norm()


def test_auxk_engages_only_with_dead_latents():
    trainer = TopKTrainer(d_dict=96, k=4, dead_after=1000)
    d = trainer.build(24)
    x = _rows()
    alive = trainer.loss(d, {"acts": x}, fresh_state(96, rows_since_fired=999))
    assert float(alive.metrics["auxk_loss"]) == 0.0
    assert torch.allclose(alive.loss, alive.metrics["fvu_train"])

    state = fresh_state(96)
    dead = torch.arange(0, 96, 2)
    state.rows_since_fired[dead] = 1000
    with_aux = trainer.loss(d, {"acts": x}, state)
    assert float(with_aux.metrics["auxk_loss"]) > 0
    with_aux.loss.backward()
    g_aux = d.W_dec.grad.clone()
    d.zero_grad()
    plain = TopKTrainer(d_dict=96, k=4, dead_after=1000, aux_coef=0.0).loss(d, {"acts": x}, state)
    plain.loss.backward()
    changed = ((g_aux - d.W_dec.grad).abs().sum(1) > 1e-7).nonzero().squeeze(1)
    assert len(changed) > 0
    assert set(changed.tolist()) <= set(dead.tolist())  # AuxK reaches dead latents only


def test_default_dead_after_is_1000_mean_firing_intervals_capped_at_10M():
    # d_dict / k rows between firings of an average latent; flagged after 1,000 of them
    assert TopKTrainer(d_dict=4096, k=32).dead_after(TopKTrainer(d_dict=4096, k=32).build(24), None) == 128_000
    assert TopKTrainer(d_dict=96, k=5).dead_after(TopKTrainer(d_dict=96, k=5).build(24), None) == 20_000  # ceil(96 / 5) = 20
    wide = TopKTrainer(d_dict=2**17, k=8)
    assert wide.dead_after(wide.build(24), None) == 10_000_000  # Gao et al.'s horizon is the ceiling


def test_dense_reference_path_gives_the_same_step():
    x = _rows()
    losses = []
    for impl in ("sparse", "dense"):
        torch.manual_seed(0)
        trainer = TopKTrainer(d_dict=64, k=5, decoder_impl=impl, dead_after=10)
        d = trainer.build(24)
        state = fresh_state(64)
        state.rows_since_fired[:20] = 10
        out, _ = train_steps(trainer, d, [x, x], state=state)
        losses.append((float(out.loss.detach()), d.W_dec.detach().clone()))
    assert abs(losses[0][0] - losses[1][0]) < 1e-5
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-5)


def test_batchtopk_threshold_makes_single_row_encoding_match_the_batch():
    torch.manual_seed(0)
    truth = torch.nn.functional.normalize(torch.randn(48, 24), dim=1)
    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        codes = (torch.rand(1024, 48, generator=g) < 4 / 48) * torch.rand(1024, 48, generator=g)
        return codes @ truth
    trainer = BatchTopKTrainer(d_dict=96, k=4, threshold_lr=0.05)
    d = trainer.build(24)
    trainer.initialize(d, batch(999))
    train_steps(trainer, d, [batch(s) for s in range(150)], lr=3e-3)
    assert float(d.threshold) > 0
    x = batch(1000)
    with torch.no_grad():
        state = fresh_state(96)
        in_batch = trainer.loss(d, {"acts": x}, state)
        batch_fvu = float(in_batch.metrics["fvu_train"])
        codes = torch.cat([d.encode_normalised(row[None]) for row in x[:256]])  # one row at a time
        x_hat = d.decode_normalised(codes)
        xs = x[:256]
        single_fvu = float((xs - x_hat).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum())
        single_l0 = float((codes > 0).sum(1).float().mean())
    assert 0.6 * 4 <= single_l0 <= 1.6 * 4
    assert abs(single_fvu - batch_fvu) < 0.05


def test_batchtopk_first_threshold_is_the_batch_minimum():
    trainer = BatchTopKTrainer(d_dict=64, k=3)
    d = trainer.build(24)
    x = _rows()
    state = fresh_state(64)
    out = trainer.loss(d, {"acts": x}, state)
    values = d.pre_activations(x).detach().flatten().topk(3 * len(x)).values
    trainer.after_step(d, state)
    assert float(d.threshold) == pytest.approx(float(values[values > 0].min()), rel=1e-5)
    assert float(out.l0) == pytest.approx(3.0)


def test_relu_l1_warms_up_and_weights_by_decoder_norm():
    trainer = ReLUTrainer(d_dict=64, l1_coef=4.0, l1_warmup_rows=1000)
    assert trainer.l1_weight(0) == 0.0
    assert trainer.l1_weight(500) == pytest.approx(2.0)
    assert trainer.l1_weight(5000) == pytest.approx(4.0)
    d = trainer.build(24)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.full((64,), 0.1), atol=1e-6)
    x = _rows()
    state = fresh_state(64)
    state.rows_seen = 1000
    out = trainer.loss(d, {"acts": x}, state)
    with torch.no_grad():
        z = torch.relu(x @ d.encoder.weight.T + d.encoder.bias)
        expect_l1 = (z * d.W_dec.norm(dim=1)).sum(1).mean()
    assert float(out.metrics["l1"]) == pytest.approx(float(expect_l1), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(out.metrics["mse"] + 4.0 * expect_l1), rel=1e-5)
    first = float(out.loss.detach())
    out, _ = train_steps(trainer, d, [x] * 30, lr=1e-2, state=state)
    assert float(out.loss.detach()) < first


@pytest.mark.parametrize("cls, options", [(TopKTrainer, {"d_dict": 64, "k": 5}), (BatchTopKTrainer, {"d_dict": 64, "k": 5}), (ReLUTrainer, {"d_dict": 64})])
def test_save_and_load_round_trip(tmp_path, cls, options):
    trainer = cls(options)
    d = trainer.build(24)
    d.input_scale.fill_(1.7)
    train_steps(trainer, d, [_rows(seed=s) for s in range(3)], lr=1e-2)
    d.save(tmp_path / "run", {"trainer": cls.name, "options": trainer.options_dict()})
    loaded = load_run(tmp_path / "run")
    assert type(loaded) is type(d)
    x = _rows(64, seed=9) * 3
    with torch.no_grad():
        # the file holds the weights with input_scale folded in (raw units): equal up to rounding
        torch.testing.assert_close(loaded.encode(x), d.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x).x_hat, d(x).x_hat, rtol=1e-5, atol=1e-4)
    if cls is BatchTopKTrainer:
        assert float(loaded.threshold) == float(d.threshold) > 0


def test_topk_recovers_synthetic_features(synthetic_store, tmp_path):
    """Quality: trained through the real featureforge loop, topk finds the true features."""
    truth = synthetic_store.ground_truth()["features"]
    start = time.perf_counter()
    runs = featureforge.train("topk", {"d_dict": 128, "k": 4}, store=synthetic_store, out=str(tmp_path / "run"),
                              rows=240_000, batch_size=1024, warmup_steps=10, progress=False)
    trained = load_run(runs[0])
    elapsed = time.perf_counter() - start
    torch.manual_seed(0)
    untrained = TopKTrainer(d_dict=128, k=4).build(32)
    score, baseline = mmcs(truth, trained.decoder_directions), mmcs(truth, untrained.decoder_directions)
    print(f"MMCS trained {score:.3f} untrained {baseline:.3f} in {elapsed:.1f}s")
    assert baseline < 0.6
    assert score >= 0.9
    with torch.no_grad():
        x = torch.as_tensor(synthetic_store.read(0, 4096))
        fvu = float((trained(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.35
