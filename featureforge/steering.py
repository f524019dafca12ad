"""Steering a live model with a dictionary's latents: ``featureforge steer`` and ``featureforge.steer``.

The intervention (``interventions.py``) is applied through the store's source's splice seam: the
source rebuilds its live model, ``source.splice(dictionary)`` yields a
:class:`featureforge.live.LiveModel`, and a row replacement edits the hook point at the chosen
positions. Steering checks up front (:func:`steerable`) that the live model reads text
(``prompt_ids``, ``decode``, ``token_texts``) and is a causal LM or an encoder.

Causal LMs: greedy (or seeded sampling) continuations with and without the intervention, and the
next-token distribution shift at the prompt's end (KL(clean ‖ steered), most promoted and
suppressed tokens by log-probability gain). Encoders: 1 − cos between the pooled embeddings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator, Sequence

import torch

from .errors import BadInputError
from .interventions import Intervention, position_mask, replacement, typical_values
from .live import KINDS, LiveModel

#: Store rows encoded to find each latent's typical firing value (the unit of α).
TYPICAL_ROWS = 16_384
#: Strengths (× typical value) of the precomputed steering sections of feature pages.
SECTION_ALPHAS = (2.0, 4.0, 8.0)


@dataclasses.dataclass
class TokenShift:
    """One token's next-token log-probability without and with the intervention."""

    token_id: int
    token: str
    logprob_clean: float
    logprob_steered: float


@dataclasses.dataclass
class SteerOutcome:
    """The effect of one strength α."""

    alpha: float
    #: Continuation of the prompt under the intervention (causal LMs).
    text: str | None = None
    #: KL(clean ‖ steered) of the next-token distribution at the prompt's end (nats).
    kl: float | None = None
    promoted: list[TokenShift] = dataclasses.field(default_factory=list)
    suppressed: list[TokenShift] = dataclasses.field(default_factory=list)
    #: 1 − cos(pooled embedding clean, steered) (encoders).
    embedding_distance: float | None = None


@dataclasses.dataclass
class SteerResult:
    """What ``featureforge.steer`` returns; ``to_dict()`` is what ``--json`` prints."""

    prompt: str
    kind: str
    hook: str
    latents: list[int]
    mode: str
    units: str
    positions: list[int] | None
    #: Typical firing value of each latent (the unit of α when units="typical").
    typical: list[float]
    #: Continuation without intervention (causal LMs).
    clean_text: str | None
    outcomes: list[SteerOutcome]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the live model --------------------------------------------------------------------------
def live_source(store: Any, device: str = "") -> Any:
    """The store's recorded source rebuilt (its live model), refusing sources that cannot splice."""
    from .evaluation._context import rebuild_source

    source = rebuild_source(store, {"device": device} if device else None)
    if not source.can_splice:
        raise BadInputError(f"store {store.url} was cached by source {source.name!r}, which cannot run a live model; steer needs a model source such as hf")
    return source


def steerable(live: Any, *, text: bool = True) -> LiveModel:
    """``live`` when steering can run it (from a text prompt unless ``text=False``); otherwise one line saying what it lacks."""
    if not isinstance(live, LiveModel):
        raise BadInputError(f"the source's splice gave a {type(live).__name__}, not a featureforge.live.LiveModel; "
                            "steer needs one (its source must yield a LiveModel subclass)")
    if live.kind not in KINDS:
        raise BadInputError(f"live model kind {live.kind!r} is not one of {', '.join(KINDS)}; steer runs causal LMs and encoders")
    if text and not live.reads_text:
        raise live.lacks("prompt_ids", "read a text prompt")
    return live


def store_typical(dictionary: Any, store: Any, rows: int = TYPICAL_ROWS) -> torch.Tensor:
    """Each latent's mean non-zero code over the store's first ``rows`` rows."""
    rpc = store.rows_per_chunk
    blocks = (store.read(ref.index * rpc, ref.index * rpc + ref.rows) for ref in store.committed_chunks())
    return typical_values(dictionary, (torch.from_numpy(b) for b in blocks), max_rows=rows)


def _resolve(run: Any, store: Any) -> tuple[Any, Any]:
    from .dictionary import Dictionary, load
    from .store._view import ActivationStore, open_store

    dictionary = run if isinstance(run, Dictionary) else load(run)
    opened = store if isinstance(store, ActivationStore) else open_store(store)
    if int(dictionary.d_in) != opened.d_in:
        raise BadInputError(f"the dictionary has d_in={dictionary.d_in} but store {opened.url} has width {opened.d_in}; pass the store it was trained on")
    return dictionary, opened


