"""Shared evaluation metrics and the report writer (``featureforge evaluate``).

Metric functions (pure torch/numpy, on whole tensors), with ``x`` the eval rows [n, d],
``x̂`` their reconstruction, ``z`` the dictionary's codes [n, m] (a latent is *active* on a row
when its code is non-zero), ``W`` the decoder rows [m, d], ``F`` the true feature directions
[k, d] and ``c`` the true codes [n, k] of a synthetic store:

- **FVU** (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the per-dimension mean
  over the eval rows; 0 is a perfect reconstruction, 1 is no better than predicting x̄.
- **explained variance** = 1 − FVU.  **MSE** = Σ‖x − x̂‖² / (n·d), per element.
- **L0** = mean over rows of the number of active latents.
- **dead** latents are never active over the eval rows; **dense** latents are active on more than
  ``dense_threshold`` (default 10%) of them. The **density histogram** bins log10 of each live
  latent's firing frequency (active rows / n); dead latents (log10 0 = −∞) are counted apart.
- **MMCS** (mean max cosine similarity) = mean over true features i of max_j cos(F_i, W_j).
- **MCC** (mean correlation coefficient): Pearson correlations ρ_ij between true code c_i and
  learned code z_j over the eval rows; true features and latents are matched one to one by the
  Hungarian algorithm maximising Σ|ρ| (the matching is on *code correlations*, not on decoder
  directions); MCC = mean over true features of |ρ| with its match. A feature left unmatched
  (m < k) counts 0; one that never fires on the eval rows has no correlation and is left out of
  the mean (``true_features_active`` counts those kept).
- **recovered@τ** = fraction of true features whose *matched* decoder row has cos > τ (default
  0.9); ``recovered_best`` uses the best decoder row instead of the matched one.
- **F1** per true feature after matching: firing of c_i (> 0) against firing of its matched latent
  (≠ 0): F1 = 2·TP / (#rows c_i fires + #rows z_j fires); its mean and quantiles are reported.

Ground-truth statistics stream over the eval rows in batches: memory is two [k, m] float64
matrices (correlation cross-term and co-firing counts) plus one batch, whatever the row count.

``evaluate(run, store=...)`` loads a run, picks the eval rows (the run's held-out chunks when the
store is the one it was trained on, else the first ``rows`` committed rows), runs the evaluators
and writes ``report.json`` into the run folder and plots into ``RUN/plots/``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .errors import BadInputError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    from .roles import EvaluationContext, Evaluator
    from .store import ActivationStore, ChunkRef

__all__ = [
    "DEFAULT_DENSE_THRESHOLD",
    "DEFAULT_EVAL_ROWS",
    "REPORT_FILE",
    "CodeMatchStats",
    "EvalRows",
    "ReconstructionStats",
    "cosine_matrix",
    "dead_latents",
    "dense_latents",
    "density_histogram",
    "auto_batch_size",
    "eval_device",
    "eval_rows",
    "evaluate",
    "explained_variance",
    "firing_counts",
    "firing_f1",
    "fvu",
    "hungarian_match",
    "l0",
    "mcc",
    "mmcs",
    "mse",
    "new_figure",
    "pearson_matrix",
    "quantiles",
    "recovered_fraction",
    "report_path",
    "same_store",
    "save_figure",
    "select_eval_rows",
    "summary_lines",
]

REPORT_FORMAT_VERSION = 1
REPORT_FILE = "report.json"
PLOTS_DIR = "plots"
#: Rows evaluated when the run has no held-out chunks on the given store.
DEFAULT_EVAL_ROWS = 65536
#: A latent active on more than this fraction of the eval rows counts as dense.
DEFAULT_DENSE_THRESHOLD = 0.1
#: Bins of the log10 firing-frequency histogram.
DENSITY_BINS = 50


# ================================================================================================
# Metric functions on whole tensors
# ================================================================================================
def _f64(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).detach().to(torch.float64)


def fvu(x: Any, x_hat: Any) -> float:
    """Σ‖x − x̂‖² / Σ‖x − x̄‖² over rows, x̄ the per-dimension mean (nan when x is constant)."""
    x, x_hat = _f64(x), _f64(x_hat)
    sse = ((x - x_hat) ** 2).sum()
    sst = ((x - x.mean(dim=0, keepdim=True)) ** 2).sum()
    return float(sse / sst) if sst > 0 else math.nan


def explained_variance(x: Any, x_hat: Any) -> float:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x: Any, x_hat: Any) -> float:
    """Mean squared error per element: Σ‖x − x̂‖² / (n·d)."""
    x, x_hat = _f64(x), _f64(x_hat)
    return float(((x - x_hat) ** 2).mean())


def firing_counts(codes: Any) -> torch.Tensor:
    """Int64 [m]: rows on which each latent is active (code ≠ 0)."""
    return (torch.as_tensor(codes) != 0).sum(dim=0).to(torch.int64)


def l0(codes: Any) -> float:
    """Mean number of active latents (code ≠ 0) per row."""
    codes = torch.as_tensor(codes)
    return float((codes != 0).sum(dim=-1).to(torch.float64).mean())


def dead_latents(counts: Any) -> torch.Tensor:
    """Bool [m]: latents never active (firing count 0)."""
    return torch.as_tensor(counts) == 0


def dense_latents(counts: Any, n_rows: int, threshold: float = DEFAULT_DENSE_THRESHOLD) -> torch.Tensor:
    """Bool [m]: latents active on more than ``threshold`` of ``n_rows`` rows."""
    return torch.as_tensor(counts).to(torch.float64) / max(int(n_rows), 1) > threshold


def density_histogram(counts: Any, n_rows: int, bins: int = DENSITY_BINS) -> dict[str, Any]:
    """Histogram of log10(firing frequency) of live latents, over [log10(1/n), 0].

    Returns ``{"bin_edges": [bins+1], "counts": [bins], "dead": int}``; dead latents are not binned.
    """
    counts = torch.as_tensor(counts).to(torch.float64).cpu().numpy()
    n_rows = max(int(n_rows), 1)
    live = counts[counts > 0]
    low = math.log10(1.0 / n_rows) if n_rows > 1 else -1.0
    edges = np.linspace(low, 0.0, bins + 1)
    hist, _ = np.histogram(np.log10(live / n_rows), bins=edges)
    return {"bin_edges": edges.tolist(), "counts": hist.astype(int).tolist(), "dead": int((counts == 0).sum())}


def cosine_matrix(a: Any, b: Any) -> torch.Tensor:
    """[k, m] cosines between rows of ``a`` [k, d] and rows of ``b`` [m, d] (0 for a zero row)."""
    a, b = _f64(a), _f64(b)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def mmcs(true_features: Any, decoder: Any) -> float:
    """Mean over true features of the best cosine with any decoder row."""
    return float(cosine_matrix(true_features, decoder).max(dim=1).values.mean())


def pearson_matrix(a: Any, b: Any) -> torch.Tensor:
    """[k, m] Pearson correlations between columns of ``a`` [n, k] and ``b`` [n, m] (0 if constant)."""
    a, b = _f64(a), _f64(b)
    a = a - a.mean(dim=0)
    b = b - b.mean(dim=0)
    denom = a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :]
    cov = a.T @ b
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))


def hungarian_match(score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the one-to-one matching maximising Σ score (scipy's linear_sum_assignment).

    ``score`` is [k, m]; min(k, m) pairs are matched, rows in increasing order.
    """
    from scipy.optimize import linear_sum_assignment

    score = torch.as_tensor(score).detach().to(torch.float64).cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def _matched_per_row(k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Int64 [k]: the column matched to each row, −1 where none."""
    match = np.full(k, -1, dtype=np.int64)
    match[rows] = cols
    return match


def mcc(true_codes: Any, learned_codes: Any) -> tuple[float, np.ndarray]:
    """(MCC, match): mean |Pearson ρ| of Hungarian-matched (true feature, latent) code pairs.

    Matching maximises Σ|ρ| over code correlations. ``match[i]`` is the latent matched to true
    feature i (−1 if unmatched, counted as 0). True features that never fire are left out.
    """
    true_codes = torch.as_tensor(true_codes)
    corr = pearson_matrix(true_codes, learned_codes).abs()
    rows, cols = hungarian_match(corr)
    match = _matched_per_row(corr.shape[0], rows, cols)
    present = (true_codes != 0).any(dim=0).cpu().numpy()
    values = np.array([float(corr[i, j]) if j >= 0 else 0.0 for i, j in enumerate(match)])
    return (float(values[present].mean()) if present.any() else math.nan), match


def recovered_fraction(true_features: Any, decoder: Any, match: np.ndarray | None = None, threshold: float = 0.9) -> float:
    """Fraction of true features whose matched decoder row (best row if ``match`` is None) has cos > threshold."""
    cos = cosine_matrix(true_features, decoder)
    if match is None:
        best = cos.max(dim=1).values
    else:
        match = np.asarray(match)
        best = torch.tensor([float(cos[i, j]) if j >= 0 else -1.0 for i, j in enumerate(match)], dtype=torch.float64)
    return float((best > threshold).to(torch.float64).mean())


def firing_f1(true_active: Any, learned_active: Any) -> float:
    """F1 of one latent's firing (bool [n]) against one true feature's (nan if neither ever fires)."""
    t = torch.as_tensor(true_active).bool()
    p = torch.as_tensor(learned_active).bool()
    tp = float((t & p).sum())
    denom = float(t.sum() + p.sum())
    return 2 * tp / denom if denom > 0 else math.nan


# ================================================================================================
# Streaming accumulators (bounded memory, used by the built-in evaluators)
# ================================================================================================
class ReconstructionStats:
    """Accumulates FVU, MSE, L0 and firing counts over batches; ``result()`` gives the metrics.

    Row sums are float64 and centred on the first batch's mean, so large activation offsets do
    not cancel away the variance. Firing counts are summed per batch in float32 (exact integers
    for batches under 2^24 rows) and accumulated in float64.
    """

    def __init__(self, d_in: int, d_dict: int, device: Any = "cpu"):
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.d_in = d_in
        self.shift: torch.Tensor | None = None
        self.sum_x = torch.zeros(d_in, **kw)
        self.sum_x2 = torch.zeros(d_in, **kw)
        self.sse = torch.zeros((), **kw)
        self.counts = torch.zeros(d_dict, **kw)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> None:
        x = x.to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(dim=0)
        xc = x - self.shift
        self.n += x.shape[0]
        self.sum_x += xc.sum(dim=0)
        self.sum_x2 += (xc * xc).sum(dim=0)
        self.sse += ((x - x_hat.to(torch.float64)) ** 2).sum()
        self.counts += (codes != 0).to(torch.float32).sum(dim=0).to(torch.float64)

    def total_variance(self) -> float:
        """Σ‖x − x̄‖² over the rows seen: FVU's denominator."""
        n = max(self.n, 1)
        return float((self.sum_x2 - self.sum_x**2 / n).sum())

    def result(self, dense_threshold: float = DEFAULT_DENSE_THRESHOLD, bins: int = DENSITY_BINS) -> dict[str, Any]:
        n = max(self.n, 1)
        sst = self.total_variance()
        sse = float(self.sse)
        value = sse / sst if sst > 0 else math.nan
        counts = self.counts.round().to(torch.int64).cpu()
        dead = dead_latents(counts)
        dense = dense_latents(counts, n, dense_threshold)
        m = counts.numel()
        return {
            "rows": self.n,
            "fvu": value,
            "explained_variance": 1.0 - value,
            "mse": sse / (n * self.d_in),
            "l0": float(counts.sum()) / n,
            "d_dict": m,
            "dead": int(dead.sum()),
            "dead_fraction": float(dead.sum()) / m,
            "dense": int(dense.sum()),
            "dense_fraction": float(dense.sum()) / m,
            "dense_threshold": dense_threshold,
            "density_histogram": density_histogram(counts, n, bins),
        }


class CodeMatchStats:
    """Accumulates the statistics MCC and F1 need between true codes [n, k] and learned codes [n, m].

    Keeps Σc, Σc², Σz, Σz², the cross-term Σ cᵀz and the co-firing counts Σ [c≠0]ᵀ[z≠0]: each
    batch's sums and matrix products are float32, accumulated in float64, so memory is O(k·m)
    whatever the number of rows. Codes are not centred before the products: sparse codes have
    means small next to their spread, so cov = Σcz − ΣcΣz/n loses no precision that matters.
    """

    def __init__(self, k: int, m: int, device: Any = "cpu"):
        kw = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.sum_t, self.sum_t2 = torch.zeros(k, **kw), torch.zeros(k, **kw)
        self.sum_l, self.sum_l2 = torch.zeros(m, **kw), torch.zeros(m, **kw)
        self.cross = torch.zeros(k, m, **kw)
        self.cofire = torch.zeros(k, m, **kw)
        self.fire_t, self.fire_l = torch.zeros(k, **kw), torch.zeros(m, **kw)

    @torch.no_grad()
    def update(self, true_codes: torch.Tensor, learned_codes: torch.Tensor) -> None:
        t = true_codes.to(torch.float32)
        z = learned_codes.to(torch.float32)
        ta, za = (t != 0).to(torch.float32), (z != 0).to(torch.float32)
        self.n += t.shape[0]
        self.sum_t += t.sum(dim=0).double()
        self.sum_t2 += (t * t).sum(dim=0).double()
        self.sum_l += z.sum(dim=0).double()
        self.sum_l2 += (z * z).sum(dim=0).double()
        self.cross += (t.T @ z).double()
        self.cofire += (ta.T @ za).double()
        self.fire_t += ta.sum(dim=0).double()
        self.fire_l += za.sum(dim=0).double()

    def correlation(self) -> torch.Tensor:
        """[k, m] Pearson correlations of true and learned codes (0 where either is constant)."""
        n = max(self.n, 1)
        cov = self.cross - self.sum_t[:, None] * self.sum_l[None, :] / n
        var_t = (self.sum_t2 - self.sum_t**2 / n).clamp_min(0)
        var_l = (self.sum_l2 - self.sum_l**2 / n).clamp_min(0)
        # A column constant up to float32 rounding (variance < 1e-5 of its mean square) counts as constant.
        ok_t = var_t > 1e-5 * self.sum_t2.clamp_min(1e-300)
        ok_l = var_l > 1e-5 * self.sum_l2.clamp_min(1e-300)
        denom = (var_t[:, None] * var_l[None, :]).sqrt()
        ok = ok_t[:, None] & ok_l[None, :]
        return torch.where(ok, cov / denom.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1, 1)

    def match(self) -> tuple[np.ndarray, torch.Tensor]:
        """(match [k], |ρ| [k, m]): Hungarian matching of true features to latents on |ρ|."""
        corr = self.correlation().abs()
        rows, cols = hungarian_match(corr)
        return _matched_per_row(corr.shape[0], rows, cols), corr

    def f1(self, match: np.ndarray) -> np.ndarray:
        """Float64 [k]: F1 of each true feature's firing vs its matched latent's (nan if undefined)."""
        out = np.full(len(match), math.nan)
        fire_t = self.fire_t.cpu().numpy()
        fire_l = self.fire_l.cpu().numpy()
        for i, j in enumerate(match):
            if fire_t[i] == 0:
                continue  # absent from the eval rows: F1 undefined
            if j < 0:
                out[i] = 0.0
                continue
            out[i] = 2 * float(self.cofire[i, j]) / (fire_t[i] + fire_l[j])
        return out


# ================================================================================================
# Which rows to evaluate
# ================================================================================================
@dataclass
class EvalRows:
    """The eval rows: parts of committed chunks, read in storage order in bounded batches."""

    store: "ActivationStore"
    #: (chunk index, rows of it used) in reading order.
    parts: list[tuple[int, int]]
    #: "holdout" (the run's held-out chunks) or "first_rows" (the store's first committed rows).
    selection: str

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def chunks(self) -> list[int]:
        return [c for c, _ in self.parts]

    def blocks(self, batch_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (global row index of the first row, acts float32 [b, d]) with b ≤ batch_size.

        Global row index = chunk index × rows_per_chunk + offset in the chunk, the index the
        store's source gave the row (what ``SyntheticSource.codes`` takes).
        """
        rpc = self.store.rows_per_chunk
        for chunk, n in self.parts:
            base = chunk * rpc
            for start in range(base, base + n, batch_size):
                stop = min(base + n, start + batch_size)
                yield start, self.store.read(start, stop)

    def describe(self) -> dict[str, Any]:
        return {"rows": self.rows, "selection": self.selection, "chunks": self.chunks}


def _take(chunks: Sequence["ChunkRef"], limit: int | None) -> list[tuple[int, int]]:
    parts: list[tuple[int, int]] = []
    left = math.inf if limit is None else int(limit)
    for ref in chunks:
        if left <= 0:
            break
        n = int(min(ref.rows, left))
        parts.append((ref.index, n))
        left -= n
    return parts


def same_store(run_config: Mapping[str, Any], store: "ActivationStore") -> bool:
    """Whether ``store`` is the one the run was trained on, by the config's ``store`` provenance.

    The rule lives with the run folder: see :func:`featureforge.run.store_matches`.
    """
    from .run import store_matches

    return store_matches(run_config.get("store"), store)


def select_eval_rows(store: "ActivationStore", run_config: Mapping[str, Any] | None = None, rows: int | None = None) -> EvalRows:
    """The run's held-out chunks if ``store`` is its store, else the first ``rows`` committed rows.

    ``rows`` (default ``DEFAULT_EVAL_ROWS``) also caps the held-out rows when given.
    """
    from .holdout import chunks_by_index

    if rows is not None and int(rows) <= 0:
        raise OptionError(f"--rows must be positive, got {rows}")
    run_config = run_config or {}
    holdout = run_config.get("holdout") or {}
    indices = holdout.get("chunks") if isinstance(holdout, Mapping) else None
    if indices and same_store(run_config, store):
        parts = _take(chunks_by_index(store, [int(i) for i in indices]), rows)
        selection = "holdout"
    else:
        parts = _take(store.committed_chunks(), DEFAULT_EVAL_ROWS if rows is None else rows)
        selection = "first_rows"
    if not parts:
        raise BadInputError(f"store {store.url} has no committed rows to evaluate on; finish `featureforge cache` first")
    return EvalRows(store, parts, selection)


def eval_rows(context: "EvaluationContext") -> EvalRows:
    """The eval rows chosen by ``evaluate`` (``context.extra["eval_rows"]``), else the store's first rows."""
    chosen = context.extra.get("eval_rows")
    if chosen is not None:
        return chosen
    if context.store is None:
        raise BadInputError("this evaluator needs an activation store; pass --store")
    return select_eval_rows(context.store, context.extra.get("run_config"))


def eval_device(context: "EvaluationContext") -> torch.device:
    return torch.device(context.extra.get("device") or "cpu")


def auto_batch_size(d_in: int, d_dict: int, requested: int = 0) -> int:
    """``requested`` if positive, else rows such that one batch of codes is about 16M floats."""
    if requested and requested > 0:
        return int(requested)
    return int(min(8192, max(256, 2**24 // max(d_in, d_dict, 1))))


# ================================================================================================
# Plots (matplotlib, Agg canvas: no display, no global pyplot state)
# ================================================================================================
def new_figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    from .dictionary import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path


# ================================================================================================
# The report writer
# ================================================================================================
def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and ±inf become null (strict JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist() if value.dim() else value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def default_evaluators(store: "ActivationStore") -> list[str]:
    """``reconstruction`` always; ``ground-truth`` when the store holds ground truth."""
    names = ["reconstruction"]
    if "ground_truth" in store.group:
        names.append("ground-truth")
    return names


def _instantiate(evaluators: Any, store: "ActivationStore") -> list["Evaluator"]:
    from .plugins import get_registry
    from .roles import Evaluator

    if evaluators is None:
        evaluators = default_evaluators(store)
    elif isinstance(evaluators, (str, Evaluator)):
        evaluators = [evaluators]
    if isinstance(evaluators, Mapping):  # name -> options
        items = list(evaluators.items())
    else:
        items = [(e, None) for e in evaluators]
    if not items:
        raise OptionError("no evaluator given; name one with --evaluator NAME (see `featureforge plugins`)")
    out: list[Evaluator] = []
    seen: set[str] = set()
    for spec, options in items:
        instance = spec if isinstance(spec, Evaluator) else get_registry().get("evaluator", str(spec))(options)
        if instance.name in seen:
            raise OptionError(f"evaluator {instance.name!r} is named twice; name each evaluator once")
        seen.add(instance.name)
        out.append(instance)
    return out


def evaluate(
    run: str | os.PathLike,
    store: "str | os.PathLike | ActivationStore",
    evaluators: "Sequence[str | Evaluator] | Mapping[str, Any] | None" = None,
    out_dir: str | os.PathLike | None = None,
    rows: int | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a store and write ``report.json`` (plus plots) into the run folder.

    Parameters
    ----------
    run
        A run folder written by ``featureforge train`` (``config.json`` + ``weights.safetensors``).
    store
        Store path, fsspec URL or an opened ``ActivationStore``; its ``d_in`` must be the run's.
    evaluators
        Evaluator names (or instances, or a mapping name -> options). Default: ``reconstruction``,
        plus ``ground-truth`` when the store holds ground truth.
    out_dir
        Where ``report.json`` and ``plots/`` go; default the run folder.
    rows
        Eval rows: caps the run's held-out rows when ``store`` is the run's store, else how many
        of the store's first committed rows to use (default 65536).
    storage_options
        fsspec options for a remote ``store``.
    device
        Torch device to evaluate on (default: ``cuda`` when available, else ``cpu``).

    Returns
    -------
    dict
        The report as written: ``run``, ``store``, ``eval_rows``, and under ``evaluators`` each
        evaluator's ``metrics`` and ``artifacts`` (paths relative to the report's folder).
    """
    from .dictionary import load, write_json
    from .roles import EvaluationContext
    from .run import read_config
    from .store import ActivationStore, open_store

    run_dir = Path(run)
    config = read_config(run_dir)
    opened = store if isinstance(store, ActivationStore) else open_store(store, storage_options)
    if int(config["d_in"]) != opened.d_in:
        raise BadInputError(
            f"run {run_dir} has d_in={int(config['d_in'])} but store {opened.url} has d_in={opened.d_in}; "
            "evaluate on activations from the hook point the run was trained on"
        )
    chosen = select_eval_rows(opened, config, rows)
    instances = _instantiate(evaluators, opened)
    dictionary = load(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dictionary.to(dev)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    context = EvaluationContext(
        store=opened,
        out_dir=out / PLOTS_DIR,
        run_dir=run_dir,
        extra={"eval_rows": chosen, "run_config": config, "device": str(dev)},
    )
    results: dict[str, Any] = {}
    for evaluator in instances:
        result = evaluator.evaluate(dictionary, context)
        artifacts = {}
        for key, path in result.artifacts.items():
            p = Path(path)
            try:
                artifacts[key] = str(p.resolve().relative_to(out.resolve()))
            except ValueError:
                artifacts[key] = str(p)
        results[evaluator.name] = {"options": evaluator.options_dict(), "metrics": result.metrics, "artifacts": artifacts}
    report = _jsonable(
        {
            "format_version": REPORT_FORMAT_VERSION,
            "run": str(run_dir),
            "store": opened.url,
            "trainer": config.get("trainer"),
            "d_in": int(config["d_in"]),
            "d_dict": int(config["d_dict"]),
            "eval_rows": chosen.describe(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "evaluators": results,
        }
    )
    write_json(out / REPORT_FILE, report)
    return report


def report_path(run: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where ``evaluate`` writes ``report.json`` for these arguments."""
    return Path(out_dir if out_dir is not None else run) / REPORT_FILE


def quantiles(values: Any, qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float | None]:
    """p10, p25, p50, p75, p90 of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {f"p{round(q * 100)}": (float(np.quantile(v, q)) if v.size else None) for q in qs}


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short human summary of a report: eval rows, then each evaluator's scalar metrics and plots."""
    rows = report.get("eval_rows", {})
    where = "held-out rows of the run's store" if rows.get("selection") == "holdout" else "first committed rows of the store"
    lines = [f"run {report['run']} on {report['store']}: {rows.get('rows', 0):,} {where}"]
    for name, result in report.get("evaluators", {}).items():
        lines.append(f"{name}")
        for key, value in result.get("metrics", {}).items():
            if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
                continue
            shown = "n/a" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
            lines.append(f"  {key:<22} {shown}")
        for key, path in result.get("artifacts", {}).items():
            lines.append(f"  {key:<22} {path}")
    return lines
