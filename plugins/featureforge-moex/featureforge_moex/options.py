"""Options of the ``moex`` and ``switch`` trainers: one dataclass each, a docstring under every field.

Both dictionaries have ``d_dict = n_experts * expert_width`` latents; a width that does not
split evenly into the experts is refused in one line (again once ``d_in`` is known, when the
width comes from ``expansion_factor``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from featureforge import OptionError


DEFAULT_EXPANSION = 8


def check_top_k(top_k: int, n_experts: int) -> None:
    """Refuse a top-k the experts cannot satisfy, in one line."""
    if n_experts < 1:
        raise OptionError(f"n_experts={n_experts} must be at least 1; use e.g. -o n_experts=8")
    if not 1 <= top_k <= n_experts:
        raise OptionError(f"top_k={top_k} must be between 1 and n_experts={n_experts}; lower top_k or add experts")


def expert_width_for(d_dict: int | None, expansion_factor: int | None, n_experts: int, d_in: int | None) -> int | None:
    """Latents per expert, refusing widths the experts do not divide; None while d_in is unknown."""
    if d_dict is not None and expansion_factor is not None:
        raise OptionError(f"give d_dict ({d_dict}) or expansion_factor ({expansion_factor}), not both; drop one of them")
    if d_dict is None and d_in is None:
        return None
    total = d_dict if d_dict is not None else d_in * (expansion_factor or DEFAULT_EXPANSION)
    if total <= 0:
        raise OptionError(f"d_dict={total} must be positive; use e.g. -o d_dict=4096")
    if total % n_experts:
        raise OptionError(f"d_dict={total} is not divisible by n_experts={n_experts} (expert width must divide the dictionary); use e.g. d_dict={total - total % n_experts or n_experts}")
    return total // n_experts


@dataclasses.dataclass
class _RoutedOptions:
    d_dict: int | None = None
    """Total latents over all experts; default: expansion_factor x d_in."""
    expansion_factor: int | None = None
    """Latents per input dimension when d_dict is not given (default 8)."""
    n_experts: int = 8
    """Number of experts; each holds d_dict / n_experts latents."""
    k: int = 32
    """Active latents per row: TopK over the routed experts' latents."""
    lb_coef: float = 0.01
    """Weight alpha of the Switch load-balancing loss alpha * N * sum_i f_i P_i (Fedus et al. 2021; Mudide et al.: 0.01)."""
    b_dec_init: Literal["mean", "zeros"] = "mean"
    """Initial decoder bias: mean of the initialisation sample, or zeros."""

    top_k_experts = 1

    def __post_init__(self) -> None:
        if self.n_experts < 1:
            raise OptionError(f"n_experts={self.n_experts} must be at least 1; use e.g. -o n_experts=8")
        if self.k <= 0:
            raise OptionError(f"k={self.k} must be positive; use e.g. -o k=32")
        if not self.lb_coef >= 0:
            raise OptionError(f"lb_coef={self.lb_coef} must be >= 0; use 0 to turn load balancing off")
        if self.expansion_factor is not None and self.expansion_factor <= 0:
            raise OptionError(f"expansion_factor={self.expansion_factor} must be positive; use e.g. -o expansion_factor=8")
        check_top_k(self.top_k_experts, self.n_experts)
        width = expert_width_for(self.d_dict, self.expansion_factor, self.n_experts, None)
        if width is not None:
            self._check_k(width)

    def _check_k(self, width: int) -> None:
        routed = self.top_k_experts * width
        if self.k > routed:
            raise OptionError(f"k={self.k} exceeds the {routed} latents of the routed experts ({self.top_k_experts} x {width}); lower k or widen the experts")

    def expert_width(self, d_in: int) -> int:
        """Latents per expert for rows of width ``d_in``."""
        width = expert_width_for(self.d_dict, self.expansion_factor, self.n_experts, d_in)
        assert width is not None
        self._check_k(width)
        return width


@dataclasses.dataclass
class MoEXOptions(_RoutedOptions):
    """Options of the ``moex`` trainer (Yang et al. 2025)."""

    top_k: int = 2
    """Experts each row is routed to (paper: 2 of 8)."""

    def __post_init__(self) -> None:
        self.top_k_experts = self.top_k
        super().__post_init__()


@dataclasses.dataclass
class SwitchOptions(_RoutedOptions):
    """Options of the ``switch`` trainer (Mudide et al. 2024): one expert per row."""
