"""``featureforge compare``: which latents of several dictionaries are the same feature.

For every pair of runs (A, B), each of A's latents gets its best B-latent and its one-to-one
(Hungarian) partner under up to three similarities:

- **decoder** cosine of the decoder rows and **encoder** cosine of the encoder rows (runs on one
  store only: directions of different models live in different spaces);
- **activation** Pearson correlation of the codes over the same eval rows (any runs whose rows
  line up: one store, or stores of different models over the same tokens).

Rules from the literature, reported beside the raw scores:

- Paulo & Belrose 2025 ("Sparse autoencoders trained on the same data learn different features"):
  a latent is *shared* when its decoder-Hungarian partner matches above ``rule_threshold`` (0.7)
  by decoder cosine and that same pair by encoder cosine too.
- Gurnee et al. 2024 ("Universal Neurons in GPT2 Language Models"): a unit's *excess correlation*
  is its best activation correlation with B's units minus its best with a random rotation of B's
  units (the baseline); averaged over the other runs, units above ``excess_threshold`` (0.5) are
  *universal*.

Everything is streamed: similarity matrices in row blocks (``_match``, ``_similarity``), correlations
in one pass over the rows per ``memory`` floats of accumulators (``_correlation``), so dictionaries
far larger than memory-sized dense matrices are compared exactly up to the sparse matching's
candidates. The runs are loaded by ``_runs``; the report and its folder are ``_report``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import BadInputError, OptionError
from ..store import ActivationStore
from ._match import DENSE_LIMIT
from ._report import COMPARE_FILE, PAIRS_DIR, _check_out, _report, _write, pair_file
from ._rows import aligned_rows
from ._runs import _expand, _load, _Pair
from ._similarity import _activation_matches, _direction_matches

__all__ = ["COMPARE_FILE", "DEFAULT_THRESHOLDS", "PAIRS_DIR", "compare", "pair_file"]

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.9)
#: Paulo & Belrose's cosine threshold for a shared latent.
RULE_THRESHOLD = 0.7
#: Gurnee et al.'s excess correlation above which a unit is universal.
EXCESS_THRESHOLD = 0.5
#: float64 accumulator entries per pass over the rows (256 MiB).
DEFAULT_MEMORY = 1 << 25
#: Largest unit count for which the rotation baseline is computed unless asked for.
AUTO_BASELINE_MAX = 2048


def compare(
    runs: Sequence[str | os.PathLike],
    *,
    store: str | os.PathLike | ActivationStore | Sequence[Any] | None = None,
    out: str | os.PathLike | None = None,
    rows: int | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    rule_threshold: float = RULE_THRESHOLD,
    excess_threshold: float = EXCESS_THRESHOLD,
    baseline: bool | None = None,
    batch_size: int = 0,
    memory: int = DEFAULT_MEMORY,
    dense_limit: int = DENSE_LIMIT,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Match the latents of every pair of ``runs``; returns the report (``compare.json``).

    ``runs`` are run folders (a sweep folder stands for its members). ``store`` is one store for
    all runs, one per run (stores of different models over the same tokens), or None for each
    run's recorded store. ``rows`` caps the eval rows (default: the runs' held-out rows when they
    share them, else the store's first 65,536). ``baseline`` computes Gurnee et al.'s rotated
    baseline (default: when every dictionary has at most 2,048 units). ``out`` is the folder
    written: ``compare.json``, ``pairs/I-J.json`` (per-latent matches) and ``plots/``.
    """
    import torch

    paths = _expand(runs)
    if len(paths) < 2:
        raise BadInputError(f"compare needs at least two runs, got {len(paths)}; pass two or more run folders (or a sweep folder)")
    for name, value in (("--rule-threshold", rule_threshold), ("--excess-threshold", excess_threshold), *((f"threshold {t}", t) for t in thresholds)):
        if not -1.0 <= float(value) <= 1.0:
            raise OptionError(f"{name} must lie in [-1, 1], got {value}")
    if memory < 1:
        raise OptionError(f"memory must be positive, got {memory}")
    if out is not None:
        _check_out(Path(out))
    loaded = _load(paths, store)
    aligned, which = aligned_rows([r.store for r in loaded], [r.config for r in loaded], rows)
    if baseline is None:
        baseline = max(r.m for r in loaded) <= AUTO_BASELINE_MAX
    pairs = [_Pair(i, j, directions=which[i] == which[j]) for i in range(len(loaded)) for j in range(i + 1, len(loaded))]
    with torch.no_grad():
        for pair in pairs:
            if pair.directions:
                _direction_matches(loaded[pair.i], loaded[pair.j], pair, memory, dense_limit)
        _activation_matches(loaded, aligned, which, pairs, bool(baseline), memory, dense_limit, batch_size, seed, progress)
    report = _report(loaded, aligned, pairs, thresholds, rule_threshold, excess_threshold, bool(baseline))
    arrays = {key: report.pop(key) for key in ("_freq", "_excess", "_best")}
    if out is not None:
        report["out"] = str(out)
        _write(Path(out), loaded, pairs, report, arrays, rule_threshold, excess_threshold)
    return report
