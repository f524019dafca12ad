"""``featureforge tiny-lm``: train the small stdlib GPT-2 once, then only say where it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def add_commands(cli: Any) -> None:
    from .tiny_lm import TINY_LM_DIR

    @cli.command(name="tiny-lm")
    @click.option("--out", default=TINY_LM_DIR, show_default=True, help="Model folder (a Hugging Face folder: -o model=OUT).")
    @click.option("--minutes", type=float, default=5.0, show_default=True, help="Training time budget.")
    @click.option("--threads", type=int, default=1, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--steps", type=int, default=0, show_default=True,
                  help="Train exactly this many steps (checkpoints at the same steps for every seed); 0: until --minutes run out.")
    @click.option("--checkpoints", type=int, default=0, show_default=True,
                  help="Also save the model N times during training (OUT/checkpoints/NN-stepS), for comparing units over training.")
    @click.option("--layers", type=int, default=None, help="Transformer blocks (default 4).")
    @click.option("--d-model", type=int, default=None, help="Residual width (default 128; the MLP has 4x as many neurons).")
    @click.option("--retrain", is_flag=True, help="Train again even if OUT already holds a trained model.")
    @click.option("--json", "as_json", is_flag=True, help="Print the training report as one JSON object.")
    def tiny_lm_command(out: str, minutes: float, threads: int, seed: int, steps: int, checkpoints: int, layers: int | None, d_model: int | None, retrain: bool,
                        as_json: bool) -> None:
        """Train the small GPT-2 on standard-library text (CPU, minutes; cached after the first run)."""
        from featureforge import BadInputError

        from . import tiny_lm

        if minutes <= 0:
            raise BadInputError(f"--minutes {minutes} must be positive")
        if steps < 0:
            raise BadInputError(f"--steps {steps} must be 0 (train for --minutes) or more")
        if checkpoints < 0:
            raise BadInputError(f"--checkpoints {checkpoints} must be 0 or more")
        report = None if retrain else tiny_lm.cached_report(out)
        cached = report is not None
        if report is None:
            if (Path(out) / "config.json").exists() and not retrain:
                raise BadInputError(f"{out} holds a model that tiny-lm did not train (no {tiny_lm.REPORT}); pass another --out, or --retrain to replace it")
            report = tiny_lm.train_with_bar(out, tiny_lm.TinyLMConfig(minutes=minutes, threads=threads, seed=seed, steps=steps, checkpoints=checkpoints,
                                                                                **{k: v for k, v in (("layers", layers), ("d_model", d_model)) if v is not None}))
        if as_json:
            click.echo(json.dumps({**report, "cached": cached}, indent=2))
        else:
            state = "cached, trained earlier" if cached else "trained"
            click.echo(f"{out}: {state}; validation loss {report['val_loss']} nats; use it with featureforge cache --source hf -o model={out}")
