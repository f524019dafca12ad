"""One streaming pass over a store: per-latent top rows, a uniform sample and activation histograms.

Memory is fixed by the dictionary width, never by the store's size: for ``m`` latents it is
``m × (top_n + sample)`` (value, row) pairs, as many pending pairs at most, an ``m × HIST_BINS``
histogram and one batch of codes.
The store is read in storage order, one chunk at a time, so every row index kept is the store's
global row index (chunk index × rows_per_chunk + offset), the one other readers use.

Per chunk of codes ``[b, m]``:
- top rows: the firing (row, latent) pairs, buffered over batches, cut to each latent's best
  ``top_n`` and merged with the running list by ``torch.topk`` over ``[m, 2 * top_n]``;
- sample: every firing pair gets a uniform random key and each latent keeps the ``sample`` pairs
  with the smallest keys (bottom-k sampling: a uniform sample without replacement of all its
  firing rows), merged batch by batch the same way;
- histogram: log10 of the non-zero codes, counted into fixed bins by ``scatter_add``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

#: Fixed log10 range of the activation histograms; values outside fall into the end bins.
HIST_LOG10_RANGE = (-4.0, 4.0)
HIST_BINS = 160


@dataclasses.dataclass
class Collected:
    """What one pass keeps per latent (tensors on CPU; row indices are global store rows)."""

    #: Float32 [m, top_n], descending; padding is -inf with row -1 (only firing rows are kept).
    top_values: torch.Tensor
    top_rows: torch.Tensor
    #: Float32 [m, sample]: a uniform sample of each latent's firing rows (padding value 0, row -1).
    sample_values: torch.Tensor
    sample_rows: torch.Tensor
    #: Int64 [m]: rows on which each latent fired; float64 [m] sum of its activations.
    counts: torch.Tensor
    sums: torch.Tensor
    #: Int64 [m, HIST_BINS] histogram of log10(activation) over ``HIST_LOG10_RANGE``.
    histogram: torch.Tensor
    rows: int
    seconds: float

    @property
    def d_dict(self) -> int:
        return int(self.counts.shape[0])

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def top(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, rows) of a latent's kept top rows with a positive activation, descending."""
        keep = (self.top_rows[latent] >= 0) & (self.top_values[latent] > 0)
        return self.top_values[latent][keep].numpy(), self.top_rows[latent][keep].numpy()

    def sampled(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, rows) of a latent's uniform sample of firing rows, ascending by value."""
        keep = self.sample_rows[latent] >= 0
        values, rows = self.sample_values[latent][keep], self.sample_rows[latent][keep]
        order = torch.argsort(values)
        return values[order].numpy(), rows[order].numpy()

    def histogram_edges(self) -> np.ndarray:
        return np.linspace(*HIST_LOG10_RANGE, HIST_BINS + 1)


