"""Steering the MoE-X testbed model by its experts (featureforge_moex.steering) through the live-model seam.

A small MoE-X chess model (a few training steps, so the router is not at its initialisation) run
by the ``chess-lm`` source's live model at ``blocks.0.mlp.hidden``: the expert weighting is a row
replacement like any steering edit (``live(..., replace=fn)`` and ``featureforge.steering.steer_functions``),
and switching re-routes the layer only inside its block.
"""

from __future__ import annotations

import pytest
import torch

import featureforge
from featureforge.steering import steer_functions
from featureforge_moex.steering import expert_weighting, switched
from featureforge_testbeds import chess_games, chess_lm


@pytest.fixture(scope="module")
def moex_source(tmp_path_factory):
    torch.manual_seed(7)
    model = chess_lm.ChessLM(chess_lm.LMConfig(mlp="moex", n_layer=2, d_model=32, n_head=2, context=96, n_experts=4, top_k=2))
    ids = chess_lm.pad_games(chess_games.make_games(16, 0, 96), 96)
    chess_lm.train_lm(model, ids, ids, steps=10, batch_size=4, lr=1e-2)
    folder = tmp_path_factory.mktemp("moex-steer") / "lm"
    chess_lm.save_lm(model, folder)
    return featureforge.make_source("chess-lm", {"model": str(folder), "games": 4, "hook": "blocks.0.mlp.hidden"})


PROMPT = "1.e4 e5 2.Nf3 "


def _prompt(live):
    ids = torch.tensor([live.prompt_ids(PROMPT)])
    return ids, torch.ones_like(ids)


def test_expert_weighting_is_a_row_replacement_at_the_hidden_site(moex_source):
    layer = moex_source.model.blocks[0].mlp
    with moex_source.splice(None) as live:
        ids, mask = _prompt(live)
        clean = live(ids, mask, replace="none")
        same = live(ids, mask, replace=expert_weighting(layer, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}))
        assert torch.equal(same, clean), "every expert weighted 1: bit for bit"
        seen = []

        def spy(fn):
            def inner(rows):
                out = fn(rows)
                seen.append((rows, out))
                return out
            return inner

        width = layer.expert_width
        live(ids, mask, replace=spy(lambda rows: rows))
        used = int(seen[-1][0].view(-1, layer.n_experts, width).abs().sum((0, 2)).argmax())  # the expert the prompt uses most
        part = slice(used * width, (used + 1) * width)
        off = live(ids, mask, replace=spy(expert_weighting(layer, {used: 0.0})))
        rows, out = seen[-1]
        assert rows[:, part].abs().sum() > 0 and out[:, part].abs().sum() == 0, "the expert's share is gone"
        rest = torch.ones(rows.shape[1], dtype=torch.bool)
        rest[part] = False
        assert torch.equal(out[:, rest], rows[:, rest]) and not torch.allclose(off, clean)
        _, outcomes = steer_functions(live, [(0.0, expert_weighting(layer, {used: 1.0})), (3.0, expert_weighting(layer, {used: 3.0}))], PROMPT,
                                      max_new_tokens=4)
        assert outcomes[0].kl == 0 and outcomes[1].kl > 0 and len(outcomes[1].text) == 4
    with pytest.raises(featureforge.BadInputError, match="outside the layer's 4 experts"):
        expert_weighting(layer, {4: 2.0})


def test_switching_experts_reroutes_only_inside_the_block(moex_source):
    layer = moex_source.model.blocks[0].mlp
    x = torch.randn(50, 32)
    before = layer.route(x).indices
    with switched(layer, on=[2], off=[0]):
        route = layer.route(x)
        assert bool((route.indices == 2).any(-1).all()) and not bool((route.indices == 0).any())
        assert torch.allclose(route.weights.sum(-1), torch.ones(50))
        with moex_source.splice(None) as live:
            ids, mask = _prompt(live)
            steered = live(ids, mask, replace="none")
    assert torch.equal(layer.route(x).indices, before), "the layer's own router is back after the block"
    with moex_source.splice(None) as live:
        assert not torch.allclose(live(ids, mask, replace="none"), steered)
    with pytest.raises(featureforge.BadInputError, match="both switched on and off"):
        with switched(layer, on=[1], off=[1]):
            pass
    with pytest.raises(featureforge.BadInputError, match="fewer than top_k"):
        with switched(layer, off=[0, 1, 3]):
            pass
