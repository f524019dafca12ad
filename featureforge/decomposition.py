"""A steering vector in a dictionary's latents: which decoder rows explain it, and where those latents fire.

Two readings of the same question (``featureforge decompose VECTOR RUN --store S``):

* **Non-negative sparse fit.** ``v ≈ Σ_j w_j·d̂_j`` with ``w ≥ 0`` and at most ``k`` latents
  (``d̂_j`` the unit decoder rows in original units): non-negative orthogonal matching pursuit
  (Bruckstein, Elad & Zibulevsky 2008, "On the uniqueness of nonnegative sparse solutions to
  underdetermined systems of equations"; Pati, Rezaiifar & Krishnaprasad 1993 for OMP): pick the
  row most positively correlated with the residual, refit every weight of the chosen rows by
  non-negative least squares (Lawson & Hanson 1974, ``scipy.optimize.nnls``), repeat. Non-negative
  because a latent's code is (adding a latent moves along +d_j only).
* **Cosine ranking.** ``cos(v, d_j)`` for every latent, largest first.

Each fitted weight is also given in the latent's own units: the vector's α = 1 push
(``typical·v``) equals latent j firing at ``typical·w_j / |d_j|``, i.e. ``that / u_j`` × its typical
value. The latents' top contexts are the store rows (of the first ``rows``) where each fires most,
with the tokens before them in the same sequence.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import torch

from .errors import BadInputError

__all__ = ["Decomposition", "decoder_rows", "decompose", "nonnegative_pursuit", "summary_lines"]

#: Store rows encoded for the latents' typical values and top contexts.
CONTEXT_ROWS = 65_536


@dataclasses.dataclass
class Decomposition:
    """What ``featureforge decompose`` prints; ``to_dict()`` is its ``--json``."""

    vector: str
    run: str
    hook: str
    #: Fitted latents, largest weight first: latent, weight (on the unit row), cosine, code and typical units, contexts.
    fit: list[dict[str, Any]]
    #: 1 − |residual|² / |v|² of the fit, and cos(v, fit).
    explained: float
    fit_cosine: float
    #: Latents by cos(v, d_j), largest first.
    cosine: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decoder_rows(dictionary: Any, block: int = 4096) -> torch.Tensor:
    """[d_dict, d_in] decoder rows in original units: ``decode(e_i) - decode(0)`` (float32, CPU)."""
    d_dict = int(dictionary.d_dict)
    device = next((p.device for p in dictionary.parameters()), torch.device("cpu")) if isinstance(dictionary, torch.nn.Module) else torch.device("cpu")
    parts = []
    with torch.no_grad():
        zero = dictionary.decode(torch.zeros(1, d_dict, device=device))
        for start in range(0, d_dict, block):
            n = min(block, d_dict - start)
            eye = torch.zeros(n, d_dict, device=device)
            eye[torch.arange(n), torch.arange(start, start + n)] = 1.0
            parts.append((dictionary.decode(eye) - zero).float().cpu())
    return torch.cat(parts)


def nonnegative_pursuit(target: torch.Tensor, atoms: torch.Tensor, k: int, tolerance: float = 1e-6) -> tuple[list[int], np.ndarray, torch.Tensor]:
    """(chosen atoms, their non-negative weights, residual): ``target ≈ atomsᵀ[chosen] @ weights``, at most ``k`` atoms.

    ``atoms [n, d]`` should be unit rows (the correlation then ranks by cosine with the residual).
    """
    from scipy.optimize import nnls

    if k < 1:
        raise BadInputError(f"k={k} must be at least 1 (the most latents in the fit)")
    v = target.double().cpu()
    a = atoms.double().cpu()
    chosen: list[int] = []
    weights = np.zeros(0)
    residual = v.clone()
    scale = float(v.norm())
    for _ in range(min(k, a.shape[0])):
        corr = a @ residual
        if chosen:
            corr[chosen] = -float("inf")
        j = int(corr.argmax())
        if float(corr[j]) <= tolerance * scale:
            break  # no row points along what is left
        chosen.append(j)
        weights, _ = nnls(a[chosen].T.numpy(), v.numpy())
        keep = weights > 0
        chosen = [c for c, kept in zip(chosen, keep) if kept]
        weights = weights[keep]
        residual = v - a[chosen].T @ torch.from_numpy(weights)
        if float(residual.norm()) <= tolerance * scale:
            break
    order = np.argsort(-weights, kind="stable")
    return [chosen[i] for i in order], weights[order], residual.float()


def decompose(vector: Any, run: Any, *, store: Any, k: int = 8, top: int = 10, contexts: int = 3, rows: int = CONTEXT_ROWS) -> Decomposition:
    """Express ``vector`` (a folder or :class:`~featureforge.vectors.SteeringVector`) in the latents of ``run`` on ``store``."""
    from .steering import _resolve
    from .vectors import load_vector

    v = load_vector(vector)
    dictionary, opened = _resolve(run, store)
    if v.d_in != int(dictionary.d_in):
        raise BadInputError(f"vector {v.name!r} has width {v.d_in} but the dictionary has d_in={dictionary.d_in}; decompose it in a dictionary of the same hook")
    recorded_hook = (opened.provenance or {}).get("hook")
    if recorded_hook and recorded_hook != v.hook:
        raise BadInputError(f"vector {v.name!r} was made at {v.hook} but store {opened.url} holds {recorded_hook}; use a dictionary trained at {v.hook}")
    raw = decoder_rows(dictionary)
    norms = raw.norm(dim=-1)
    unit = raw / norms.clamp_min(1e-12)[:, None]
    direction = v.direction.float() / v.direction.float().norm()
    chosen, weights, residual = nonnegative_pursuit(direction, unit, k)
    cos = unit @ direction
    ranked = torch.argsort(cos, descending=True)[:top].tolist()
    typical, top_rows = _typical_and_top(dictionary, opened, chosen, contexts, rows)
    decode = _decoder(opened)
    fit = []
    for j, w in zip(chosen, weights):
        code = float(v.typical * w / float(norms[j]))
        entry = {"latent": int(j), "weight": float(w), "cosine": float(cos[j]), "code": code,
                 "typical_units": code / float(typical[j]) if float(typical[j]) > 0 else None, "typical": float(typical[j])}
        if contexts:
            entry["contexts"] = [_context_text(opened, decode, r, act) for r, act in top_rows.get(j, [])]
        fit.append(entry)
    fitted = direction - residual
    explained = 1.0 - float(residual.pow(2).sum()) / float(direction.pow(2).sum())
    fit_cos = float(fitted @ direction / (fitted.norm() * direction.norm())) if float(fitted.norm()) > 0 else 0.0
    return Decomposition(vector=str(v.path or v.name), run=str(run), hook=v.hook, fit=fit, explained=explained, fit_cosine=fit_cos,
                         cosine=[{"latent": int(j), "cosine": float(cos[j])} for j in ranked])


def _typical_and_top(dictionary: Any, store: Any, latents: Sequence[int], n_top: int, rows: int) -> tuple[torch.Tensor, dict[int, list[tuple[int, float]]]]:
    """Each latent's mean non-zero code over the first ``rows`` store rows, and the chosen latents' top (row, code)."""
    from .interventions import typical_values

    rows = min(rows, store.rows)
    block = 8192
    tops: dict[int, list[tuple[int, float]]] = {int(j): [] for j in latents}
    device = next((p.device for p in dictionary.parameters()), torch.device("cpu")) if isinstance(dictionary, torch.nn.Module) else torch.device("cpu")
    blocks = []
    for start in range(0, rows, block):
        acts = torch.from_numpy(np.asarray(store.read(start, min(start + block, rows)))).float()
        blocks.append(acts)
        if n_top and latents:
            with torch.no_grad():
                codes = dictionary.encode(acts.to(device))[:, list(latents)].float().cpu()
            for col, j in enumerate(latents):
                best = torch.topk(codes[:, col], min(n_top, codes.shape[0]))
                tops[int(j)] += [(start + int(i), float(c)) for c, i in zip(best.values, best.indices) if float(c) > 0]
    typical = typical_values(dictionary, blocks, max_rows=rows)
    return typical, {j: sorted(found, key=lambda t: -t[1])[:n_top] for j, found in tops.items()}


def _decoder(store: Any) -> Any:
    """The store's source's token decoder, or None (then ids are shown)."""
    if "token_ids" not in store.columns:
        return None
    try:
        from .evaluation._context import rebuild_source

        source = rebuild_source(store)
        source.decode_tokens([0])
        return source.decode_tokens
    except Exception:  # no tokenizer, the model is gone: show ids
        return None


def _context_text(store: Any, decode: Any, row: int, activation: float, before: int = 8) -> dict[str, Any]:
    """The tokens before ``row`` in its sequence and the row's token.

    The sequence's rows are found by id (``seq_ids``, else ``doc_ids``) and ``positions``: among the
    rows of the row's write-shuffle window (``store.write_window``) in a shuffled store, else among
    the rows just before it.
    """
    if "token_ids" not in store.columns:
        return {"row": row, "activation": activation, "text": "", "token": ""}
    key = next((c for c in ("seq_ids", "doc_ids") if c in store.columns), None)
    window = store.write_window(row) if store.write_shuffle_rows else np.arange(max(0, row - 4 * before), row + 1)
    lo, hi = int(window.min()), int(window.max()) + 1
    picked = [row - lo]
    if key is not None and "positions" in store.columns:
        inside = window - lo
        seq, pos = store.read(lo, hi, key)[inside], store.read(lo, hi, "positions").astype(np.int64)[inside]
        at = int(np.flatnonzero(window == row)[0])
        near = np.flatnonzero((seq == seq[at]) & (pos <= pos[at]) & (pos >= pos[at] - before))
        picked = inside[near[np.argsort(pos[near], kind="stable")]].tolist()
    tokens = [int(t) for t in store.read(lo, hi, "token_ids")[picked]]
    pieces = decode(tokens) if decode is not None else [f"#{t}" for t in tokens]
    return {"row": int(row), "activation": round(activation, 4), "text": "".join(pieces[:-1]), "token": pieces[-1]}


def summary_lines(result: Decomposition) -> list[str]:
    """What ``featureforge decompose`` prints without ``--json``."""
    lines = [f"{result.vector} at {result.hook} in the latents of {result.run}: non-negative fit of {len(result.fit)} latents explains "
             f"{result.explained:.3f} of |v|² (cos {result.fit_cosine:.3f})",
             f"{'latent':>7} {'weight':>7} {'cos':>6} {'× typical':>9}  top contexts (…text [token] activation)"]
    for f in result.fit:
        units = f"{f['typical_units']:.3g}" if f["typical_units"] is not None else "silent"
        shown = "; ".join(f"…{c['text'][-30:]!r}[{c['token']!r}] {c['activation']:.3g}" for c in f.get("contexts", []))
        lines.append(f"{f['latent']:>7} {f['weight']:>7.3f} {f['cosine']:>6.3f} {units:>9}  {shown}")
    lines.append("by cosine: " + ", ".join(f"{c['latent']} ({c['cosine']:.3f})" for c in result.cosine))
    return lines
