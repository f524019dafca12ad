"""Choosing the learning rate when none is given: a short race of candidates inside the run.

A fixed rule (2e-4 at 2^14 latents, scaled by the square root of the width) is tuned for runs of
billions of tokens; on the runs of a few hundred steps that fit a CPU it is 10x too small (FVU
0.45 against 0.17 at 3e-3 on a 384-wide synthetic store after 600k rows; docs/benchmarks.md). So
when ``--lr`` is not given the loop trains one copy of each dictionary per candidate rate, all
from the same initialisation and on the same batches, for the first few percent of the steps,
then keeps the copy with the lowest FVU on the probe's last rows and drops the others. Each batch
is scored before the step that learns from it, so the score is on rows the copy has not trained on
(held-out in effect, as in a single pass). The kept copy goes on training: the probe's rows are
not wasted, only the losers' compute is.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

#: Probes shorter than this many steps cannot rank the candidates: the trainer's rate is used.
MIN_PROBE_STEPS = 8


@dataclasses.dataclass
class Candidate:
    """One learning rate in the race, with the FVU sums of its scored batches."""

    lr: float
    num: float = 0.0
    den: float = 0.0

    @property
    def fvu(self) -> float:
        return self.num / self.den if self.den else float("inf")


def probe_steps(total_steps: int, fraction: float, n_candidates: int) -> int:
    """Steps the race lasts (0: no race): ``fraction`` of the run, at least MIN_PROBE_STEPS, at most a quarter."""
    if fraction <= 0 or n_candidates < 2:
        return 0
    steps = max(MIN_PROBE_STEPS, round(fraction * total_steps))
    return steps if steps <= total_steps // 4 else 0


def scored(step: int, probe: int) -> bool:
    """Whether ``step``'s batch counts in the race: the probe's second half, when the rates have had time to act."""
    return probe // 2 <= step < probe


def winner(candidates: Sequence[Candidate]) -> int:
    """Index of the lowest FVU; ties (and non-finite scores) go to the smaller rate, the safer choice."""
    finite = [i for i, c in enumerate(candidates) if c.fvu == c.fvu and c.fvu != float("inf")]
    if not finite:
        return min(range(len(candidates)), key=lambda i: candidates[i].lr)
    return min(finite, key=lambda i: (candidates[i].fvu, candidates[i].lr))


def record(candidates: Sequence[Candidate], chosen: int, steps: int, batch_size: int) -> dict:
    """What config.json keeps of the race (``lr_search``)."""
    return {
        "chosen_lr": candidates[chosen].lr,
        "probe_steps": steps,
        "probe_rows": steps * batch_size,
        "scored": "fvu on each batch before its step, second half of the probe",
        "candidates": [{"lr": c.lr, "fvu": c.fvu} for c in candidates],
    }
