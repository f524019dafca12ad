"""Activation maximisation of one unit with the regularisers of Nguyen, Yosinski & Clune 2016.

Multifaceted feature visualization (arXiv 1602.03616) starts each facet's optimisation from the
mean of that facet's prototype images instead of noise, and keeps the image natural-looking with:
L2 decay (pull pixels toward the start's mean colour), blur every few steps and a total-variation
penalty (no high-frequency noise), random jitter (shifts the image each step, so no pattern
depends on exact pixel positions), centre-biased updates (gradients weighted by a centred
Gaussian whose width grows from the centre outwards over the run, so the object forms in the
middle first) and octaves (optimise a coarse change first, then finer ones).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class SynthesisSettings:
    steps: int = 20
    """Gradient steps per octave (few: the image should stay near its facet's start)."""
    lr: float = 0.005
    """Step size of the normalised gradient ascent (in pixel-range units)."""
    l2: float = 1e-3
    """Weight of the L2 penalty pulling pixels toward the start's mean colour."""
    tv: float = 1e-3
    """Weight of the total-variation penalty."""
    blur_every: int = 4
    """Blur the image with a 3x3 Gaussian every N steps (0: never)."""
    blur_sigma: float = 0.5
    """Width of that blur."""
    jitter: int = 1
    """Largest random shift in pixels applied before each step."""
    centre_bias: bool = True
    """Weight updates by a centred Gaussian that widens from a quarter of the image to all of it."""
    octaves: tuple[float, ...] = (0.5, 1.0)
    """Image scales optimised in turn (each starts from the previous one upsampled)."""
    low: float = 0.0
    """Smallest pixel value (the data's range)."""
    high: float = 1.0
    """Largest pixel value."""
    seed: int = 0


def _gaussian_kernel(sigma: float, channels: int) -> torch.Tensor:
    x = torch.arange(3, dtype=torch.float32) - 1
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).expand(channels, 1, 3, 3).contiguous()


def _centre_mask(h: int, w: int, width: float) -> torch.Tensor:
    ys = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / max(h / 2, 1)
    xs = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / max(w / 2, 1)
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-r2 / (2 * width**2))


def total_variation(img: torch.Tensor) -> torch.Tensor:
    return (img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., :, 1:] - img[..., :, :-1]).abs().mean()


def synthesise(activation: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, settings: SynthesisSettings | None = None) -> torch.Tensor:
    """An image [C, H, W] that maximises ``activation`` (images [n, C, H, W] -> [n]), from ``start``.

    Each octave optimises a change at ``scale`` × the image size, upsampled onto the image so far:
    coarse octaves move large regions, the last one fine detail, and the start's detail is kept
    (optimising a downsampled copy of the image itself would blur the prototype mean away).
    """
    s = settings or SynthesisSettings()
    gen = torch.Generator().manual_seed(s.seed)
    c, h, w = start.shape
    mean = start.mean(dim=(1, 2), keepdim=True)
    kernel = _gaussian_kernel(s.blur_sigma, c)
    base = start.clone()
    for scale in s.octaves:
        size = (max(2, round(h * scale)), max(2, round(w * scale)))
        delta = torch.zeros(c, *size)
        mask = None
        for step in range(s.steps):
            delta.requires_grad_(True)
            img = (base + F.interpolate(delta[None], size=(h, w), mode="bilinear", align_corners=False)[0]).clamp(s.low, s.high)
            shift = tuple(int(v) for v in torch.randint(-s.jitter, s.jitter + 1, (2,), generator=gen)) if s.jitter else (0, 0)
            seen = torch.roll(img, shift, dims=(1, 2))
            objective = activation(seen[None]).sum() - s.tv * total_variation(img) - s.l2 * ((img - mean) ** 2).sum()
            (grad,) = torch.autograd.grad(objective, delta)
            with torch.no_grad():
                if s.centre_bias:
                    mask = _centre_mask(*size, 0.25 + 0.75 * step / max(s.steps - 1, 1))
                    grad = grad * mask
                delta = delta.detach() + s.lr * grad / (grad.abs().mean() + 1e-8)
                if s.blur_every and (step + 1) % s.blur_every == 0:
                    delta = F.conv2d(F.pad(delta[None], (1, 1, 1, 1), mode="replicate"), kernel, groups=c)[0]
        with torch.no_grad():
            base = (base + F.interpolate(delta[None], size=(h, w), mode="bilinear", align_corners=False)[0]).clamp(s.low, s.high)
    return base
