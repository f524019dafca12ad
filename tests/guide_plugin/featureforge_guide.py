"""featureforge-guide: a plugin written from docs/plugins.md alone (it imports only the public API).

- source ``guide-waves``: rows mixing ``d_in`` fixed directions with rectified sine codes, any
  row computable on its own (random access);
- trainer ``guide-tied``: a tied ReLU dictionary with an L1 penalty;
- evaluator ``mean-code``: the mean code over the held-out rows, with a bar plot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

import featureforge
from featureforge import OptionError


# -- source ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class WavesOptions:
    d_in: int = 16
    """Width of each row."""
    n_features: int = 32
    """Directions mixed into the rows."""
    seed: int = 0
    """Seed of the directions and phases."""


class WavesSource(featureforge.ActivationSource):
    name = "guide-waves"
    description = "Rectified sine codes mixing fixed random directions (random access)"
    Options = WavesOptions

    def __post_init__(self) -> None:
        o = self.options
        if o.d_in <= 0 or o.n_features <= 0:
            raise OptionError(f"guide-waves: d_in and n_features must be positive, got {o.d_in} and {o.n_features}")
        rng = np.random.default_rng(o.seed)
        directions = rng.normal(size=(o.n_features, o.d_in))
        self._directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        self._rates = rng.uniform(0.01, 0.5, size=o.n_features)
        self._phases = rng.uniform(0, 2 * np.pi, size=o.n_features)

    @property
    def d_in(self) -> int:
        return self.options.d_in

    @property
    def n_rows(self) -> int | None:
        return None

    def provenance(self) -> dict[str, Any]:
        return {"generator": "featureforge-guide", "seed": self.options.seed}

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        t = np.arange(start, stop, dtype=np.float64)[:, None]
        codes = np.maximum(np.sin(self._rates * t + self._phases), 0.0) ** 8  # mostly near zero
        return {"acts": (codes @ self._directions).astype(np.float32)}


# -- trainer --------------------------------------------------------------------------------------
@dataclasses.dataclass
class TiedOptions:
    d_dict: int = 64
    """Latents."""
    l1: float = 1e-3
    """Weight of the L1 penalty on the codes."""


def _tied_dictionary(d_in: int, d_dict: int) -> Any:
    import torch

    class TiedDictionary(featureforge.Dictionary):
        def __init__(self) -> None:
            super().__init__(d_in, d_dict)
            self.W = torch.nn.Parameter(torch.randn(d_dict, d_in) / d_in**0.5)
            self.b = torch.nn.Parameter(torch.zeros(d_dict))

        def encode_normalised(self, x: Any) -> Any:
            return torch.relu(x @ self.W.T + self.b)

        def decode_normalised(self, codes: Any) -> Any:
            return codes @ self.W

        @property
        def decoder_directions(self) -> Any:
            return self.W

    return TiedDictionary()


class TiedTrainer(featureforge.DictionaryTrainer):
    name = "guide-tied"
    description = "Tied ReLU dictionary with an L1 penalty"
    Options = TiedOptions

    def __post_init__(self) -> None:
        if self.options.d_dict <= 0 or self.options.l1 < 0:
            raise OptionError("guide-tied: d_dict must be positive and l1 non-negative")

    def build(self, d_in: int) -> Any:
        return _tied_dictionary(d_in, self.options.d_dict)

    def initialize(self, dictionary: Any, sample: Any) -> None:
        # sample: float32 [n, d_in] training rows in training units; start the rows at data directions.
        n = min(len(sample), dictionary.d_dict)
        rows = sample[:n] / sample[:n].norm(dim=1, keepdim=True).clamp_min(1e-6)
        dictionary.W.data[:n] = rows / dictionary.d_dict**0.5

    def learning_rate(self, dictionary: Any, steps: int | None = None) -> float:
        return 3e-3

    def loss(self, dictionary: Any, batch: dict[str, Any], state: Any) -> featureforge.StepOutput:
        x = batch["acts"]
        codes = dictionary.encode_normalised(x)
        x_hat = dictionary.decode_normalised(codes)
        loss = (x - x_hat).pow(2).sum(-1).mean() + self.options.l1 * codes.abs().sum(-1).mean()
        active = (codes > 0).any(0)
        return featureforge.StepOutput(loss=loss, x_hat=x_hat, active=active, l0=(codes > 0).float().sum(-1).mean())


# -- evaluator ------------------------------------------------------------------------------------
@dataclasses.dataclass
class MeanCodeOptions:
    batch_size: int = 4096
    """Held-out rows encoded at once."""


class MeanCodeEvaluator(featureforge.Evaluator):
    name = "mean-code"
    description = "Mean code of each latent over the held-out rows, with a bar plot"
    Options = MeanCodeOptions

    def __post_init__(self) -> None:
        if self.options.batch_size <= 0:
            raise OptionError(f"mean-code: batch_size must be positive, got {self.options.batch_size}")

    def evaluate(self, dictionary: Any, context: featureforge.EvaluationContext) -> featureforge.EvaluationResult:
        import torch

        from featureforge.evaluation.metrics import fvu
        from featureforge.plots import new_figure, save_figure

        total, rows, xs, x_hats = torch.zeros(dictionary.d_dict), 0, [], []
        with torch.no_grad():
            for _, acts in context.eval_rows.blocks(self.options.batch_size):
                x = torch.from_numpy(acts).to(context.device)
                x_hat, codes = dictionary(x)
                total += codes.sum(0).cpu()
                rows += len(acts)
                xs.append(x.cpu())
                x_hats.append(x_hat.cpu())
        mean = total / max(rows, 1)
        fig = new_figure()
        fig.add_subplot().bar(range(len(mean)), mean.numpy())
        path = save_figure(fig, context.out_dir / "mean_code.png")
        metrics = {"rows": rows, "mean_code": float(mean.mean()), "fvu": fvu(torch.cat(xs), torch.cat(x_hats))}
        return featureforge.EvaluationResult(metrics, {"mean_code": str(path)})


@featureforge.hookimpl
def featureforge_register_sources(register):
    register(WavesSource)


@featureforge.hookimpl
def featureforge_register_trainers(register):
    register(TiedTrainer)


@featureforge.hookimpl
def featureforge_register_evaluators(register):
    register(MeanCodeEvaluator)
