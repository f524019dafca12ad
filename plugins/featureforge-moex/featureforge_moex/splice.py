"""A chess model with its hook point replaced, for downstream-loss evaluators.

``ChessLMSource.splice(dictionary)`` yields a ``SplicedChessLM``. It offers what the ``downstream``
evaluator of featureforge-hf uses from a spliced model: ``kind`` ("causal-lm"), ``batches(...)``
of held-out games (games after the store's last one, same seed and policy), and ``compare(batch,
replacements)`` returning summed next-character CE and KL (clean vs each replacement). The
replacement happens in a forward hook on the source's hook module at every real character.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import torch
import torch.nn.functional as F

from featureforge import BadInputError

from .capture import resolve

Replacement = Union[str, Callable[[torch.Tensor], torch.Tensor]]


@dataclasses.dataclass
class GameBatch:
    """Games as the source feeds them: ids (padding 0), mask of real characters, game ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_mask: torch.Tensor
    doc_ids: torch.Tensor


class SplicedChessLM:
    kind = "causal-lm"

    def __init__(self, source: Any, dictionary: Any):
        self.source = source
        self.model = source.model
        self.dictionary = dictionary
        if isinstance(dictionary, torch.nn.Module):
            dictionary.eval()
        self._replace: Replacement = "none"
        self._mask: torch.Tensor | None = None
        self._handle = resolve(self.model, source.hook_name).register_forward_hook(self._hook)

    def close(self) -> None:
        self._handle.remove()

    def batches(self, texts: Iterable[str] | None = None, *, start_doc: int = 0, max_sequences: int | None = None,
                batch_size: int | None = None) -> Iterator[GameBatch]:
        """Batches of held-out games (from game ``start_doc`` on), or of ``texts`` (PGN lines)."""
        from .chess_games import CHAR_TO_ID, make_games

        o = self.source.options
        context = self.model.cfg.context
        if texts is None:
            count = max_sequences or 64
            games = make_games(start_doc + count, o.seed, context, o.policy)[start_doc:]
            docs = [(start_doc + i, g.text) for i, g in enumerate(games)]
        else:
            docs = [(i, t[:context]) for i, t in enumerate(texts) if t.strip()]
            if max_sequences is not None:
                docs = docs[:max_sequences]
            bad = sorted({c for _, t in docs for c in t if c not in CHAR_TO_ID})
            if bad:
                raise BadInputError(f"texts contain characters outside the chess vocabulary ({''.join(bad)!r}); pass PGN lines like ';1.e4 e5 2.Nf3'")
        size = batch_size or o.batch_size
        for start in range(0, len(docs), size):
            chunk = docs[start : start + size]
            ids = torch.zeros(len(chunk), max(len(t) for _, t in chunk), dtype=torch.long)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for i, (_, text) in enumerate(chunk):
                ids[i, : len(text)] = torch.as_tensor([CHAR_TO_ID[c] for c in text])
                mask[i, : len(text)] = True
            yield GameBatch(ids, mask.long(), mask, torch.as_tensor([d for d, _ in chunk]))

    def _replacement(self, rows: torch.Tensor) -> torch.Tensor:
        """What stands in for ``rows`` under the current ``replace`` setting."""
        how = self._replace
        if callable(how):
            return how(rows)
        fixed = {
            "dictionary": lambda: self.dictionary(rows.float()).x_hat,
            "zero": lambda: torch.zeros_like(rows),
            "mean": lambda: rows.float().mean(0, keepdim=True).expand_as(rows),
        }
        if how not in fixed:
            raise BadInputError(f"replace={how!r} is not one of dictionary, none, zero, mean or a function")
        return fixed[how]()

    def _hook(self, module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._replace == "none" or self._mask is None:
            return None
        out = output.clone()
        out[self._mask] = self._replacement(output[self._mask]).to(out.dtype)
        return out

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, *, replace: Replacement = "dictionary", token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b, t, vocab]`` with the hook point replaced at ``token_mask`` (default: every position)."""
        self._replace = replace
        self._mask = token_mask if token_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        try:
            return self.model(input_ids)
        finally:
            self._replace, self._mask = "none", None

    def compare(self, batch: GameBatch, replacements: Iterable[str] | Mapping[str, Replacement] = ("dictionary", "zero")) -> dict[str, float]:
        """Summed ``tokens``, ``ce_clean``, ``ce_<r>``, ``kl_<r>`` over predicted characters."""
        chosen = dict(replacements) if isinstance(replacements, Mapping) else {r: r for r in replacements}
        ids, real = batch.input_ids, batch.token_mask
        valid = real[:, 1:] & real[:, :-1]
        targets = ids[:, 1:].masked_fill(~valid, -1)

        def ce(logits: torch.Tensor) -> float:
            return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1, reduction="sum"))

        clean = self(ids, replace="none")
        log_p = torch.log_softmax(clean[:, :-1].float(), -1)
        sums = {"tokens": float(valid.sum()), "ce_clean": ce(clean)}
        for label, how in chosen.items():
            out = self(ids, replace=how, token_mask=real)
            sums[f"ce_{label}"] = ce(out)
            log_q = torch.log_softmax(out[:, :-1].float(), -1)
            sums[f"kl_{label}"] = float(((log_p.exp() * (log_p - log_q)).sum(-1) * valid).sum())
        return sums
