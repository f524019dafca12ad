"""Read one module's output from a chess model by name, at a ``featureforge.sites`` hook site."""

from __future__ import annotations

import torch

from featureforge.sites import HookSite


def site(model: torch.nn.Module, hook: str) -> HookSite:
    """The output of module ``hook``; one-line error naming the nearest names and the model's hook points."""
    points = [n for n in dict(model.named_modules()) if n.endswith((".hidden", ".out")) or n.count(".") == 1 and n.startswith("blocks.")]
    return HookSite.find(model, hook, of="this chess model", hint=f"; hook points are {', '.join(points)}")


@torch.no_grad()
def capture(model: torch.nn.Module, ids: torch.Tensor, hook: str) -> torch.Tensor:
    """``[b, t, width]`` output of module ``hook`` when ``model`` reads ``ids``, as fp32 on the CPU.

    ``ids`` go to the model's device (a GPU-trained model is probed where it lives).
    """
    seen: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        seen.append(x.detach())

    with site(model, hook).attached(keep):
        model(ids.to(next(model.parameters()).device))
    return seen[-1].float().cpu()
