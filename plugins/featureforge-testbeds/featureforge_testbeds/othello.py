"""Othello on a 6x6 board by uniformly random legal play: a world-state task small enough for a CPU.

Why Othello (see docs/methods/moex.md): a move flips every opponent line it closes, so the board
after a sequence of moves is a non-linear function of the whole sequence. A model that predicts
legal moves must compute it, and an untrained model cannot read it off token identities or
positions (unlike tic-tac-toe, where "square played" is a bag of tokens). 6x6 keeps games at <= 32
moves, so a 3-layer model learns it in minutes (Li et al. 2023's Othello-GPT, 8x8, needs a GPU).

``size`` is the board side (even, >= 4; 6 by default, 4 for a faster testbed). Tokens: squares
0..size*size-1 (row-major), ``PASS`` (= size*size) when the mover has no legal move but the game goes
on, ``BOS`` (= size*size + 1) first. Board classes at every position (Nanda et al.'s finding that Othello models
represent the board relative to the player to move): 0 empty, 1 the next mover's, 2 the
opponent's. A game's ``legal[i]`` is the set of tokens that may follow position ``i``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

N_CLASSES = 3


def vocab_size(size: int) -> int:
    """Squares, PASS (= size*size) and BOS (= size*size + 1)."""
    return size * size + 2


def context_for(size: int) -> int:
    """BOS + every empty square + a few passes; longer games (very rare) are cut."""
    return size * size - 4 + 1 + (8 if size > 4 else 4)


@functools.lru_cache(maxsize=None)
def _rays(size: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """For every square, the squares along each of the 8 directions, nearest first."""
    out = []
    for sq in range(size * size):
        r, c = divmod(sq, size)
        rays = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    ray, rr, cc = [], r + dr, c + dc
                    while 0 <= rr < size and 0 <= cc < size:
                        ray.append(rr * size + cc)
                        rr, cc = rr + dr, cc + dc
                    if len(ray) >= 2:
                        rays.append(tuple(ray))
        out.append(tuple(rays))
    return tuple(out)


def flips(board: list[int], player: int, sq: int, size: int = 6) -> list[int]:
    """Squares flipped if ``player`` (+1/-1) plays ``sq`` on ``board`` (empty list: illegal)."""
    if board[sq]:
        return []
    out: list[int] = []
    for ray in _rays(size)[sq]:
        run = []
        for s in ray:
            if board[s] == -player:
                run.append(s)
                continue
            if board[s] == player and run:
                out.extend(run)
            break
    return out


def legal_moves(board: list[int], player: int, size: int = 6) -> list[int]:
    return [sq for sq in range(size * size) if not board[sq] and flips(board, player, sq, size)]


def start_board(size: int = 6) -> list[int]:
    board = [0] * (size * size)
    a, b = size // 2 - 1, size // 2
    board[a * size + a] = board[b * size + b] = -1  # white
    board[a * size + b] = board[b * size + a] = 1  # black, moves first
    return board


@dataclasses.dataclass
class Game:
    """One game: ``ids`` [BOS, moves...], and per position the board and the legal next tokens."""

    ids: np.ndarray  # [t] int64
    boards: np.ndarray  # [t, size*size] int8 classes relative to the next mover
    legal: np.ndarray  # [t, vocab_size(size)] bool; all False after the last move

    @property
    def dots(self) -> np.ndarray:
        """Probe positions (every position: the board is defined after each token)."""
        return np.arange(len(self.ids))


def _relative(board: list[int], player: int) -> np.ndarray:
    b = np.asarray(board, dtype=np.int8) * player
    return np.where(b == 0, 0, np.where(b > 0, 1, 2)).astype(np.int8)


def random_game(rng: np.random.Generator, size: int = 6) -> Game:
    """A game of uniformly random legal moves, cut to ``context_for(size)`` tokens."""
    board, player = start_board(size), 1
    n_sq = size * size
    pass_id, bos = n_sq, n_sq + 1
    ids, boards, legal = [bos], [], []
    while True:
        moves = legal_moves(board, player, size)
        row = np.zeros(vocab_size(size), dtype=bool)
        if not moves:
            if not legal_moves(board, -player, size):
                boards.append(_relative(board, player))
                legal.append(row)
                break
            row[pass_id] = True
            boards.append(_relative(board, player))
            legal.append(row)
            ids.append(pass_id)
            player = -player
            continue
        row[moves] = True
        boards.append(_relative(board, player))
        legal.append(row)
        sq = moves[int(rng.integers(len(moves)))]
        for s in flips(board, player, sq, size):
            board[s] = player
        board[sq] = player
        ids.append(sq)
        player = -player
    n = min(len(ids), context_for(size))
    return Game(np.asarray(ids[:n], dtype=np.int64), np.stack(boards[:n]), np.stack(legal[:n]))


def make_games(n: int, seed: int, size: int = 6) -> list[Game]:
    rng = np.random.default_rng(seed)
    return [random_game(rng, size) for _ in range(n)]


def legal_top1(model, games: list[Game], batch_size: int = 256) -> float:
    """Share of positions (with a next move) where the model's top-1 next token is legal."""
    import torch

    from .chess_lm import pad_games

    ids = pad_games(games, model.cfg.context)
    hits = total = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(games), batch_size):
            chunk = ids[start : start + batch_size]
            top = model(chunk.clamp_min(0).to(next(model.parameters()).device)).argmax(-1).cpu().numpy()
            for i, g in enumerate(games[start : start + batch_size]):
                n = len(g.ids)
                has_next = g.legal[:n].any(1)
                ok = g.legal[np.arange(n), top[i, :n]]
                hits += int(ok[has_next].sum())
                total += int(has_next.sum())
    return hits / max(total, 1)
