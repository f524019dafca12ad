"""MoE layers: routed computation equals brute force, gradients reach only routed experts,
the sparsity-aware score is the paper's formula, upcycling copies the dense MLP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from featureforge import BadInputError, OptionError
from featureforge_moex import layers, routing


def brute_force(layer: layers.MoEMLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every expert on every row, then keep the routed ones with their gates."""
    act = layers.ACTIVATIONS[layer.activation]
    route = layer.route(x)
    hidden = act(torch.einsum("nd,mhd->nmh", x, layer.W_enc) + layer.b_enc)  # [n, M, D]
    gates = torch.zeros(len(x), layer.n_experts).scatter(1, route.indices, route.weights)
    wide = hidden * gates.unsqueeze(-1)
    y = torch.einsum("nmh,mhd->nd", wide, layer.W_dec) + layer.b_dec
    return y, wide.reshape(len(x), -1)


@pytest.mark.parametrize("cls", [layers.MoEXMLP, layers.SwitchMLP])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_routed_forward_equals_all_experts_then_mask(cls, top_k):
    layer = cls(24, n_experts=5, expert_width=7, top_k=top_k)
    with torch.no_grad():
        layer.b_enc.normal_()
    x = torch.randn(3, 11, 24)
    routed = layer(x)  # grouped path
    seen = {}
    layer.hidden.register_forward_hook(lambda m, a, out: seen.setdefault("hidden", out))
    hooked = layer(x)  # dense wide-hidden path, taken while a hook reads blocks.i.mlp.hidden
    want_y, want_hidden = brute_force(layer, x.reshape(-1, 24))
    assert torch.allclose(routed.reshape(-1, 24), want_y, atol=1e-5)
    assert torch.allclose(hooked.reshape(-1, 24), want_y, atol=1e-5)
    assert torch.allclose(seen["hidden"].reshape(-1, 35), want_hidden, atol=1e-6)
    assert seen["hidden"].shape == (3, 11, 35)


def test_a_hook_that_replaces_the_hidden_units_changes_the_output():
    layer = layers.MoEXMLP(8, n_experts=4, expert_width=4, top_k=2)
    x = torch.randn(2, 3, 8)
    handle = layer.hidden.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    assert torch.allclose(layer(x), layer.b_dec.expand(2, 3, 8))
    handle.remove()
    assert not torch.allclose(layer(x), layer.b_dec.expand(2, 3, 8))


def test_only_routed_experts_get_gradients():
    layer = layers.MoEXMLP(16, n_experts=8, expert_width=4, top_k=2)
    x = torch.randn(3, 16)
    routed = set(layer.route(x).indices.flatten().tolist())
    assert len(routed) < 8
    layer(x).pow(2).sum().backward()  # no load-balance term: it touches every expert's statistics
    for j in range(8):
        got = float(layer.W_dec.grad[j].abs().sum())
        assert (got > 0) == (j in routed), f"expert {j}: routed={j in routed}, decoder grad {got}"
    # The encoder of an unrouted expert gets no gradient either: it was never run and its
    # score enters no gate (gates are a softmax over the chosen experts only).
    for j in set(range(8)) - routed:
        assert float(layer.W_enc.grad[j].abs().sum()) == 0.0


def test_sparsity_score_matches_a_direct_gaussian_computation():
    torch.manual_seed(1)
    W = torch.randn(3, 50, 6)
    b = torch.randn(3, 50) * 0.1
    x = torch.randn(4, 6)
    got = routing.sparsity_scores(x, W, b)
    for j in range(3):
        mu = W[j].mean(0)
        var = ((W[j] - mu) ** 2).mean(0)
        for i in range(4):
            mean = float(mu @ x[i]) + float(b[j].mean())
            sd = math.sqrt(float(var @ x[i] ** 2) + float(b[j].var(unbiased=False)))
            active = 0.5 * (1 + math.erf(mean / sd / math.sqrt(2)))  # Phi(mu_h / sigma_h)
            assert got[i, j].item() == pytest.approx(1 - 2 * active, abs=1e-5)
            assert got[i, j].item() == pytest.approx(-math.erf(mean / (math.sqrt(2) * sd)), abs=1e-5)


