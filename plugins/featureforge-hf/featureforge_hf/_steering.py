"""The ``steering`` evaluator: how well single latents, and steering vectors, steer the live model.

Latents and vectors are handles scored by one code path (``_score``): a latent is its code edit
(``add``) on the contexts where it is silent, a vector (``-o vectors=DIR,...``, from ``featureforge
vector``) its direction added (α × its typical projection, ``featureforge.interventions.DirectionEdit``)
on every context; ``latent_ids`` picks latents instead of a sample, so "this latent or this vector
for the concept?" is one ``featureforge evaluate``. Each vector's numbers are ``vector_<name>_<metric>``.

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

A transcoder's latent fires (and is silent) on its source site's rows and is added at its target
site (α·u_i·d_i in the MLP's output); a crosscoder's fires on every site's rows and is added at
each site by its own decoder rows (its control: a random direction over all sites of equal norm).
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
    """Live latents sampled (seeded) and steered one at a time (0: none, e.g. to score only vectors)."""
    latent_ids: str = ""
    """Comma list of latents to steer instead of a sample (e.g. a vector's decomposition; latents firing on nearly every context are skipped)."""
    vectors: str = ""
    """Comma list of steering-vector folders (featureforge vector) scored beside the latents, on every context."""
    vector_alphas: str = ""
    """Strengths for the vectors, × each one's typical projection (α = 1: the whole concept shift); empty: alphas."""
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
        if o.latents < 0 or o.contexts < 2 or o.context_tokens < 2 or o.top_tokens < 1:
            raise OptionError("steering: latents must be >= 0, top_tokens >= 1 and contexts, context_tokens >= 2")
        try:
            self.alpha_values = [float(a) for a in o.alphas.split(",") if a.strip()]
        except ValueError:
            raise OptionError(f"steering: alphas={o.alphas!r} is not a comma list of numbers; pass e.g. -o steering.alphas=2,4,8") from None
        if not self.alpha_values:
            raise OptionError("steering: give at least one strength, e.g. -o steering.alphas=4")
        try:
            self.vector_alpha_values = [float(a) for a in o.vector_alphas.split(",") if a.strip()] or self.alpha_values
        except ValueError:
            raise OptionError(f"steering: vector_alphas={o.vector_alphas!r} is not a comma list of numbers; pass e.g. -o steering.vector_alphas=0.25,0.5,1") from None
        self._starts = {}

    def evaluate(self, dictionary: Any, context: EvaluationContext) -> EvaluationResult:
        import torch

        from featureforge.live import ReadEdit
        from featureforge.steering import store_typical

        o = self.options
        store = context.store
        if store is None:
            raise BadInputError("the steering evaluator needs the store (typical firing values, held-out text); pass --store")
        src = self._source_for(context)
        vectors = self._vectors(dictionary)
        typical = store_typical(dictionary, store)
        live_ids = torch.nonzero(typical > 0).flatten()
        if len(live_ids) == 0 and not vectors:
            raise BadInputError("no latent fired on the store's first rows; the steering evaluator needs live latents")
        gen = torch.Generator().manual_seed(o.seed)
        home = dictionary.input_scale.device if hasattr(dictionary, "input_scale") else None
        was_training = bool(getattr(dictionary, "training", False))
        rows: list[dict[str, Any]] = []
        vector_rows: list[dict[str, Any]] = []
        try:
            with src.splice(dictionary) as live:
                for v in vectors:
                    if v.hook != live.hook:
                        raise BadInputError(f"steering: vector {v.name!r} was made at {v.hook} but the store's live model hooks {live.hook}; "
                                            "make the vector at the dictionary's hook")
                batch = self._contexts(live, store)
                ids, mask, keep = batch.input_ids.to(live.device), batch.attention_mask.to(live.device), batch.token_mask.to(live.device)
                held: list[torch.Tensor] = []

                def spy(read: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                    held.append(read)  # what the dictionary encodes (a transcoder's source rows, a crosscoder's sites)
                    return x

                clean = live(ids, mask, replace=ReadEdit(spy), token_mask=keep).float()
                with torch.no_grad():
                    codes = dictionary.encode(held[0].float())
                    seq_of_row = torch.nonzero(keep)[:, 0].to(codes.device)
                    fires = torch.zeros(ids.shape[0], codes.shape[1], device=codes.device).index_add_(0, seq_of_row, (codes != 0).float()) > 0
                chosen = self._latents(live_ids, fires, gen)
                handles = [self._latent_handle(dictionary, typical, int(latent), fires) for latent in chosen]
                handles += [self._vector_handle(v, ids.shape[0]) for v in vectors]
                enabled = None if context.progress else False
                bar = progress_bar(len(handles), "steering", unit="handle", enabled=enabled)
                for handle in handles:
                    bar.update(1)
                    row = self._score(live, ids, mask, keep, clean, handle, gen)
                    (vector_rows if handle["kind"] == "vector" else rows).append(row)
                bar.close()
                kind = live.kind
        finally:
            if home is not None:
                dictionary.to(home)
            if was_training:
                dictionary.train()
        metrics: dict[str, Any] = {"kind": kind, "latents_steered": len(rows), "alphas": self.alpha_values}
        if vector_rows:
            metrics["vector_alphas"] = self.vector_alpha_values
        if not rows and not vector_rows:  # a dense dictionary: every latent fires somewhere in every context
            metrics["note"] = (f"no live latent is silent on {MIN_CONTEXTS} of the {o.contexts} held-out contexts of {o.context_tokens} tokens; "
                               "pass more -o steering.contexts or a smaller -o steering.context_tokens")
        keys = sorted({k for r in rows for k in r if k not in ("latent", "typical", "contexts", "handle", "kind")})  # push_norm aggregated too
        for key in keys:
            values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            metrics[key] = float(torch.tensor(values).median()) if values else math.nan
        for row in vector_rows:  # one handle each: its own numbers, beside the latents' medians
            for key, value in row.items():
                if key not in ("handle", "kind", "contexts", "typical", "name"):
                    metrics[f"vector_{row['name']}_{key}"] = value
        context.out_dir.mkdir(parents=True, exist_ok=True)
        table = context.out_dir / "steering.json"
        table.write_text(json.dumps({"metrics": metrics, "latents": rows, "vectors": vector_rows}, indent=1))
        plot = context.out_dir / "steering.png"
        _plot(metrics, self.alpha_values, kind, plot, [r["name"] for r in vector_rows], self.vector_alpha_values)
        return EvaluationResult(metrics=metrics, artifacts={"steering_table": str(table), "steering": str(plot)})

    # -- the handles: latents and steering vectors, scored by one code path ------------------------
    def _vectors(self, dictionary: Any) -> list[Any]:
        from featureforge.vectors import load_vector

        found = [load_vector(p.strip()) for p in self.options.vectors.split(",") if p.strip()]
        for v in found:
            if v.d_in != int(dictionary.d_in):
                raise BadInputError(f"steering: vector {v.name!r} has width {v.d_in} but the dictionary has d_in={dictionary.d_in}; use a vector of this hook")
        return found

    def _latents(self, live_ids: Any, fires: Any, gen: Any) -> list[int]:
        """The latents scored: ``latent_ids`` when given, else a seeded sample of live latents silent on MIN_CONTEXTS contexts."""
        import torch

        o = self.options
        silent_count = (~fires).sum(0).cpu()
        if o.latent_ids.strip():
            try:
                wanted = [int(i) for i in o.latent_ids.split(",") if i.strip()]
            except ValueError:
                raise OptionError(f"steering: latent_ids={o.latent_ids!r} is not a comma list of integers; pass e.g. -o steering.latent_ids=12,40") from None
            bad = [i for i in wanted if not 0 <= i < fires.shape[1]]
            if bad:
                raise OptionError(f"steering: latent {bad[0]} is outside the dictionary (0..{fires.shape[1] - 1})")
            live = set(live_ids.tolist())
            return [i for i in wanted if i in live and int(silent_count[i]) >= MIN_CONTEXTS]
        if o.latents == 0:
            return []
        candidates = live_ids[silent_count[live_ids] >= MIN_CONTEXTS]
        return candidates[torch.randperm(len(candidates), generator=gen)[: o.latents]].sort().values.tolist()

    def _latent_handle(self, dictionary: Any, typical: Any, latent: int, fires: Any) -> dict[str, Any]:
        """A latent: its code edit (``add``, α × typical value) on the contexts where it is silent."""
        import torch

        from featureforge.interventions import Intervention, latent_directions, replacement

        unit, size = latent_directions(dictionary, [latent], typical)
        return {"kind": "latent", "label": {"latent": latent, "typical": float(typical[latent])},
                "silent": torch.nonzero(~fires[:, latent]).flatten().cpu(), "push_norm": float(size[0]), "width": int(unit.shape[1]), "alphas": self.alpha_values,
                "make": lambda alpha: replacement(dictionary, [Intervention((latent,), "add", alpha)], typical)}

    def _vector_handle(self, vector: Any, n_contexts: int) -> dict[str, Any]:
        """A steering vector: ``add`` along it (α × its typical projection) on every context."""
        import torch

        from featureforge.interventions import DirectionEdit, direction_replacement

        def make(alpha: float) -> Any:
            return direction_replacement(DirectionEdit(vector.direction, "add", alpha, torch.tensor([vector.typical])))

        return {"kind": "vector", "label": {"name": vector.name, "typical": float(vector.typical), "handle": f"vector:{vector.name}"},
                "silent": torch.arange(n_contexts), "push_norm": float(vector.typical), "width": vector.d_in, "alphas": self.vector_alpha_values, "make": make}

    def _score(self, live: Any, ids: Any, mask: Any, keep: Any, clean: Any, handle: dict[str, Any], gen: Any) -> dict[str, Any]:
        """Every metric of one handle at each α, and of a random direction of equal push (the control)."""
        import torch

        from featureforge.live import ReadEdit

        o = self.options
        silent = handle["silent"]
        # push_norm: the size of the α = 1 edit in original units (|u_i d_i| for a latent); the control matches it.
        row: dict[str, Any] = {**handle["label"], "kind": handle["kind"], "contexts": int(len(silent)), "push_norm": handle["push_norm"]}
        rand = torch.randn(handle["width"], generator=gen)  # drawn whether or not the control runs: seeded results stay put
        rand = rand / rand.norm() * handle["push_norm"]
        for alpha in handle["alphas"]:
            fn = handle["make"](alpha)
            row.update(_effects(live, ids, mask, keep, clean, silent, fn, o.top_tokens, f"a{alpha:g}"))
            if o.control:
                shift = (alpha * rand).detach()

                def control(read: torch.Tensor, x: torch.Tensor, shift: torch.Tensor = shift) -> torch.Tensor:
                    return x + shift.to(x.device, x.dtype).view(x.shape[1:])  # a crosscoder's rows [n, S, d]: over every site

                row.update(_effects(live, ids, mask, keep, clean, silent, ReadEdit(control), o.top_tokens, f"a{alpha:g}", prefix="control_"))
        return row

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


def _plot(metrics: dict[str, Any], alphas: list[float], kind: str, path: Any, vectors: list[str] = (), vector_alphas: list[float] | None = None) -> None:
    """Medians over latents, their control, and each vector at its own α (× its typical projection)."""
    from featureforge.plots import new_figure, save_figure

    panels = ["output_score_gain", "stability", "kl_rest", "ce_increase"] if kind == "causal-lm" else ["embedding_distance", "stability"]
    lines = [("", "latents (median)", "o-"), ("control_", "random direction, equal norm", "s--")]
    lines = [(prefix, label, style, alphas) for prefix, label, style in lines]
    lines += [(f"vector_{name}_", f"vector {name}", "^-", vector_alphas or alphas) for name in vectors]
    fig = new_figure(3.2 * len(panels), 3.2)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for prefix, label, style, xs in lines:
            ys = [metrics.get(f"{prefix}{name}_a{a:g}", math.nan) for a in xs]
            if any(math.isfinite(y) for y in ys):
                ax.plot(xs, ys, style, label=label, markersize=4)
        ax.set_xlabel("α (× typical value / projection)")
        ax.set_title(name.replace("_", " "), fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    save_figure(fig, path)
