"""``synthetic``: activations with known ground-truth features, for testing dictionary learning.

Each row is a sparse non-negative combination of ``n_features`` random unit directions in
``d_in`` plus Gaussian noise. Feature ``i`` fires independently with probability p_i ∝
(i+1)^-zipf_exponent, scaled so that Σ p_i = ``mean_active``: the number of active features per
row is Poisson-binomial, ≈ Poisson(mean_active) when every p_i is small (the toy-model setup of
Elhage et al. 2022 and Sharkey et al. 2022). Optional correlated pairs and a parent/child hierarchy
(a child only fires with its parent). Rows are generated in fixed blocks seeded by (seed, block),
so any row range is reproducible on its own.

Downstream loss (``downstream=true``): a fixed quadratic readout ``L(x) = 1/2 sum_i a_i (f_i . x)^2``
over the true directions ``f_i``, with weight ``a_i = important_weight`` on ``important_features``
features chosen among the frequent half (seeded) and ``a_i = unimportant_weight`` on the rest; the
important features' coefficients are also multiplied by ``quiet_scale`` (quiet but important).
The source then also emits ``grads = dL/dx = sum_i a_i (f_i . x) f_i`` per row (deterministic, like
the rows) and the ground truth gains ``importance`` (the a_i) and ``important`` (bool mask). With
the default ``downstream=false`` nothing changes: same rows, same ground truth, no grads.

``readout=gated`` sums only over the features active on the row (a downstream circuit that
listens to a feature when it is present): ``grads = sum_{i active} a_i (f_i . x) f_i``. With more
features than dimensions, ``f_i . x`` carries crosstalk from every active feature, so under the
quadratic readout all important directions pull on the gradient of every row, present or not;
under the gated one a row's gradient points at the important features it actually contains.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import numpy as np

from ..errors import OptionError
from ..hookspecs import hookimpl
from ..roles import ActivationSource

BLOCK_ROWS = 4096


@dataclasses.dataclass
class SyntheticOptions:
    d_in: int = 64
    """Width of each activation row."""
    n_features: int = 512
    """Number of true feature directions (may exceed d_in: superposition)."""
    mean_active: float = 5.0
    """Expected number of active features per row."""
    zipf_exponent: float = 1.0
    """Feature i fires with probability proportional to (i+1)^-zipf_exponent; 0 is uniform."""
    magnitude_mean: float = 1.0
    """Mean of an active feature's coefficient (coefficients are |N(mean, std)|, so positive)."""
    magnitude_std: float = 0.25
    """Spread of an active feature's coefficient."""
    noise_std: float = 0.01
    """Standard deviation of Gaussian noise added to every dimension."""
    correlated_pairs: int = 0
    """Number of feature pairs (a, b) where b also fires with a, with probability `correlation`."""
    correlation: float = 0.5
    """Probability that the partner of a correlated pair fires with it."""
    hierarchy_parents: int = 0
    """Number of parent features, each with `children_per_parent` children that fire only with it."""
    children_per_parent: int = 2
    """Children of each parent feature."""
    child_probability: float = 0.5
    """Probability that a child fires when its parent does."""
    seed: int = 0
    """Seed of the feature directions and of every row."""
    downstream: bool = False
    """Add a fixed downstream loss and emit its gradient dL/dx as `grads` (see the module docstring)."""
    important_features: int = 32
    """With downstream: features the loss depends on strongly (picked among the more frequent half)."""
    quiet_scale: float = 0.25
    """With downstream: factor on the important features' coefficients (quiet but important)."""
    important_weight: float = 16.0
    """With downstream: loss weight a_i of an important feature."""
    unimportant_weight: float = 0.05
    """With downstream: loss weight a_i of every other feature."""
    readout: Literal["quadratic", "gated"] = "quadratic"
    """With downstream: quadratic reads every direction on every row; gated reads a feature only on rows where it fires (see the module docstring)."""


