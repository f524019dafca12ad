"""The ``steering`` evaluator: how well single latents steer the live model in contexts where they are silent.

For a seeded sample of live latents (``latents``; live = fired on the store's first rows), over
held-out sequences (documents after the store's, first ``context_tokens`` tokens each) on which
the latent does *not* fire, the latent is amplified at every position with the shared intervention
model (``add``, α × its typical firing value; ``featureforge.interventions``) at each strength in
``alphas``, and at the sequence's last position:

* ``output_score`` — Arad, Mueller & Belinkov 2025 ("SAEs Are Good for Steering – If You Select the
  Right Features", EMNLP; their ``src/output_score.py``): with T the latent's own top promoted
  tokens, score = (1 − min rank of T in the steered next-token distribution / |V|) × max
  probability of T. The paper takes T from the logit lens of the decoder row; a generic live model
  has no logit lens, so here T is the ``top_tokens`` tokens with the largest mean log-probability
  gain over half of the contexts, and the score is measured on the other half (no selection on the
  scored contexts). ``output_score_gain`` = score steered − score clean (same T).
* ``stability`` — mean pairwise cosine across contexts of the log-probability-change vectors.
* ``kl_rest`` — KL(clean ‖ steered) of the distribution over the tokens outside T (renormalised):
  the collateral change; ``ce_increase`` — mean next-token CE over every position of the held-out
  text, steered minus clean.

``control=true`` repeats everything with a random direction of the same norm as α·u·d_i per latent
(``control_*`` metrics). Aggregates are medians over latents per α (``<metric>_a<α>``), the
per-latent rows are in ``steering.json``; plot ``steering.png``. ``push_norm`` is |u_i·d_i|, the
size of the α = 1 edit: compare dictionaries' scores at equal push, or against their control. Encoders: ``embedding_distance``
(1 − cos of pooled embeddings) and ``stability`` of the pooled-embedding change vectors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from featureforge import BadInputError, EvaluationContext, EvaluationResult, OptionError, progress_bar

from ._downstream import DownstreamEvaluator

#: Contexts a latent must be silent on to be steered: half choose its promoted tokens, half score them.
MIN_CONTEXTS = 4


@dataclasses.dataclass
class SteeringOptions:
    latents: int = 16
    """Live latents sampled (seeded) and steered one at a time."""
    alphas: str = "2,4,8"
    """Strengths α, comma list, in units of each latent's typical firing value."""
    contexts: int = 32
    """Held-out sequences tried per latent (those where it fires are skipped)."""
    context_tokens: int = 32
    """Tokens of each held-out sequence used as context."""
    top_tokens: int = 20
    """Size of the latent's promoted-token set T (the paper's logit-lens top-k is 20)."""
    control: bool = True
    """Also steer along a random direction of equal norm (the control)."""
    seed: int = 0
    """Seed of the latent sample and the random directions."""
    start_doc: int | None = None
    """First held-out document; default: the store's largest doc_id + 1."""
    device: str = ""
    """Device of the live model; empty: the store's source option."""