class _Smallest:
    """Per latent, the ``size`` (key, value, row) triples with the smallest keys seen so far.

    Top rows use key = -activation; the uniform sample uses a uniform random key (bottom-k
    sampling). Each batch's triples are first cut to their own best ``size`` per latent (one sort
    of the firing pairs, never of the dense codes), then merged with the held ones by one
    ``topk`` over ``[m, 2 * size]``. Call ``flush`` before reading the held triples.
    """

    def __init__(self, m: int, size: int):
        self.m, self.size = m, size
        self.keys = torch.full((m, size), float("inf"))
        self.values = torch.zeros(m, size)
        self.rows = torch.full((m, size), -1, dtype=torch.long)
        # Pairs wait until there are about as many as the held state, so the [m, 2 * size] merge
        # is paid once per that many pairs, not once per batch (wide dictionaries, small batches).
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.pending_pairs = 0
        self.flush_at = max(m * size, 1 << 16)

    def add(self, latents: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> None:
        if self.size == 0 or latents.numel() == 0:
            return
        self.pending.append((latents, keys, values, rows))
        self.pending_pairs += latents.numel()
        if self.pending_pairs >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        latents, keys, values, rows = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.pending_pairs = [], 0
        order = torch.sort(keys, stable=True).indices
        order = order[torch.sort(latents[order], stable=True).indices]  # by latent, then key
        lat, key, val, row = latents[order], keys[order], values[order], rows[order]
        rank = torch.arange(lat.numel()) - torch.searchsorted(lat, torch.arange(self.m))[lat]
        keep = rank < self.size
        lat, rank = lat[keep], rank[keep]
        new_keys = torch.full_like(self.keys, float("inf"))
        new_values, new_rows = torch.zeros_like(self.values), torch.full_like(self.rows, -1)
        new_keys[lat, rank], new_values[lat, rank], new_rows[lat, rank] = key[keep], val[keep], row[keep]
        merged = torch.cat([self.keys, new_keys], 1).topk(self.size, dim=1, largest=False)
        self.keys = merged.values
        self.values = torch.cat([self.values, new_values], 1).gather(1, merged.indices)
        self.rows = torch.cat([self.rows, new_rows], 1).gather(1, merged.indices)


@torch.no_grad()
def collect(dictionary: Any, store: Any, *, top_n: int = 64, sample: int = 64, batch_rows: int = 0, max_rows: int | None = None,
            seed: int = 0, progress: Any = None) -> Collected:
    """Stream ``store`` once through ``dictionary.encode`` and keep each latent's top and sampled rows.

    ``batch_rows`` (0: about 16M codes per batch) bounds the dense codes held at once;
    ``max_rows`` stops after that many rows; ``progress(n)`` is called with rows done per batch.
    """
    m = int(dictionary.d_dict)
    if batch_rows <= 0:
        batch_rows = int(min(8192, max(256, 2**24 // max(m, 1))))
    device = next(iter(dictionary.parameters()), torch.zeros(())).device
    top = _Smallest(m, top_n)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(m, dtype=torch.long)
    sums = torch.zeros(m, dtype=torch.float64)
    hist = torch.zeros(m * HIST_BINS, dtype=torch.long)
    reservoir = _Smallest(m, sample)
    lo, hi = HIST_LOG10_RANGE
    width = (hi - lo) / HIST_BINS
    rpc = store.rows_per_chunk
    done = 0
    t0 = time.perf_counter()
    for ref in store.committed_chunks():
        base = ref.index * rpc
        for start in range(base, base + ref.rows, batch_rows):
            stop = min(base + ref.rows, start + batch_rows)
            if max_rows is not None:
                stop = min(stop, start + max_rows - done)
                if stop <= start:
                    break
            x = torch.from_numpy(store.read(start, stop)).to(device)
            codes = dictionary.encode(x).float()
            b = stop - start
            # Only firing pairs matter (and only they leave the device): counts, sums, histogram, top rows, sample.
            r_idx, l_idx = torch.nonzero(codes > 0, as_tuple=True)
            v, r_idx, l_idx = codes[r_idx, l_idx].cpu(), r_idx.cpu(), l_idx.cpu()
            top.add(l_idx, -v, v, r_idx + start)
            counts += torch.bincount(l_idx, minlength=m)
            sums.index_add_(0, l_idx, v.double())
            bins = ((torch.log10(v) - lo) / width).floor().clamp_(0, HIST_BINS - 1).long()
            hist.index_add_(0, l_idx * HIST_BINS + bins, torch.ones_like(bins))
            reservoir.add(l_idx, torch.rand(v.numel(), generator=gen), v, r_idx + start)
            done += b
            if progress is not None:
                progress(b)
        if max_rows is not None and done >= max_rows:
            break
    top.flush()
    reservoir.flush()
    top_v = torch.where(top.rows >= 0, top.values, torch.tensor(float("-inf")))
    return Collected(top_v, top.rows, reservoir.values, reservoir.rows, counts, sums, hist.view(m, HIST_BINS), done,
                     time.perf_counter() - t0)
