"""The learned parts of a Plug & Play Generative Network at a size a CPU trains in minutes.

Nguyen, Clune, Bengio, Dosovitskiy & Yosinski, "Plug & Play Generative Networks: Conditional
Iterative Generation of Images in Latent Space" (arXiv 1612.00005). Sampling happens in the space
of a feature layer ``h`` of the condition network (the paper uses fc6 of CaffeNet); two learned
parts make that space usable:

- a generator ``G: h -> x`` trained to invert the encoder ``E`` (the condition network's layers up
  to ``h``), with a pixel loss ``||G(h) - x||²``, a feature-matching loss ``||E(G(h)) - h||²`` (the
  paper matches features of a comparator network; here the condition network is its own
  comparator) and, if its weight is non-zero, an adversarial loss from a small discriminator, as
  in the paper's generator (from Dosovitskiy & Brox 2016);
- a denoising autoencoder ``R`` on ``h``: trained to undo Gaussian noise of width ``sigma``, its
  residual estimates the score, ``∂log p(h)/∂h ≈ (R(h) - h) / sigma²`` (Alain & Bengio 2014, the
  approximation PPGN-h and Joint PPGN-h use for their prior term).

The sampler that uses them is in ``ppgn_sampler.py``. Weights are saved as safetensors and the
config as JSON, never a pickle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from featureforge import BadInputError

from .vision import _capture, as_images

CONFIG = "ppgn.json"
GENERATOR = "generator.safetensors"
PRIOR = "prior.safetensors"


@dataclasses.dataclass
class PPGNSettings:
    feature_layer: str = "fc"
    """Module of the condition network whose (flattened) output is the code ``h`` (fc6 in the paper)."""
    epochs: int = 40
    """Passes over the images training the generator."""
    dae_epochs: int = 60
    """Passes over the codes training the denoising autoencoder."""
    batch: int = 64
    lr: float = 2e-3
    pixel_weight: float = 1.0
    """Weight of ``||G(h) - x||²``."""
    feature_weight: float = 0.05
    """Weight of ``||E(G(h)) - h||²`` (relative to the codes' mean square)."""
    adversarial_weight: float = 0.01
    """Weight of the generator's GAN loss (0: no discriminator is trained)."""
    dae_noise: float = 0.3
    """Noise of the DAE, in units of the codes' mean per-dimension standard deviation."""
    dae_hidden: int = 256
    """Width of the DAE's hidden layers (a bottleneck of a quarter of it sits in the middle)."""
    generator_hidden: int = 256
    seed: int = 0


class Generator(nn.Module):
    """``h [n, d_h] -> images [n, C, H, W]`` in ``[low, high]``: an MLP, then two 2x transposed convolutions."""

    def __init__(self, d_h: int, shape: tuple[int, int, int], hidden: int = 256, low: float = 0.0, high: float = 1.0):
        super().__init__()
        self.shape, self.low, self.high = tuple(shape), float(low), float(high)
        c, h, w = self.shape
        self.grid = (max(1, -(-h // 4)), max(1, -(-w // 4)))
        self.mlp = nn.Sequential(nn.Linear(d_h, hidden), nn.ReLU(), nn.Linear(hidden, 32 * self.grid[0] * self.grid[1]), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, c, 4, 2, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.up(self.mlp(h).view(len(h), 32, *self.grid))
        if x.shape[-2:] != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return self.low + (self.high - self.low) * torch.sigmoid(x)


class Prior(nn.Module):
    """Denoising autoencoder on codes, ``d_h -> hidden -> hidden/4 -> hidden -> d_h``, plus the codes' statistics.

    The buffers keep what the sampler needs to stay in the codes' range: per-dimension mean,
    standard deviation and maximum, and the global minimum (0 after a ReLU).
    """

    def __init__(self, d_h: int, hidden: int = 256, sigma: float = 1.0):
        super().__init__()
        self.sigma = float(sigma)
        self.net = nn.Sequential(nn.Linear(d_h, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 4), nn.ReLU(),
                                 nn.Linear(hidden // 4, hidden), nn.ReLU(), nn.Linear(hidden, d_h))
        for name in ("mean", "std", "max"):
            self.register_buffer(name, torch.zeros(d_h))
        self.register_buffer("min", torch.zeros(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net((h - self.mean) / self.scale())

    def scale(self) -> torch.Tensor:
        """One number: the codes' mean per-dimension standard deviation (the unit of noise and steps)."""
        return self.std.mean().clamp_min(1e-6)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """``(R(h) - h) / sigma²``, the DAE's estimate of ``∂log p(h)/∂h``."""
        return (self(h) - h) / self.sigma**2


class Discriminator(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 16, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 3, 2, 1), nn.LeakyReLU(0.2),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def encoder(model: nn.Module, layer: str):
    """``E``: images -> the flattened output of ``layer`` of ``model`` (differentiable)."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        with _capture(model, [layer]) as seen:
            model(images)
        return seen[layer].flatten(1)

    return encode


@dataclasses.dataclass
class PPGN:
    """A trained generator and prior for one condition network's feature layer."""

    generator: Generator
    prior: Prior
    feature_layer: str
    #: Training record: losses, the DAE's error on noised codes before/after, settings.
    info: dict[str, Any]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.generator(h)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.generator.state_dict().items()}, str(folder / GENERATOR))
        save_file({k: v.contiguous() for k, v in self.prior.state_dict().items()}, str(folder / PRIOR))
        g = self.generator
        config = {"format": "featureforge-ppgn", "version": 1, "feature_layer": self.feature_layer, "d_h": int(self.prior.mean.numel()),
                  "shape": list(g.shape), "low": g.low, "high": g.high, "generator_hidden": g.mlp[0].out_features,
                  "dae_hidden": self.prior.net[0].out_features, "sigma": self.prior.sigma, "info": self.info}
        (folder / CONFIG).write_text(json.dumps(config, indent=2))
        return folder


def load_ppgn(folder: str | Path) -> PPGN:
    """A PPGN saved by :meth:`PPGN.save` (config JSON + two safetensors files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise BadInputError(f"{folder} holds no {CONFIG}; train one with `featureforge facets-vision --method ppgn --ppgn {folder} ...`")
    cfg = json.loads((folder / CONFIG).read_text())
    if cfg.get("format") != "featureforge-ppgn":
        raise BadInputError(f"{folder / CONFIG} is not a featureforge PPGN config; point --ppgn at a folder this command wrote")
    generator = Generator(cfg["d_h"], tuple(cfg["shape"]), cfg["generator_hidden"], cfg["low"], cfg["high"])
    prior = Prior(cfg["d_h"], cfg["dae_hidden"], cfg["sigma"])
    generator.load_state_dict(load_file(str(folder / GENERATOR)))
    prior.load_state_dict(load_file(str(folder / PRIOR)))
    return PPGN(generator.eval(), prior.eval(), cfg["feature_layer"], cfg["info"])


def codes(model: nn.Module, images: torch.Tensor, layer: str, batch: int = 256) -> torch.Tensor:
    encode = encoder(model, layer)
    with torch.no_grad():
        return torch.cat([encode(images[i : i + batch]) for i in range(0, len(images), batch)]).float()


def dae_error(prior: Prior, h: torch.Tensor, seed: int = 1) -> tuple[float, float]:
    """(mean squared error of noised codes, of their denoised version) against the clean codes."""
    gen = torch.Generator().manual_seed(seed)
    noisy = h + prior.sigma * torch.randn(h.shape, generator=gen)
    with torch.no_grad():
        return float(((noisy - h) ** 2).mean()), float(((prior(noisy) - h) ** 2).mean())


def train_prior(h: torch.Tensor, settings: PPGNSettings) -> Prior:
    """The DAE ``R`` on codes ``h``: minimise ``||R(h + n) - h||²``, ``n ~ N(0, sigma²)``."""
    torch.manual_seed(settings.seed)
    std = h.std(0)
    sigma = settings.dae_noise * float(std.mean().clamp_min(1e-6))
    prior = Prior(h.shape[1], settings.dae_hidden, sigma)
    prior.mean.copy_(h.mean(0))
    prior.std.copy_(std)
    prior.max.copy_(h.max(0).values)
    prior.min.copy_(h.min())
    opt = torch.optim.Adam(prior.net.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.dae_epochs):
        for idx in torch.randperm(len(h), generator=gen).split(settings.batch):
            clean = h[idx]
            loss = ((prior(clean + sigma * torch.randn(clean.shape, generator=gen)) - clean) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return prior.eval()


def train_generator(model: nn.Module, images: torch.Tensor, h: torch.Tensor, layer: str, settings: PPGNSettings,
                    low: float = 0.0, high: float = 1.0) -> tuple[Generator, dict[str, float]]:
    """``G`` trained to invert ``E``: pixel + feature-matching (+ adversarial) losses, as in PPGN's generator."""
    torch.manual_seed(settings.seed)
    g = Generator(h.shape[1], tuple(images.shape[1:]), settings.generator_hidden, low, high)
    d = Discriminator(images.shape[1]) if settings.adversarial_weight > 0 else None
    opt_g = torch.optim.Adam(g.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=settings.lr, betas=(0.5, 0.999)) if d is not None else None
    encode = encoder(model, layer)
    h_power = float((h**2).mean().clamp_min(1e-8))
    gen = torch.Generator().manual_seed(settings.seed)
    last: dict[str, float] = {}
    for _ in range(settings.epochs):
        sums = {"pixel": 0.0, "feature": 0.0, "adversarial": 0.0}
        batches = torch.randperm(len(images), generator=gen).split(settings.batch)
        for idx in batches:
            x, code = images[idx], h[idx]
            fake = g(code)
            pixel = ((fake - x) ** 2).mean()
            feature = ((encode(fake) - code) ** 2).mean() / h_power
            loss = settings.pixel_weight * pixel + settings.feature_weight * feature
            adv = torch.zeros(())
            if d is not None:
                adv = F.binary_cross_entropy_with_logits(d(fake), torch.ones(len(x)))
                loss = loss + settings.adversarial_weight * adv
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            if d is not None:
                real_logit, fake_logit = d(x), d(fake.detach())
                d_loss = F.binary_cross_entropy_with_logits(real_logit, torch.ones(len(x))) + \
                    F.binary_cross_entropy_with_logits(fake_logit, torch.zeros(len(x)))
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
            for k, v in (("pixel", pixel), ("feature", feature), ("adversarial", adv)):
                sums[k] += v.item() / len(batches)
        last = sums
    model.zero_grad(set_to_none=True)  # the feature loss backpropagated through the condition network
    return g.eval(), {k: round(v, 5) for k, v in last.items()}


def train_ppgn(model: nn.Module, images: Any, settings: PPGNSettings | None = None, low: float = 0.0, high: float = 1.0) -> PPGN:
    """Train ``G`` and ``R`` for ``model``'s ``settings.feature_layer`` on ``images`` (the condition network is frozen)."""
    s = settings or PPGNSettings()
    images = as_images(images)
    was_training = model.training
    frozen = [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        h = codes(model, images, s.feature_layer)
        prior = train_prior(h, s)
        generator, losses = train_generator(model, images, h, s.feature_layer, s, low, high)
    finally:
        for p, f in zip(model.parameters(), frozen):
            p.requires_grad_(f)
        model.train(was_training)
    before, after = dae_error(prior, h)
    info = {"settings": dataclasses.asdict(s), "images": len(images), "generator_losses": losses,
            "dae_noised_mse": round(before, 5), "dae_denoised_mse": round(after, 5)}
    return PPGN(generator, prior, s.feature_layer, info)


def untrained_like(ppgn: PPGN, seed: int = 0) -> PPGN:
    """The control: the same prior with a generator left at its random initialisation."""
    g = ppgn.generator
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = Generator(ppgn.prior.mean.numel(), g.shape, g.mlp[0].out_features, g.low, g.high).eval()
    return PPGN(fresh, ppgn.prior, ppgn.feature_layer, {"control": "random-init generator"})
