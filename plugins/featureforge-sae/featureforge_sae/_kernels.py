"""Sparse kernels of the TopK family, each beside the eager dense code it must agree with.

A TopK step touches ``k`` of ``d_dict`` latents per row, so only the encoder matmul has to be
dense. Everything after it works on ``(values [n, k], indices [n, k])``:

* ``TopKEncode`` – the encoder matmul, top-k selection and ReLU in one autograd Function whose
  backward never forms a dense ``[n, d_dict]`` gradient: the encoder weight gradient is a sparse
  ``S^T @ x`` (S holds the k selected gradients per row), the encoder bias gradient an
  ``index_add`` and the ``b_dec`` gradient ``-(grad_b_enc @ W_enc)``. It can also select the
  AuxK latents (top ``k_aux`` pre-activations among dead latents) from the same matmul.
* ``SparseDecode`` – ``x_hat = sum_j values[:, j] * W_dec[indices[:, j]]`` through
  ``embedding_bag``; its backward computes the value gradient as a gather-dot and the decoder
  gradient as a sparse ``S^T @ grad`` touching only the used rows.

The references (``dense_encode``, ``dense_decode``) are plain autograd code: the parity tests
compare values and every gradient against them. Kernels run on whatever device the tensors are
on; only the matmul follows bf16 autocast, the sparse parts stay in fp32 (they are cheap, and
the gradients land in fp32 master weights anyway).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TopKEncode",
    "SparseDecode",
    "topk_encode",
    "sparse_decode",
    "dense_encode",
    "dense_decode",
    "batch_topk_encode",
    "dense_batch_topk_encode",
    "select_batch_topk",
    "sparse_t_matmul",
    "select_topk",
    "compute_dtype",
]


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor built without torch's "beta" and "invariant checks" warnings (the kernels
    construct valid patterns by design; checking them would cost a pass per call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The autocast dtype on ``device`` when autocast is on there, else ``default``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


def select_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of ``pre`` (any order), ReLU applied to the kept values.

    ReLU is monotone, so ``relu(topk(pre)) == topk(relu(pre))`` and no pass over the dense
    ``[n, d_dict]`` block is spent on it.
    """
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return values.relu_(), indices


def select_batch_topk(pre: Tensor, k: int, candidates: int = 4) -> tuple[Tensor, Tensor]:
    """The ``n*k`` largest entries of ``relu(pre)`` over the whole ``[n, d_dict]`` block.

    Exact without a sort of all ``n*d_dict`` entries: each row offers its top ``c*k``
    candidates (sorted), the global threshold is the ``n*k``-th largest candidate, and if some
    row's smallest candidate still reaches that threshold (it may hold more) the candidate count
    doubles. Returns ``[n, k_max]`` (values, indices); slots a row does not use hold 0.
    """
    n, m = pre.shape
    total = n * k
    kc = min(m, candidates * k)
    while True:
        cand_v, cand_i = torch.topk(pre, kc, dim=-1, sorted=True)
        flat = cand_v.reshape(-1)
        if total >= flat.numel():
            threshold = flat.min()
        else:
            threshold = torch.topk(flat, total, sorted=False).values.min()
        if kc == m or bool((cand_v[:, -1] < threshold).all()):
            break
        kc = min(m, 2 * kc)
    keep = (cand_v >= threshold) & (cand_v > 0)
    width = max(int(keep.sum(1).max()), 1)
    values = torch.where(keep[:, :width], cand_v[:, :width], 0.0)
    return values, cand_i[:, :width].contiguous()


