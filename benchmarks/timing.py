"""Timing of the encoder's matmul, the FLOP bound that training-speed figures are compared with.

One loop for every script that reports "fraction of the matmul bound" or "bf16 over fp32", so that
they time the same thing the same way (inputs made once, warm-up calls first, one call per sample).
Import it from a script in benchmarks/ as ``import timing``.
"""

from __future__ import annotations

import time


def matmul_seconds(batch: int, d_in: int, d_out: int, dtype, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``[batch, d_in] @ [d_in, d_out]`` in ``dtype``."""
    import torch

    a, b = torch.randn(batch, d_in, dtype=dtype), torch.randn(d_in, d_out, dtype=dtype)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return times
