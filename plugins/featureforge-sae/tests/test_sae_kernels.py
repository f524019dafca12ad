"""Sparse kernels agree with the eager dense references: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

import featureforge_sae._kernels as kernels

from featureforge_sae._kernels import (
    batch_topk_encode,
    dense_reconstruction_loss,
    sparse_reconstruction_loss,
    dense_batch_topk_encode,
    dense_decode,
    dense_encode,
    select_batch_topk,
    select_topk,
    sparse_decode,
    sparse_t_matmul,
    topk_encode,
)


def _params(d_in, d_dict, dtype=torch.float32):
    g = torch.Generator().manual_seed(d_in * 1000 + d_dict)
    W_enc = torch.randn(d_dict, d_in, generator=g) / d_in**0.5
    b_enc = torch.randn(d_dict, generator=g) * 0.1
    b_dec = torch.randn(d_in, generator=g) * 0.1
    W_dec = torch.randn(d_dict, d_in, generator=g) / d_in**0.5
    x = torch.randn(203, d_in, generator=g)
    return x, [p.to(dtype).requires_grad_() for p in (W_enc, b_enc, b_dec, W_dec)]


def _run(encode, decode, x, params, k, dead=None, k_aux=0):
    W_enc, b_enc, b_dec, W_dec = params
    for p in params:
        p.grad = None
    values, indices, aux_values, aux_indices = encode(x, W_enc, b_enc, b_dec, k, dead, k_aux)
    x_hat = decode(values, indices, W_dec) + b_dec
    loss = (x_hat - x).pow(2).sum()
    if aux_indices.shape[1]:
        e_hat = decode(aux_values, aux_indices, W_dec)
        loss = loss + 0.5 * (e_hat - 0.3 * x).pow(2).sum()
    loss.backward()
    return x_hat.detach(), [p.grad.clone() for p in params], (values > 0).sum(1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _norm_rel(a, b):
    return float((a.detach() - b.detach()).norm() / b.detach().norm().clamp_min(1e-12))


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("d_in, d_dict, k", [(32, 128, 8), (37, 301, 7), (17, 64, 1), (64, 512, 32), (8, 33000, 4)])
@pytest.mark.parametrize("with_aux", [False, True])
def test_topk_kernels_match_dense_reference(d_in, d_dict, k, with_aux):
    x, params = _params(d_in, d_dict)
    dead = torch.arange(0, d_dict, 3) if with_aux else None
    k_aux = min(d_in // 2, len(dead)) if with_aux else 0
    ref = _run(dense_encode, dense_decode, x, params, k, dead, k_aux)
    got = _run(topk_encode, sparse_decode, x, params, k, dead, k_aux)
    assert torch.equal(got[2], ref[2])
    assert _rel(got[0], ref[0]) < 1e-5
    for name, a, b in zip(("W_enc", "b_enc", "b_dec", "W_dec"), got[1], ref[1]):
        assert _rel(a, b) < 1e-5, name


@pytest.mark.parametrize("d_in, d_dict, k", [(32, 128, 4), (37, 301, 7), (16, 48, 40)])
def test_batch_topk_kernels_match_dense_reference(d_in, d_dict, k):
    x, params = _params(d_in, d_dict)
    ref = _run(dense_batch_topk_encode, dense_decode, x, params, k)
    got = _run(batch_topk_encode, sparse_decode, x, params, k)
    assert int(got[2].sum()) == int(ref[2].sum()) == min(len(x) * k, int(ref[2].sum()))
    assert torch.equal(got[2], ref[2])
    assert _rel(got[0], ref[0]) < 1e-5
    for name, a, b in zip(("W_enc", "b_enc", "b_dec", "W_dec"), got[1], ref[1]):
        assert _rel(a, b) < 1e-5, name


def test_batch_topk_selection_widens_its_candidates_when_one_row_holds_many():
    pre = torch.rand(64, 200) * 0.1
    pre[5] += 10.0  # row 5 holds every one of the batch's top 64*2 entries
    values, indices = select_batch_topk(pre, k=2, candidates=2)
    assert (values[5] > 0).sum() == 128
    assert (values > 0).sum() == 128


@pytest.mark.parametrize("bf16_units", [True, False], ids=["bf16-hardware", "no-bf16-hardware"])
@pytest.mark.parametrize("d_in, d_dict, k", [(64, 512, 16), (37, 301, 7)])
def test_topk_kernels_under_bf16_autocast_are_as_close_to_fp32_as_eager_bf16(monkeypatch, d_in, d_dict, k, bf16_units):
    # Without bf16 units the fused kernel keeps its matmul in fp32; force both paths here.
    monkeypatch.setattr(kernels, "_cpu_has_fast_bf16", lambda: bf16_units)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.compute_dtype(torch.device("cpu"), torch.float32) == (torch.bfloat16 if bf16_units else torch.float32)
    x, params = _params(d_in, d_dict)
    fp32 = _run(dense_encode, dense_decode, x, params, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = _run(dense_encode, dense_decode, x, params, k)
        got = _run(topk_encode, sparse_decode, x, params, k)
    # bf16 pre-activations (8 mantissa bits) tie often, so latents at the k-th place may swap:
    # the fused kernels must stay within the eager bf16 path's own distance from fp32.
    assert got[0].dtype == torch.float32
    assert _norm_rel(got[0], fp32[0]) <= 1.25 * _norm_rel(eager[0].float(), fp32[0]) + 1e-3
    assert (got[2] == fp32[2]).float().mean() > 0.95
    for a, b, c in zip(got[1], fp32[1], eager[1]):
        assert a.dtype == torch.float32
        assert _cos(a, b) > min(0.99, _cos(c, b) - 0.005)


def test_sparse_t_matmul_is_the_transpose_product():
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 50, (40, 6), generator=g)
    w = torch.randn(40, 6, generator=g)
    w[0, :3] = 0
    dense = torch.randn(40, 9, generator=g)
    S = torch.zeros(40, 50).scatter_add_(1, idx, w)
    assert torch.allclose(sparse_t_matmul(idx, w, dense, 50), S.T @ dense, atol=1e-5)


def test_encoder_passes_gradient_to_inputs_when_asked():
    x, params = _params(16, 40)
    x.requires_grad_()
    values, indices, _, _ = topk_encode(x, *params[:3], 4)
    values.sum().backward()
    g_sparse = x.grad.clone()
    x.grad = None
    values, indices, _, _ = dense_encode(x, *params[:3], 4)
    values.sum().backward()
    assert _rel(g_sparse, x.grad) < 1e-5


@pytest.mark.parametrize("n, m, k", [(300, 4096, 32), (64, 1024, 8), (50, 1000, 3), (20, 96, 40), (7, 512, 1), (1001, 512, 16)])
def test_grouped_selection_is_exact_even_with_ties(n, m, k):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # >= 512 rows: row blocks on two threads
    try:
        _check_selection(n, m, k)
    finally:
        torch.set_num_threads(threads)


def _check_selection(n, m, k):
    g = torch.Generator().manual_seed(n + m + k)
    pre = torch.randint(-20, 20, (n, m), generator=g).float()  # many exact ties
    values, indices = select_topk(pre, k)
    expected = torch.topk(pre, k, dim=1).values.relu()
    assert torch.equal(values.sort(1, descending=True).values, expected)
    assert torch.equal(pre.gather(1, indices).relu(), values)
    assert all(len(set(row.tolist())) == k for row in indices)  # no latent chosen twice


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_reconstruction_loss_matches_dense_reference(with_bias):
    g = torch.Generator().manual_seed(11)
    n, d, m, k = 150, 29, 211, 9
    values = torch.rand(n, k, generator=g).requires_grad_()
    indices = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)])
    W_dec = torch.randn(m, d, generator=g).requires_grad_()
    bias = torch.randn(d, generator=g).requires_grad_() if with_bias else None
    target = torch.randn(n, d, generator=g)
    denom = torch.tensor(123.0)
    results = []
    for fn in (sparse_reconstruction_loss, dense_reconstruction_loss):
        params = [p for p in (values, W_dec, bias) if p is not None]
        for p in params:
            p.grad = None
        loss, x_hat = fn(values, indices, W_dec, bias, target, denom)
        (3.0 * loss).backward()
        results.append((loss.detach(), x_hat.detach(), [p.grad.clone() for p in params]))
    (l1, x1, g1), (l2, x2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5)
    assert torch.allclose(x1, x2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert _rel(a, b) < 1e-5


def test_encoding_under_inference_mode_does_not_break_later_training():
    """The reusable pre-activation buffer must not leak an inference tensor into training."""
    import featureforge as ff
    from featureforge.testing import fresh_state

    trainer = ff.get_registry().get("trainer", "topk")({"d_dict": 64, "k": 4})
    dictionary = trainer.build(16)
    with torch.inference_mode():
        dictionary.encode(torch.randn(32, 16))
    out = trainer.loss(dictionary, {"acts": torch.randn(32, 16)}, fresh_state(64))
    out.loss.backward()
    assert dictionary.W_dec.grad is not None
