"""Steering a live model with a dictionary's latents or steering vectors: ``featureforge steer`` and ``featureforge.steer``.

A handle is a dictionary's latents (their codes edited, ``interventions.Intervention``) or
directions at the hook (``interventions.DirectionEdit``): saved steering vectors
(``featureforge.vectors``), latents' decoder rows (``as_directions``) or several of them at once
(a subspace, projected out by ``ablate`` or clamped). Vectors alone need no store: the live model
is rebuilt from the source the vector records, and ``hooks`` add the direction at other layers.

The intervention (``interventions.py``) is applied through the store's source's splice seam: the
source rebuilds its live model, ``source.splice(dictionary)`` yields a
:class:`featureforge.live.LiveModel`, and a row replacement edits the hook point at the chosen
positions. Steering checks up front (:func:`steerable`) that the live model reads text
(``prompt_ids``, ``decode``, ``token_texts``) and is a causal LM or an encoder.

Transcoders and crosscoders (issue #23): a latent's codes come from what the dictionary reads
and its edit lands where it writes (``interventions.replacement`` is a ``live.ReadEdit``): a
transcoder's latents from its source site (an MLP's input), the edit added at its target (the
MLP's output); a crosscoder's from every site's clean rows, each site edited by its own decoder
rows. Typical values come from the same rows of the store (``ActivationStore.for_roles``).

Causal LMs: greedy (or seeded sampling) continuations with and without the intervention, and the
next-token distribution shift at the prompt's end (KL(clean ‖ steered), most promoted and
suppressed tokens by log-probability gain). Encoders: 1 − cos between the pooled embeddings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import torch

from .errors import BadInputError
from .interventions import DirectionEdit, Intervention, direction_replacement, latent_directions, position_mask, replacement, typical_values
from .live import KINDS, LiveModel, Replacement

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
    #: "latents" (codes edited) or "directions" (vectors, decoder rows, a subspace).
    handle: str = "latents"
    #: What each direction is ("vector:NAME", "latent:12"), and the steering vectors used.
    labels: list[str] = dataclasses.field(default_factory=list)
    vectors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Every module the edit is applied at (the site first).
    hooks: list[str] = dataclasses.field(default_factory=list)
    #: Where the latents are read when that is not ``hook`` (a transcoder's source; a crosscoder's sites).
    reads: list[str] = dataclasses.field(default_factory=list)

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


def dictionary_roles(dictionary: Any) -> dict[str, Any]:
    """The store sites a run's batch roles came from (config.json ``sites``: ``{"acts", "target"}`` of
    a transcoder, ``{"sites": [...]}`` of a crosscoder); ``{}`` for a dictionary of one site."""
    return dict((getattr(dictionary, "config", None) or {}).get("sites") or {})


def read_view(dictionary: Any, store: Any) -> Any:
    """The view of ``store`` whose rows ``dictionary`` encodes (its source site, its sites side by
    side, or the store itself), refusing a store whose width is not the dictionary's in one line."""
    view = store.for_roles(dictionary_roles(dictionary))
    sites = dictionary_roles(dictionary).get("sites") or [None]
    want = int(dictionary.d_in) * len(sites)
    if view.d_in != want:
        what = f"its {len(sites)} sites side by side" if len(sites) > 1 else "rows"
        raise BadInputError(f"the dictionary reads {what} of width {want} but store {store.url} has width {view.d_in}; pass the store it was trained on")
    return view


def live_sites(live: Any) -> tuple[list[str], list[str]]:
    """(sites the edit is written at, sites the latents are read at when others) of a spliced live model."""
    def named(site: Any) -> str:
        return site.name + (":input" if site.where == "input" else "")

    if live.sites:
        names = [named(s) for s in live.sites]
        return names, names
    return [live.hook], [named(live.reads)] if live.reads is not None else []


def store_typical(dictionary: Any, store: Any, rows: int = TYPICAL_ROWS) -> torch.Tensor:
    """Each latent's mean non-zero code over the first ``rows`` rows it reads from the store."""
    store = read_view(dictionary, store)
    rpc = store.rows_per_chunk
    blocks = (store.read(ref.index * rpc, ref.index * rpc + ref.rows) for ref in store.committed_chunks())
    return typical_values(dictionary, (torch.from_numpy(b) for b in blocks), max_rows=rows)


