"""Expert steering on the MoE layers themselves: both routers, weighting through the hidden hook."""

from __future__ import annotations

import pytest
import torch

from featureforge import BadInputError
from featureforge.sites import HookSite
from featureforge_moex import layers
from featureforge_moex.steering import expert_weighting, switched


@pytest.mark.parametrize("cls", [layers.MoEXMLP, layers.SwitchMLP])
def test_switched_experts_route_and_weighting_scales_the_output(cls):
    torch.manual_seed(0)
    layer = cls(16, n_experts=6, expert_width=8, top_k=2)
    x = torch.randn(40, 16)
    with switched(layer, on=[5], off=[0, 1]):
        idx = layer.route(x).indices
        moved = layer(x)
    assert bool((idx == 5).any(-1).all()) and not bool(((idx == 0) | (idx == 1)).any())
    site = HookSite.find(layer, "hidden")
    with site.attached(lambda h: None):
        plain = layer(x)
    assert not torch.allclose(moved, plain)
    with site.attached(expert_weighting(layer, {j: 0.0 for j in range(6)})):
        assert torch.allclose(layer(x), layer.b_dec.expand(40, -1)), "every expert weighted 0 leaves the output bias"
    with site.attached(expert_weighting(layer, {2: 2.0})):
        doubled = layer(x)
    assert not torch.allclose(doubled, plain)
    with pytest.raises(BadInputError, match="switched on but the layer routes only"):
        with switched(layer, on=[1, 2, 3]):
            pass
    with pytest.raises(BadInputError, match="needs an MoE layer"):
        expert_weighting(layers.DenseMLP(16, 32), {0: 1.0})
