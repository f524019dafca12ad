"""The ``chess-lm`` source passes the conformance suite plugin authors get from ``featureforge.testing``
(listed, rows, cache round trip and the splice seam)."""

from __future__ import annotations

import pytest

from featureforge.testing import SourceTests


@pytest.fixture(scope="module")
def tiny_chess_model(tmp_path_factory):
    import torch

    from featureforge_testbeds import chess_lm

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("chess-lm") / "lm"
    chess_lm.save_lm(chess_lm.ChessLM(chess_lm.LMConfig(mlp="switch", n_layer=2, d_model=16, n_head=2, context=64)), folder)
    return str(folder)


class TestChessLMSource(SourceTests):
    source = "chess-lm"
    distribution = "featureforge-testbeds"

    @pytest.fixture
    def plugin_options(self, tiny_chess_model):
        return {"model": tiny_chess_model, "hook": "blocks.0.mlp.hidden", "games": 4}