def _resolve(run: Any, store: Any) -> tuple[Any, Any]:
    from .dictionary import Dictionary, load
    from .store._view import ActivationStore, open_store

    dictionary = run if isinstance(run, Dictionary) else load(run)
    opened = store if isinstance(store, ActivationStore) else open_store(store)
    read_view(dictionary, opened)
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


# -- what is steered ----------------------------------------------------------------------------
@dataclasses.dataclass
class Handle:
    """What a steer acts through and how each α becomes a row replacement (``make(alpha)``)."""

    kind: str
    make: Callable[[float], Replacement]
    latents: list[int]
    typical: list[float]
    labels: list[str]
    vectors: list[dict[str, Any]]
    hooks: list[str]


@contextlib.contextmanager
def opened(run: Any = None, *, store: Any = None, latents: Sequence[int] = (), vector: Any = None, mode: str = "add",
           units: str = "typical", hooks: Sequence[str] | None = None, as_directions: bool = False,
           device: str = "") -> Iterator[tuple[LiveModel, Handle]]:
    """The live model to steer and the handle, for latents of ``run`` (with ``store``), steering
    vectors (``vector``: one or a list of folders or :class:`featureforge.vectors.SteeringVector`), or both.

    Latents edit codes unless ``as_directions`` (or a vector is given too): then each latent is its
    unit decoder row with typical size u_i·|d_i|. ``hooks``: modules to apply direction edits at
    (default: the vectors' own hook, or the dictionary's).
    """
    from .vectors import load_vector

    vectors = [] if vector is None else [load_vector(v) for v in (vector if isinstance(vector, (list, tuple)) else [vector])]
    latents = [int(i) for i in latents]
    if not vectors and not latents:
        raise BadInputError("nothing to steer with; pass --latent I (with RUN and --store) or --vector FOLDER")
    if latents and (run is None or store is None):
        raise BadInputError("latents belong to a dictionary; pass RUN and --store with --latent, or steer with --vector alone")
    directions = bool(vectors) or as_directions
    if hooks and not directions:
        raise BadInputError("--hook applies directions at other layers; a latent's code edit belongs to its own site (add --as-directions)")
    hooks = [str(h) for h in hooks] if hooks else []
    for v in vectors[1:]:
        if v.hook != vectors[0].hook and not hooks:
            raise BadInputError(f"vectors {vectors[0].name!r} ({vectors[0].hook}) and {v.name!r} ({v.hook}) were made at different hooks; pass --hook to choose one")
        if v.d_in != vectors[0].d_in:
            raise BadInputError(f"vectors {vectors[0].name!r} and {v.name!r} have widths {vectors[0].d_in} and {v.d_in}; steer with vectors of one model")
    dictionary = typical = None
    if latents:
        dictionary, store = _resolve(run, store)
        if directions and "sites" in dictionary_roles(dictionary):
            raise BadInputError("a crosscoder's decoder row spans all its sites, so it is no direction at one hook; "
                                "steer its latents as code edits (drop --as-directions and --vector)")
        typical = store_typical(dictionary, store)
        source = live_source(store, device)
        if vectors and vectors[0].d_in != int(dictionary.d_in):
            raise BadInputError(f"vector {vectors[0].name!r} has width {vectors[0].d_in} but the dictionary has d_in={dictionary.d_in}; use a vector of the same hook")
    else:
        from .evaluation._context import source_from_record

        overrides = {"device": device} if device else {}
        if hooks and hooks[0] != vectors[0].hook:
            overrides["hook"] = hooks[0]
        source = source_from_record(vectors[0].source, overrides, f"vector {vectors[0].path or vectors[0].name}", "make the vector again")
        if not source.can_splice:
            raise BadInputError(f"vector {vectors[0].name!r} records source {source.name!r}, which cannot run a live model")
    with source.splice(dictionary) as live:
        site = live.hook
        wanted = hooks[0] if hooks else (vectors[0].hook if vectors else site)
        if latents and wanted != site:
            raise BadInputError(f"the dictionary's hook is {site} but the edit is asked at {wanted}; make the vector at {site} or pass --hook {site}")
        if vectors and not hooks and vectors[0].hook != site:
            raise BadInputError(f"vector {vectors[0].name!r} was made at {vectors[0].hook} but the live model hooks {site}; pass --hook {vectors[0].hook}")
        written, _ = live_sites(live) if latents and not directions else ([site], [])
        handle = _handle(dictionary, typical, latents, vectors, mode, units, directions, [*written, *hooks[1:]])
        with live.also_at(hooks[1:]):
            yield live, handle


