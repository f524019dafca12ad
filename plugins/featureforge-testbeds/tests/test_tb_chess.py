"""Chess games, board labels and metrics, the tiny chess LM, and the chess-lm source end to end
(save a model -> featureforge cache --source chess-lm -> train -> evaluate)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featureforge
from featureforge import BadInputError
from featureforge.cli import cli
from featureforge_testbeds import board_probe, chess_games, chess_lm


def test_games_are_legal_pgn_and_labels_match_a_replay():
    import chess

    games = chess_games.make_games(6, seed=4, max_chars=200)
    assert [g.text for g in games] == [g.text for g in chess_games.make_games(6, seed=4, max_chars=200)]
    for game in games:
        assert game.text.startswith(";1.") and len(game.text) <= 200
        assert all(game.text[d] == "." for d in game.dots)
        assert "".join(chess_games.decode(game.ids)) == game.text
        board = chess.Board()
        moves = [m for m in re.sub(r"\d+\.", " ", game.text[1:]).split()]
        complete = moves if game.text.endswith(moves[-1]) and len(game.text) < 200 else moves[:-1]
        n_dots_checked = 0
        for ply, san in enumerate(complete):
            if ply % 2 == 0:
                assert np.array_equal(game.boards[ply // 2], chess_games.board_classes(board))
                n_dots_checked += 1
            board.push_san(san)
        assert n_dots_checked >= len(game.dots) - 1


def test_games_survive_a_save_and_load(tmp_path):
    games = chess_games.make_games(3, seed=2, max_chars=120)
    chess_games.save_games(games, tmp_path / "g.npz")
    back = chess_games.load_games(tmp_path / "g.npz")
    assert [g.text for g in back] == [g.text for g in games]
    for a, b in zip(games, back):
        assert np.array_equal(a.dots, b.dots) and np.array_equal(a.boards, b.boards)


def test_a_unit_that_is_a_property_scores_full_coverage_of_it():
    boards = np.zeros((200, 64), dtype=np.int8)
    rng = np.random.default_rng(0)
    boards[:, 0] = rng.integers(0, 2, 200) * 4  # a1: white rook or empty
    boards[:, 1] = rng.integers(0, 2, 200) * 2  # b1: white knight or empty
    acts = torch.zeros(200, 3)
    acts[:, 0] = torch.as_tensor(boards[:, 0] == 4, dtype=torch.float32) * 2.0  # a perfect "rook on a1" unit
    acts[:, 1] = torch.rand(200)  # noise
    m = board_probe.board_metrics(acts, boards)
    assert m["properties"] == 4  # a1 empty/rook, b1 empty/knight; constant squares dropped
    without = board_probe.board_metrics(acts[:, 1:], boards)
    # The perfect unit lifts its property's best F1 to 1; the other three keep the same best units.
    assert m["coverage"] > without["coverage"] + 0.05
    assert m["coverage"] <= 1.0
    labels = board_probe.board_labels(boards)
    assert labels.shape == (200, 64 * 13)
    # rook-on-a1 is predicted with precision 1 by unit 0, so reconstruction recovers it.
    assert m["reconstruction"] > 0.4 and m["precise_units"] >= 1


def test_chess_lm_trains_and_round_trips_through_safetensors(tmp_path):
    cfg = chess_lm.LMConfig(mlp="moex", n_layer=2, d_model=32, n_head=2, context=96)
    model = chess_lm.ChessLM(cfg)
    ids = chess_lm.pad_games(chess_games.make_games(16, 0, 96), 96)
    before = chess_lm.validation_loss(model, ids)
    result = chess_lm.train_lm(model, ids, ids, steps=10, batch_size=4, lr=1e-2)
    assert result.val_loss < before - 0.3
    chess_lm.save_lm(model, tmp_path / "m")
    assert not list(tmp_path.glob("m/*.pt")) and not list(tmp_path.glob("m/*.bin"))
    back = chess_lm.load_lm(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(back(ids[:2].clamp_min(0)), model.eval()(ids[:2].clamp_min(0)), atol=1e-5)
    assert model.active_mlp_params() == chess_lm.ChessLM(chess_lm.LMConfig(mlp="gelu", n_layer=2, d_model=32, n_head=2)).active_mlp_params()
    with pytest.raises(BadInputError, match="is not a chess model folder"):
        chess_lm.load_lm(tmp_path)


def test_chess_lm_source_caches_trains_and_evaluates_through_the_cli(tmp_path):
    model = chess_lm.ChessLM(chess_lm.LMConfig(mlp="moex", n_layer=2, d_model=32, n_head=2, context=128))
    chess_lm.save_lm(model, tmp_path / "lm")
    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    store = tmp_path / "s.zarr"
    ok("cache", "--source", "chess-lm", "-o", f"model={tmp_path / 'lm'}", "-o", "hook=blocks.1.mlp.hidden", "-o", "games=24",
       "--store", store, "--rows-per-chunk", 512)
    info = json.loads(ok("info", store, "--json").stdout)
    assert info["d_in"] == 8 * 64  # M * D of the MoE-X layer: the wide sparse hidden layer
    assert info["provenance"]["hook"] == "blocks.1.mlp.hidden" and info["provenance"]["mlp"] == "moex"
    opened = featureforge.open_store(str(store))
    # rows are stored shuffled within write windows: game 0 is its rows (seq_ids) in position order
    assert opened.write_shuffle_rows > 0
    seq, pos = np.asarray(opened.group["seq_ids"][:]), np.asarray(opened.group["positions"][:])
    game0 = np.flatnonzero(seq == 0)
    game0 = game0[np.argsort(pos[game0])][:40]
    tokens, positions = np.asarray(opened.group["token_ids"][:])[game0], pos[game0]
    src = featureforge.make_source("chess-lm", {"model": str(tmp_path / "lm"), "games": 24})
    text = "".join(src.decode_tokens(tokens))
    assert text == chess_games.make_games(1, 1, 128)[0].text[:40] and positions[0] == 0
    ok("train", "--trainer", "switch", "-o", "d_dict=256", "-o", "k=8", "--store", store, "--out", tmp_path / "run",
       "--batch-size", 256, "--threads", 1, "-t", "holdout_rows=512")
    report = json.loads(ok("evaluate", tmp_path / "run", "--store", store, "--json").stdout)
    assert report["evaluators"]["reconstruction"]["metrics"]["l0"] == pytest.approx(8, abs=0.01)
    if "downstream" in featureforge.get_registry().names("evaluator"):  # featureforge-hf's evaluator, through splice
        report = json.loads(ok("evaluate", tmp_path / "run", "--store", store, "--evaluator", "downstream",
                               "-o", "downstream.max_sequences=8", "--json").stdout)
        down = report["evaluators"]["downstream"]["metrics"]
        assert down["kind"] == "causal-lm" and down["start_doc"] == 24 and down["tokens"] > 0
        assert down["kl_dictionary"] >= 0 and down["ce_zero"] != down["ce_clean"]


@pytest.fixture(scope="module")
def chess_run(tmp_path_factory):
    """(store, run) of a tiny MoE-X chess model cached at blocks.1.mlp.hidden, a switch dictionary trained on it."""
    tmp = tmp_path_factory.mktemp("chess-steer")
    torch.manual_seed(5)
    chess_lm.save_lm(chess_lm.ChessLM(chess_lm.LMConfig(mlp="moex", n_layer=2, d_model=32, n_head=2, context=128)), tmp / "lm")
    store = featureforge.cache("chess-lm", {"model": str(tmp / "lm"), "hook": "blocks.1.mlp.hidden", "games": 16}, store=str(tmp / "s.zarr"),
                               rows_per_chunk=512, progress=False)
    [run] = featureforge.train("switch", {"d_dict": 128, "k": 8}, store=store, out=str(tmp / "run"), batch_size=256, threads=1, progress=False)
    return store, run


def test_steer_on_a_chess_lm_store_continues_a_game_through_the_cli(chess_run):
    store, run = chess_run
    runner = CliRunner()
    args = ["steer", str(run), "--store", store.url, "--latent", "3", "--units", "absolute", "--alpha", "0,8",
            "--prompt", "1.e4 e5 2.", "--max-new-tokens", "6"]
    result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kind"] == "causal-lm" and out["hook"] == "blocks.1.mlp.hidden"
    assert len(out["clean_text"]) == 6 and set(out["clean_text"]) <= set(chess_games.VOCAB)
    zero, eight = out["outcomes"]
    assert zero["text"] == out["clean_text"] and zero["kl"] == pytest.approx(0, abs=1e-9)  # α = 0 changes no code
    assert eight["kl"] > 0 and all(len(t["token"]) == 1 for t in eight["promoted"])
    lines = runner.invoke(cli, args, catch_exceptions=False).stdout.splitlines()
    assert lines[0].startswith("add latent(s) 3 at blocks.1.mlp.hidden") and lines[1].startswith("clean")
    bad = runner.invoke(cli, [*args[:-4], "--prompt", "1.e4 Z?"])
    assert bad.exit_code != 0 and "outside the chess vocabulary" in bad.output and bad.output.count("\n") == 1


class _Identity(torch.nn.Module):
    def forward(self, rows):
        return type("Out", (), {"x_hat": rows})()


def test_splice_replaces_the_hook_point_and_identity_changes_nothing(tmp_path):
    torch.manual_seed(3)
    chess_lm.save_lm(chess_lm.ChessLM(chess_lm.LMConfig(mlp="switch", n_layer=2, d_model=16, n_head=2, context=64)), tmp_path / "lm")
    src = featureforge.make_source("chess-lm", {"model": str(tmp_path / "lm"), "games": 4, "hook": "blocks.0.mlp.hidden"})
    with src.splice(_Identity()) as live:
        [batch] = list(live.batches(start_doc=4, max_sequences=3))
        assert batch.doc_ids.tolist() == [4, 5, 6]
        sums = live.compare(batch, ("dictionary", "zero"))
        clean = src.model(batch.input_ids)
    assert sums["ce_dictionary"] == pytest.approx(sums["ce_clean"], rel=1e-6) and sums["kl_dictionary"] == pytest.approx(0, abs=1e-4)
    assert sums["ce_zero"] != pytest.approx(sums["ce_clean"], rel=1e-4)
    assert torch.allclose(src.model(batch.input_ids), clean, atol=1e-5)  # the hook is gone after the splice


def test_chess_lm_source_refuses_an_unknown_hook_in_one_line(tmp_path):
    chess_lm.save_lm(chess_lm.ChessLM(chess_lm.LMConfig(n_layer=1, d_model=16, n_head=2, context=32)), tmp_path / "lm")
    src = featureforge.make_source("chess-lm", {"model": str(tmp_path / "lm"), "hook": "blocks.7.mlp"})
    with pytest.raises(featureforge.OptionError, match="hook 'blocks.7.mlp' is not a module") as info:
        src.d_in
    assert "\n" not in str(info.value) and "blocks.0.mlp.hidden" in str(info.value)


def test_linear_probe_reads_a_linearly_encoded_board_and_not_noise():
    rng = np.random.default_rng(1)
    boards = rng.integers(0, 3, size=(400, 64)).astype(np.int8)
    encoded = board_probe.board_labels(boards) @ torch.randn(64 * 13, 200, generator=torch.Generator().manual_seed(0))
    assert board_probe.linear_probe_f1(encoded, boards) > 0.95
    assert board_probe.linear_probe_f1(torch.randn(400, 200), boards) < 0.6
