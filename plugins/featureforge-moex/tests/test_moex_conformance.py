"""The ``moex`` and ``switch`` trainers and the ``chess-lm`` source pass the conformance suites
plugin authors get from ``featureforge.testing`` (listed, train, deterministic, load, evaluate,
export what they declare; rows, cache round trip and the splice seam of the source)."""

from __future__ import annotations

import pytest

from featureforge.testing import SourceTests, TrainerTests


@pytest.fixture(scope="module")
def tiny_chess_model(tmp_path_factory):
    import torch

    from featureforge_moex import chess_lm

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("chess-lm") / "lm"
    chess_lm.save_lm(chess_lm.ChessLM(chess_lm.LMConfig(mlp="switch", n_layer=2, d_model=16, n_head=2, context=64)), folder)
    return str(folder)


class TestChessLMSource(SourceTests):
    source = "chess-lm"
    distribution = "featureforge-moex"

    @pytest.fixture
    def plugin_options(self, tiny_chess_model):
        return {"model": tiny_chess_model, "hook": "blocks.0.mlp.hidden", "games": 4}


class TestMoEX(TrainerTests):
    trainer = "moex"
    options = {"d_dict": 64, "n_experts": 4, "top_k": 2, "k": 4}
    distribution = "featureforge-moex"


class TestSwitch(TrainerTests):
    trainer = "switch"
    options = {"d_dict": 64, "n_experts": 4, "k": 4}
    distribution = "featureforge-moex"
