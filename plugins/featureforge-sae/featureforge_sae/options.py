"""Options of the trainers: one dataclass each, a docstring under every field.

``featureforge train --trainer topk -o k=64 -o d_dict=16384`` fills these by field type; a bad
combination raises ``featureforge.OptionError`` naming the fix. ``d_dict`` may depend on the
store's ``d_in`` (through ``expansion_factor``), so the checks that need it run again when the
trainer builds its dictionary.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

from featureforge import OptionError

DEFAULT_EXPANSION = 8


def _check_width(d_dict: int | None, expansion_factor: int | None) -> None:
    if d_dict is not None and expansion_factor is not None:
        raise OptionError(f"give d_dict ({d_dict}) or expansion_factor ({expansion_factor}), not both; drop one of them")
    if d_dict is not None and d_dict <= 0:
        raise OptionError(f"d_dict={d_dict} must be positive; use e.g. -o d_dict=4096")
    if expansion_factor is not None and expansion_factor <= 0:
        raise OptionError(f"expansion_factor={expansion_factor} must be positive; use e.g. -o expansion_factor=8")


def resolve_d_dict(d_dict: int | None, expansion_factor: int | None, d_in: int) -> int:
    """Latent count for rows of width ``d_in``."""
    if d_dict is not None:
        return int(d_dict)
    return int(d_in) * int(expansion_factor if expansion_factor is not None else DEFAULT_EXPANSION)


@dataclasses.dataclass
class TopKOptions:
    """Options of the ``topk`` trainer (Gao et al. 2024)."""

    d_dict: int | None = None
    """Number of latents; default: expansion_factor x d_in."""
    expansion_factor: int | None = None
    """Latents per input dimension when d_dict is not given (default 8)."""
    k: int = 32
    """Active latents per row."""
    dead_after: int | None = None
    """Rows without firing after which a latent counts as dead and joins the AuxK loss; default: the loop's `-t dead_after`, else 1,000 mean firing intervals (1000 * d_dict / k rows, at most Gao et al.'s 10M)."""
    k_aux: int | None = None
    """Dead latents per row that reconstruct the residual in the AuxK loss; default d_in // 2 (Gao et al. appendix B.1)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al.: 1/32); 0 turns it off."""
    decoder_impl: Literal["sparse", "dense"] = "sparse"
    """sparse: fused top-k encoder and gather decoder with sparse backward passes; dense: the eager reference (slow, for checks)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias: geometric median (Weiszfeld) or mean of the initialisation sample, or zeros."""
    decoder: Literal["free", "unit"] = "free"
    """free: decoder rows keep the norm Adam gives them, starting at init_decoder_norm (as SAELens's TopK trains); unit: rows held at unit norm (gradient along each row removed, rows renormalised after every step; Gao et al. 2024). docs/benchmarks.md, "Decoder parametrisation"."""
    init_decoder_norm: float = 0.1
    """Norm of every decoder row at initialisation when decoder=free (SAELens's decoder_init_norm); the encoder keeps nn.Linear's initialisation."""
    unit_gradient: bool = True
    """Adam steps on the gradient scaled to unit global norm (what SAELens's clip at 1.0 does to its MSE gradients, which stay above 1 in training units); false: the raw FVU gradient. docs/benchmarks.md, "Decoder parametrisation"."""

    def __post_init__(self) -> None:
        _check_width(self.d_dict, self.expansion_factor)
        if not self.init_decoder_norm > 0:
            raise OptionError(f"init_decoder_norm={self.init_decoder_norm} must be positive; use e.g. -o init_decoder_norm=0.1")
        if self.k <= 0:
            raise OptionError(f"k={self.k} must be positive; use e.g. -o k=32")
        if self.d_dict is not None and self.k >= self.d_dict:
            raise OptionError(f"k={self.k} must be smaller than d_dict={self.d_dict}; lower k or raise d_dict")
        if self.dead_after is not None and self.dead_after <= 0:
            raise OptionError(f"dead_after={self.dead_after} must be a positive number of rows; use e.g. -o dead_after=10000000")
        if self.k_aux is not None and self.k_aux <= 0:
            raise OptionError(f"k_aux={self.k_aux} must be positive; leave it unset for d_in // 2, or set aux_coef=0 to turn AuxK off")
        if not self.aux_coef >= 0:
            raise OptionError(f"aux_coef={self.aux_coef} must be >= 0; use 0 to turn the AuxK loss off")

    def check_for(self, d_in: int) -> int:
        """``d_dict`` for this ``d_in``, refusing combinations that only fail once it is known."""
        d_dict = resolve_d_dict(self.d_dict, self.expansion_factor, d_in)
        if self.k >= d_dict:
            raise OptionError(f"k={self.k} must be smaller than d_dict={d_dict} (d_in={d_in}); lower k or raise d_dict/expansion_factor")
        return d_dict


