"""The Othello testbed: rules, per-position labels, legal-move accuracy, the colour probe, upcycling
a whole model, bf16 autocast through the MoE layers, and (slow) that the task is learnable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featureforge import BadInputError
from featureforge_testbeds import board_probe, chess_lm, othello


def test_start_position_and_a_flip():
    board = othello.start_board(6)
    # Black (+1) opens: the four classic moves, each flipping exactly one white disc.
    assert sorted(othello.legal_moves(board, 1, 6)) == [8, 13, 22, 27]
    assert othello.flips(board, 1, 8, 6) == [14]
    assert othello.flips(board, 1, 0, 6) == []  # not adjacent to anything
    assert sorted(othello.legal_moves(othello.start_board(4), 1, 4)) == [1, 4, 11, 14]


def _replay(game: othello.Game, size: int) -> None:
    """Replay ``game`` with the rules and check every stored board and legal row against it."""
    board, player = othello.start_board(size), 1
    for i, token in enumerate(game.ids[1:]):
        mine = game.boards[i] == 1
        assert np.array_equal(mine, np.asarray(board) == player)
        assert np.array_equal(game.boards[i] == 2, np.asarray(board) == -player)
        assert game.legal[i, token]
        legal = othello.legal_moves(board, player, size) or ([size * size] if othello.legal_moves(board, -player, size) else [])
        assert sorted(np.flatnonzero(game.legal[i])) == legal  # the whole legal set, PASS included
        if token == size * size:  # PASS
            assert othello.legal_moves(board, player, size) == []
        else:
            flipped = othello.flips(board, player, int(token), size)
            assert flipped
            for s in flipped + [int(token)]:
                board[s] = player
        player = -player
    assert not game.legal[len(game.ids) - 1].any() or len(game.ids) == othello.context_for(size)


@pytest.mark.parametrize("size", [4, 6])
def test_games_replay_and_are_deterministic(size):
    games = othello.make_games(30, seed=5, size=size)
    again = othello.make_games(30, seed=5, size=size)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(games, again))
    assert any(not np.array_equal(a.ids, b.ids) for a, b in zip(games, othello.make_games(30, seed=6, size=size)))
    for game in games:
        assert game.ids[0] == size * size + 1 and len(game.ids) <= othello.context_for(size)
        assert game.boards.shape == (len(game.ids), size * size) and game.legal.shape == (len(game.ids), othello.vocab_size(size))
        assert np.array_equal(game.dots, np.arange(len(game.ids)))
        _replay(game, size)
    assert any((g.ids == 16).any() for g in othello.make_games(300, seed=1, size=4))  # passes happen


def test_moves_are_uniform_among_the_legal_ones():
    """Random legal play: each of the four openings about equally often (2000 games, bounds ~5 sigma)."""
    first = np.array([g.ids[1] for g in othello.make_games(2000, seed=9, size=4)])
    counts = np.bincount(first, minlength=16)[[1, 4, 11, 14]]
    assert counts.sum() == 2000 and counts.min() > 400 and counts.max() < 600, counts


class _Oracle(torch.nn.Module):
    """Logits that put the top-1 on the first legal (or, flipped, the first illegal) token of each position."""

    def __init__(self, games, legal: bool):
        super().__init__()
        self.cfg = chess_lm.LMConfig(context=othello.context_for(4), vocab_size=othello.vocab_size(4))
        self.games, self.legal, self.w = games, legal, torch.nn.Parameter(torch.zeros(1))
        self.offset = 0

    def forward(self, ids):
        out = torch.zeros(*ids.shape, self.cfg.vocab_size)
        for i, g in enumerate(self.games[self.offset : self.offset + len(ids)]):
            for t in range(len(g.ids)):
                row = g.legal[t] if self.legal else ~g.legal[t]
                out[i, t, int(np.argmax(row))] = 1.0
        self.offset += len(ids)
        return out


def test_legal_top1_counts_legal_predictions():
    games = othello.make_games(10, seed=2, size=4)
    assert othello.legal_top1(_Oracle(games, legal=True), games) == 1.0
    assert othello.legal_top1(_Oracle(games, legal=False), games) == 0.0


def test_colour_probe_scores_only_the_chosen_classes():
    rng = np.random.default_rng(0)
    boards = rng.integers(0, 3, size=(600, 16))
    labels = board_probe.board_labels(boards, 3)
    assert labels.shape == (600, 48)
    colours = labels[:, [s * 3 + c for s in range(16) for c in (1, 2)]]
    assert board_probe.linear_probe_f1(torch.cat([colours, torch.randn(600, 4)], 1), boards, n_classes=3, classes=(1, 2)) > 0.99
    # Features that say only which squares are empty: the full board probe gets a third of the
    # labels right from them, the colour probe (mover's / opponent's only) cannot.
    empties = torch.cat([labels[:, [s * 3 for s in range(16)]], torch.randn(600, 4)], 1)
    full = board_probe.linear_probe_f1(empties, boards, n_classes=3)
    colour = board_probe.linear_probe_f1(empties, boards, n_classes=3, classes=(1, 2))
    assert colour < full - 0.1, (colour, full)
    m = board_probe.board_metrics(labels, boards, n_classes=3)
    assert m["coverage"] == pytest.approx(1.0) and m["reconstruction"] == pytest.approx(1.0) and m["properties"] == 48


def test_upcycle_lm_copies_everything_but_the_mlps():
    dense = chess_lm.ChessLM(chess_lm.LMConfig(n_layer=2, d_model=16, n_head=2, context=12, vocab_size=18))
    moe = chess_lm.upcycle_lm(dense, "moex", seed=1)
    assert moe.cfg.mlp == "moex" and moe.cfg.d_model == 16
    dense_sd, moe_sd = dense.state_dict(), moe.state_dict()
    for name, value in dense_sd.items():
        if ".mlp." not in name:
            assert torch.equal(value, moe_sd[name]), name
    # Expert j holds slice j mod 2 of the dense encoder (expert width = dense hidden / top_k).
    assert torch.equal(moe.blocks[0].mlp.W_enc[3], dense.blocks[0].mlp.fc.weight[32:64])
    with pytest.raises(BadInputError, match="only upcycle a dense model"):
        chess_lm.upcycle_lm(moe, "moex")


@pytest.mark.parametrize("mlp", ["moex", "switch"])
def test_bf16_autocast_trains_the_moe_model(mlp):
    cfg = chess_lm.LMConfig(mlp=mlp, n_layer=1, d_model=16, n_head=2, context=12, vocab_size=18)
    model = chess_lm.ChessLM(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 18, (8, 12))
    r = chess_lm.train_lm(model, ids, ids[:2], steps=2, batch_size=4, bf16=True)
    assert np.isfinite(r.val_loss) and all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_othello_is_learnable_probe_gap_over_untrained():
    """The testbed cannot silently rot: a briefly trained model tracks the board better than an untrained one."""
    from featureforge_testbeds.board_probe import collect_at_dots, linear_probe_f1

    torch.manual_seed(0)
    train, val, test = (othello.make_games(n, seed=s, size=4) for n, s in ((3000, 10), (50, 11), (150, 12)))
    cfg = chess_lm.LMConfig(mlp="gelu", n_layer=3, d_model=64, n_head=4, context=othello.context_for(4), vocab_size=othello.vocab_size(4))

    def score(model) -> tuple[float, float]:
        acts, boards = collect_at_dots(model, test, "blocks.1")
        return othello.legal_top1(model, test), linear_probe_f1(acts, boards, n_classes=3, classes=(1, 2))

    untrained = score(chess_lm.ChessLM(cfg))
    model = chess_lm.ChessLM(cfg)
    chess_lm.train_lm(model, chess_lm.pad_games(train, cfg.context), chess_lm.pad_games(val, cfg.context), steps=300, batch_size=32)
    trained = score(model)
    assert trained[0] > untrained[0] + 0.4, (trained, untrained)
    assert trained[1] > untrained[1] + 0.03, (trained, untrained)
