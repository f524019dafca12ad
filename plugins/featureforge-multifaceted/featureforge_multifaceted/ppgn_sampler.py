"""The PPGN sampler: a Langevin-like chain in a generator's code space, conditioned on a unit.

Nguyen et al. 2016 (arXiv 1612.00005), the PPGN-h update (their Eq. 11 with the DAE prior):

    h ← h + ε1·(R(h) − h) + ε2·∂log p(c | G(h))/∂h + N(0, ε3²)

ε1 pulls ``h`` toward codes the DAE has seen (the prior term ``∂log p(h)/∂h`` up to σ²), ε2 follows
the condition through the generator and the condition network, and ε3 adds noise so the chain keeps
moving between modes; samples kept at intervals along one chain are its facets. The condition is a
class (``log softmax`` of a logit: the paper's ``log p(y=c|x)``), or the activation of any unit or
dictionary latent (``vision.Unit``), as in the paper's multifaceted feature visualisation where
``p(c|x)`` is replaced by a neuron's activation.

Two choices differ from the paper, for the sake of one setting working for every unit: the
condition gradient is rescaled each step to a root mean square of ``ε2 × s`` (``s`` the codes'
mean per-dimension standard deviation; the paper uses the raw gradient with ε2 = 1, tuned for
ImageNet fc6), and ε3 is in units of ``s``. As the paper does for fc6, codes are clipped to the
range seen in training (at least the minimum, at most 1.5 × each dimension's maximum).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from .ppgn import PPGN
from .vision import Unit, _capture, _unit_values


@dataclasses.dataclass
class SamplerSettings:
    steps: int = 200
    """Updates of each chain."""
    every: int = 20
    """Keep G(h) every this many steps (the first kept sample is after ``every`` steps)."""
    eps1: float = 0.3
    """Weight of the prior term R(h) − h."""
    eps2: float = 0.05
    """Size of the condition step (RMS, in units of the codes' spread s)."""
    eps3: float = 0.1
    """Standard deviation of the added noise, in units of s."""
    init: str = "random"
    """Start: 'random' (a code drawn from the codes' per-dimension Gaussian, clipped), 'mean' (the mean
    code), or the ``start`` codes passed to :func:`sample`: 'data' (``ppgn_facets`` passes codes of
    random real images) or 'top' (codes of the unit's top real images)."""
    seed: int = 0


def condition_function(model: torch.nn.Module, unit: Unit, log_softmax: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> [n] log p(c|x) of a class (``log_softmax``: over ``unit.layer``'s outputs) or the unit's activation."""

    def objective(images: torch.Tensor) -> torch.Tensor:
        with _capture(model, [unit.layer]) as seen:
            model(images)
        if log_softmax:
            _unit_values(seen[unit.layer], unit)  # checks the index
            return F.log_softmax(seen[unit.layer].flatten(1), dim=1)[:, unit.index]
        return _unit_values(seen[unit.layer], unit)

    return objective


@dataclasses.dataclass
class Chains:
    #: Float [chains, kept, C, H, W]: G(h) at the kept steps.
    samples: torch.Tensor
    #: Float [chains, kept, d_h]: the codes of those samples.
    codes: torch.Tensor
    #: Step number of each kept sample.
    steps: list[int]
    #: Float [chains, kept]: the condition's value (objective) on each kept sample.
    objective: torch.Tensor

    def flat(self) -> torch.Tensor:
        return self.samples.flatten(0, 1)


def sample(ppgn: PPGN, objective: Callable[[torch.Tensor], torch.Tensor], chains: int = 4,
           settings: SamplerSettings | None = None, start: torch.Tensor | None = None) -> Chains:
    """Run ``chains`` independent chains (one batch) and keep samples every ``settings.every`` steps.

    The condition's gradient is zero where the unit is silent (a ReLU or TopK latent that does not
    fire on G(h)); such a chain only moves under the prior and noise until it fires, so for sparse
    latents start from codes of images where it fires (``init='top'``).
    """
    s = settings or SamplerSettings()
    prior, g = ppgn.prior, ppgn.generator
    gen = torch.Generator().manual_seed(s.seed)
    scale = prior.scale()
    lo, hi = prior.min, 1.5 * prior.max.clamp_min(float(prior.min) + 1e-6)
    shape = (chains, prior.mean.numel())
    if s.init == "mean":
        h = prior.mean.expand(shape).clone()
    elif s.init == "random":
        h = prior.mean + prior.std * torch.randn(shape, generator=gen)
    elif s.init in ("data", "top") and start is not None and tuple(start.shape) == shape:
        h = start.detach().float().clone()
    else:
        raise ValueError(f"init={s.init!r} (start {None if start is None else tuple(start.shape)}): use 'random', 'mean', or 'data'/'top' with [chains, d_h] start codes")
    h = torch.maximum(torch.minimum(h, hi), lo)
    kept, kept_codes, kept_obj, steps = [], [], [], []
    for step in range(1, s.steps + 1):
        h = h.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(g(h)).sum(), h)
        with torch.no_grad():
            rms = grad.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
            h = h + s.eps1 * (prior(h) - h) + s.eps2 * scale * grad / rms + s.eps3 * scale * torch.randn(shape, generator=gen)
            h = torch.maximum(torch.minimum(h, hi), lo)
        if step % s.every == 0:
            with torch.no_grad():
                x = g(h)
                kept.append(x)
                kept_codes.append(h.clone())
                kept_obj.append(objective(x))
            steps.append(step)
    return Chains(torch.stack(kept, 1), torch.stack(kept_codes, 1), steps, torch.stack(kept_obj, 1))