@dataclasses.dataclass
class BatchTopKOptions(TopKOptions):
    """Options of the ``batchtopk`` trainer (Bussmann, Leask & Nanda 2024)."""

    threshold_lr: float = 0.01
    """Step of the running average that estimates the inference threshold from each batch's smallest kept activation (SAELens: 0.01)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_lr <= 1:
            raise OptionError(f"threshold_lr={self.threshold_lr} must be in (0, 1]; use e.g. -o threshold_lr=0.01")


@dataclasses.dataclass
class ReLUOptions:
    """Options of the ``relu`` trainer (ReLU + decoder-norm-weighted L1; Anthropic, April 2024)."""

    d_dict: int | None = None
    """Number of latents; default: expansion_factor x d_in."""
    expansion_factor: int | None = None
    """Latents per input dimension when d_dict is not given (default 8)."""
    l1_coef: float = 5.0
    """Final weight of the L1 penalty sum_i z_i * ||W_dec,i|| (Anthropic used 5 with rows scaled to mean squared norm d_in)."""
    l1_warmup_rows: int = 2_000_000
    """Rows over which the L1 weight rises linearly from 0 (Anthropic: the first 5% of training); 0 for none."""
    init_decoder_norm: float = 0.1
    """Norm of each decoder row at initialisation (random directions; the encoder starts as the transpose)."""

    def __post_init__(self) -> None:
        _check_width(self.d_dict, self.expansion_factor)
        if not self.l1_coef >= 0:
            raise OptionError(f"l1_coef={self.l1_coef} must be >= 0; use e.g. -o l1_coef=5")
        if self.l1_warmup_rows < 0:
            raise OptionError(f"l1_warmup_rows={self.l1_warmup_rows} must be >= 0; use 0 for no warm-up")
        if not self.init_decoder_norm > 0:
            raise OptionError(f"init_decoder_norm={self.init_decoder_norm} must be positive; use e.g. -o init_decoder_norm=0.1")

    def check_for(self, d_in: int) -> int:
        return resolve_d_dict(self.d_dict, self.expansion_factor, d_in)


@dataclasses.dataclass
class JumpReLUOptions:
    """Options of the ``jumprelu`` trainer (Rajamanoharan et al. 2024, arXiv 2407.14435).

    Values are in training units (rows scaled to mean squared norm d_in), where pre-activations
    of a unit-norm encoder row are O(1); the paper's eq. 9 is used with the squared error divided
    by d_in (its rows have unit mean squared norm), so ``l0_coef`` does not depend on d_in.
    """

    d_dict: int | None = None
    """Number of latents; default: expansion_factor x d_in."""
    expansion_factor: int | None = None
    """Latents per input dimension when d_dict is not given (default 8)."""
    l0_coef: float = 0.02
    """Sparsity coefficient lambda of the L0 penalty lambda * sum_i H(pi_i(x) - theta_i) (eq. 10)."""
    l0_warmup_rows: int = 100_000
    """Rows over which lambda rises linearly from 0 to l0_coef; 0 for none."""
    bandwidth: float = 0.1
    """Width epsilon of the rectangle kernel in the threshold's pseudo-derivatives (eqs. 11-12)."""
    init_threshold: float = 0.5
    """Every latent's threshold theta at initialisation (stored as its log)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias (the encoder bias starts at -W_enc b_dec, so pre-activations start centred)."""

    def __post_init__(self) -> None:
        _check_width(self.d_dict, self.expansion_factor)
        if not self.l0_coef >= 0:
            raise OptionError(f"l0_coef={self.l0_coef} must be >= 0; use e.g. -o l0_coef=0.02")
        if self.l0_warmup_rows < 0:
            raise OptionError(f"l0_warmup_rows={self.l0_warmup_rows} must be >= 0; use 0 for no warm-up")
        if not self.bandwidth > 0:
            raise OptionError(f"bandwidth={self.bandwidth} must be positive; use e.g. -o bandwidth=0.1")
        if not self.init_threshold > 0:
            raise OptionError(f"init_threshold={self.init_threshold} must be positive (it is stored as a log); use e.g. -o init_threshold=0.5")

    def check_for(self, d_in: int) -> int:
        return resolve_d_dict(self.d_dict, self.expansion_factor, d_in)