class SyntheticSource(ActivationSource):
    name = "synthetic"
    description = "Sparse combinations of known random feature directions plus noise (ground truth for evaluation)"
    Options = SyntheticOptions

    def __post_init__(self) -> None:
        o = self.options
        if o.d_in <= 0 or o.n_features <= 0:
            raise OptionError("synthetic: d_in and n_features must be positive")
        if not 0 < o.mean_active <= o.n_features:
            raise OptionError(f"synthetic: mean_active={o.mean_active} must be in (0, n_features={o.n_features}]")
        if o.hierarchy_parents * (1 + o.children_per_parent) + 2 * o.correlated_pairs > o.n_features:
            raise OptionError("synthetic: hierarchy_parents*(1+children_per_parent) + 2*correlated_pairs exceeds n_features")
        if o.downstream:
            if not 0 < o.important_features <= o.n_features // 2:
                raise OptionError(f"synthetic: important_features={o.important_features} must be in [1, n_features/2={o.n_features // 2}]")
            if not (o.quiet_scale > 0 and o.important_weight >= 0 and o.unimportant_weight >= 0):
                raise OptionError("synthetic: quiet_scale must be > 0 and important_weight, unimportant_weight >= 0")

    @property
    def columns(self) -> dict[str, str]:
        return {"grads": "float32"} if self.options.downstream else {}

    @property
    def d_in(self) -> int:
        return self.options.d_in

    def provenance(self) -> dict[str, Any]:
        prov = {"generator": "featureforge synthetic", "seed": self.options.seed, "n_features": self.options.n_features}
        if self.options.downstream:
            prov["grads"] = "dL/dx of the synthetic quadratic readout L = 1/2 sum_i a_i (f_i . x)^2"
        return prov

    # -- ground truth -------------------------------------------------------------------------
    @functools.cached_property
    def _truth(self) -> dict[str, np.ndarray]:
        o = self.options
        rng = np.random.Generator(np.random.PCG64([o.seed, 0]))
        features = rng.standard_normal((o.n_features, o.d_in))
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        weights = (np.arange(o.n_features) + 1.0) ** -o.zipf_exponent
        p = np.minimum(weights / weights.sum() * o.mean_active, 0.95)
        parent = np.full(o.n_features, -1, dtype=np.int64)
        partner = np.full(o.n_features, -1, dtype=np.int64)
        nxt = 0
        for _ in range(o.hierarchy_parents):
            par = nxt
            nxt += 1
            for _ in range(o.children_per_parent):
                parent[nxt] = par
                nxt += 1
        for _ in range(o.correlated_pairs):
            partner[nxt + 1] = nxt
            nxt += 2
        truth = {
            "features": features.astype(np.float32),
            "frequencies": p,
            "parents": parent,
            "partners": partner,
        }
        if o.downstream:
            pick = np.random.Generator(np.random.PCG64([o.seed, 2]))
            important = np.zeros(o.n_features, dtype=bool)
            important[pick.choice(o.n_features // 2, size=o.important_features, replace=False)] = True
            truth["important"] = important
            truth["importance"] = np.where(important, o.important_weight, o.unimportant_weight).astype(np.float32)
        return truth

    def ground_truth(self) -> dict[str, np.ndarray]:
        return dict(self._truth)

    # -- rows ---------------------------------------------------------------------------------
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(acts [BLOCK_ROWS, d_in] float32, codes [BLOCK_ROWS, n_features] float32) of one block."""
        o = self.options
        truth = self._truth
        rng = np.random.Generator(np.random.PCG64([o.seed, 1, block]))
        n, f = BLOCK_ROWS, o.n_features
        mask = rng.random((n, f), dtype=np.float32) < truth["frequencies"].astype(np.float32)
        for child in np.flatnonzero(truth["parents"] >= 0):
            mask[:, child] = mask[:, truth["parents"][child]] & (rng.random(n) < o.child_probability)
        for b in np.flatnonzero(truth["partners"] >= 0):
            a = truth["partners"][b]
            mask[:, b] |= mask[:, a] & (rng.random(n) < o.correlation)
        codes = np.zeros((n, f), dtype=np.float32)
        active = np.nonzero(mask)
        codes[active] = np.abs(rng.normal(o.magnitude_mean, o.magnitude_std, size=len(active[0]))).astype(np.float32)
        if o.downstream:
            codes *= np.where(truth["important"], o.quiet_scale, 1.0).astype(np.float32)
        acts = codes @ truth["features"]
        acts += rng.normal(0.0, o.noise_std, size=acts.shape).astype(np.float32) if o.noise_std > 0 else 0.0
        return acts.astype(np.float32, copy=False), codes

    def _grads(self, acts: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """dL/dx = F^T diag(a) F x of the downstream readout per row; gated: active features only."""
        f = self._truth["features"]
        weights = (acts @ f.T) * self._truth["importance"]
        if codes is not None:
            weights *= codes > 0
        return (weights @ f).astype(np.float32)

    def _range(self, start: int, stop: int, which: int) -> np.ndarray:
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
        parts = [self._block(b)[which] for b in range(first, last + 1)]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        offset = first * BLOCK_ROWS
        return np.ascontiguousarray(out[start - offset : stop - offset])

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        acts = self._range(start, stop, 0)
        if self.options.downstream:
            codes = self._range(start, stop, 1) if self.options.readout == "gated" else None
            return {"acts": acts, "grads": self._grads(acts, codes)}
        return {"acts": acts}

    def codes(self, start: int, stop: int) -> np.ndarray:
        """True feature coefficients of rows ``start:stop`` ([n, n_features], zero where inactive)."""
        return self._range(start, stop, 1)


@hookimpl
def featureforge_register_sources(register):
    register(SyntheticSource)