def sparse_t_matmul(indices: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """``out[l] = sum over (i, j) with indices[i, j] == l of weights[i, j] * dense[i]``.

    That is ``S^T @ dense`` for the sparse ``S [n, n_rows]`` holding ``weights`` at
    ``indices``: the gradient of a weight matrix whose rows were gathered by ``indices``. Done
    as a COO sparse matmul (sorted once, reduced per output row), never as a dense ``[n,
    n_rows]`` product nor as an ``[n*k, d]`` outer-product buffer.
    """
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    w = weights.reshape(-1).to(dense.dtype)
    nonzero = w != 0
    if not bool(nonzero.all()):  # padded or ReLU-zeroed slots contribute nothing
        rows, cols, w = rows[nonzero], cols[nonzero], w[nonzero]
    coo = torch.sparse_coo_tensor(torch.stack([cols, rows]), w, (n_rows, n), check_invariants=False)
    return torch.sparse.mm(coo, dense)


def gather_dot(grad: Tensor, weight: Tensor, indices: Tensor) -> Tensor:
    """``out[i, j] = grad[i] . weight[indices[i, j]]`` without a dense ``grad @ weight.T``."""
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    pattern = _csr(crow, indices.reshape(-1), torch.zeros(n * k, dtype=grad.dtype, device=grad.device), (n, weight.shape[0]))
    if grad.device.type == "cpu":
        try:
            return torch.sparse.sampled_addmm(pattern, grad, weight.t()).values().view(n, k)
        except (RuntimeError, NotImplementedError):  # pragma: no cover - older builds
            pass
    return torch.bmm(F.embedding(indices, weight), grad.unsqueeze(-1)).squeeze(-1)


# -- encoder ---------------------------------------------------------------------------------
class TopKEncode(torch.autograd.Function):
    """``z = topk(relu((x - b_dec) @ W_enc.T + b_enc))`` with a sparse backward.

    Returns ``(values [n, k], indices [n, k], aux_values [n, k_aux], aux_indices [n, k_aux])``;
    the aux pair selects the top ``k_aux`` pre-activations among ``aux_latents`` (AuxK) and is
    empty when ``aux_latents`` is None. Gradients flow to ``W_enc``, ``b_enc`` and ``b_dec``
    (and to ``x`` if it requires them) from both pairs.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, aux_latents, k_aux, batch=False):  # type: ignore[override]
        cdt = compute_dtype(x.device, W_enc.dtype)
        with torch.autocast(x.device.type, enabled=False):
            sae_in = x.to(W_enc.dtype) - b_dec
            pre = torch.addmm(b_enc.to(cdt), sae_in.to(cdt), W_enc.to(cdt).t())
            values, indices = select_batch_topk(pre, k) if batch else select_topk(pre, k)
            if aux_latents is not None and k_aux > 0:
                aux_pre = pre.index_select(1, aux_latents)
                aux_values, aux_local = select_topk(aux_pre, k_aux)
                aux_indices = aux_latents[aux_local]
            else:
                aux_values = pre.new_zeros((pre.shape[0], 0))
                aux_indices = indices.new_zeros((pre.shape[0], 0))
            del pre
        values = values.to(W_enc.dtype)
        aux_values = aux_values.to(W_enc.dtype)
        ctx.save_for_backward(sae_in, W_enc, values, indices, aux_values, aux_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, g_values, _g_indices, g_aux, _g_aux_indices):  # type: ignore[override]
        sae_in, W_enc, values, indices, aux_values, aux_indices = ctx.saved_tensors
        # ReLU: latents selected at a non-positive pre-activation pass no gradient.
        g = torch.where(values > 0, g_values.to(W_enc.dtype), 0.0)
        if aux_indices.shape[1]:
            g_aux = torch.where(aux_values > 0, g_aux.to(W_enc.dtype), 0.0)
            g = torch.cat([g, g_aux], 1)
            idx = torch.cat([indices, aux_indices], 1)
        else:
            idx = indices
        d_dict = W_enc.shape[0]
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[1]:
            grad_W = sparse_t_matmul(idx, g, sae_in, d_dict)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            grad_b_enc = torch.zeros(d_dict, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
            if ctx.needs_input_grad[3]:
                grad_b_dec = -(grad_b_enc @ W_enc)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, W_enc, per_sample_weights=g, mode="sum")
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None, None


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused TopK encoder; see :class:`TopKEncode`."""
    return TopKEncode.apply(x, W_enc, b_enc, b_dec, k, aux_latents, k_aux, False)  # type: ignore[return-value]


def batch_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                      aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused BatchTopK encoder: keeps the top ``n*k`` activations of the whole batch.

    Rows keep different numbers of latents, so ``values``/``indices`` are ``[n, k_max]`` with
    ``k_max`` the largest count of any row; a row's unused slots hold value 0 (no gradient, no
    contribution to the decoder).
    """
    return TopKEncode.apply(x, W_enc, b_enc, b_dec, k, aux_latents, k_aux, True)  # type: ignore[return-value]


# -- decoder ---------------------------------------------------------------------------------
class SparseDecode(torch.autograd.Function):
    """``out[i] = sum_j values[i, j] * W_dec[indices[i, j]]`` with a sparse backward."""

    @staticmethod
    def forward(ctx, values, indices, W_dec):  # type: ignore[override]
        with torch.autocast(values.device.type, enabled=False):
            v = values.to(W_dec.dtype)
            out = F.embedding_bag(indices, W_dec, per_sample_weights=v, mode="sum")
        ctx.save_for_backward(v, indices, W_dec)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        grad = grad.to(W_dec.dtype).contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = gather_dot(grad, W_dec, indices)
        if ctx.needs_input_grad[2]:
            grad_W = sparse_t_matmul(indices, values, grad, W_dec.shape[0])
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Sparse decoder (no bias); see :class:`SparseDecode`."""
    return SparseDecode.apply(values, indices, W_dec)  # type: ignore[return-value]


# -- eager dense references ------------------------------------------------------------------
def dense_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                 aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`topk_encode`: dense matmul, ReLU, top-k, plain autograd."""
    pre = F.relu(F.linear(x - b_dec, W_enc, b_enc))
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    if aux_latents is not None and k_aux > 0:
        aux_values, aux_local = torch.topk(pre[:, aux_latents], k_aux, dim=-1, sorted=False)
        aux_indices = aux_latents[aux_local]
    else:
        aux_values = pre.new_zeros((pre.shape[0], 0))
        aux_indices = indices.new_zeros((pre.shape[0], 0))
    return values, indices, aux_values, aux_indices


def dense_batch_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                            aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`batch_topk_encode` (as in SAELens' BatchTopK): dense codes of the
    batch's top ``n*k`` ReLU activations, returned as ``values [n, d_dict]`` with the identity
    ``indices``."""
    pre = F.relu(F.linear(x - b_dec, W_enc, b_enc))
    n, m = pre.shape
    flat = pre.reshape(-1)
    top = torch.topk(flat, min(n * k, flat.numel()), sorted=False)
    codes = torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(n, m)
    indices = torch.arange(m, device=pre.device).expand(n, m)
    if aux_latents is not None and k_aux > 0:
        aux_values, aux_local = torch.topk(pre[:, aux_latents], k_aux, dim=-1, sorted=False)
        aux_indices = aux_latents[aux_local]
    else:
        aux_values = pre.new_zeros((n, 0))
        aux_indices = indices.new_zeros((n, 0))
    return codes, indices, aux_values, aux_indices


def dense_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference of :func:`sparse_decode`: scatter the codes into ``[n, d_dict]`` and matmul."""
    codes = values.new_zeros((values.shape[0], W_dec.shape[0])).scatter(1, indices, values)
    return codes @ W_dec
