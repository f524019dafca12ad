"""Sparse kernels of the TopK family, each beside the eager dense code it must agree with.

A TopK step touches ``k`` of ``d_dict`` latents per row, so only the encoder matmul has to be
dense. Everything after it works on ``(values [n, k], indices [n, k])``:

* ``TopKEncode`` – encoder matmul, top-k selection and ReLU in one autograd Function whose
  backward never forms a dense ``[n, d_dict]`` gradient. With ``S`` the sparse ``[n, d_dict]``
  matrix of the selected latents' gradients: ``grad_b_enc = S^T 1`` (an ``index_add``),
  ``grad_W_enc = S^T x - grad_b_enc b_dec^T`` (one sparse-transpose matmul),
  ``grad_b_dec = -grad_b_enc @ W_enc``. ``b_dec`` is folded into the bias of the matmul
  (``x W^T + (b_enc - W b_dec)``), so ``x - b_dec`` is never materialised. The same matmul also
  yields the AuxK selection (top ``k_aux`` pre-activations among dead latents).
* ``SparseDecode`` – ``x_hat = sum_j values[:, j] * W_dec[indices[:, j]]`` (``embedding_bag``);
  backward: value gradient by a sampled dense-dense product (``grad . W_dec[idx]`` at the k
  used latents only) and ``grad_W_dec = S_v^T grad``, touching only the used rows.
* Top-k selection by groups: a row's top k lie in the k groups with the largest maxima (any
  partition of the latents works: a latent in the top k has fewer than k larger entries, so its
  group's maximum cannot be beaten by k other groups' maxima). Maxima of interleaved groups are
  one vectorised pass; the exact top k then comes from ``k * group_size`` candidates.

Both backward passes need ``S^T`` (rows sorted by latent): the index pattern is sorted once per
step (``_Pattern``, attached to the index tensor) and shared by encoder and decoder.

The references (``dense_encode``, ``dense_decode``, ``dense_batch_topk_encode``) are plain
autograd code; the parity tests compare outputs and every gradient against them.

Threads: the encoder matmul uses every intra-op thread, the selection is split by rows over
plain threads, and the remaining small memory-bound ops run on one thread (``_one_thread``): on
two cores shared with the data reader or another job, an intra-op barrier per small op costs
more than the op. ``SparseReconstructionLoss`` fuses decoder and squared error so the step's
backward holds no other dense autograd node.

Precision: the sparse parts run in the weights' dtype (fp32 master weights). Under autocast the
encoder matmul runs in the autocast dtype where the hardware has it (CUDA, or CPUs with AMX /
AVX512-BF16); on CPUs without bf16 units an emulated bf16 matmul is ~5x slower than fp32, so
the kernel keeps fp32 there (more precise, and faster).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TopKEncode",
    "SparseDecode",
    "topk_encode",
    "batch_topk_encode",
    "sparse_decode",
    "sparse_reconstruction_loss",
    "dense_reconstruction_loss",
    "dense_encode",
    "dense_batch_topk_encode",
    "dense_decode",
    "select_topk",
    "select_batch_topk",
    "sparse_t_matmul",
    "compute_dtype",
    "gsae_encode",
    "jumprelu",
    "heaviside_step",
]


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor built without torch's "beta" and "invariant checks" warnings (the kernels
    build valid patterns by construction; checking them would cost a pass per call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """Dtype of the encoder matmul: autocast's where it is on and fast on this device."""
    if not torch.is_autocast_enabled(device.type):
        return default
    dtype = torch.get_autocast_dtype(device.type)
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not _cpu_has_fast_bf16():
        return default
    return dtype


# -- workspace -------------------------------------------------------------------------------
_WORKSPACE: dict[tuple[torch.device, torch.dtype], Tensor] = {}
#: Largest block kept between calls (128 MiB in fp32); larger ones are allocated per call.
_WORKSPACE_MAX_ELEMENTS = 1 << 25


