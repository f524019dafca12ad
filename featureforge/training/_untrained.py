"""Run folders of dictionaries with nothing to learn (``DictionaryTrainer.trains = False``, e.g. ``identity``).

``featureforge train --trainer identity`` goes through here instead of the loop: the dictionary is
built, its run folder written complete at once. The hold-out split is recorded as training would
have chosen it, so ``evaluate`` and ``compare`` read the same held-out rows as for a dictionary
trained on that store.
"""

from __future__ import annotations

from pathlib import Path

from ..plugins import get_registry
from ..roles import DictionaryTrainer
from ..run import STATUS_COMPLETE, RunConfig, prepare_out_dir, store_identity
from ..store import ActivationStore, split_chunks
from ._settings import TrainConfig


def write_untrained(name: str, trainer: DictionaryTrainer, store: ActivationStore, out: Path, cfg: TrainConfig,
                    overwrite: bool) -> list[Path]:
    """Build ``trainer``'s dictionary for ``store`` and write its run folder, status complete."""
    import torch

    prepare_out_dir(out, overwrite=overwrite, resumable=False)
    _, held = split_chunks(store, cfg.holdout_rows)
    scale = float(store.normalisation().get("scale", 1.0))
    torch.manual_seed(cfg.seed)
    dictionary = trainer.build(store.d_in)
    dictionary.input_scale.fill_(scale)
    reg = get_registry().registration("trainer", name)
    config = RunConfig(
        trainer=name,
        trainer_distribution=reg.distribution,
        trainer_version=reg.version,
        options=trainer.options_dict(),
        d_in=store.d_in,
        d_dict=dictionary.d_dict,
        normalisation={"scale": scale, "applied": False},
        store=store_identity(store),
        holdout={"chunks": [c.index for c in held], "rows": sum(c.rows for c in held)},
        status=STATUS_COMPLETE,
        training_result={"steps": 0, "rows": 0},
    )
    dictionary.save(out, config)
    return [out]
