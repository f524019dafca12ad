"""A chess model with its hook point replaced: the live model of the ``chess-lm`` source.

``ChessLMSource.splice(dictionary)`` yields a ``SplicedChessLM``, a ``featureforge.live.LiveModel``
(the replacement at the hook site, ``patch`` and the call are the base's). Its tokens are PGN
characters, so it reads text: ``prompt_ids`` (a prompt framed as a game, ``;`` first), ``decode``
and ``token_texts`` come from the chess vocabulary, which is what ``featureforge steer`` needs. For
the ``downstream`` evaluator of featureforge-hf it gives ``batches(...)`` of held-out games (games
after the store's last one, same seed and policy) and ``compare(batch, replacements)``: summed
next-character CE and KL, clean vs each replacement, at every real character.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F

from featureforge import BadInputError
from featureforge.live import LiveModel, Replacement, TokenBatch

from .capture import site
from .chess_games import CHAR_TO_ID, VOCAB, make_games

#: Games as the source feeds them: ids (padding 0), mask of real characters, game ids.
GameBatch = TokenBatch
#: The character that starts every game (Karvonen's chess-GPT convention, see chess_games).
GAME_START = ";"


class SplicedChessLM(LiveModel):
    kind = "causal-lm"
    reads_text = True

    def __init__(self, source: Any, dictionary: Any):
        self.source = source
        super().__init__(source.model, site(source.model, source.hook_name), dictionary)

    # -- text: one token per PGN character ---------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in CHAR_TO_ID})
        if bad:
            raise BadInputError(f"text contains characters outside the chess vocabulary ({''.join(bad)!r}); pass PGN like ';1.e4 e5 2.Nf3'")
        return [CHAR_TO_ID[c] for c in text]

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt's characters, ``;`` first as every game starts (added when missing)."""
        ids = self._ids(text if text.startswith(GAME_START) else GAME_START + text)
        context = self.model.cfg.context
        if len(ids) > context:
            raise BadInputError(f"prompt of {len(ids)} characters exceeds the chess model's context of {context}; pass a shorter game")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.token_texts(ids))

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        return [VOCAB[int(i)] for i in ids]

    def token_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Stored-row positions: every real character, or only the '.' after move numbers (``positions=dots``)."""
        mask = attention_mask.bool()
        if self.source.options.positions == "dots":
            mask = mask & (input_ids == CHAR_TO_ID["."])
        return mask

    # -- running ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, t, vocab]`` (the model reads every position; padding is masked by callers)."""
        return self.model(input_ids)

    # -- held-out data and downstream sums ---------------------------------------------------------
    def batches(self, texts: Iterable[str] | None = None, *, start_doc: int = 0, max_sequences: int | None = None,
                batch_size: int | None = None) -> Iterator[TokenBatch]:
        """Batches of held-out games (from game ``start_doc`` on), or of ``texts`` (PGN lines)."""
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
        size = batch_size or o.batch_size
        for start in range(0, len(docs), size):
            chunk = docs[start : start + size]
            ids = torch.zeros(len(chunk), max(len(t) for _, t in chunk), dtype=torch.long)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for i, (_, text) in enumerate(chunk):
                ids[i, : len(text)] = torch.as_tensor(self._ids(text))
                mask[i, : len(text)] = True
            yield TokenBatch(ids, mask.long(), mask, torch.as_tensor([d for d, _ in chunk]))

    def compare(self, batch: TokenBatch, replacements: Iterable[str] | Mapping[str, Replacement] = ("dictionary", "zero")) -> dict[str, float]:
        """Summed ``tokens``, ``ce_clean``, ``ce_<r>``, ``kl_<r>`` over predicted characters."""
        chosen = dict(replacements) if isinstance(replacements, Mapping) else {r: r for r in replacements}
        ids, real = batch.input_ids.to(self.device), batch.token_mask.to(self.device)
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
