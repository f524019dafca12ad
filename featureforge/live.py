"""The live model ``ActivationSource.splice(dictionary)`` yields: a model whose hook point can be replaced.

One class so that evaluators (``downstream``), ``featureforge steer`` and dashboards can rely on
its members, and a source that cannot offer one says so in one line instead of an AttributeError.
A subclass sets ``kind``, implements :meth:`LiveModel.forward` (the plain model call) and, where
its model has them, the text members (``reads_text = True``) and :meth:`LiveModel.batches` /
:meth:`LiveModel.compare`; the base owns the replacement at the hook site, so "dictionary",
"zero", "mean", an intervention's row function and :meth:`LiveModel.patch` mean one thing everywhere.

=====================  ============================================================================
``kind``, ``hook``     "causal-lm" (logits) or "encoder" (hidden states); the hook point's name
``device``             where inputs go (default: the device of ``model``'s parameters)
``live(ids, mask,      the model with the hook site's rows at ``token_mask`` replaced by
replace=, token_mask=)`` ``replace`` (``"dictionary"``, ``"none"``, ``"zero"``, ``"mean"`` or rows -> rows)
``token_mask(ids, m)`` the positions the store holds as rows (default: every real token)
``prompt_ids``,        text -> framed ids, ids -> text, ids -> one display string each
``decode``,
``token_texts``
``pooled(hidden, m)``  sentence embedding of an encoder's hidden states (mean over ``m``)
``patch(fn)``          a block in which every forward of ``model`` is replaced at every position
``also_at(hooks)``     a block in which the replacement also applies at other modules (layers)
``reads``, ``sites``   a transcoder's source site (it writes ``site`` from the rows read there) or a
                       crosscoder's sites (all replaced at once: a clean pass reads them, a second
                       pass writes each site's reconstruction)
``ReadEdit``           a replacement computed from what the dictionary reads: ``edit(read, rows)``
                       gets the source site's rows (a transcoder) or every site's stacked (a
                       crosscoder) beside the rows it replaces; steering a latent is one
``batches``,           held-out data as :class:`TokenBatch` and the summed downstream quantities
``compare``            of one batch (what the ``downstream`` evaluator adds up)
=====================  ============================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence, Union

import torch

from .errors import BadInputError
from .sites import HookSite

__all__ = ["KINDS", "LiveModel", "ReadEdit", "Replacement", "TokenBatch"]


class ReadEdit:
    """A row replacement that also sees what the dictionary reads: ``edit(read, rows) -> new rows``.

    Why: a transcoder's latents come from its source site (an MLP's input) while its edit lands at
    its target site (the MLP's output), and a crosscoder's from all its sites at once; a plain
    ``rows -> rows`` function only sees the rows it replaces. At a transcoder's target ``read`` is
    the source site's rows at the same positions; for a crosscoder both are every site's clean rows
    stacked ``[n, S, d]`` (its clean pass) and the result is written site by site; at a one-site
    hook ``read`` is ``rows`` (so a ``ReadEdit`` is also a plain ``rows -> rows`` function).
    """

    def __init__(self, edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.edit = edit

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.edit(rows, rows)


#: ``replace`` values: a fixed rule or a function of the rows ``[n, d] -> [n, d]`` (or a :class:`ReadEdit`).
Replacement = Union[str, Callable[[torch.Tensor], torch.Tensor]]
KINDS = ("causal-lm", "encoder")


@dataclasses.dataclass
class TokenBatch:
    """Sequences prepared exactly as the source prepares them for caching."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    #: Positions the store would hold as rows (the replaced ones).
    token_mask: torch.Tensor
    doc_ids: torch.Tensor


class LiveModel:
    """A model run with its hook site replaceable; see the module docstring for the members."""

    #: "causal-lm" (``live(...)`` gives logits) or "encoder" (last hidden states).
    kind: str = "causal-lm"
    #: Whether ``prompt_ids``, ``decode`` and ``token_texts`` are implemented (what steering from text needs).
    reads_text: ClassVar[bool] = False

    def __init__(self, model: Any, site: HookSite, dictionary: Any, *, reads: HookSite | None = None,
                 sites: Sequence[HookSite] = ()):
        self.model = model
        self.site = site
        #: The hook point's name (shown by ``featureforge steer``).
        self.hook = site.name
        self.dictionary = dictionary
        #: A transcoder's source site: "dictionary" writes ``dictionary(rows read here)`` at ``site``.
        self.reads = reads
        #: A crosscoder's sites, in its order: "dictionary" replaces every one (see :meth:`__call__`).
        self.sites = tuple(sites)
        if isinstance(dictionary, torch.nn.Module):
            dictionary.to(self.device)
            dictionary.eval()
        self._replace: Replacement = "none"
        self._mask: torch.Tensor | None = None
        #: Replacement at every position of forward passes not started by ``__call__`` (set by :meth:`patch`).
        self._patch: Replacement | None = None
        self._source: torch.Tensor | None = None
        self._reading: list[Any] | None = None
        self._rebuilt: torch.Tensor | None = None
        if self.sites:
            self._handles = [s.attach(functools.partial(self._at_one_of_sites, i)) for i, s in enumerate(self.sites)]
        else:
            self._handles = ([reads.attach(self._read_source)] if reads is not None else []) + [site.attach(self._at_site)]

    def close(self) -> None:
        """Remove the hooks: the model runs as before the splice."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- what a subclass implements ----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One plain forward pass of ``model``: logits [b, t, vocab] or hidden states [b, t, d]."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(input_ids, attention_mask)")

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go."""
        first = next(iter(self.model.parameters()), None) if isinstance(self.model, torch.nn.Module) else None
        return first.device if first is not None else torch.device("cpu")

    def token_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Stored-row positions of arbitrary input ids (default: every position the mask keeps)."""
        return attention_mask.bool()

    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's ids, framed as the source frames a sequence."""
        raise self.lacks("prompt_ids", "read a text prompt")

    def decode(self, ids: Iterable[int]) -> str:
        """The text of some ids."""
        raise self.lacks("decode", "turn ids into text")

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Display text of single tokens (for promoted/suppressed token lists)."""
        raise self.lacks("token_texts", "show single tokens as text")

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings [b, d]: the mean of the hidden states over the mask."""
        m = attention_mask.to(hidden.device).unsqueeze(-1).float()
        return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)

    def batches(self, texts: Iterable[str] | None = None, *, start_doc: int = 0, max_sequences: int | None = None,
                batch_size: int | None = None) -> Iterator[TokenBatch]:
        """Batches of ``texts``, or of the source's own data from document ``start_doc`` on (held out)."""
        raise self.lacks("batches", "give held-out data")

    def compare(self, batch: TokenBatch, replacements: Iterable[str] | Mapping[str, Replacement] = ("dictionary", "zero")) -> dict[str, float]:
        """Summed downstream quantities of one batch, clean vs each replacement (see featureforge-hf's)."""
        raise self.lacks("compare", "sum downstream metrics")

    def lacks(self, member: str, what: str) -> BadInputError:
        """The one-line error for a member this kind of model cannot offer (``what`` it would do)."""
        return BadInputError(f"{type(self).__name__} (the store's live model) cannot {what}: it has no {member}(); "
                             f"use a source whose live model can (such as hf), or call live(input_ids, ...) directly")

    # -- running, owned by the base ---------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, replace: Replacement = "dictionary",
                 token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` with the site's rows at ``token_mask`` (default :meth:`token_mask`) replaced by ``replace``."""
        input_ids = input_ids.to(self.device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if replace == "dictionary" and self.dictionary is None:
            raise BadInputError("splice(None) has no dictionary to splice in; pass replace='none', 'zero', 'mean' or a function")
        self._mask = (token_mask if token_mask is not None else self.token_mask(input_ids, attention_mask)).to(self.device)
        try:
            # no_grad, not inference_mode: the dictionary runs inside, and tensors it caches across
            # calls (kernel workspaces) must stay usable by training afterwards.
            with torch.no_grad():
                if self.sites and (replace == "dictionary" or isinstance(replace, ReadEdit)):
                    self._rebuilt = self._rebuild_sites(input_ids, attention_mask, replace)
                self._replace = replace
                return self.forward(input_ids, attention_mask)
        finally:
            self._replace, self._mask, self._source, self._rebuilt, self._reading = "none", None, None, None, None

    def _rebuild_sites(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, replace: Replacement = "dictionary") -> torch.Tensor:
        """A crosscoder's reconstruction ``[n, S, d]`` of every site's rows from one clean pass (or a
        :class:`ReadEdit`'s new rows of every site, from the clean rows stacked).

        Why two passes: the crosscoder reads all its sites to encode, and a site patched in the
        same pass would change what the later sites see. So every site is read clean first, then
        one pass writes each site's reconstruction in its place (the acausal crosscoder's
        replacement of Lindsey et al. 2024: all layers spliced at once from the clean activations).
        """
        self._replace, self._reading = "none", [None] * len(self.sites)
        self.forward(input_ids, attention_mask)
        read, self._reading = self._reading, None
        missing = [s.name for s, rows in zip(self.sites, read) if rows is None]
        if missing:
            raise BadInputError(f"sites {', '.join(missing)} never ran in the model's forward pass; splice the crosscoder into the model it was trained on")
        stacked = torch.stack(read, 1)
        if isinstance(replace, ReadEdit):
            return replace.edit(stacked, stacked)
        out = self.dictionary(stacked.float())
        return out.x_hat if hasattr(out, "x_hat") else out

    @contextlib.contextmanager
    def patch(self, replace: Replacement) -> Iterator["LiveModel"]:
        """Inside the block every forward pass of ``self.model`` is replaced at every position
        (padding and special tokens included), e.g. a transformers ``model.generate(...)``."""
        if self.sites and (replace == "dictionary" or isinstance(replace, ReadEdit)):
            raise BadInputError("a crosscoder is spliced (and its latents steered) from a clean pass of every site, which a patched "
                                "generate() cannot run; use live(input_ids, ...) (featureforge steer does) or patch with a plain function")
        self._patch = replace
        try:
            yield self
        finally:
            self._patch = None

    @contextlib.contextmanager
    def also_at(self, hooks: Iterable[str]) -> Iterator["LiveModel"]:
        """Inside the block the replacement is applied at these modules too (same ``where`` as the site,
        same positions): a steering direction added at several layers. A dictionary's replacement
        belongs to its own site; use this with direction edits of the sites' width."""
        sites = [HookSite.find(self.model, name, where=self.site.where, fix="pass --hook NAME", error=BadInputError)
                 for name in hooks]
        handles = [site.attach(self._at_site) for site in sites]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def replacement(self, rows: torch.Tensor, replace: Replacement) -> torch.Tensor:
        """What stands in for the site's ``rows [n, d]`` under ``replace``."""
        if callable(replace):
            return replace(rows)
        if replace == "dictionary":
            out = self.dictionary(rows.float())
            return out.x_hat if hasattr(out, "x_hat") else out
        if replace == "zero":
            return torch.zeros_like(rows)
        if replace == "mean":
            return rows.float().mean(0, keepdim=True).expand_as(rows)
        raise BadInputError(f"replace={replace!r} is not one of dictionary, none, zero, mean or a function")

    def _active(self, x: torch.Tensor) -> tuple[Replacement, torch.Tensor | None]:
        """(replacement, mask) for this forward pass: ``__call__``'s, else :meth:`patch`'s at every position."""
        replace, mask = self._replace, self._mask
        if mask is None and self._patch is not None:
            replace, mask = self._patch, torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        return replace, mask

    def _read_source(self, x: torch.Tensor) -> None:
        """A transcoder's source site: keep its tensor for the write at ``site`` later in the pass."""
        self._source = x

    def _at_site(self, x: torch.Tensor) -> torch.Tensor | None:
        replace, mask = self._active(x)
        if replace == "none" or mask is None:
            return None
        rows = x[mask]
        if replace == "dictionary" and self.reads is not None:
            out = self.dictionary(self._source_rows(mask).float())
            new = out.x_hat if hasattr(out, "x_hat") else out
        elif isinstance(replace, ReadEdit) and self.reads is not None:
            new = replace.edit(self._source_rows(mask), rows)
        else:
            new = self.replacement(rows, replace)
        return self._written(x, mask, rows, new)

    def _source_rows(self, mask: torch.Tensor) -> torch.Tensor:
        """The transcoder's source rows at ``mask`` (kept by :meth:`_read_source` earlier in this pass)."""
        if self._source is None:
            raise BadInputError(f"the transcoder's source site {self.reads.name} did not run before {self.site.name}; "  # type: ignore[union-attr]
                                "the source must come earlier in the forward pass than the site it writes")
        return self._source[mask]

    def _at_one_of_sites(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Site ``index`` of a crosscoder: read (clean pass), or write its slice of the reconstruction."""
        replace, mask = self._active(x)
        if self._reading is not None:
            self._reading[index] = x[self._mask].detach().clone()
            return None
        if replace == "none" or mask is None:
            return None
        rows = x[mask]
        rebuilt = replace == "dictionary" or isinstance(replace, ReadEdit)
        new = self._rebuilt[:, index] if rebuilt else self.replacement(rows, replace)
        return self._written(x, mask, rows, new)

    @staticmethod
    def _written(x: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if tuple(new.shape) != tuple(rows.shape):
            raise BadInputError(f"the replacement gives shape {tuple(new.shape)} for rows of shape {tuple(rows.shape)}; it must keep the shape")
        x = x.clone()
        x[mask] = new.to(x.dtype)
        return x
