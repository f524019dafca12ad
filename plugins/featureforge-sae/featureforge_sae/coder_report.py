"""Evaluators of the dictionaries that read and write several sites.

* ``crosscoder``: per-site FVU of a crosscoder on the eval rows (each site against its own
  variance, and over all sites together), and per latent the share of its decoder norm that
  each site holds, ``share_s(i) = ||W_dec,i,s|| / sum_s' ||W_dec,i,s'||`` (Lindsey et al. 2024
  compare two models' decoder norms this way: a latent whose norm sits in one layer "lives" there,
  one spread over the layers is cross-layer). Metrics: per site the FVU, the mean share, how many
  latents it dominates (largest share) and holds exclusively (share >= ``exclusive``); the
  latents spread over several sites; a figure ``plots/crosscoder.png``.
* ``transcoder-ground-truth``: on a store with a planted transcoder truth (the synthetic source's
  ``-o transcoder=true``), the MMCS of the transcoder's decoder rows (what each latent writes into
  the target) to the planted output features ``F_out``, and recovered@threshold.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from featureforge import BadInputError, EvaluationResult, Evaluator, OptionError

#: Keys of a store's ground truth that hold the planted output features of a transcoder truth,
#: tried in order (the synthetic source's -o transcoder=true writes features_out; contract of issue #23, item 4).
TARGET_TRUTH_KEYS = ("features_out", "features_target", "true_features_target")


def decoder_norm_shares(directions: Any) -> Any:
    """[d_dict, S] share of each latent's decoder norm per site, from ``[d_dict, S, d]`` directions
    (rows of norm 0 everywhere get share 0)."""
    import torch

    norms = torch.as_tensor(directions).detach().double().norm(dim=-1)
    total = norms.sum(1, keepdim=True)
    return torch.where(total > 0, norms / total.clamp_min(1e-300), torch.zeros_like(norms))


def share_summary(shares: Any, names: Sequence[str], exclusive: float = 0.9) -> dict[str, Any]:
    """Per site: mean share, latents it dominates and holds exclusively; latents spread over sites."""
    import torch

    alive = shares.sum(1) > 0
    top, where = shares.max(1)
    per_site = {}
    for s, name in enumerate(names):
        per_site[name] = {"mean_share": float(shares[alive, s].mean()) if alive.any() else float("nan"),
                          "latents_dominant": int(((where == s) & alive).sum()),
                          "latents_exclusive": int(((where == s) & alive & (top >= exclusive)).sum())}
    return {"per_site": per_site, "exclusive_threshold": exclusive, "latents": int(shares.shape[0]),
            "latents_without_decoder": int((~alive).sum()),
            "latents_shared": int((alive & (top < exclusive)).sum()),
            "share_histogram": {name: torch.histc(shares[alive, s].float(), bins=10, min=0, max=1).long().tolist()
                                for s, name in enumerate(names)}}


class SiteFVU:
    """Streams per-site squared error and centred variance over [n, S, d] rows (float64 sums)."""

    def __init__(self, n_sites: int):
        import torch

        self.n = 0
        self.err = torch.zeros(n_sites, dtype=torch.float64)
        self.sum = None
        self.sumsq = torch.zeros(n_sites, dtype=torch.float64)

    def update(self, x: Any, x_hat: Any) -> None:
        x, x_hat = x.detach().double().cpu(), x_hat.detach().double().cpu()
        self.err += (x - x_hat).pow(2).sum((0, 2))
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        self.sumsq += x.pow(2).sum((0, 2))
        self.n += x.shape[0]

    def result(self, names: Sequence[str]) -> dict[str, Any]:
        """``fvu`` over every site together and ``fvu_per_site`` (each against its own variance)."""
        centred = self.sumsq - self.sum.pow(2).sum(1) / max(self.n, 1)
        per = {name: float(self.err[s] / centred[s]) if centred[s] > 0 else float("nan") for s, name in enumerate(names)}
        total = float(self.err.sum() / centred.sum()) if centred.sum() > 0 else float("nan")
        return {"rows": self.n, "fvu": total, "fvu_per_site": per}


def site_names(dictionary: Any) -> list[str]:
    """The sites a crosscoder was trained on, in order (recorded in its options by ``sites_for``)."""
    options = (getattr(dictionary, "config", {}) or {}).get("options", {}) or {}
    names = [str(s) for s in options.get("sites", ()) if s != "all"]
    return names if len(names) == dictionary.n_sites else [f"site_{s}" for s in range(dictionary.n_sites)]


def stacked_rows(context: Any, names: Sequence[str], batch_size: int) -> Any:
    """``(start, [n, S, d] rows)`` of the eval rows, each site read through the store's site view
    (``store.site(name)``, issue #23's multi-site store) over the same rows."""
    import numpy as np

    store = context.store
    if store is None or not callable(getattr(store, "site", None)):
        raise BadInputError("the crosscoder evaluator needs a store of several sites (cache them with -o hook=a,b,c) and --store")
    views = [store.site(name) for name in names]
    for start, _ in context.eval_rows.blocks(batch_size):
        rows = [np.asarray(v.read(start, start + _.shape[0])) for v in views]
        yield start, np.stack(rows, axis=1)


@dataclasses.dataclass
class CrosscoderReportOptions:
    exclusive: float = 0.9
    """A latent lives on one site when that site holds at least this share of its decoder norm."""
    batch_size: int = 2048
    """Eval rows read at once."""


class CrosscoderEvaluator(Evaluator):
    name = "crosscoder"
    description = "A crosscoder's per-site FVU and each latent's decoder-norm share per site (which latents live on which layer)"
    Options = CrosscoderReportOptions

    def __post_init__(self) -> None:
        if not 0 < self.options.exclusive <= 1 or self.options.batch_size <= 0:
            raise OptionError("crosscoder: exclusive must be in (0, 1] and batch_size positive; e.g. -e crosscoder.exclusive=0.9")

    @classmethod
    def default_for(cls, store: Any, occasion: str) -> bool:
        """Stores of several sites, in ``evaluate`` (it reports nothing for other dictionaries)."""
        return occasion == "evaluate" and len(getattr(store, "sites", ()) or ()) > 1

    def evaluate(self, dictionary: Any, context: Any) -> EvaluationResult:
        import torch

        if not hasattr(dictionary, "n_sites"):
            return EvaluationResult(metrics={"applies": False, "why": f"{type(dictionary).__name__} is not a crosscoder"})
        names = site_names(dictionary)
        stats = SiteFVU(dictionary.n_sites)
        device = torch.device(context.device)
        with torch.no_grad():
            for _, rows in stacked_rows(context, names, self.options.batch_size):
                x = torch.from_numpy(rows).to(device)
                stats.update(x, dictionary(x).x_hat)
        return self.report(dictionary, stats.result(names), names, context.out_dir / "crosscoder.png")

    def report(self, dictionary: Any, fvu: dict[str, Any], names: Sequence[str], plot_path: Any) -> EvaluationResult:
        """Metrics and the figure from per-site FVU (as :class:`SiteFVU` gives it) and the decoder."""
        shares = decoder_norm_shares(dictionary.decoder_directions)
        metrics = {"applies": True, "sites": list(names), **fvu, "decoder_norm_shares": share_summary(shares, names, self.options.exclusive)}
        plot_crosscoder(metrics, shares, plot_path)
        return EvaluationResult(metrics=metrics, artifacts={"crosscoder": str(plot_path)})


def plot_crosscoder(metrics: dict[str, Any], shares: Any, path: Any) -> None:
    """Left: FVU per site; right: the distribution of decoder-norm shares per site."""
    import numpy as np

    from featureforge.plots import new_figure, save_figure

    names = metrics["sites"]
    fig = new_figure(10.0, 3.8)
    left, right = fig.subplots(1, 2)
    left.bar(range(len(names)), [metrics["fvu_per_site"][n] for n in names], color="#4c72b0")
    left.set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
    left.set_ylabel("FVU")
    left.set_title(f"FVU per site (all sites: {metrics['fvu']:.3f})", fontsize=9)
    alive = shares.sum(1) > 0
    bins = np.linspace(0, 1, 21)
    for s, name in enumerate(names):
        right.hist(shares[alive, s].numpy(), bins=bins, histtype="step", label=name, linewidth=1.2)
    right.set_xlabel("share of the latent's decoder norm in the site")
    right.set_ylabel("latents")
    summary = metrics["decoder_norm_shares"]
    right.set_title(f"{summary['latents_shared']} latents spread over sites, {summary['latents'] - summary['latents_shared']} on one", fontsize=9)
    right.legend(fontsize=7)
    save_figure(fig, path)


# -- transcoder ground truth ------------------------------------------------------------------
def target_truth(truth: dict[str, Any] | None) -> Any:
    """The planted output features of a store's ground truth (see ``TARGET_TRUTH_KEYS``), or None."""
    for key in TARGET_TRUTH_KEYS:
        if truth and key in truth:
            return truth[key]
    return None


def transcoder_truth_metrics(decoder: Any, f_out: Any, threshold: float = 0.9) -> dict[str, Any]:
    """MMCS of planted output features to decoder rows (each true feature's best cosine, averaged;
    ``featureforge.evaluation.metrics.mmcs``) and the fraction whose best cosine exceeds ``threshold``."""
    import numpy as np
    import torch

    from featureforge.evaluation.metrics import cosine_matrix, mmcs

    f = torch.as_tensor(np.asarray(f_out, dtype=np.float32))
    dec = torch.as_tensor(decoder).detach().float().cpu()
    if f.shape[1] != dec.shape[1]:
        raise BadInputError(f"planted output features have width {f.shape[1]} but the decoder writes {dec.shape[1]}; evaluate on the store it was trained on")
    best = cosine_matrix(f, dec).max(dim=1).values
    return {"mmcs_target": mmcs(f, dec), "recovered_target": float((best > threshold).double().mean()),
            "cos_threshold": threshold, "true_features": int(f.shape[0]), "d_dict": int(dec.shape[0])}


@dataclasses.dataclass
class TranscoderTruthOptions:
    cos_threshold: float = 0.9
    """A planted output feature counts as recovered when a decoder row has cosine above this."""


class TranscoderTruthEvaluator(Evaluator):
    name = "transcoder-ground-truth"
    description = "MMCS and recovered@0.9 of a transcoder's decoder rows to a synthetic store's planted output features F_out"
    Options = TranscoderTruthOptions

    @classmethod
    def default_for(cls, store: Any, occasion: str) -> bool:
        """Stores holding a planted transcoder truth, in ``evaluate``."""
        if occasion != "evaluate" or "ground_truth" not in getattr(store, "group", {}):
            return False
        return target_truth(store.ground_truth()) is not None

    def evaluate(self, dictionary: Any, context: Any) -> EvaluationResult:
        if not hasattr(dictionary, "d_out"):
            return EvaluationResult(metrics={"applies": False, "why": f"{type(dictionary).__name__} is not a transcoder"})
        store = context.store
        f_out = target_truth(store.ground_truth() if store is not None else None)
        if f_out is None:
            raise BadInputError(f"the store holds no planted transcoder truth (none of {', '.join(TARGET_TRUTH_KEYS)}); "
                                "cache one with --source synthetic -o transcoder=true")
        return EvaluationResult(metrics={"applies": True, **transcoder_truth_metrics(dictionary.decoder_directions, f_out, self.options.cos_threshold)})


EVALUATORS = (CrosscoderEvaluator, TranscoderTruthEvaluator)
