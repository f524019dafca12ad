"""Read one module's output from a chess model by name, with a forward hook."""

from __future__ import annotations

import torch

from featureforge import OptionError


def resolve(model: torch.nn.Module, hook: str) -> torch.nn.Module:
    """The module named ``hook``; one-line error listing valid names otherwise."""
    modules = dict(model.named_modules())
    if hook not in modules:
        names = [n for n in modules if n.endswith((".hidden", ".out")) or n.count(".") == 1 and n.startswith("blocks.")]
        raise OptionError(f"hook {hook!r} is not a module of this model; use one of {', '.join(names)}")
    return modules[hook]


class _Recorder:
    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module, args, output) -> None:
        self.value = output.detach()


@torch.no_grad()
def capture(model: torch.nn.Module, ids: torch.Tensor, hook: str) -> torch.Tensor:
    """``[b, t, width]`` output of module ``hook`` when ``model`` reads ``ids``, as fp32 on the CPU.

    ``ids`` go to the model's device (a GPU-trained model is probed where it lives).
    """
    recorder = _Recorder()
    handle = resolve(model, hook).register_forward_hook(recorder)
    try:
        model(ids.to(next(model.parameters()).device))
    finally:
        handle.remove()
    assert recorder.value is not None
    return recorder.value.float().cpu()
