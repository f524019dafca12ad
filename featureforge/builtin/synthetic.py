"""``synthetic``: activations with known ground-truth features, for testing dictionary learning.

Each row is a sparse non-negative combination of ``n_features`` random unit directions in
``d_in`` plus Gaussian noise. Feature ``i`` fires independently with probability p_i ∝
(i+1)^-zipf_exponent, scaled so that Σ p_i = ``mean_active``: the number of active features per
row is Poisson-binomial, ≈ Poisson(mean_active) when every p_i is small (the toy-model setup of
Elhage et al. 2022 and Sharkey et al. 2022). Optional correlated pairs and a parent/child hierarchy
(a child only fires with its parent). Rows are generated in fixed blocks seeded by (seed, block),
so any row range is reproducible on its own.

Reproducible bytes: a row is a function of (options, row index) alone, whatever range, chunk size,
thread count, writer count or BLAS kernel produced it. No float sum here goes through a BLAS
kernel whose order depends on those: a row's features are summed one by one in feature order
(float64, products of float32 are exact there), and the dense products of the downstream
gradient use `fixed_matmul`, whose BLAS calls only ever add integers (exact in any order).

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

Planted transcoder (``transcoder=true``): two sites from the same sparse codes, ``in`` (the rows
above, unchanged) and ``out = codes @ F_out + noise`` with its own ``n_features`` random unit
directions ``F_out`` in ``d_out`` dimensions (seeded apart from ``F_in``, noise drawn apart from
``in``'s). The target is then a sparse map of the input, which a transcoder ``in -> out`` can learn;
``F_out`` is stored as ground truth ``features_out`` (the true features of site ``out``; ``features``
stays ``F_in``), so a transcoder's decoder rows are scored by their MMCS to it, and a view
``store.site("out")`` sees it as its ``features``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import numpy as np

from ..errors import OptionError
from ..hookspecs import hookimpl
from ..roles import ActivationSource, Site

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
    transcoder: bool = False
    """Write two sites, in and out = codes @ F_out + noise from the same codes (a planted transcoder; ground truth features_out is F_out)."""
    d_out: int | None = None
    """With transcoder: width of the out site (none: d_in)."""


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
        if o.transcoder and o.downstream:
            raise OptionError("synthetic: transcoder=true writes two sites and downstream=true gradients for one; pass only one of them")
        if o.d_out is not None and (not o.transcoder or o.d_out <= 0):
            raise OptionError(f"synthetic: d_out={o.d_out} needs transcoder=true and must be positive")
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

    @property
    def d_out(self) -> int:
        return self.options.d_out or self.options.d_in

    @property
    def sites(self) -> list[Site]:
        if not self.options.transcoder:
            return super().sites
        return [Site("in", self.d_in, hook="planted transcoder input"), Site("out", self.d_out, hook="planted transcoder output")]

    def provenance(self) -> dict[str, Any]:
        prov = {"generator": "featureforge synthetic", "seed": self.options.seed, "n_features": self.options.n_features}
        if self.options.downstream:
            prov["grads"] = "dL/dx of the synthetic quadratic readout L = 1/2 sum_i a_i (f_i . x)^2"
        if self.options.transcoder:
            prov["transcoder"] = "sites in = codes @ F_in + noise, out = codes @ F_out + noise (ground truth features_out = F_out)"
        return prov

    # -- ground truth -------------------------------------------------------------------------
    @functools.cached_property
    def _truth(self) -> dict[str, np.ndarray]:
        o = self.options
        rng = np.random.Generator(np.random.PCG64([o.seed, 0]))
        features = rng.standard_normal((o.n_features, o.d_in))
        # math.fsum is exactly rounded: these sums cannot depend on how numpy orders a reduction.
        features /= np.sqrt([math.fsum(row * row) for row in features])[:, None]
        weights = (np.arange(o.n_features) + 1.0) ** -o.zipf_exponent
        p = np.minimum(weights / math.fsum(weights) * o.mean_active, 0.95)
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
        if o.transcoder:
            out_rng = np.random.Generator(np.random.PCG64([o.seed, 3]))
            target = out_rng.standard_normal((o.n_features, self.d_out))
            target /= np.sqrt([math.fsum(row * row) for row in target])[:, None]
            truth["features_out"] = target.astype(np.float32)
        if o.downstream:
            pick = np.random.Generator(np.random.PCG64([o.seed, 2]))
            important = np.zeros(o.n_features, dtype=bool)
            important[pick.choice(o.n_features // 2, size=o.important_features, replace=False)] = True
            truth["important"] = important
            truth["importance"] = np.where(important, o.important_weight, o.unimportant_weight).astype(np.float32)
        return truth

    def ground_truth(self) -> dict[str, np.ndarray]:
        return dict(self._truth)

    @functools.cached_property
    def _features64(self) -> np.ndarray:
        """The true directions widened once to float64 (exact), for the fixed-order sums."""
        return self._truth["features"].astype(np.float64)

    @functools.cached_property
    def _readout(self) -> np.ndarray:
        """F^T diag(a) F [d_in, d_in] (float64): the quadratic readout's gradient is x @ this."""
        f = self._features64
        return fixed_matmul(f.T * self._truth["importance"].astype(np.float64), f)

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
        rows, cols = np.nonzero(mask)
        codes[rows, cols] = np.abs(rng.normal(o.magnitude_mean, o.magnitude_std, size=len(rows))).astype(np.float32)
        if o.downstream:
            codes *= np.where(truth["important"], o.quiet_scale, 1.0).astype(np.float32)
        acts = _sparse_rows(n, rows, cols, codes[rows, cols], self._features64).astype(np.float32)
        acts += rng.normal(0.0, o.noise_std, size=acts.shape).astype(np.float32) if o.noise_std > 0 else 0.0
        return acts, codes

    def _grads(self, acts: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """dL/dx = F^T diag(a) F x of the downstream readout per row; gated: active features only."""
        x = acts.astype(np.float64)
        if codes is None:
            return fixed_matmul(x, self._readout).astype(np.float32)
        # Gated: only a row's active features, each a_i (f_i . x) f_i, summed in feature order.
        f = self._features64
        rows, cols = np.nonzero(codes)
        proj = np.zeros(len(rows))
        for j in range(f.shape[1]):  # the dot products f_i . x, column by column: a fixed order
            proj += x[rows, j] * f[cols, j]
        weights = proj * self._truth["importance"][cols]
        return _sparse_rows(len(x), rows, cols, weights, f).astype(np.float32)

    def _range(self, start: int, stop: int, which: tuple[int, ...]) -> list[np.ndarray]:
        """Parts ``which`` (0 acts, 1 codes) of rows ``start:stop``, each block generated once."""
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
        blocks = [self._block(b) for b in range(first, last + 1)]
        offset = first * BLOCK_ROWS
        out = []
        for part in which:
            parts = [blk[part] for blk in blocks]
            whole = np.concatenate(parts) if len(parts) > 1 else parts[0]
            out.append(np.ascontiguousarray(whole[start - offset : stop - offset]))
        return out

    def _target(self, codes: np.ndarray, start: int) -> np.ndarray:
        """The planted transcoder's ``out`` rows for ``codes`` of rows ``start:...`` (noise seeded per row block)."""
        o = self.options
        rows, cols = np.nonzero(codes)
        out = _sparse_rows(len(codes), rows, cols, codes[rows, cols], self._truth["features_out"].astype(np.float64)).astype(np.float32)
        if o.noise_std > 0:
            first, last = start // BLOCK_ROWS, (start + len(codes) - 1) // BLOCK_ROWS
            noise = np.concatenate([np.random.Generator(np.random.PCG64([o.seed, 4, b])).normal(0.0, o.noise_std, size=(BLOCK_ROWS, self.d_out))
                                    for b in range(first, last + 1)]).astype(np.float32)
            out += noise[start - first * BLOCK_ROWS : start - first * BLOCK_ROWS + len(codes)]
        return out

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self.options.transcoder:
            acts, codes = self._range(start, stop, (0, 1))
            return {"acts": acts, "out": self._target(codes, start)}
        if not self.options.downstream:
            return {"acts": self._range(start, stop, (0,))[0]}
        if self.options.readout == "gated":
            acts, codes = self._range(start, stop, (0, 1))
            return {"acts": acts, "grads": self._grads(acts, codes)}
        acts = self._range(start, stop, (0,))[0]
        return {"acts": acts, "grads": self._grads(acts)}

    def codes(self, start: int, stop: int) -> np.ndarray:
        """True feature coefficients of rows ``start:stop`` ([n, n_features], zero where inactive)."""
        return self._range(start, stop, (1,))[0]


def _sparse_rows(n: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """[n, d] float64 sums ``out[r] = sum values[t] * directions[cols[t]]`` over the terms t of row r.

    ``(rows, cols)`` come row-major, as ``np.nonzero`` gives them. Each row adds its terms in
    increasing column order, in float64 where a product of two float32 is exact: one fixed order
    of additions, so a row's sum is the same whatever rows come with it (no BLAS, whose summation
    order depends on the kernel, threads and matrix shape). Rows go in slabs to stay in cache.
    """
    directions = np.asarray(directions, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros((n, directions.shape[1]))
    edges = np.searchsorted(rows, np.arange(0, n + _SLAB, _SLAB))
    for slab, (first, last) in enumerate(zip(edges[:-1], edges[1:])):
        if first == last:
            continue
        r, c = rows[first:last] - slab * _SLAB, cols[first:last]
        counts = np.bincount(r, minlength=_SLAB)
        slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
        order = np.argsort(slot, kind="stable")  # by term number, rows ascending within each
        bounds = np.searchsorted(slot[order], np.arange(int(counts.max()) + 1))
        terms = directions[c[order]]
        terms *= values[first:last][order, None]
        target = r[order]
        part = out[slab * _SLAB : (slab + 1) * _SLAB]
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # the k-th term of every row that has one
            part[target[lo:hi]] += terms[lo:hi]
    return out


_SLAB = 256  # rows summed together: their terms stay in cache


def _integer_slices(x: np.ndarray, axis: int, bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two (integers, unit) slices of ``x`` scaled per row (axis=1) or column (axis=0).

    ``x ≈ q1 * u1 + q2 * u2`` with integer-valued ``|q| < 2**bits`` and ``u`` powers of two
    (the error-free splitting of Ozaki et al. 2012, "Error-free transformations of matrix
    multiplication by using fast routines of matrix multiplication").
    """
    _, exponent = np.frexp(np.max(np.abs(x), axis=axis, keepdims=True))  # max |x| < 2**exponent
    slices = []
    rest = x
    for s in (1, 2):
        unit = np.ldexp(1.0, exponent - bits * s)
        q = np.trunc(rest / unit)
        slices.append((q, unit))
        rest = rest - q * unit
    return slices


def fixed_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64 whose every bit is independent of BLAS kernel, threads and row count.

    Both sides are split into integer slices small enough that every sum inside the BLAS call
    stays below 2**53: integer sums are exact in any order, so the kernel's blocking, FMA use
    and thread split cannot change them. The slice products are then combined in a fixed order
    (the smallest, q2·q2, is dropped: below 2**-40 of the result's scale). A row of the result
    depends on that row of ``a`` alone. Costs three float64 products instead of one.
    """
    k = a.shape[1]
    bits = (53 - max(1, math.ceil(math.log2(max(k, 2))))) // 2
    (qa1, ua1), (qa2, ua2) = _integer_slices(np.asarray(a, np.float64), 1, bits)
    (qb1, ub1), (qb2, ub2) = _integer_slices(np.asarray(b, np.float64), 0, bits)
    high = (qa1 @ qb1) * ua1 * ub1
    low = (qa1 @ qb2) * ua1 * ub2 + (qa2 @ qb1) * ua2 * ub1
    return high + low


@hookimpl
def featureforge_register_sources(register):
    register(SyntheticSource)