class SteeringEvaluator(DownstreamEvaluator):
    name = "steering"
    description = "Amplify single latents in contexts where they are silent: output score (Arad et al. 2025), stability, collateral KL/CE"
    Options = SteeringOptions  # type: ignore[assignment]

    @classmethod
    def default_for(cls, store: Any, occasion: str) -> bool:
        """Never: steering many latents is far too slow to run unasked (downstream's default is not inherited)."""
        return False

    def __post_init__(self) -> None:
        o = self.options
        if o.latents < 1 or o.contexts < 2 or o.context_tokens < 2 or o.top_tokens < 1:
            raise OptionError("steering: latents, top_tokens must be >= 1 and contexts, context_tokens >= 2")
        try:
            self.alpha_values = [float(a) for a in o.alphas.split(",") if a.strip()]
        except ValueError:
            raise OptionError(f"steering: alphas={o.alphas!r} is not a comma list of numbers; pass e.g. -o steering.alphas=2,4,8") from None
        if not self.alpha_values:
            raise OptionError("steering: give at least one strength, e.g. -o steering.alphas=4")
        self._starts = {}

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        import torch

        from featureforge.interventions import Intervention, replacement
        from featureforge.steering import store_typical

        o = self.options
        store = context.store
        if store is None:
            raise BadInputError("the steering evaluator needs the store (typical firing values, held-out text); pass --store")
        src = self._source_for(context)
        typical = store_typical(dictionary, store)
        live_ids = torch.nonzero(typical > 0).flatten()
        if len(live_ids) == 0:
            raise BadInputError("no latent fired on the store's first rows; the steering evaluator needs live latents")
        gen = torch.Generator().manual_seed(o.seed)
        home = dictionary.input_scale.device if hasattr(dictionary, "input_scale") else None
        was_training = bool(getattr(dictionary, "training", False))
        rows: list[dict[str, Any]] = []
        try:
            with src.splice(dictionary) as live:
                batch = self._contexts(live, store)
                ids, mask, keep = batch.input_ids.to(live.device), batch.attention_mask.to(live.device), batch.token_mask.to(live.device)
                held: list[torch.Tensor] = []

                def spy(x: torch.Tensor) -> torch.Tensor:
                    held.append(x)
                    return x

                clean = live(ids, mask, replace=spy, token_mask=keep).float()
                with torch.no_grad():
                    codes = dictionary.encode(held[0].float())
                    seq_of_row = torch.nonzero(keep)[:, 0].to(codes.device)
                    fires = torch.zeros(ids.shape[0], codes.shape[1], device=codes.device).index_add_(0, seq_of_row, (codes != 0).float()) > 0
                    # Candidates: live latents silent on at least MIN_CONTEXTS held-out contexts.
                    silent_count = (~fires).sum(0).cpu()
                    candidates = live_ids[silent_count[live_ids] >= MIN_CONTEXTS]
                    chosen = candidates[torch.randperm(len(candidates), generator=gen)[: o.latents]].sort().values.tolist()
                    eye = torch.eye(codes.shape[1], device=codes.device)
                    directions = dictionary.decode(eye[chosen]) - dictionary.decode(torch.zeros_like(eye[:1]))
                enabled = None if context.progress else False
                bar = progress_bar(len(chosen), "steering", unit="latent", enabled=enabled)
                for n, latent in enumerate(chosen):
                    bar.update(1)
                    silent = torch.nonzero(~fires[:, latent]).flatten().cpu()
                    # push_norm: |u_i d_i| in original units, the size of the α = 1 edit (the control matches it).
                    row: dict[str, Any] = {"latent": int(latent), "typical": float(typical[latent]), "contexts": int(len(silent)),
                                           "push_norm": float(typical[latent] * directions[n].norm())}
                    rand = torch.randn(directions.shape[1], generator=gen).to(directions.device)
                    rand = rand / rand.norm() * directions[n].norm()
                    for alpha in self.alpha_values:
                        fn = replacement(dictionary, [Intervention((latent,), "add", alpha)], typical)
                        row.update(_effects(live, ids, mask, keep, clean, silent, fn, o.top_tokens, f"a{alpha:g}"))
                        if o.control:
                            shift = (alpha * float(typical[latent]) * rand).detach()

                            def control(x: torch.Tensor, shift: torch.Tensor = shift) -> torch.Tensor:
                                return x + shift.to(x.device, x.dtype)

                            row.update(_effects(live, ids, mask, keep, clean, silent, control, o.top_tokens, f"a{alpha:g}", prefix="control_"))
                    rows.append(row)
                bar.close()
                kind = live.kind
        finally:
            if home is not None:
                dictionary.to(home)
            if was_training:
                dictionary.train()
        metrics: dict[str, Any] = {"kind": kind, "latents_steered": len(rows), "alphas": self.alpha_values}
        if not rows:  # a dense dictionary: every latent fires somewhere in every context
            metrics["note"] = (f"no live latent is silent on {MIN_CONTEXTS} of the {o.contexts} held-out contexts of {o.context_tokens} tokens; "
                               "pass more -o steering.contexts or a smaller -o steering.context_tokens")
        keys = sorted({k for r in rows for k in r if k not in ("latent", "typical", "contexts")})  # push_norm aggregated too
        for key in keys:
            values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            metrics[key] = float(torch.tensor(values).median()) if values else math.nan
        context.out_dir.mkdir(parents=True, exist_ok=True)
        table = context.out_dir / "steering.json"
        table.write_text(json.dumps({"metrics": metrics, "latents": rows}, indent=1))
        plot = context.out_dir / "steering.png"
        _plot(metrics, self.alpha_values, kind, plot)
        return EvaluationResult(metrics=metrics, artifacts={"steering_table": str(table), "steering": str(plot)})

    def _contexts(self, live: Any, store: Any) -> Any:
        """One batch of held-out sequences (windows of the documents after the store's) cut to ``context_tokens``."""
        import torch

        from ._splice import TokenBatch

        o = self.options
        start = self._start_doc(store) or 0
        got: list[Any] = []
        for b in live.batches(start_doc=start, max_sequences=o.contexts * 2):
            for i in range(b.input_ids.shape[0]):
                if int(b.attention_mask[i].sum()) >= o.context_tokens:
                    got.append((b.input_ids[i, : o.context_tokens], b.token_mask[i, : o.context_tokens], int(b.doc_ids[i])))
            if len(got) >= o.contexts:
                break
        got = got[: o.contexts]
        if len(got) < 4:
            raise BadInputError(f"only {len(got)} held-out sequences of {o.context_tokens} tokens after document {start}; pass a smaller -o steering.context_tokens")
        ids = torch.stack([g[0] for g in got])
        return TokenBatch(ids, torch.ones_like(ids), torch.stack([g[1] for g in got]), torch.tensor([g[2] for g in got]))