def test_router_prefers_the_expert_with_the_most_negative_mean_pre_activation():
    torch.manual_seed(2)
    x = torch.rand(64, 8) + 0.1  # positive inputs: the sign of mu_j . x is the sign of mu_j
    noise = torch.randn(4, 32, 8) * 0.3
    shifts = torch.tensor([0.0, 0.2, -0.4, -0.1]).view(4, 1, 1)
    layer = layers.MoEXMLP(8, n_experts=4, expert_width=32, top_k=1)
    with torch.no_grad():
        layer.W_enc.copy_(noise + shifts)
    assert (layer.route(x).indices[:, 0] == 2).all()
    # ...and it really is the sparsest expert on these rows.
    fraction_active = (torch.einsum("nd,mhd->nmh", x, layer.W_enc) > 0).float().mean((0, 2))
    assert int(fraction_active.argmin()) == 2


def test_zero_input_scores_zero_not_nan():
    assert torch.equal(routing.sparsity_scores(torch.zeros(2, 5), torch.randn(3, 4, 5)), torch.zeros(2, 3))


def test_moex_gates_are_a_softmax_over_the_chosen_scores():
    scores = torch.tensor([[0.5, -0.2, 0.9, 0.1]])
    route = routing.choose(scores, 2, "chosen")
    assert route.indices.tolist() == [[2, 0]]
    assert torch.allclose(route.weights, torch.softmax(torch.tensor([[0.9, 0.5]]), -1))


def test_load_balance_is_one_when_uniform_and_grows_when_collapsed():
    n, M = 64, 4
    uniform = routing.Route(torch.arange(n).remainder(M).view(n, 1), torch.ones(n, 1), torch.full((n, M), 1 / M))
    assert float(routing.load_balance_loss(uniform, M)) == pytest.approx(1.0)
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(n, M)
    collapsed = routing.Route(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1), probs)
    assert float(routing.load_balance_loss(collapsed, M)) == pytest.approx(M * 0.97)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_upcycled_copies_reproduce_the_dense_mlp(activation):
    dense = layers.DenseMLP(16, 64, activation)
    moe = layers.MoEMLP(16, n_experts=4, expert_width=64, top_k=2, activation=activation, router="sparsity")
    layers.upcycle(dense, moe)
    x = torch.randn(2, 9, 16)
    assert torch.allclose(moe(x), dense(x), atol=1e-5)


def test_upcycled_slices_cover_the_dense_units_and_noise_moves_them():
    dense = layers.DenseMLP(16, 64, "relu")
    moe = layers.upcycle(dense, layers.MoEXMLP(16, n_experts=8, expert_width=32, top_k=2))
    for j in range(8):
        s = j % 2
        assert torch.equal(moe.W_enc[j], dense.fc.weight[32 * s : 32 * (s + 1)])
        assert torch.allclose(moe.W_dec[j], 2 * dense.proj.weight[:, 32 * s : 32 * (s + 1)].T)
    # Two experts of distinct slices with equal gates rebuild the dense output exactly.
    x = torch.randn(5, 16)
    h = F.relu(x @ moe.W_enc[0].T + moe.b_enc[0]) @ moe.W_dec[0] + F.relu(x @ moe.W_enc[1].T + moe.b_enc[1]) @ moe.W_dec[1]
    assert torch.allclose(0.5 * h + moe.b_dec, dense(x), atol=1e-5)
    noisy = layers.upcycle(dense, layers.MoEXMLP(16, n_experts=8, expert_width=32, top_k=2), noise=0.1)
    assert not torch.equal(noisy.W_enc[0], noisy.W_enc[2])


def test_upcycling_a_mismatched_mlp_is_refused_in_one_line():
    dense = layers.DenseMLP(16, 64)
    with pytest.raises(BadInputError, match="d_model=16 but the MoE layer has d_model=24") as info:
        layers.upcycle(dense, layers.MoEXMLP(24, expert_width=32))
    assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="expert_width=48 does not divide the dense hidden size 64"):
        layers.upcycle(dense, layers.MoEXMLP(16, expert_width=48))


def test_top_k_above_the_expert_count_is_refused_in_one_line():
    with pytest.raises(OptionError, match="top_k=9 must be between 1 and n_experts=8") as info:
        layers.MoEXMLP(16, n_experts=8, expert_width=4, top_k=9)
    assert "\n" not in str(info.value)
    with pytest.raises(OptionError, match="not divisible by top_k=3"):
        layers.equal_active_width(64, 3)
