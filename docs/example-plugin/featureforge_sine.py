"""featureforge-sine: an example featureforge plugin.

It adds an activation source ``sine`` (every dimension is a sine wave of its own frequency and
phase, so row ``t`` can be computed without computing any other row) and a command
``featureforge sine-peek`` that prints a few of its rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import click
import numpy as np

import featureforge
from featureforge import ActivationSource, OptionError


@dataclasses.dataclass
class SineOptions:
    d_in: int = 16
    """Width of each activation row: one wave per dimension."""
    period: float = 1000.0
    """Rows in one cycle of the slowest wave; the fastest is d_in times faster."""
    waveform: Literal["sine", "square"] = "sine"
    """Shape of every wave."""
    n_rows: int | None = None
    """Rows the source holds; leave unset for an endless source (then cache with --rows N)."""
    seed: int = 0
    """Seed of the phases."""


class SineSource(ActivationSource):
    name = "sine"
    description = "Sine (or square) waves of different frequencies, one per dimension"
    Options = SineOptions

    def __post_init__(self) -> None:
        if self.options.d_in <= 0:
            raise OptionError(f"sine: d_in must be positive, got {self.options.d_in}; pass e.g. -o d_in=16")
        if self.options.period <= 0:
            raise OptionError(f"sine: period must be positive, got {self.options.period}")
        rng = np.random.default_rng(self.options.seed)
        self._phases = rng.uniform(0.0, 2 * np.pi, size=self.options.d_in)
        self._frequencies = np.arange(1, self.options.d_in + 1) / self.options.period

    @property
    def d_in(self) -> int:
        return self.options.d_in

    @property
    def n_rows(self) -> int | None:
        return self.options.n_rows

    def provenance(self) -> dict[str, Any]:
        return {"generator": "featureforge-sine", "seed": self.options.seed}

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        t = np.arange(start, stop, dtype=np.float64)[:, None]
        waves = np.sin(2 * np.pi * self._frequencies * t + self._phases)
        if self.options.waveform == "square":
            waves = np.sign(waves)
        return {"acts": waves.astype(np.float32)}


@featureforge.hookimpl
def featureforge_register_sources(register):
    register(SineSource)


@featureforge.hookimpl
def featureforge_register_commands(cli):
    @cli.command(name="sine-peek")
    @click.option("--rows", default=3, show_default=True, help="How many rows to print.")
    @click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Source option; repeatable.")
    def sine_peek(rows: int, options: tuple[str, ...]) -> None:
        """Print the first rows of the sine source."""
        source = SineSource(list(options))
        for t, row in enumerate(source.rows(0, rows)["acts"]):
            click.echo(f"{t}: " + " ".join(f"{value:+.3f}" for value in row))