# -- pure pieces -----------------------------------------------------------------------------
def distribution_shift(clean_logits: torch.Tensor, steered_logits: torch.Tensor, top: int = 10) -> tuple[float, list[int], list[int], torch.Tensor, torch.Tensor]:
    """KL(clean ‖ steered), ids of the ``top`` most promoted and suppressed tokens, both log-prob vectors."""
    lp = torch.log_softmax(clean_logits.double(), -1)
    lq = torch.log_softmax(steered_logits.double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum())
    gain = lq - lp
    k = min(top, gain.numel())
    promoted = torch.topk(gain, k).indices.tolist()
    suppressed = torch.topk(-gain, k).indices.tolist()
    return kl, promoted, suppressed, lp, lq


def generate(live: LiveModel, ids: list[int], replace: Any, positions: Sequence[int] | None, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> list[int]:
    """New token ids after ``ids``: greedy (temperature 0) or seeded sampling, the whole sequence
    re-run each step (no KV cache) so the intervention sees every position it covers.
    ``positions`` (of the prompt) limit the intervention; None: every stored-row position."""
    gen = torch.Generator().manual_seed(int(seed))
    seq = list(ids)
    prompt_len = len(ids)
    for _ in range(max_new_tokens):
        input_ids = torch.tensor([seq], device=live.device)
        mask = torch.ones_like(input_ids)
        token_mask = live.token_mask(input_ids, mask)
        if positions is not None:
            prompt_mask = torch.zeros_like(mask)
            prompt_mask[:, :prompt_len] = 1
            token_mask = token_mask & position_mask(prompt_mask, positions)
        logits = live(input_ids, mask, replace=replace, token_mask=token_mask)[0, -1].float().cpu()
        if temperature > 0:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        else:
            nxt = int(logits.argmax())
        seq.append(nxt)
    return seq[prompt_len:]


# -- the verb --------------------------------------------------------------------------------
def steer(
    run: str | os.PathLike | Any,
    *,
    store: Any,
    latents: Sequence[int],
    prompt: str,
    alphas: Sequence[float] = (4.0,),
    mode: str = "add",
    units: str = "typical",
    positions: Sequence[int] | None = None,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    top: int = 10,
    device: str = "",
) -> SteerResult:
    """Run the store's live model on ``prompt`` with and without the intervention at each α.

    ``positions``: prompt positions to intervene at (negative: from the end); None: every
    position, generated ones included. ``ablate`` takes no α (one outcome, α reported as 0).
    """
    if not prompt:
        raise BadInputError("steer needs a prompt; pass --prompt \"some text\"")
    if max_new_tokens < 0:
        raise BadInputError(f"max_new_tokens={max_new_tokens} must be 0 or more")
    dictionary, opened = _resolve(run, store)
    alphas = [0.0] if mode == "ablate" else [float(a) for a in alphas]
    if not alphas:
        raise BadInputError("give at least one strength, e.g. --alpha 4 or --alpha 0,2,4,8")
    plans = [Intervention(tuple(latents), mode, a, units) for a in alphas]  # type: ignore[arg-type]
    typical = store_typical(dictionary, opened)
    for plan in plans:
        plan.check(int(dictionary.d_dict), typical)
    source = live_source(opened, device)
    with source.splice(dictionary) as live:
        return steer_live(live, dictionary, typical, plans, prompt, positions=positions, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, top=top)


def steer_live(live: LiveModel, dictionary: Any, typical: torch.Tensor, plans: Sequence[Intervention], prompt: str, *,
               positions: Sequence[int] | None = None, max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0,
               top: int = 10) -> SteerResult:
    """:func:`steer` on a live model already open (``source.splice(dictionary)``), one outcome per plan."""
    ids = steerable(live).prompt_ids(prompt)
    if len(ids) < 1:
        raise BadInputError(f"prompt {prompt!r} has no tokens; pass some text")
    input_ids = torch.tensor([ids], device=live.device)
    mask = torch.ones_like(input_ids)
    token_mask = live.token_mask(input_ids, mask) & position_mask(mask, positions)
    clean = live(input_ids, mask, replace="none")
    clean_text = None
    if live.kind == "causal-lm" and max_new_tokens:
        clean_text = live.decode(generate(live, ids, "none", positions, max_new_tokens, temperature, seed))
    outcomes = []
    for plan in plans:
        fn = replacement(dictionary, [plan], typical)
        out = live(input_ids, mask, replace=fn, token_mask=token_mask)
        if live.kind == "causal-lm":
            kl, up, down, lp, lq = distribution_shift(clean[0, -1].cpu(), out[0, -1].cpu(), top)

            def shifts(token_ids: list[int]) -> list[TokenShift]:
                texts = live.token_texts(token_ids)
                return [TokenShift(t, s, float(lp[t]), float(lq[t])) for t, s in zip(token_ids, texts)]

            text = live.decode(generate(live, ids, fn, positions, max_new_tokens, temperature, seed)) if max_new_tokens else None
            outcomes.append(SteerOutcome(plan.value, text=text, kl=kl, promoted=shifts(up), suppressed=shifts(down)))
        else:
            a, b = live.pooled(clean, mask), live.pooled(out, mask)
            dist = float(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)[0])
            outcomes.append(SteerOutcome(plan.value, embedding_distance=dist))
    latents = list(dict.fromkeys(i for p in plans for i in p.latents))
    return SteerResult(
        prompt=prompt, kind=live.kind, hook=live.hook, latents=latents, mode=plans[0].mode if plans else "add",
        units=plans[0].units if plans else "typical", positions=list(positions) if positions is not None else None,
        typical=[float(typical[i]) for i in latents], clean_text=clean_text, outcomes=outcomes,
    )


