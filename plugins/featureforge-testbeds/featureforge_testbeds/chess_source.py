"""The ``chess-lm`` activation source: a saved chess model run over freshly generated games.

Games come from ``chess_games.make_games(games, seed)`` (deterministic), so a store records
exactly which text it holds (the provenance has model, hook, games, seed, policy) and a later
run regenerates it. One row per character read (``positions=all``) or only at the '.' after each
move number, where the board-state labels live (``positions=dots``). ``splice`` runs the model
with the hook point replaced, for the ``downstream`` evaluator (held-out games after the store's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Iterator, Literal

from featureforge import ActivationSource, BadInputError, OptionError


@dataclasses.dataclass
class ChessLMOptions:
    model: str = ""
    """Folder of a chess model saved by featureforge_testbeds.save_lm (config.json + model.safetensors), e.g. from benchmarks/moex_chess.py."""
    hook: str = ""
    """Module whose output is cached: blocks.I.mlp.hidden (MLP hidden units), blocks.I.mlp.out (MLP output) or blocks.I (residual after block I). Empty: the middle block's mlp.hidden."""
    games: int = 1000
    """Number of generated games to run the model over."""
    seed: int = 1
    """Seed of the generated games (the benchmark trains on seed 0)."""
    policy: Literal["heuristic", "random"] = "heuristic"
    """Move policy of the generated games (see chess_games)."""
    positions: Literal["all", "dots"] = "all"
    """Rows at every character, or only at the '.' after each move number (the board-probe positions)."""
    batch_size: int = 32
    """Games per forward pass."""


class ChessLMSource(ActivationSource):
    name = "chess-lm"
    description = "Character-level chess model (GELU, Switch MoE or MoE-X MLPs) over generated games, cached at one module"
    Options = ChessLMOptions
    can_splice = True

    def __post_init__(self) -> None:
        o = self.options
        if not o.model:
            raise OptionError("chess-lm needs -o model=FOLDER (a chess model trained with featureforge_testbeds.train_lm and saved with featureforge_testbeds.save_lm)")
        if o.games < 1:
            raise OptionError(f"games={o.games} must be at least 1; use e.g. -o games=1000")
        if o.batch_size < 1:
            raise OptionError(f"batch_size={o.batch_size} must be at least 1; use e.g. -o batch_size=32")
        self._model = None
        self._games = None

    @property
    def model(self):
        if self._model is None:
            from .capture import site
            from .chess_lm import load_lm

            model = load_lm(self.options.model)
            site(model, self.hook_name_for(model))
            self._model = model
        return self._model

    def hook_name_for(self, model) -> str:
        return self.options.hook or f"blocks.{model.cfg.n_layer // 2}.mlp.hidden"

    @property
    def hook_name(self) -> str:
        return self.hook_name_for(self.model)

    @property
    def games(self):
        if self._games is None:
            from .chess_games import make_games

            self._games = make_games(self.options.games, self.options.seed, self.model.cfg.context, self.options.policy)
        return self._games

    def _row_positions(self, game) -> list[int]:
        if self.options.positions == "dots":
            return [int(d) for d in game.dots]
        return list(range(len(game.text)))

    # -- ActivationSource ---------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        import torch

        from .capture import capture

        return int(capture(self.model, torch.zeros(1, 2, dtype=torch.long), self.hook_name).shape[-1])

    @property
    def n_rows(self) -> int:
        return sum(len(self._row_positions(g)) for g in self.games)

    @property
    def columns(self) -> dict[str, str]:
        return {"token_ids": "int32", "doc_ids": "int64", "seq_ids": "int64", "positions": "int32"}  # one game is one sequence

    def provenance(self) -> dict[str, Any]:
        o = self.options
        weights = Path(o.model) / "model.safetensors"
        return {
            "model": str(Path(o.model).resolve()),
            "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "mlp": self.model.cfg.mlp,
            "hook": self.hook_name,
            "data": f"{o.games} generated chess games (policy {o.policy}, seed {o.seed})",
            "positions": o.positions,
            "seed": o.seed,
            "config_sha256": hashlib.sha256((Path(o.model) / "config.json").read_bytes()).hexdigest(),
        }

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        import numpy as np
        import torch

        from .capture import capture
        from .chess_lm import pad_games

        mine = [(i, g) for i, g in enumerate(self.games) if i % world_size == rank]
        # Skip whole games first, then the head of the first partly committed one.
        while mine and skip_rows >= len(self._row_positions(mine[0][1])):
            skip_rows -= len(self._row_positions(mine[0][1]))
            mine.pop(0)
        for start in range(0, len(mine), self.options.batch_size):
            chunk = mine[start : start + self.options.batch_size]
            ids = pad_games([g for _, g in chunk], self.model.cfg.context)
            acts = capture(self.model, ids.clamp_min(0), self.hook_name)
            rows, tokens, docs, positions = [], [], [], []
            for j, (doc, game) in enumerate(chunk):
                where = torch.as_tensor(self._row_positions(game), dtype=torch.long)
                rows.append(acts[j, where])
                tokens.append(ids[j, where])
                docs.append(torch.full((len(where),), doc, dtype=torch.int64))
                positions.append(where)
            batch = {
                "acts": torch.cat(rows).float().numpy(),
                "token_ids": torch.cat(tokens).numpy().astype(np.int32),
                "doc_ids": torch.cat(docs).numpy(),
                "seq_ids": torch.cat(docs).numpy(),
                "positions": torch.cat(positions).numpy().astype(np.int32),
            }
            if skip_rows:
                batch = {k: v[skip_rows:] for k, v in batch.items()}
                skip_rows = 0
            yield batch

    @contextlib.contextmanager
    def splice(self, dictionary: Any) -> Iterator[Any]:
        """The model with the hook point replaced by ``dictionary``'s reconstruction (see ``chess_splice.py``)."""
        from .chess_splice import SplicedChessLM

        live = SplicedChessLM(self, dictionary)
        try:
            yield live
        finally:
            live.close()

    def decode_tokens(self, token_ids: Any) -> list[str]:
        from .chess_games import decode

        return decode(token_ids)
