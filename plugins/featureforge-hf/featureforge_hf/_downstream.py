"""The ``downstream`` evaluator: how much of the model's behaviour survives the dictionary.

The store's recorded source (``context.source``, rebuilt by the core) runs its live model on held-out text
(documents after the last one in the store, or a text file), and the hook point's tensor replaced
at stored-row positions by (``SplicedModel.compare``):

- ``dictionary``: the dictionary's reconstruction x̂;
- ``zero``: zeros (zero ablation);
- ``mean``: the store's mean activation (its normalisation statistics; mean ablation).

Causal LMs: mean next-token cross-entropy per predicted token, clean and under each replacement
(``ce_clean``, ``ce_dictionary``, ``ce_zero``, ``ce_mean``), KL(clean ‖ replaced) per token
(``kl_*``), the CE-loss score ``(CE_zero − CE_dictionary) / (CE_zero − CE_clean)``
(``ce_loss_score``: 1 = the dictionary loses nothing, 0 = as bad as zero ablation), the same with
mean ablation as the baseline (``ce_loss_score_vs_mean``) and ``ce_increase`` = CE_dictionary − CE_clean.

Encoders (sentence embedders such as MiniLM): the mean over sequences of 1 − cos between the
pooled sentence embedding of the clean run and of each replaced run (``cos_dist_*``; the clean
run has distance 0), and the same score ``embedding_score`` = (D_zero − D_dictionary) / D_zero,
plus ``embedding_score_vs_mean`` = (D_mean − D_dictionary) / D_mean.

``score`` repeats the model kind's score (``ce_loss_score`` or ``embedding_score``).

A causal-LM dictionary that selects latents with gradients (``uses_gradients``, g-SAE) is
also spliced in that way, with each batch's own gradients: ``ce_dictionary_grads``,
``kl_dictionary_grads`` and ``ce_loss_score_grads`` (``score`` stays the plain-encode one, as a
user without gradients would run it).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

from featureforge import ActivationSource, BadInputError, EvaluationContext, EvaluationResult, Evaluator, OptionError
from featureforge.evaluation import recorded_source_class


@dataclasses.dataclass
class DownstreamOptions:
    max_sequences: int = 256
    """Held-out sequences (of the source's context_size tokens) run through the live model."""
    batch_size: int = 0
    """Sequences per forward pass; 0: the store's source batch_size."""
    data: str = ""
    """Held-out text instead of the store's own data: a .txt (blank-line separated documents), .jsonl or .parquet file, a folder or glob of them. Empty: the store's data from the first document after those in the store."""
    text_field: str = "text"
    """Field (jsonl) or column (parquet) of the documents' text when data is given."""
    start_doc: int | None = None
    """First document of the store's data to evaluate on; default: the store's largest doc_id + 1 (never trained on)."""
    device: str = ""
    """Device of the live model; empty: the store's source option (auto: cuda when available)."""


class DownstreamEvaluator(Evaluator):
    name = "downstream"
    description = "Live model with the hook point spliced: CE-loss score and KL (causal LMs), pooled-embedding score (encoders)"
    Options = DownstreamOptions

    @classmethod
    def default_for(cls, store: Any, occasion: str) -> bool:
        """During training, on stores whose recorded source can splice a live model (installed)."""
        source = recorded_source_class(store)
        return occasion == "training" and source is not None and source.can_splice

    def __post_init__(self) -> None:
        o = self.options
        if o.max_sequences < 1:
            raise OptionError(f"downstream: max_sequences={o.max_sequences} must be at least 1")
        if o.batch_size < 0:
            raise OptionError(f"downstream: batch_size={o.batch_size} must be 0 (the source's) or positive")
        if o.start_doc is not None and o.start_doc < 0:
            raise OptionError(f"downstream: start_doc={o.start_doc} must be non-negative")
        # Held-out starts, kept across calls (evaluation during training).
        self._starts: dict[str, int | None] = {}

    # -- the live source ----------------------------------------------------------------------
    def _source_for(self, context: EvaluationContext) -> ActivationSource:
        store = context.store
        given = context.given_source is not None
        if store is None and not given:
            raise BadInputError("the downstream evaluator needs a store (its recorded source rebuilds the live model); pass --store")
        src = context.source if given or not self.options.device else context.rebuilt_source(device=self.options.device)
        if not src.can_splice:
            where = f"source {src.name!r}" if given else f"store {store.url} was cached by source {src.name!r}, which"
            raise BadInputError(
                f"{where} cannot run a live model; the downstream evaluator needs a store of a model source such as hf "
                "(use --evaluator reconstruction here)"
            )
        if not given:
            self._check_same_model(src, store)
        return src

    @staticmethod
    def _check_same_model(src: ActivationSource, store: Any) -> None:
        """Refuse a rebuilt model whose config or hook is not the one the store recorded."""
        stored = store.provenance or {}
        if not stored:
            return
        now = src.provenance()
        for key in ("config_sha256", "hook", "site"):
            if stored.get(key) is not None and now.get(key) is not None and stored[key] != now[key]:
                raise BadInputError(
                    f"the model rebuilt from store {store.url}'s source options differs from the one it was cached with "
                    f"({key}: {stored[key]!r} then, {now[key]!r} now); restore that model or re-cache the store"
                )

    def _start_doc(self, store: Any) -> int | None:
        """The store's largest doc_id + 1 (None when it has no doc_ids column)."""
        if self.options.start_doc is not None:
            return int(self.options.start_doc)
        if store is None or "doc_ids" not in store.columns:
            return None
        key = f"{store.url}:{store.rows}"
        if key not in self._starts:
            rpc = store.rows_per_chunk
            largest = -1
            for ref in store.committed_chunks():
                ids = store.read(ref.index * rpc, ref.index * rpc + ref.rows, "doc_ids")
                if len(ids):
                    largest = max(largest, int(ids.max()))
            self._starts[key] = largest + 1
        return self._starts[key]

    # -- evaluate -----------------------------------------------------------------------------
    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        import torch

        from featureforge import progress_bar

        from . import _data
        from ._splice import summarize

        src = self._source_for(context)
        store = context.store
        width = int(src.d_in)
        hook = getattr(src, "hook_name", "")
        if int(dictionary.d_in) != width:
            raise BadInputError(
                f"the dictionary has d_in={int(dictionary.d_in)} but hook point {hook or 'of the source'} has width {width}; "
                "evaluate a dictionary trained on this store's activations"
            )
        o = self.options
        start = None
        texts = None
        if o.data:
            spec = _data.resolve(o.data)
            texts = _data.read_documents(spec, o.text_field, "train")
            held_out = f"{spec.description}"
        else:
            start = self._start_doc(store) or 0
            # A streamed run (no store) trained on the documents after its held-out ones: start after those.
            start = max(start, int((context.run_config.get("stream") or {}).get("next_doc_id") or 0))
            held_out = f"the store's data from document {start} on"
        replacements: dict[str, Any] = {"dictionary": "dictionary", "zero": "zero"}
        mean = (store.normalisation() or {}).get("mean") if store is not None else None
        if mean is not None and len(mean) == width:
            mean_row = torch.tensor(mean, dtype=torch.float32)

            def store_mean(rows: torch.Tensor) -> torch.Tensor:
                return mean_row.to(device=rows.device, dtype=rows.dtype).expand_as(rows)

            replacements["mean"] = store_mean
        else:
            replacements["mean"] = "mean"  # no store statistics: the batch's own mean
        grads_mode = getattr(dictionary, "uses_gradients", False) and getattr(src, "loaded", None) is not None and src.loaded.is_causal
        if grads_mode:
            replacements["dictionary_grads"] = "dictionary_grads"
        # The splice moves the dictionary to the model's device and into eval mode: put it back after.
        home = dictionary.input_scale.device if hasattr(dictionary, "input_scale") else None
        was_training = bool(getattr(dictionary, "training", False))
        totals: collections.Counter = collections.Counter()
        enabled = None if context.progress else False
        try:
            with src.splice(dictionary) as live, progress_bar(o.max_sequences, "downstream", unit="seq", enabled=enabled) as bar:
                kind = live.kind
                if live.reads is not None or live.sites:
                    # The store's mean is of its first site; a transcoder writes another site and a
                    # crosscoder several: mean-ablate each written site by its own rows' batch mean.
                    replacements["mean"] = "mean"
                    hook = ",".join(s.name for s in live.sites) if live.sites else live.site.name
                for batch in live.batches(texts, start_doc=start or 0, max_sequences=o.max_sequences, batch_size=o.batch_size or None):
                    totals.update(live.compare(batch, replacements))
                    bar.update(int(batch.input_ids.shape[0]))
        finally:
            if home is not None:
                dictionary.to(home)
            if was_training:
                dictionary.train()
        metrics: dict[str, Any] = {"kind": kind, "hook": hook, "held_out": held_out}
        if start is not None:
            metrics["start_doc"] = start
        summary = summarize(totals)
        metrics.update(summary)
        if kind == "causal-lm":
            ce_clean, ce_dict, ce_mean = summary["ce_clean"], summary["ce_dictionary"], summary["ce_mean"]
            metrics["ce_increase"] = ce_dict - ce_clean
            metrics["ce_loss_score_vs_mean"] = (ce_mean - ce_dict) / (ce_mean - ce_clean) if ce_mean != ce_clean else math.nan
            metrics["score"] = summary["ce_loss_score"]
            if "ce_dictionary_grads" in summary:
                denom = summary["ce_zero"] - ce_clean
                metrics["ce_loss_score_grads"] = (summary["ce_zero"] - summary["ce_dictionary_grads"]) / denom if denom else math.nan
        else:
            d_mean = summary["cos_dist_mean"]
            metrics["embedding_score_vs_mean"] = (d_mean - summary["cos_dist_dictionary"]) / d_mean if d_mean else math.nan
            metrics["score"] = summary["embedding_score"]
        path = context.out_dir / "downstream.png"
        _plot(metrics, path)
        return EvaluationResult(metrics=metrics, artifacts={"downstream": str(path)})


def _plot(metrics: dict[str, Any], path: Any) -> None:
    from featureforge.plots import new_figure, save_figure

    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    if metrics["kind"] == "causal-lm":
        labels = ["clean", "dictionary", "mean-ablated", "zero-ablated"]
        values = [metrics["ce_clean"], metrics["ce_dictionary"], metrics["ce_mean"], metrics["ce_zero"]]
        ax.set_ylabel("next-token cross-entropy (nats/token)")
        title = f"CE-loss score {metrics['ce_loss_score']:.3f}; KL(clean‖dictionary) {metrics['kl_dictionary']:.3g}"
    else:
        labels = ["clean", "dictionary", "mean-ablated", "zero-ablated"]
        values = [0.0, metrics["cos_dist_dictionary"], metrics["cos_dist_mean"], metrics["cos_dist_zero"]]
        ax.set_ylabel("1 − cos(pooled embedding, clean)")
        title = f"embedding score {metrics['embedding_score']:.3f}"
    colors = ["#55a868", "#4c72b0", "#dd8452", "#c44e52"]
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"Downstream, hook {metrics.get('hook', '')}: {title}", fontsize=9)
    save_figure(fig, path)