def check_prefixes(values: Sequence[float]) -> None:
    """Refuse prefix entries that are neither latent counts (> 1, whole) nor fractions (<= 1)."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise OptionError(f"prefixes entry {value!r} must be a positive number; use latent counts (128,512,2048) or fractions (0.125,0.5,1)")
        if value > 1 and value != int(value):
            raise OptionError(f"prefixes entry {value!r} is neither a whole latent count nor a fraction <= 1")


def resolve_prefixes(values: Sequence[float], d_dict: int) -> tuple[int, ...]:
    """Ascending prefix sizes ending at ``d_dict``; fractions (<= 1) are of ``d_dict``."""
    values = list(values) or [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
    sizes = [max(1, round(v * d_dict)) if v <= 1 else int(v) for v in values]
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise OptionError(f"prefixes {list(values)} give sizes {sizes} for d_dict={d_dict}; they must strictly increase")
    if sizes[-1] > d_dict:
        raise OptionError(f"prefixes {list(values)}: prefix {sizes[-1]} exceeds d_dict={d_dict}; lower it or raise d_dict")
    if sizes[-1] < d_dict:
        sizes.append(d_dict)  # the whole dictionary is always the last prefix
    return tuple(sizes)


@dataclasses.dataclass
class MatryoshkaOptions(BatchTopKOptions):
    """Options of the ``matryoshka`` trainer (Matryoshka BatchTopK; Bussmann et al. 2025, arXiv 2503.17547)."""

    decoder: Literal["free", "unit"] = "unit"
    """free: decoder rows keep the norm Adam gives them, starting at init_decoder_norm; unit: rows held at unit norm (Bussmann et al. 2025). unit until free rows are measured for Matryoshka (they are topk's and batchtopk's default)."""
    unit_gradient: bool = False
    """Adam steps on the gradient scaled to unit global norm (topk's and batchtopk's default); off until measured for Matryoshka."""
    prefixes: tuple[float, ...] = ()
    """Nested prefix sizes, ascending: latent counts (-o prefixes=128,512,2048) or fractions of d_dict (0.0625,0.25,1); d_dict is always the last. Default: d_dict/16, /8, /4, /2, 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prefixes = tuple(self.prefixes)
        check_prefixes(self.prefixes)
        if self.d_dict is not None:
            resolve_prefixes(self.prefixes, self.d_dict)

    def check_for(self, d_in: int) -> int:
        d_dict = super().check_for(d_in)
        resolve_prefixes(self.prefixes, d_dict)
        return d_dict


@dataclasses.dataclass
class TranscoderOptions(BatchTopKOptions):
    """Options of the ``transcoder`` trainer: a sparse map from one site's rows to another's (Dunefsky
    et al. 2024; skip transcoders: Paulo, Belrose et al. 2025, arXiv 2501.18823)."""

    source: str = ""
    """Store site the encoder reads (e.g. an MLP's input); default: the store's first site (or --site)."""
    target: str = ""
    """Store site the decoder predicts (e.g. that MLP's output); default: the site after the source."""
    activation: Literal["topk", "batchtopk", "jumprelu"] = "topk"
    """topk: k latents per row (Gao et al. 2024); batchtopk: the batch's top n*k, a learned threshold at inference (Bussmann et al. 2024); jumprelu: per-latent thresholds and an L0 penalty (Rajamanoharan et al. 2024)."""
    skip: bool = False
    """Add a linear skip term W_skip x (skip transcoder, Paulo et al. 2025); W_skip starts at zero."""
    d_target: int | None = None
    """Width of the target rows; default: the source's width (the loop sets it from the target site)."""
    l0_coef: float = 0.02
    """activation=jumprelu: weight lambda of the L0 penalty (as the jumprelu trainer's)."""
    l0_warmup_rows: int = 100_000
    """activation=jumprelu: rows over which lambda rises linearly from 0."""
    bandwidth: float = 0.1
    """activation=jumprelu: width epsilon of the straight-through rectangle kernel."""
    init_threshold: float = 0.5
    """activation=jumprelu: every latent's threshold at initialisation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_target is not None and self.d_target <= 0:
            raise OptionError(f"d_target={self.d_target} must be positive; leave it unset for the source's width")
        if self.source and self.source == self.target:
            raise OptionError(f"source and target are the same site ({self.source!r}); a transcoder maps one site to another, use topk for an autoencoder")
        if not self.init_threshold > 0 or not self.bandwidth > 0 or self.l0_coef < 0 or self.l0_warmup_rows < 0:
            raise OptionError("init_threshold and bandwidth must be positive, l0_coef and l0_warmup_rows >= 0; e.g. -o init_threshold=0.5 -o bandwidth=0.1")


@dataclasses.dataclass
class CrosscoderOptions(BatchTopKOptions):
    """Options of the ``crosscoder`` trainer: one dictionary reading and writing several sites (Lindsey
    et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing")."""

    sites: tuple[str, ...] = ("all",)
    """Store sites read and written, in order: all (every site of the store) or a comma list a,b,c (all of one width)."""
    activation: Literal["topk", "batchtopk"] = "topk"
    """topk: k latents per row over all sites together; batchtopk: the batch's top n*k, a learned threshold at inference."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sites = tuple(self.sites)
        if not self.sites or ("all" in self.sites and len(self.sites) > 1):
            raise OptionError(f"sites={','.join(self.sites)!r}: give all, or a comma list of store sites (a,b,c)")
        if len(set(self.sites)) != len(self.sites):
            raise OptionError(f"sites={','.join(self.sites)!r} names a site twice; list each once")
        if self.sites != ("all",) and len(self.sites) < 2:
            raise OptionError(f"sites={self.sites[0]!r}: a crosscoder reads at least two sites; use topk for one")

    def resolved(self) -> tuple[str, ...]:
        """The site names, refusing ``all`` before the store has said what all is."""
        if self.sites == ("all",):
            raise OptionError("sites=all is resolved against a store's sites when training starts; pass -o sites=a,b,c to build a crosscoder without one")
        return self.sites
