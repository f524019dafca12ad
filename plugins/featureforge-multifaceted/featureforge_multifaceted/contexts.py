"""Token contexts of activating rows: the tokens around a row and the latent's activation on each.

A context is the run of rows around the wanted row that belong to the same stored sequence (same
``doc_ids``, consecutive ``positions``, same chunk), clipped to ``before``/``after`` tokens. In a
store written with a write-side shuffle (``store.write_shuffle_rows``) a sequence's rows are spread
over its write window, so the context is found there instead: rows of the same sequence
(``seq_ids``, else ``doc_ids``) at positions around the row's, in position order, within that window.
Stores without token ids have no text; asking for text contexts there is refused in one line.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from featureforge import BadInputError

from .gather import read_rows

#: (latent, row) requests handled per block, so memory stays bounded for wide dictionaries.
BLOCK_REQUESTS = 4096


def require_tokens(store: Any) -> None:
    if "token_ids" not in store.columns:
        raise BadInputError(
            f"store {store.url} has no token_ids column, so it has no text contexts; cache it with a text source "
            "(--source hf) or pass -o contexts=off"
        )


def _context_rows(store: Any, rows: np.ndarray, before: int, after: int) -> list[np.ndarray]:
    """Each row's context: the store rows of its sequence around it, in token order."""
    if getattr(store, "write_shuffle_rows", 0):
        return _shuffled_contexts(store, rows, before, after)
    return [np.arange(a, b) for a, b in _windows(store, rows, before, after)]


def _shuffled_contexts(store: Any, rows: np.ndarray, before: int, after: int) -> list[np.ndarray]:
    key = next((c for c in ("seq_ids", "doc_ids") if c in store.columns), None)
    if key is None or "positions" not in store.columns:  # nothing names a row's neighbours
        return [np.array([r], dtype=np.int64) for r in rows.tolist()]
    windows: dict[int, dict[str, np.ndarray]] = {}
    committed = store.committed_chunks()
    out = []
    for r in rows.tolist():
        where = store.write_window(r, committed)
        if int(where[0]) not in windows:  # each window's sequence ids and positions are read once
            windows[int(where[0])] = read_rows(store, where, (key, "positions"))
        meta = windows[int(where[0])]
        i = int(np.searchsorted(where, r))
        pos = meta["positions"].astype(np.int64)
        p = int(pos[i])
        near = np.flatnonzero((meta[key] == meta[key][i]) & (pos >= p - before) & (pos <= p + after))
        near = near[np.argsort(pos[near], kind="stable")]
        at = int(np.flatnonzero(near == i)[0])
        steps = np.diff(pos[near]) == 1  # keep the unbroken run of positions around the row
        first = at
        while first > 0 and steps[first - 1]:
            first -= 1
        last = at
        while last < len(steps) and steps[last]:
            last += 1
        out.append(where[near[first : last + 1]])
    return out


def _windows(store: Any, rows: np.ndarray, before: int, after: int) -> list[tuple[int, int]]:
    """(start, stop) of each row's context, inside its chunk and its sequence."""
    rpc = store.rows_per_chunk
    lo = np.maximum((rows // rpc) * rpc, rows - before)
    hi = np.array([min(int(r // rpc) * rpc + store.chunk_rows(int(r // rpc)), int(r) + after + 1) for r in rows], dtype=np.int64)
    cols = [c for c in ("doc_ids", "positions") if c in store.columns]
    if not cols:
        return list(zip(lo.tolist(), hi.tolist()))
    span = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
    meta = read_rows(store, span, cols)
    out, at = [], 0
    for r, a, b in zip(rows.tolist(), lo.tolist(), hi.tolist()):
        n = b - a
        docs = meta["doc_ids"][at : at + n] if "doc_ids" in meta else None
        pos = meta["positions"][at : at + n] if "positions" in meta else None
        at += n

        def joined(i: int) -> bool:  # rows i and i+1 (window offsets) are neighbours in one sequence
            if docs is not None and docs[i] != docs[i + 1]:
                return False
            return pos is None or int(pos[i + 1]) == int(pos[i]) + 1

        i = r - a
        first, last = i, i
        while first > 0 and joined(first - 1):
            first -= 1
        while last + 1 < n and joined(last):
            last += 1
        out.append((a + first, a + last + 1))
    return out


@torch.no_grad()
def contexts(dictionary: Any, store: Any, requests: Sequence[tuple[int, int]], decode: Callable[[list[int]], list[str]],
             before: int = 8, after: int = 4, batch_rows: int = 2048) -> list[dict[str, Any]]:
    """One context per (latent, row) request: tokens, the latent's activation on each, the row's place."""
    require_tokens(store)
    device = next(iter(dictionary.parameters()), torch.zeros(())).device
    results: list[dict[str, Any]] = []
    for block in range(0, len(requests), BLOCK_REQUESTS):
        part = requests[block : block + BLOCK_REQUESTS]
        rows = np.array([r for _, r in part], dtype=np.int64)
        spans = _context_rows(store, rows, before, after)
        flat = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        uniq, back = np.unique(flat, return_inverse=True)
        data = read_rows(store, uniq, ("acts", "token_ids"))
        latents = np.repeat([lat for lat, _ in part], [len(span) for span in spans])
        acts = np.zeros(len(flat), dtype=np.float32)
        for s in range(0, len(uniq), batch_rows):
            codes = dictionary.encode(torch.from_numpy(data["acts"][s : s + batch_rows]).to(device)).float().cpu().numpy()
            hit = (back >= s) & (back < s + batch_rows)
            acts[hit] = codes[back[hit] - s, latents[hit]]
        ids = data["token_ids"][back]
        at = 0
        for (lat, row), span in zip(part, spans):
            n = len(span)
            tok = [int(t) for t in ids[at : at + n]]
            results.append({"latent": int(lat), "row": int(row), "tokens": decode(tok), "token_ids": tok,
                            "activations": [round(float(v), 4) for v in acts[at : at + n]], "index": int(np.flatnonzero(span == row)[0])})
            at += n
    return results


def token_decoder(source: Any | None) -> Callable[[list[int]], list[str]]:
    """The live source's ``decode_tokens``, or ``#id`` pieces when it cannot decode."""

    def fallback(ids: list[int]) -> list[str]:
        return [f" #{i}" for i in ids]

    if source is None:
        return fallback
    try:
        source.decode_tokens([0])
    except Exception:  # no tokenizer (NotImplementedError) or a model that cannot load here
        return fallback
    return source.decode_tokens