def _handle(dictionary: Any, typical: Any, latents: list[int], vectors: list[Any], mode: str, units: str, directions: bool,
            hooks: list[str]) -> Handle:
    described = [{"name": v.name, "path": v.path, "method": v.method, "hook": v.hook, "typical": v.typical} for v in vectors]
    if not directions:
        check = Intervention(tuple(latents), mode, 1.0, units)  # type: ignore[arg-type]
        check.check(int(dictionary.d_dict), typical)

        def make_codes(alpha: float) -> Replacement:
            return replacement(dictionary, [Intervention(tuple(latents), mode, float(alpha), units)], typical)  # type: ignore[arg-type]

        typical_list = [float(typical[i]) for i in latents] if typical is not None else [0.0] * len(latents)
        return Handle("latents", make_codes, latents, typical_list, [f"latent:{i}" for i in latents], described, hooks)
    rows, scales = [], []
    for v in vectors:
        rows.append(v.direction.float().reshape(1, -1))
        scales.append(torch.tensor([float(v.typical)]))
    if latents:
        silent = [i for i in latents if typical is not None and float(typical[i]) <= 0]
        if silent and units == "typical" and mode != "ablate":
            raise BadInputError(f"latent {silent[0]} never fired on the store sample, so it has no typical size; pass --units absolute")
        unit_rows, sizes = latent_directions(dictionary, latents, typical)
        rows.append(unit_rows)
        scales.append(sizes if sizes is not None else torch.ones(len(latents)))
    stacked, sizes_all = torch.cat(rows), torch.cat(scales)
    labels = [f"vector:{v.name}" for v in vectors] + [f"latent:{i}" for i in latents]
    DirectionEdit(stacked, mode, 0.0, sizes_all, units, tuple(labels))  # type: ignore[arg-type]  # checked once, up front

    def make_direction(alpha: float) -> Replacement:
        return direction_replacement(DirectionEdit(stacked, mode, float(alpha), sizes_all, units, tuple(labels)))  # type: ignore[arg-type]

    return Handle("directions", make_direction, latents, [float(x) for x in sizes_all], labels, described, hooks)


# -- the verb --------------------------------------------------------------------------------
def steer(
    run: str | os.PathLike | Any = None,
    *,
    store: Any = None,
    latents: Sequence[int] = (),
    prompt: str,
    vector: Any = None,
    alphas: Sequence[float] = (4.0,),
    mode: str = "add",
    units: str = "typical",
    positions: Sequence[int] | None = None,
    hooks: Sequence[str] | None = None,
    as_directions: bool = False,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    top: int = 10,
    device: str = "",
) -> SteerResult:
    """Run the live model on ``prompt`` with and without the edit at each α.

    The handle: ``latents`` of ``run`` (with the ``store`` it was trained on), a steering
    ``vector`` (a folder, a :class:`~featureforge.vectors.SteeringVector` or a list of them: a
    subspace), or both (see :func:`opened`). ``positions``: prompt positions to intervene at
    (negative: from the end); None: every position, generated ones included. ``hooks``: modules
    the direction is added at (several layers). ``ablate`` takes no α (one outcome, α reported as 0).
    """
    if not prompt:
        raise BadInputError("steer needs a prompt; pass --prompt \"some text\"")
    if max_new_tokens < 0:
        raise BadInputError(f"max_new_tokens={max_new_tokens} must be 0 or more")
    alphas = [0.0] if mode == "ablate" else [float(a) for a in alphas]
    if not alphas:
        raise BadInputError("give at least one strength, e.g. --alpha 4 or --alpha 0,2,4,8")
    with opened(run, store=store, latents=latents, vector=vector, mode=mode, units=units, hooks=hooks, as_directions=as_directions,
                device=device) as (live, handle):
        clean_text, outcomes = steer_functions(live, [(a, handle.make(a)) for a in alphas], prompt, positions=positions,
                                               max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, top=top)
        return SteerResult(prompt=prompt, kind=live.kind, hook=live.hook, latents=handle.latents, mode=mode, units=units,
                           positions=list(positions) if positions is not None else None, typical=handle.typical,
                           clean_text=clean_text, outcomes=outcomes, handle=handle.kind, labels=handle.labels,
                           vectors=handle.vectors, hooks=handle.hooks,
                           reads=live_sites(live)[1] if handle.kind == "latents" else [])


