"""``reconstruction``: how well a dictionary reconstructs the eval rows, and how its latents fire.

Metrics (formulas in ``featureforge.evaluation.metrics``): FVU, explained variance, MSE, L0, dead and
dense latents (counts and fractions) and the log10 firing-frequency histogram, drawn to
``plots/latent_density.png``.

A dictionary that selects latents with gradients (``Dictionary.uses_gradients``: it implements
``reconstruct_with_grads(x, grads)``, like g-SAE's) is scored both ways when the store holds
``grads``: the metrics above use plain ``encode`` (inference without gradients) and
``fvu_grads`` / ``explained_variance_grads`` the gradient-aware selection.

A run whose trainer maps sites to roles (config.json ``sites``, see ``DictionaryTrainer.sites_for``):
with a ``target`` role (a transcoder: ``acts`` of one site -> an estimate of another site's rows) the
metrics are those of the target (FVU of ``target``, ``fvu_of: "target"``); with a ``sites`` role (a
crosscoder: [n, S, d] -> [n, S, d]) FVU is over every stacked site at once (each in its own training
units) and ``fvu_per_site`` gives each site's own FVU. Rows of every site are the same tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import OptionError
from ..hookspecs import hookimpl
from ..evaluation import EvaluationContext
from ..roles import EvaluationResult, Evaluator


@dataclasses.dataclass
class ReconstructionOptions:
    dense_threshold: float = 0.1
    """A latent active on more than this fraction of the eval rows counts as dense."""
    bins: int = 50
    """Bins of the log10 firing-frequency histogram."""
    batch_size: int = 0
    """Rows encoded at once; 0 picks about 16M code values per batch."""


class ReconstructionEvaluator(Evaluator):
    name = "reconstruction"
    description = "FVU, explained variance, MSE, L0, dead/dense latents and a latent-density histogram"
    Options = ReconstructionOptions

    @classmethod
    def default_for(cls, store: Any, occasion: str) -> bool:
        """Every store, in ``evaluate`` (during training it is the fallback the core picks)."""
        return occasion == "evaluate"

    def __post_init__(self) -> None:
        o = self.options
        if not 0 < o.dense_threshold <= 1:
            raise OptionError(f"reconstruction: dense_threshold={o.dense_threshold} must be in (0, 1]")
        if o.bins <= 0 or o.batch_size < 0:
            raise OptionError("reconstruction: bins must be positive and batch_size non-negative")

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        import torch

        from ..evaluation._accumulators import ReconstructionStats
        from ..store._holdout import auto_batch_size

        roles = context.roles
        if "target" in roles or "sites" in roles:
            metrics = _mapped_metrics(dictionary, context, roles, self.options)
            path = context.out_dir / "latent_density.png"
            _plot_density(metrics, path)
            return EvaluationResult(metrics=metrics, artifacts={"latent_density": str(path)})
        rows = context.eval_rows
        device = torch.device(context.device)
        stats = ReconstructionStats(dictionary.d_in, dictionary.d_dict, device=device)
        batch = auto_batch_size(dictionary.d_in, dictionary.d_dict, self.options.batch_size)
        with_grads = dictionary.uses_gradients and "grads" in rows.store.columns
        err_grads = 0.0
        with torch.no_grad():
            for start, acts in rows.blocks(batch):
                x = torch.from_numpy(acts).to(device)
                x_hat, codes = dictionary(x)
                stats.update(x, x_hat, codes)
                if with_grads:
                    g = torch.from_numpy(rows.store.read(start, start + len(acts), "grads")).to(device)
                    err_grads += float((x.double() - dictionary.reconstruct_with_grads(x, g).double()).pow(2).sum())
        metrics = stats.result(self.options.dense_threshold, self.options.bins)
        if with_grads:
            total = stats.total_variance()
            metrics["fvu_grads"] = err_grads / total if total > 0 else math.nan
            metrics["explained_variance_grads"] = 1.0 - metrics["fvu_grads"]
        path = context.out_dir / "latent_density.png"
        _plot_density(metrics, path)
        return EvaluationResult(metrics=metrics, artifacts={"latent_density": str(path)})


def _mapped_metrics(dictionary: Any, context: EvaluationContext, roles: dict[str, Any], options: ReconstructionOptions) -> dict[str, Any]:
    """Metrics of a dictionary that maps ``acts`` to ``target``, or stacked ``sites`` to themselves.

    The dictionary is called as users call it, ``dictionary(rows)`` on the store's own rows, so the
    same code scores a dictionary during training (scales held apart) and one loaded from disk (scales
    folded into the weights), and a skip transcoder's linear term is counted. MSE is in stored units;
    FVU does not depend on the units of one site. The stacked overall FVU is taken in training units
    (each site times the scale the run recorded), where every site has the same mean squared norm.
    """
    import torch

    from ..evaluation._accumulators import ReconstructionStats
    from ..store._holdout import auto_batch_size

    device = torch.device(context.device)
    rows = context.eval_rows
    whole = getattr(context.store, "base", context.store)
    if "target" in roles:
        source, target = roles["acts"], roles["target"]
        d_target = whole.site(target).d_in
        stats = ReconstructionStats(d_target, dictionary.d_dict, device=device)
        batch = auto_batch_size(max(dictionary.d_in, d_target), dictionary.d_dict, options.batch_size)
        with torch.no_grad():
            for start, acts in rows.blocks(batch):
                stop = start + len(acts)
                estimate, codes = dictionary(context.role_rows("acts", start, stop, training_units=False))
                stats.update(context.role_rows("target", start, stop, training_units=False), estimate.float(), codes)
        metrics = stats.result(options.dense_threshold, options.bins)
        return metrics | {"fvu_of": "target", "source_site": source, "target_site": target}
    names = list(roles["sites"])
    scales = torch.tensor([context.role_scale(name) for name in names], device=device).view(1, -1, 1)
    d = whole.site(names[0]).d_in
    overall = ReconstructionStats(len(names) * d, dictionary.d_dict, device=device)
    per_site = {name: ReconstructionStats(d, dictionary.d_dict, device=device) for name in names}
    batch = auto_batch_size(len(names) * d, dictionary.d_dict, options.batch_size)
    with torch.no_grad():
        for start, acts in rows.blocks(batch):
            x = context.role_rows("sites", start, start + len(acts), training_units=False)
            estimate, codes = dictionary(x)
            estimate = estimate.float().view_as(x)
            n = len(x)
            overall.update((x * scales).reshape(n, -1), (estimate * scales).reshape(n, -1), codes)
            for i, name in enumerate(names):
                per_site[name].update(x[:, i], estimate[:, i], codes)
    metrics = overall.result(options.dense_threshold, options.bins)
    return metrics | {"fvu_of": "sites", "fvu_per_site": {name: per.result(options.dense_threshold, options.bins)["fvu"] for name, per in per_site.items()}}


def _plot_density(metrics: dict[str, Any], path: Any) -> None:
    from ..plots import new_figure, save_figure

    hist = metrics["density_histogram"]
    edges, counts = hist["bin_edges"], hist["counts"]
    fig = new_figure()
    ax = fig.add_subplot()
    widths = [b - a for a, b in zip(edges, edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white", linewidth=0.3)
    ax.axvline(math.log10(metrics["dense_threshold"]), color="#c44e52", linestyle="--", linewidth=1, label=f"dense > {metrics['dense_threshold']:g}")
    ax.set_xlabel("log10 firing frequency (fraction of eval rows)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"Latent density: {metrics['d_dict']} latents, {metrics['dead']} dead, {metrics['dense']} dense; "
        f"L0={metrics['l0']:.3g}, FVU={metrics['fvu']:.3g}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)


@hookimpl
def featureforge_register_evaluators(register):
    register(ReconstructionEvaluator)
