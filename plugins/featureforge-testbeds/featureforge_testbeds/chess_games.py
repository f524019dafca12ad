"""Chess games made offline with the ``chess`` package, as character-level PGN with board labels.

Text follows Karvonen's chess-GPT convention (arXiv 2403.15498, 2408.00113): a game is one line
``;1.e4 e5 2.Nf3 Nc6 ...`` (``;`` starts the game, no space after a move number's dot). Moves
come from a simple policy (``random``: uniform legal moves; ``heuristic``: half the time a
capture, check or promotion when one exists, else uniform), so the games are cheap and varied.

At each ``.`` that follows a move number the model has read all earlier moves, so the board
before that move is known from the text: those positions carry the board-state labels, 64
squares x 13 classes (0 empty, 1-6 white P N B R Q K, 7-12 black p n b r q k; square 0 = a1).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

#: Every character a game can contain; token id = index in this string.
VOCAB = " #+-.0123456789;=BKNOQRabcdefghx"
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}
N_CLASSES = 13
PIECE_CLASSES = {"P": 1, "N": 2, "B": 3, "R": 4, "Q": 5, "K": 6, "p": 7, "n": 8, "b": 9, "r": 10, "q": 11, "k": 12}


@dataclasses.dataclass
class Game:
    """One game cut to ``max_chars``: its text, the '.' positions and the board before each."""

    text: str
    dots: np.ndarray
    boards: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        return encode(self.text)


def encode(text: str) -> np.ndarray:
    """Token ids of ``text`` (one per character)."""
    return np.fromiter((CHAR_TO_ID[c] for c in text), dtype=np.int64, count=len(text))


def decode(ids) -> list[str]:
    """One character per token id."""
    return [VOCAB[int(i)] for i in ids]


def board_classes(board) -> np.ndarray:
    """``[64]`` class of each square (0 empty, 1-12 pieces)."""
    out = np.zeros(64, dtype=np.int8)
    for square, piece in board.piece_map().items():
        out[square] = PIECE_CLASSES[piece.symbol()]
    return out


def _pick(board, moves, rng: random.Random, policy: str):
    if policy == "heuristic" and rng.random() < 0.5:
        forcing = [m for m in moves if board.is_capture(m) or board.gives_check(m) or m.promotion]
        if forcing:
            return rng.choice(forcing)
    return rng.choice(moves)


def play_game(rng: random.Random, max_chars: int = 256, policy: str = "heuristic") -> Game:
    """One game from the start position until it ends or its text reaches ``max_chars``."""
    import chess

    board = chess.Board()
    parts: list[str] = [";"]
    length = 1
    dots: list[int] = []
    boards: list[np.ndarray] = []
    while length < max_chars and not board.is_game_over(claim_draw=False):
        moves = list(board.legal_moves)
        move = _pick(board, moves, rng, policy)
        prefix = ""
        if board.turn == chess.WHITE:
            number = f"{board.fullmove_number}."
            prefix = (" " if length > 1 else "") + number
            dot = length + len(prefix) - 1
            if dot < max_chars:
                dots.append(dot)
                boards.append(board_classes(board))
        else:
            prefix = " "
        piece = prefix + board.san(move)
        parts.append(piece)
        length += len(piece)
        board.push(move)
    text = "".join(parts)[:max_chars]
    return Game(text, np.asarray(dots, dtype=np.int64), np.stack(boards) if boards else np.zeros((0, 64), np.int8))


def make_games(n: int, seed: int = 0, max_chars: int = 256, policy: str = "heuristic") -> list[Game]:
    """``n`` games, deterministic given ``seed``."""
    if policy not in ("random", "heuristic"):
        from featureforge import OptionError

        raise OptionError(f"policy={policy!r} is not known; use random or heuristic")
    rng = random.Random(seed)
    return [play_game(rng, max_chars, policy) for _ in range(n)]


def save_games(games: list[Game], path) -> None:
    """Write games to an ``.npz`` (texts, '.' positions and boards, with offsets; no pickle)."""
    counts = np.asarray([len(g.dots) for g in games], dtype=np.int64)
    np.savez(
        path,
        texts=np.asarray([g.text for g in games], dtype=str),
        counts=counts,
        dots=np.concatenate([g.dots for g in games]) if games else np.zeros(0, np.int64),
        boards=np.concatenate([g.boards for g in games]) if games else np.zeros((0, 64), np.int8),
    )


def load_games(path) -> list[Game]:
    """Games written by ``save_games``."""
    with np.load(path, allow_pickle=False) as f:
        ends = np.cumsum(f["counts"])
        starts = ends - f["counts"]
        dots, boards = f["dots"], f["boards"]
        return [Game(str(t), dots[a:b], boards[a:b]) for t, a, b in zip(f["texts"], starts, ends)]