def _effects(live: Any, ids: Any, mask: Any, keep: Any, clean: Any, silent: Any, fn: Any, top: int, tag: str, prefix: str = "") -> dict[str, float]:
    """Output score, stability and collateral cost of one replacement on the ``silent`` contexts."""
    import torch

    ids, mask, keep, clean = ids[silent], mask[silent], keep[silent], clean[silent]
    out = live(ids, mask, replace=fn, token_mask=keep).float()
    if live.kind != "causal-lm":
        a, b = live.pooled(clean, mask), live.pooled(out, mask)
        change = b - a
        return {f"{prefix}embedding_distance_{tag}": float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()),
                f"{prefix}stability_{tag}": _mean_pairwise_cosine(change)}
    lp = torch.log_softmax(clean[:, -1].double(), -1)
    lq = torch.log_softmax(out[:, -1].double(), -1)
    gain = lq - lp
    half = len(silent) // 2
    promoted = torch.topk(gain[:half].mean(0), top).indices  # T, chosen on the first half only
    scored = slice(half, None)

    def output_score(logp: torch.Tensor) -> float:
        ranks = (logp[:, None, :] > logp[:, promoted][:, :, None]).sum(-1).min(-1).values.double()  # 0 = top token
        best = logp[:, promoted].exp().max(-1).values
        return float(((1 - ranks / logp.shape[-1]) * best).mean())

    rest = torch.ones(lp.shape[-1], dtype=torch.bool, device=lp.device)
    rest[promoted] = False
    p_rest = torch.log_softmax(lp[scored][:, rest], -1)
    q_rest = torch.log_softmax(lq[scored][:, rest], -1)
    kl_rest = float((p_rest.exp() * (p_rest - q_rest)).sum(-1).mean())
    from ._model import next_token_ce

    ce_clean = next_token_ce(clean, ids, mask).sum() / max(int(mask[:, 1:].sum()), 1)
    ce_steered = next_token_ce(out, ids, mask).sum() / max(int(mask[:, 1:].sum()), 1)
    steered_score, clean_score = output_score(lq[scored]), output_score(lp[scored])
    return {
        f"{prefix}output_score_{tag}": steered_score,
        f"{prefix}output_score_gain_{tag}": steered_score - clean_score,
        f"{prefix}stability_{tag}": _mean_pairwise_cosine(gain.float()),
        f"{prefix}kl_rest_{tag}": kl_rest,
        f"{prefix}ce_increase_{tag}": float(ce_steered - ce_clean),
    }


def _mean_pairwise_cosine(vectors: Any) -> float:
    import torch

    unit = torch.nn.functional.normalize(vectors.float() - 0, dim=-1)
    sims = unit @ unit.T
    n = sims.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))) if n > 1 else math.nan


def _plot(metrics: dict[str, Any], alphas: list[float], kind: str, path: Any) -> None:
    from featureforge.plots import new_figure, save_figure

    panels = ["output_score_gain", "stability", "kl_rest", "ce_increase"] if kind == "causal-lm" else ["embedding_distance", "stability"]
    fig = new_figure(3.2 * len(panels), 3.2)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for prefix, label, style in (("", "latents", "o-"), ("control_", "random direction, equal norm", "s--")):
            ys = [metrics.get(f"{prefix}{name}_a{a:g}", math.nan) for a in alphas]
            if any(math.isfinite(y) for y in ys):
                ax.plot(alphas, ys, style, label=label, markersize=4)
        ax.set_xlabel("α (× typical firing value)")
        ax.set_title(name.replace("_", " ") + " (median)", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    save_figure(fig, path)