def _scratch(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reusable buffer for the dense pre-activations, which never outlive one forward call.

    Allocating the ``[n, d_dict]`` block afresh each step costs more than the top-k on it: a
    64 MiB buffer comes from ``mmap`` every time, and its page faults (kernel zeroing) cost
    20-30 ms on two cores. One buffer per (device, dtype) is kept and grown as needed, up to
    ``_WORKSPACE_MAX_ELEMENTS``.
    """
    numel = shape[0] * shape[1]
    if numel > _WORKSPACE_MAX_ELEMENTS:  # e.g. encoding a whole evaluation set at once
        return torch.empty(shape, dtype=dtype, device=device)
    # An inference tensor cannot be written outside inference mode (and is not wanted in it):
    # key the buffer by the mode it was made in.
    key = (torch.device(device), dtype, torch.is_inference_mode_enabled())
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        _WORKSPACE[key] = buf
    return buf[:numel].view(shape)


class _one_thread:
    """Run CPU ops with one intra-op thread (restored after). For small ops that gain nothing
    from a second thread but stall at its barrier when the machine is busy (the radix sort of
    ~10^5 keys: median 40 ms on two threads vs 3 ms on one, same minimum), and around work
    that is parallelised by rows on plain threads instead (``_row_parallel_topk``)."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu"

    def __enter__(self) -> None:
        if self.active:
            self.threads = torch.get_num_threads()
            if self.threads > 1:
                torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.active and self.threads > 1:
            torch.set_num_threads(self.threads)


# -- selection -------------------------------------------------------------------------------
def _group_size(d_dict: int, k: int) -> int:
    """Latents per group for grouped top-k selection, 0 where plain ``torch.topk`` is better."""
    size = 1 << int(math.log2(max(1.0, math.sqrt(d_dict / max(k, 1)))))
    while size >= 4 and (d_dict % size or d_dict // size < 2 * k):
        size //= 2
    return size if size >= 4 else 0


def _topk_rows(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact top-k of each row (any order), by grouped selection when it saves work."""
    n, m = pre.shape
    size = _group_size(m, k)
    if not size:
        return torch.topk(pre, k, dim=-1, sorted=False)
    groups = m // size
    view = pre.view(n, size, groups)  # group g holds latents g, g + groups, g + 2 * groups, ...
    _, top_groups = view.amax(1).topk(k, dim=1, sorted=False)  # [n, k]
    candidates = view.gather(2, top_groups[:, None, :].expand(n, size, k)).view(n, size * k)
    values, pos = candidates.topk(k, dim=1, sorted=False)
    indices = torch.div(pos, k, rounding_mode="floor").mul_(groups).add_(top_groups.gather(1, pos.remainder(k)))
    return values, indices


_POOL: "concurrent.futures.ThreadPoolExecutor | None" = None
_POOL_LOCK = threading.Lock()
_POOL_PID = -1
#: Rows below which splitting the selection across threads is not worth a thread hand-off.
_SPLIT_MIN_ROWS = 512


def _row_parallel_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`_topk_rows` on row blocks in parallel, one block per intra-op thread.

    The grouped selection is five small ops; with torch's intra-op threads each one ends at a
    barrier, and on a busy machine a descheduled thread stalls every barrier (measured: 2x
    slower than one thread). Splitting the rows over plain threads that each run the ops
    single-threaded keeps the two-core speed-up when the cores are free and costs one join.
    """
    global _POOL
    threads = torch.get_num_threads()
    n = pre.shape[0]
    if pre.device.type != "cpu" or threads <= 1 or n < _SPLIT_MIN_ROWS:
        return _topk_rows(pre, k)
    global _POOL_PID
    with _POOL_LOCK:
        # A forked child inherits the executor but not its threads: make a new one there.
        if _POOL is None or _POOL._max_workers < threads or _POOL_PID != os.getpid():  # type: ignore[attr-defined]
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featureforge-sae-topk")
            _POOL_PID = os.getpid()
        pool = _POOL
    bounds = [n * i // threads for i in range(threads + 1)]
    with _one_thread(pre.device):
        futures = [pool.submit(_topk_rows, pre[a:b], k) for a, b in zip(bounds, bounds[1:])]
        parts = [f.result() for f in futures]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def select_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of ``pre`` (any order) with ReLU applied to the kept values.

    ReLU is monotone, so ``relu(topk(pre)) == topk(relu(pre))``: no pass over the dense block is
    spent on it. Exact; uses grouped selection (module docstring) when it saves work.
    """
    values, indices = _row_parallel_topk(pre, k)
    return values.relu_(), indices


def select_batch_topk(pre: Tensor, k: int, candidates: int = 4) -> tuple[Tensor, Tensor]:
    """The ``n*k`` largest entries of ``relu(pre)`` over the whole ``[n, d_dict]`` block.

    Exact without sorting all ``n*d_dict`` entries: each row offers its top ``c*k`` candidates
    (sorted), the global threshold is the ``n*k``-th largest candidate, and if some row's
    smallest candidate still reaches that threshold (it may hold more) the candidate count
    doubles. Returns ``[n, k_max]`` (values, indices); slots a row does not use hold 0.
    """
    n, m = pre.shape
    total = n * k
    kc = min(m, candidates * k)
    while True:
        cand_v, cand_i = _row_parallel_topk(pre, kc)
        cand_v, order = torch.sort(cand_v, dim=1, descending=True)
        cand_i = cand_i.gather(1, order)
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


# -- the sparse pattern and its transpose ----------------------------------------------------
class _Pattern:
    """Column indices ``[n, k]`` of a sparse ``[n, m]`` matrix; its transpose is sorted once."""

    def __init__(self, indices: Tensor, m: int):
        self.indices = indices
        self.m = m
        self._t: tuple[Tensor, Tensor, Tensor] | None = None
        self._crow_rows: Tensor | None = None

    @staticmethod
    def of(indices: Tensor, m: int) -> "_Pattern":
        pattern = getattr(indices, "_featureforge_pattern", None)
        if pattern is None or pattern.m != m:
            pattern = _Pattern(indices, m)
            try:
                indices._featureforge_pattern = pattern  # type: ignore[attr-defined]
            except (AttributeError, RuntimeError):  # pragma: no cover - tensor subclasses
                pass
        return pattern

    def transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        """(crow [m+1], row of each entry [nnz], order [nnz]): ``S^T`` in CSR, entries sorted by latent."""
        if self._t is None:
            n, k = self.indices.shape
            flat = self.indices.reshape(-1)
            # Stable (so sums run in a fixed order: bit-reproducible steps) and on the narrowest
            # key type: a radix sort of int16 keys makes 2 passes where int64 makes 8, which is
            # 10x faster on a busy 2-core machine where every parallel pass may stall.
            key_dtype = torch.int16 if self.m < 2**15 - 1 else torch.int32
            with _one_thread(flat.device):
                sorted_latents, order = torch.sort(flat.to(key_dtype), stable=True)
            crow = torch.searchsorted(sorted_latents, torch.arange(self.m + 1, device=flat.device, dtype=key_dtype), out_int32=False)
            self._t = (crow, torch.div(order, k, rounding_mode="floor"), order)
        return self._t

    def t_matmul(self, weights: Tensor, dense: Tensor) -> Tensor:
        """``S^T @ dense`` for ``S`` holding ``weights [n, k]`` at this pattern: ``[m, d]``."""
        crow, rows, order = self.transpose()
        n = self.indices.shape[0]
        values = weights.reshape(-1).to(dense.dtype).index_select(0, order)
        if dense.device.type == "cpu":
            # Bag l of S^T holds the rows that selected latent l: embedding_bag sums them in
            # the sorted (fixed) order without the zero-fill and copy torch.sparse.mm adds
            # (one [n, k] x d pass, 2x faster at the main shape, 8 vs 17 ms per product).
            return F.embedding_bag(rows, dense, crow[:-1], mode="sum", per_sample_weights=values)
        return torch.sparse.mm(_csr(crow, rows, values, (self.m, n)), dense)

    def sampled_dot(self, grad: Tensor, weight: Tensor) -> Tensor:
        """``out[i, j] = grad[i] . weight[indices[i, j]]`` without a dense ``grad @ weight.T``."""
        n, k = self.indices.shape
        if grad.device.type == "cpu":
            crow = torch.arange(0, n * k + 1, k, device=grad.device)
            pattern = _csr(crow, self.indices.reshape(-1), grad.new_zeros(n * k), (n, self.m))
            try:
                return torch.sparse.sampled_addmm(pattern, grad, weight.t()).values().view(n, k)
            except (RuntimeError, NotImplementedError):  # pragma: no cover - builds without it
                pass
        return torch.bmm(F.embedding(self.indices, weight), grad.unsqueeze(-1)).squeeze(-1)


def sparse_t_matmul(indices: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """``out[l] = sum over (i, j) with indices[i, j] == l of weights[i, j] * dense[i]``: the
    gradient of a matrix whose rows were gathered by ``indices`` (``S^T @ dense``)."""
    return _Pattern.of(indices, n_rows).t_matmul(weights, dense)


# -- encoder ---------------------------------------------------------------------------------
class TopKEncode(torch.autograd.Function):
    """``z = topk(relu((x - b_dec) @ W_enc.T + b_enc))`` with a sparse backward.

    Returns ``(values [n, k], indices [n, k], aux_values [n, k_aux], aux_indices [n, k_aux])``;
    the aux pair selects the top ``k_aux`` pre-activations among ``aux_latents`` (AuxK) and is
    empty when ``aux_latents`` is None. With ``batch=True`` the selection is BatchTopK's (the
    batch's top ``n*k``; see :func:`select_batch_topk`). Gradients flow to ``W_enc``, ``b_enc``
    and ``b_dec`` (and to ``x`` if it requires them) from both pairs.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, aux_latents, k_aux, batch=False):  # type: ignore[override]
        cdt = compute_dtype(x.device, W_enc.dtype)
        d_dict = W_enc.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(W_enc.dtype)
            with _one_thread(x.device):  # a 1.5M-MAC gemv: one thread is as fast and never stalls
                bias = torch.addmv(b_enc, W_enc, b_dec, alpha=-1)  # b_enc - W_enc b_dec
            pre = _scratch((x.shape[0], d_dict), cdt, x.device)
            torch.addmm(bias.to(cdt), x.to(cdt), W_enc.to(cdt).t(), out=pre)
            values, indices = select_batch_topk(pre, k) if batch else select_topk(pre, k)
            if aux_latents is not None and k_aux > 0:
                aux_values, aux_local = _row_parallel_topk(pre.index_select(1, aux_latents), k_aux)
                aux_values.relu_()
                aux_indices = aux_latents[aux_local]
            else:
                aux_values = pre.new_zeros((pre.shape[0], 0))
                aux_indices = indices.new_zeros((pre.shape[0], 0))
            del pre
        values = values.to(W_enc.dtype)
        aux_values = aux_values.to(W_enc.dtype)
        indices._featureforge_pattern = _Pattern(indices, d_dict)  # type: ignore[attr-defined]
        aux_indices._featureforge_pattern = _Pattern(aux_indices, d_dict)  # type: ignore[attr-defined]
        ctx.patterns = (indices._featureforge_pattern, aux_indices._featureforge_pattern)  # type: ignore[attr-defined]
        ctx.save_for_backward(x, W_enc, b_dec, values, aux_values)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, g_values, _g_indices, g_aux, _g_aux_indices):  # type: ignore[override]
        # backward() may be called inside the autocast region; the sparse parts stay fp32, on
        # one thread (small memory-bound ops: see _one_thread).
        with torch.autocast(g_values.device.type, enabled=False), _one_thread(g_values.device):
            return TopKEncode._backward(ctx, g_values, g_aux)

    @staticmethod
    def _backward(ctx, g_values, g_aux):
        x, W_enc, b_dec, values, aux_values = ctx.saved_tensors
        main, aux = ctx.patterns
        has_aux = aux.indices.shape[1] > 0
        # ReLU: latents kept at a non-positive pre-activation pass no gradient.
        g = torch.where(values > 0, g_values.to(W_enc.dtype), 0.0)
        g_a = torch.where(aux_values > 0, g_aux.to(W_enc.dtype), 0.0) if has_aux else None
        d_dict = W_enc.shape[0]
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        grad_c = torch.zeros(d_dict, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, main.indices.reshape(-1), g.reshape(-1))
        if has_aux:
            grad_c.index_add_(0, aux.indices.reshape(-1), g_a.reshape(-1))
        if ctx.needs_input_grad[1]:
            grad_W = main.t_matmul(g, x)
            if has_aux:
                grad_W += aux.t_matmul(g_a, x)
            grad_W.addr_(grad_c, b_dec, alpha=-1)  # S^T (x - b_dec) = S^T x - (S^T 1) b_dec^T
        if ctx.needs_input_grad[2]:
            grad_b_enc = grad_c
        if ctx.needs_input_grad[3]:
            grad_b_dec = -(grad_c @ W_enc)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(main.indices, W_enc, per_sample_weights=g, mode="sum")
            if has_aux:
                grad_x += F.embedding_bag(aux.indices, W_enc, per_sample_weights=g_a, mode="sum")
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
        with torch.autocast(values.device.type, enabled=False), _one_thread(values.device):
            v = values.to(W_dec.dtype)
            out = F.embedding_bag(indices, W_dec, per_sample_weights=v, mode="sum")
        ctx.pattern = _Pattern.of(indices, W_dec.shape[0])
        ctx.save_for_backward(v, W_dec)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, W_dec = ctx.saved_tensors
        grad_values = grad_W = None
        with torch.autocast(grad.device.type, enabled=False), _one_thread(grad.device):
            grad = grad.to(W_dec.dtype).contiguous()
            if ctx.needs_input_grad[0]:
                grad_values = ctx.pattern.sampled_dot(grad, W_dec)
            if ctx.needs_input_grad[2]:
                grad_W = ctx.pattern.t_matmul(values, grad)
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Sparse decoder (no bias); see :class:`SparseDecode`."""
    return SparseDecode.apply(values, indices, W_dec)  # type: ignore[return-value]


class SparseReconstructionLoss(torch.autograd.Function):
    """``(||target - x_hat||^2 / denominator, x_hat)`` with ``x_hat = sparse_decode(values,
    indices, W_dec) + bias``: decoder and squared error in one Function, so a step's backward
    holds no dense autograd node but this one (all on one thread; ``x_hat`` is returned without
    gradient). Gradients flow to ``values``, ``W_dec`` and ``bias``, not to ``target``.
    """

    @staticmethod
    def forward(ctx, values, indices, W_dec, bias, target, denominator):  # type: ignore[override]
        with torch.autocast(values.device.type, enabled=False), _one_thread(values.device):
            v = values.to(W_dec.dtype)
            x_hat = F.embedding_bag(indices, W_dec, per_sample_weights=v, mode="sum")
            if bias is not None:
                x_hat += bias
            diff = x_hat - target.to(W_dec.dtype)
            flat = diff.view(-1)
            loss = torch.dot(flat, flat) / denominator
        ctx.pattern = _Pattern.of(indices, W_dec.shape[0])
        ctx.has_bias = bias is not None
        ctx.save_for_backward(v, W_dec, diff, denominator)
        ctx.mark_non_differentiable(x_hat)
        return loss, x_hat

    @staticmethod
    def backward(ctx, g_loss, _g_x_hat):  # type: ignore[override]
        values, W_dec, diff, denominator = ctx.saved_tensors
        grad_values = grad_W = grad_bias = None
        with torch.autocast(diff.device.type, enabled=False), _one_thread(diff.device):
            grad = diff * (2 * g_loss.to(diff.dtype) / denominator)
            if ctx.needs_input_grad[0]:
                grad_values = ctx.pattern.sampled_dot(grad, W_dec)
            if ctx.needs_input_grad[2]:
                grad_W = ctx.pattern.t_matmul(values, grad)
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_bias = grad.sum(0)
        return grad_values, None, grad_W, grad_bias, None, None


def sparse_reconstruction_loss(values: Tensor, indices: Tensor, W_dec: Tensor, bias: Tensor | None,
                               target: Tensor, denominator: Tensor) -> tuple[Tensor, Tensor]:
    """Fused sparse decode + squared error; see :class:`SparseReconstructionLoss`."""
    return SparseReconstructionLoss.apply(values, indices, W_dec, bias, target, denominator)  # type: ignore[return-value]


def dense_reconstruction_loss(values: Tensor, indices: Tensor, W_dec: Tensor, bias: Tensor | None,
                              target: Tensor, denominator: Tensor) -> tuple[Tensor, Tensor]:
    """Reference of :func:`sparse_reconstruction_loss` (dense decode, plain autograd)."""
    x_hat = dense_decode(values, indices, W_dec)
    if bias is not None:
        x_hat = x_hat + bias
    return F.mse_loss(x_hat, target.to(x_hat.dtype), reduction="sum") / denominator, x_hat


# -- eager dense references ------------------------------------------------------------------
def _aux_reference(pre: Tensor, aux_latents: Tensor | None, k_aux: int, like: Tensor) -> tuple[Tensor, Tensor]:
    if aux_latents is not None and k_aux > 0:
        aux_values, aux_local = torch.topk(pre[:, aux_latents], k_aux, dim=-1, sorted=False)
        return aux_values, aux_latents[aux_local]
    return pre.new_zeros((pre.shape[0], 0)), like.new_zeros((pre.shape[0], 0))


def dense_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                 aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`topk_encode`: dense matmul, ReLU, top-k, plain autograd."""
    pre = F.relu(F.linear(x - b_dec, W_enc, b_enc))
    values, indices = torch.topk(pre, k, dim=-1, sorted=False)
    return (values, indices, *_aux_reference(pre, aux_latents, k_aux, indices))


def dense_batch_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                            aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`batch_topk_encode` (as SAELens' BatchTopK): dense codes of the batch's
    top ``n*k`` ReLU activations, returned as ``values [n, d_dict]`` with identity ``indices``."""
    pre = F.relu(F.linear(x - b_dec, W_enc, b_enc))
    n, m = pre.shape
    flat = pre.reshape(-1)
    top = torch.topk(flat, min(n * k, flat.numel()), sorted=False)
    codes = torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(n, m)
    indices = torch.arange(m, device=pre.device).expand(n, m)
    return (codes, indices, *_aux_reference(pre, aux_latents, k_aux, indices))


def dense_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference of :func:`sparse_decode`: scatter the codes into ``[n, d_dict]`` and matmul."""
    codes = values.new_zeros((values.shape[0], W_dec.shape[0])).scatter(1, indices, values)
    return codes @ W_dec


# -- g-SAE: gradient-aware TopK selection ----------------------------------------------------
def normalise_gradients(g: Tensor, how: str) -> Tensor:
    """``g`` scaled as the ``gsae`` option ``grad_norm`` says: row (unit rows), batch_rms, none."""
    if how == "row":
        return g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    if how == "batch_rms":
        rms = g.pow(2).sum(1).mean().sqrt()
        return g / rms.clamp_min(torch.finfo(g.dtype).tiny)
    return g


def gsae_encode(dictionary, x: Tensor, grads: Tensor, k: int, beta: float, grad_norm: str = "row", values: str = "z",
                aux_latents: Tensor | None = None, k_aux: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(values, indices, aux_values, aux_indices, swapped)`` of g-SAE's gradient-aware TopK
    (Olmo et al. 2024): latents ranked by ``z * (1 + beta * |W_dec g_hat|)``.

    ``swapped`` is the fraction of kept latents that plain TopK on ``z`` would not have kept.
    Gradients flow to the encoder (and ``b_dec``) through the gathered values only.
    """
    W_enc, b_enc, W_dec = dictionary.encoder.weight, dictionary.encoder.bias, dictionary.W_dec
    pre = F.relu(F.linear(x.to(W_enc.dtype) - dictionary.b_dec, W_enc, b_enc))
    with torch.no_grad():
        z = pre.detach().float()
        gain = 1.0 + beta * (normalise_gradients(grads.float(), grad_norm) @ W_dec.detach().float().t()).abs_()
        score = z * gain
        _, indices = torch.topk(score, k, dim=1, sorted=False)
        plain_min = torch.topk(z, k, dim=1, sorted=False).values.min(1, keepdim=True).values
        kept_z = z.gather(1, indices)
        swapped = ((kept_z < plain_min) & (kept_z > 0)).float().mean()
    vals = pre.gather(1, indices)
    if values == "s":
        vals = vals * gain.gather(1, indices).to(vals.dtype)
    if aux_latents is not None and k_aux > 0:
        aux_vals, local = torch.topk(pre.index_select(1, aux_latents), k_aux, dim=1, sorted=False)
        aux_indices = aux_latents[local]
    else:
        aux_vals = pre.new_zeros((pre.shape[0], 0))
        aux_indices = indices.new_zeros((pre.shape[0], 0))
    return vals, indices, aux_vals, aux_indices, swapped


# -- JumpReLU (Rajamanoharan et al. 2024, arXiv 2407.14435) -----------------------------------
def _rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel K(u) = 1[-1/2 < u < 1/2] of the paper's section 4."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``JumpReLU_theta(z) = z H(z - theta)`` (eq. 4) with the straight-through pseudo-derivatives
    ``d/dz = H(z - theta)`` and ``d/dtheta = -(theta / eps) K((z - theta) / eps)`` (eq. 11)."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = g * (z > theta).to(g.dtype)
        grad_theta = (g * (-(theta / eps) * _rectangle((z - theta) / eps))).sum(0)
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    """``H(z - theta)`` with the pseudo-derivative ``d/dtheta = -(1 / eps) K((z - theta) / eps)``
    (eq. 12); no gradient reaches ``z`` through the step (only the threshold learns from L0)."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (g * (-(1.0 / eps) * _rectangle((z - theta) / eps))).sum(0)
        return None, grad_theta, None


def jumprelu(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """JumpReLU of pre-activations ``z [n, d_dict]`` at per-latent thresholds ``theta [d_dict]``
    (> 0); bandwidth ``eps`` of the rectangle kernel in the backward pass."""
    return _JumpReLU.apply(z, theta, eps)  # type: ignore[return-value]


def heaviside_step(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """``H(z - theta)`` (which latents fire) with eq. 12's pseudo-derivative for ``theta``."""
    return _Step.apply(z, theta, eps)  # type: ignore[return-value]