def steer_live(live: LiveModel, dictionary: Any, typical: torch.Tensor, plans: Sequence[Intervention], prompt: str, *,
               positions: Sequence[int] | None = None, max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0,
               top: int = 10) -> SteerResult:
    """:func:`steer` of latents on a live model already open (``source.splice(dictionary)``), one outcome per plan."""
    functions = [(plan.value, replacement(dictionary, [plan], typical)) for plan in plans]
    clean_text, outcomes = steer_functions(live, functions, prompt, positions=positions, max_new_tokens=max_new_tokens,
                                           temperature=temperature, seed=seed, top=top)
    latents = list(dict.fromkeys(i for p in plans for i in p.latents))
    return SteerResult(
        prompt=prompt, kind=live.kind, hook=live.hook, latents=latents, mode=plans[0].mode if plans else "add",
        units=plans[0].units if plans else "typical", positions=list(positions) if positions is not None else None,
        typical=[float(typical[i]) for i in latents], clean_text=clean_text, outcomes=outcomes,
        labels=[f"latent:{i}" for i in latents], hooks=live_sites(live)[0], reads=live_sites(live)[1],
    )


def steer_functions(live: LiveModel, plans: Sequence[tuple[float, Replacement]], prompt: str, *, positions: Sequence[int] | None = None,
                    max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0, top: int = 10) -> tuple[str | None, list[SteerOutcome]]:
    """(clean continuation, one outcome per (α, row replacement)) on ``prompt``: whatever the handle."""
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
    for alpha, fn in plans:
        out = live(input_ids, mask, replace=fn, token_mask=token_mask)
        if live.kind == "causal-lm":
            kl, up, down, lp, lq = distribution_shift(clean[0, -1].cpu(), out[0, -1].cpu(), top)

            def shifts(token_ids: list[int]) -> list[TokenShift]:
                texts = live.token_texts(token_ids)
                return [TokenShift(t, s, float(lp[t]), float(lq[t])) for t, s in zip(token_ids, texts)]

            text = live.decode(generate(live, ids, fn, positions, max_new_tokens, temperature, seed)) if max_new_tokens else None
            outcomes.append(SteerOutcome(alpha, text=text, kl=kl, promoted=shifts(up), suppressed=shifts(down)))
        else:
            a, b = live.pooled(clean, mask), live.pooled(out, mask)
            dist = float(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)[0])
            outcomes.append(SteerOutcome(alpha, embedding_distance=dist))
    return clean_text, outcomes


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
def steered(run: str | os.PathLike | Any = None, *, store: Any = None, latents: Sequence[int] = (), vector: Any = None,
            alpha: float = 4.0, mode: str = "add", units: str = "typical", hooks: Sequence[str] | None = None,
            as_directions: bool = False, device: str = "") -> Iterator[LiveModel]:
    """The live model, patched with the edit (latents of ``run`` or a ``vector``; see :func:`opened`)
    at every position inside the block only.

    Yields the live model (``.model`` is the framework model, e.g. a transformers model whose own
    ``generate`` is steered inside the block); nothing stays patched after it.
    """
    with opened(run, store=store, latents=latents, vector=vector, mode=mode, units=units, hooks=hooks, as_directions=as_directions,
                device=device) as (live, handle):
        with steerable(live, text=False).patch(handle.make(float(alpha))):
            yield live


def summary_lines(result: SteerResult) -> list[str]:
    """What ``featureforge steer`` prints without ``--json``."""
    units = "× typical" if result.units == "typical" else "(absolute)" if result.handle == "directions" else "(code units)"
    if result.handle == "directions":
        sizes = ", ".join(f"{label}: {t:.3g}" for label, t in zip(result.labels, result.typical))
        what = "the direction" if len(result.labels) == 1 else f"the {len(result.labels)}-direction subspace"
        lines = [f"{result.mode} {what} {', '.join(result.labels)} at {', '.join(result.hooks or [result.hook])} (typical size {sizes}); "
                 f"prompt {result.prompt!r}, continuations:"]
    else:
        typical = ", ".join(f"{i}: {t:.3g}" for i, t in zip(result.latents, result.typical))
        where = f"at {result.hook}"
        if result.reads:
            where = f"read at {', '.join(result.reads)}, written at {', '.join(result.hooks or [result.hook])}"
        lines = [f"{result.mode} latent(s) {', '.join(map(str, result.latents))} {where} (typical value {typical}); prompt {result.prompt!r}, continuations:"]
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
