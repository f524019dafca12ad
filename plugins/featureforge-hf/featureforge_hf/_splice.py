"""The live model (a ``featureforge.live.LiveModel``) with a dictionary spliced in at the source's hook point.

Used as ``with source.splice(dictionary) as live: ...``. ``live(input_ids, attention_mask)`` runs
the whole model with the hook point's tensor replaced (at the positions the store would hold) and
returns logits (causal LMs) or the last hidden state (encoders). ``live.compare(batch)`` gives the
sums a downstream evaluator needs, and ``summarize`` turns summed totals into the agreed metrics:

- causal LM: CE-loss score ``(CE_zero - CE_splice) / (CE_zero - CE_clean)`` and KL(clean ‖ spliced)
  per token;
- encoder: the same score over ``1 - cos`` of pooled sentence embeddings (clean has distance 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Union

import torch

from featureforge import BadInputError
from featureforge.live import LiveModel, TokenBatch
from featureforge.sites import HookSite

from ._model import LoadedModel, keep_mask, next_token_ce

if TYPE_CHECKING:  # pragma: no cover
    from ._source import HFSource

#: "dictionary_grads" (``compare`` only): the reconstruction selecting latents with live gradients.
Replacement = Union[Literal["dictionary", "dictionary_grads", "none", "zero", "mean"], Callable[[torch.Tensor], torch.Tensor]]


class SplicedModel(LiveModel):
    """A loaded transformers model whose hook point ``site`` can be replaced; see the module docstring.

    ``text`` (optional) is the source whose documents and windows :meth:`batches` uses.
    """

    reads_text = True

    def __init__(self, loaded: LoadedModel, site: HookSite, dictionary: Any, *, text: "HFSource | None" = None,
                 reads: HookSite | None = None, sites: "tuple[HookSite, ...]" = ()):
        self.source = text
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.include_special_tokens = bool(text.options.include_special_tokens) if text is not None else False
        #: "causal-lm" (logits; CE/KL metrics) or "encoder" (hidden states; pooled-embedding metrics).
        self.kind = "causal-lm" if loaded.is_causal else "encoder"
        self.pooling = _pooling_mode(loaded.path) if self.kind == "encoder" else None
        super().__init__(loaded.model, site, dictionary, reads=reads, sites=sites)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    # -- data ---------------------------------------------------------------------------------
    def batches(
        self,
        texts: Iterable[str] | None = None,
        *,
        start_doc: int = 0,
        max_sequences: int | None = None,
        batch_size: int | None = None,
    ) -> Iterator[TokenBatch]:
        """Token batches of ``texts``, or of the source's own data from document ``start_doc`` on.

        Held-out text for a dictionary trained on a store: pass ``start_doc`` = the store's
        largest ``doc_ids`` + 1, so no sequence was seen in training (``max_docs`` does not
        apply here).
        """
        src = self.source
        if src is None:
            raise BadInputError("this spliced model has no text source; make it with source.splice(dictionary)")
        if texts is None:
            docs: Iterable[tuple[int, str]] = src.documents(keep=lambda i: i >= start_doc, limit=False)
        else:
            docs = enumerate(t for t in texts if t.strip())
        size = batch_size or src.options.batch_size
        pending: list[Any] = []
        produced = 0
        for window in src.windows(docs):
            if max_sequences is not None and produced >= max_sequences:
                break
            pending.append(window)
            produced += 1
            if len(pending) == size:
                yield self._batch(pending)
                pending = []
        if pending:
            yield self._batch(pending)
        elif produced == 0:
            where = "the texts given" if texts is not None else f"{src.data_description} from document {start_doc} on"
            raise BadInputError(f"no text to evaluate in {where}; pass texts, or a smaller start_doc")

    def _batch(self, windows: list[Any]) -> TokenBatch:
        input_ids, mask = self.loaded.pad([w.ids for w in windows])
        keep = keep_mask([w.keep for w in windows], tuple(input_ids.shape))
        doc_ids = torch.as_tensor([w.doc_id for w in windows], dtype=torch.int64)
        return TokenBatch(input_ids, mask, keep.to(self.device), doc_ids)

    def token_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Stored-row positions of arbitrary input ids: not padding, not special (unless included)."""
        mask = attention_mask.bool()
        if not self.include_special_tokens:
            special = torch.as_tensor(sorted(self.loaded.special_ids), dtype=input_ids.dtype, device=input_ids.device)
            mask = mask & ~torch.isin(input_ids, special)
        return mask

    # -- running ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [b, t, vocab] (causal LM) or last hidden state [b, t, d] (encoder) of one pass."""
        out = self.loaded.forward(input_ids, attention_mask)
        if self.kind == "causal-lm":
            return out.logits
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    # -- text (for steering a causal LM from a prompt) -----------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's ids framed as the source frames a sequence (no suffix for causal LMs: it continues)."""
        ids = list(self.loaded.prefix) + self.loaded.encode([text])[0]
        return ids if self.kind == "causal-lm" else ids + list(self.loaded.suffix)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Display text of single tokens (for promoted/suppressed token lists)."""
        return [self.decode([int(i)]) for i in ids]

    # -- metrics ------------------------------------------------------------------------------
    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings as the model's sentence-transformers pooling makes them (mean by default)."""
        if self.pooling == "cls":
            return hidden[:, 0].float()
        return super().pooled(hidden, attention_mask)

    def compare(
        self, batch: TokenBatch, replacements: Iterable[str] | Mapping[str, Replacement] = ("dictionary", "zero")
    ) -> dict[str, float]:
        """Summed downstream quantities for one batch: clean vs each replacement.

        ``replacements``: names of ``replace`` values, or a mapping label -> ``replace`` value
        (e.g. ``{"mean": lambda rows: store_mean.expand_as(rows)}``); ``<r>`` below is the label.
        Causal LM: ``tokens`` (predicted tokens), ``ce_clean``, ``ce_<r>`` (summed next-token CE)
        and ``kl_<r>`` (summed KL(clean ‖ r) over predicted positions). Encoder: ``sequences`` and
        ``cos_dist_<r>`` (summed 1 − cosine of pooled embeddings to the clean ones).
        Add totals over batches and pass them to :func:`summarize`.
        """
        chosen: dict[str, Replacement] = dict(replacements) if isinstance(replacements, Mapping) else {r: r for r in replacements}
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        if any(how == "dictionary_grads" for how in chosen.values()):
            chosen = {r: self._with_live_grads(ids, mask, batch.token_mask) if how == "dictionary_grads" else how
                      for r, how in chosen.items()}
        clean = self(ids, mask, replace="none")
        sums: dict[str, float] = {}
        if self.kind == "causal-lm":
            valid = (mask[:, 1:].bool() & mask[:, :-1].bool())
            sums["tokens"] = float(valid.sum())
            sums["ce_clean"] = float(next_token_ce(clean, ids, mask).sum())
            log_p = torch.log_softmax(clean[:, :-1].float(), -1)
            for r, how in chosen.items():
                out = self(ids, mask, replace=how, token_mask=batch.token_mask)
                sums[f"ce_{r}"] = float(next_token_ce(out, ids, mask).sum())
                log_q = torch.log_softmax(out[:, :-1].float(), -1)
                kl = (log_p.exp() * (log_p - log_q)).sum(-1)
                sums[f"kl_{r}"] = float((kl * valid).sum())
        else:
            ref = self.pooled(clean, mask)
            sums["sequences"] = float(ids.shape[0])
            for r, how in chosen.items():
                emb = self.pooled(self(ids, mask, replace=how, token_mask=batch.token_mask), mask)
                sums[f"cos_dist_{r}"] = float((1 - torch.nn.functional.cosine_similarity(ref, emb, dim=-1)).sum())
        return sums


    def _with_live_grads(self, ids: torch.Tensor, mask: torch.Tensor, token_mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Replacement by ``dictionary.reconstruct_with_grads``: latents chosen with this batch's own
        d(next-token CE)/d(activation) at the hook (g-SAE's selection; one extra forward+backward)."""
        if self.kind != "causal-lm":
            raise BadInputError("replace='dictionary_grads' needs next-token gradients, so a causal language model; use 'dictionary' for encoders")
        if not getattr(self.dictionary, "uses_gradients", False):
            raise BadInputError(f"{type(self.dictionary).__name__} cannot select latents with gradients (no reconstruct_with_grads); use replace='dictionary'")
        _, grads = self.loaded.capture_with_grads(self.site, ids, mask)
        rows_grads = grads[token_mask.to(grads.device)].float()

        def reconstruct(rows: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.dictionary.reconstruct_with_grads(rows.float(), rows_grads)

        return reconstruct


def dictionary_roles(dictionary: Any) -> dict[str, Any]:
    """The store sites a dictionary's batch roles came from: the run's recorded role -> site
    mapping (``config.json``'s ``sites``, issue #23), else what its trainer's ``sites_for`` kept in
    its options (``source``/``target`` for a transcoder, ``sites`` for a crosscoder); ``{}`` for a
    dictionary of one site (or one made in memory)."""
    from featureforge import get_registry

    cfg = getattr(dictionary, "config", None) or {}
    recorded = cfg.get("sites")
    if isinstance(recorded, Mapping) and ("target" in recorded or "sites" in recorded):
        return dict(recorded)
    options = cfg.get("options") or {}
    trainer = cfg.get("trainer")
    columns = get_registry().get("trainer", trainer).columns if trainer and trainer in get_registry().names("trainer") else ()
    if "target" in columns and options.get("source") and options.get("target"):
        return {"acts": options["source"], "target": options["target"]}
    if "sites" in columns and options.get("sites") and list(options["sites"]) != ["all"]:
        return {"sites": tuple(options["sites"])}
    return {}


def splice_sites(loaded: LoadedModel, site: HookSite, dictionary: Any) -> dict[str, Any]:
    """``SplicedModel`` keywords for ``dictionary``: a transcoder writes its target site from the
    rows it reads at its source site (``site``, ``reads``); a crosscoder replaces all its sites
    (``sites``); any other dictionary replaces the source's own ``site``. Site names resolve by
    :meth:`featureforge.sites.HookSite.find_site`: a module's name is its output (as the source
    names a store's sites), with ``:input`` its input."""
    roles = dictionary_roles(dictionary)

    def find(name: str) -> HookSite:
        return HookSite.find_site(loaded.model, name, "output", of=repr(loaded.name or loaded.path),  # type: ignore[arg-type]
                                  prefixes=(getattr(loaded.model, "base_model_prefix", "") or "",), fix="splice into the model the dictionary was trained on")

    if "target" in roles:
        return {"site": find(roles["target"]), "reads": find(roles["acts"])}
    if "sites" in roles:
        sites = tuple(find(n) for n in roles["sites"])
        return {"site": sites[0], "sites": sites}
    return {"site": site}


def summarize(totals: Mapping[str, float]) -> dict[str, float]:
    """Means and the agreed downstream score from totals of :meth:`SplicedModel.compare`."""
    out: dict[str, float] = {}
    if "tokens" in totals:
        n = max(totals["tokens"], 1.0)
        for key, value in totals.items():
            if key != "tokens":
                out[key] = value / n
        if "ce_dictionary" in out and "ce_zero" in out:
            denom = out["ce_zero"] - out["ce_clean"]
            out["ce_loss_score"] = (out["ce_zero"] - out["ce_dictionary"]) / denom if denom else float("nan")
        out["tokens"] = totals["tokens"]
    elif "sequences" in totals:
        n = max(totals["sequences"], 1.0)
        for key, value in totals.items():
            if key != "sequences":
                out[key] = value / n
        if "cos_dist_dictionary" in out and "cos_dist_zero" in out:
            denom = out["cos_dist_zero"]
            out["embedding_score"] = (denom - out["cos_dist_dictionary"]) / denom if denom else float("nan")
        out["sequences"] = totals["sequences"]
    return out


def _pooling_mode(model_path: str) -> str:
    """"cls" or "mean", from a sentence-transformers folder's 1_Pooling/config.json (default mean)."""
    cfg = Path(model_path) / "1_Pooling" / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "mean"
    return "cls" if data.get("pooling_mode_cls_token") and not data.get("pooling_mode_mean_tokens") else "mean"
