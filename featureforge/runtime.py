"""Process and device settings: the device rule, and what the CLI sets before torch loads (an opt-in for library users).

torch's OpenMP runtime (libgomp) keeps its workers spinning for ~300,000 iterations (several ms)
after every parallel region. The sparse kernels then run work on plain Python threads (row-parallel
top-k) that those spinning workers starve on a 2-core machine (small-shape step 31-36 -> 24-29 ms
with a short spin, docs/benchmarks.md). libgomp reads the setting once, when torch loads, so it
only helps before the first ``import torch``. ``import featureforge`` changes no environment
variable; the ``featureforge`` command calls :func:`short_openmp_spin` at start, and a script may
call it first thing::

    import featureforge.runtime
    featureforge.runtime.short_openmp_spin()
    import torch
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: libgomp spin iterations after a parallel region when featureforge chooses them.
SHORT_SPIN = "10000"


def short_openmp_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` to a short spin unless torch is loaded or the user chose a policy.

    Returns whether it set it. A user's ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is kept; once torch
    is imported the setting would be ignored, so it is left alone then too.
    """
    if "torch" in sys.modules or {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
        return False
    os.environ["GOMP_SPINCOUNT"] = SHORT_SPIN
    return True


def resolve_device(device: str | None = "auto") -> "torch.device":
    """The one rule for ``device``: ``auto`` (or empty) is CUDA when torch sees a GPU, else the CPU.

    Anything else must be a torch device name; asking for CUDA where there is none is refused in
    one line instead of failing later inside torch.
    """
    import torch

    from .errors import OptionError

    if not device or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise OptionError(f"device {device!r} is not a torch device; pass cpu, cuda, cuda:1 or auto") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} asked for but torch sees no CUDA GPU; pass cpu (or auto)")
    return chosen