def feature_sections(source: Any, dictionary: Any, store: Any, latents: Sequence[int], *, prompt: str, max_new_tokens: int,
                     alphas: Sequence[float] = SECTION_ALPHAS) -> dict[int, dict[str, Any]]:
    """latent -> the steering section of its feature page (dashboards, the demo's index.html).

    Precomputed so those sites stay static: greedy continuations of ``prompt`` without and with the
    latent added at each α × its typical firing value, and the next-token tokens it promotes and
    suppresses most. Empty when ``source`` has no live causal LM; silent latents are left out.
    """
    if source is None or not source.can_splice:
        return {}
    typical = store_typical(dictionary, store)
    sections: dict[int, dict[str, Any]] = {}
    with source.splice(dictionary) as live:
        if live.kind != "causal-lm":
            return {}
        for latent in latents:
            if float(typical[int(latent)]) <= 0:
                continue
            plans = [Intervention((int(latent),), "add", float(a)) for a in alphas]
            result = steer_live(live, dictionary, typical, plans, prompt, max_new_tokens=max_new_tokens, top=8)
            sections[int(latent)] = {
                "prompt": prompt,
                "clean": result.clean_text,
                "typical": result.typical[0],
                "steps": [{"alpha": o.alpha, "text": o.text, "kl": o.kl,
                           "promoted": [{"token": t.token, "gain": t.logprob_steered - t.logprob_clean} for t in o.promoted],
                           "suppressed": [{"token": t.token, "gain": t.logprob_steered - t.logprob_clean} for t in o.suppressed]}
                          for o in result.outcomes],
            }
    return sections


@contextlib.contextmanager
def steered(run: str | os.PathLike | Any, *, store: Any, latents: Sequence[int], alpha: float = 4.0, mode: str = "add",
            units: str = "typical", device: str = "") -> Iterator[LiveModel]:
    """The store's live model, patched with the intervention at every position inside the block only.

    Yields the live model (``.model`` is the framework model, e.g. a transformers model whose own
    ``generate`` is steered inside the block); nothing stays patched after it.
    """
    dictionary, opened = _resolve(run, store)
    typical = store_typical(dictionary, opened) if units == "typical" and mode != "ablate" else None
    fn = replacement(dictionary, [Intervention(tuple(latents), mode, float(alpha), units)], typical)  # type: ignore[arg-type]
    source = live_source(opened, device)
    with source.splice(dictionary) as live:
        with steerable(live, text=False).patch(fn):
            yield live


def summary_lines(result: SteerResult) -> list[str]:
    """What ``featureforge steer`` prints without ``--json``."""
    units = "× typical" if result.units == "typical" else "(code units)"
    typical = ", ".join(f"{i}: {t:.3g}" for i, t in zip(result.latents, result.typical))
    lines = [f"{result.mode} latent(s) {', '.join(map(str, result.latents))} at {result.hook} (typical value {typical}); prompt {result.prompt!r}, continuations:"]
    if result.clean_text is not None:
        lines.append(f"{'clean':<18} {result.clean_text!r}")
    for o in result.outcomes:
        label = "ablated" if result.mode == "ablate" else f"α={o.alpha:g} {units}"
        if result.kind == "causal-lm":
            if o.text is not None:
                lines.append(f"{label:<18} {o.text!r}")
            if not o.kl:
                lines.append(f"{'':<18} next token: unchanged (KL 0)")
                continue
            up = ", ".join(f"{t.token!r} {t.logprob_steered - t.logprob_clean:+.2f}" for t in o.promoted)
            down = ", ".join(f"{t.token!r} {t.logprob_steered - t.logprob_clean:+.2f}" for t in o.suppressed)
            lines.append(f"{'':<18} next token: KL {o.kl:.4g} nats; promoted {up}")
            lines.append(f"{'':<18} suppressed {down}")
        else:
            lines.append(f"{label:<18} 1 − cos(pooled embedding) = {o.embedding_distance:.4g}")
    return lines
