"""Effect of the write-side shuffle on a small MiniLM dictionary (issue #14). Prints one JSON object
(also written to ``--out``, with the run's provenance).

    python benchmarks/shuffle_minilm.py --off stores/mini/off --eval stores/mini/eval [--steps-epochs 4]

``--off``: an hf store cached with ``--write-shuffle-rows 0`` (rows in source order). The script
writes the same rows through the write-side shuffle (a streaming source that reads ``--off`` in row
order: the bytes equal those of ``featureforge cache --source hf`` with the default window), trains
the same TopK dictionary on both (same seed, steps, lr; no rows held out, so both train on exactly
the same set of rows, in a different order), and reports FVU and never-firing latents of each on
``--eval`` (another hf store, e.g. cached with ``-o seed=1``), with distinct sequences per batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import featureforge as ff

import provenance


class StoreInOrder(ff.ActivationSource):
    """Rows of an existing store, streamed in row order (what the hf source streamed to write it)."""

    name = "store-in-order"

    def __init__(self, store: ff.ActivationStore):
        super().__init__()
        self.store = store

    @property
    def d_in(self) -> int:
        return self.store.d_in

    @property
    def n_rows(self) -> int:
        return self.store.rows

    @property
    def columns(self) -> dict[str, str]:
        return {k: v for k, v in self.store.columns.items() if k != "acts"}

    def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
        for start in range(skip_rows, self.store.rows, 8192):
            stop = min(self.store.rows, start + 8192)
            yield {c: self.store.read(start, stop, c) for c in self.store.columns}


def distinct_per_batch(store: ff.ActivationStore, batch: int) -> float:
    reader = store.loader(batch_size=batch, columns=("acts", "seq_ids"), seed=0, drop_last=True)
    return float(np.mean([len(np.unique(b["seq_ids"].numpy())) for b in reader]))


@torch.no_grad()
def evaluate(run: Path, eval_store: ff.ActivationStore) -> dict[str, Any]:
    dictionary = ff.load(run)
    x = torch.from_numpy(eval_store.read(0, eval_store.rows, "acts"))
    sse, fired = 0.0, None
    for s in range(0, len(x), 4096):
        out = dictionary(x[s : s + 4096])
        sse += float(((x[s : s + 4096] - out.x_hat) ** 2).sum())
        hit = (dictionary.encode(x[s : s + 4096]) > 0).any(0)
        fired = hit if fired is None else fired | hit
    var = float(((x - x.mean(0)) ** 2).sum())
    from featureforge.run import read_metrics
    last = read_metrics(run)[-1]
    return {"eval_fvu": round(sse / var, 4), "never_fire_on_eval": int((~fired).sum()), "d_dict": int(fired.numel()),
            "train_dead_fraction_last_log": last.get("dead_fraction"), "steps": last.get("step")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--off", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--work", default="stores/mini/work")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--d-dict", type=int, default=3072)
    ap.add_argument("--seed", type=int, default=0)
    provenance.add_out_argument(ap, "shuffle_minilm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    off = ff.open_store(args.off)
    on = ff.cache(StoreInOrder(off), store=work / "on", rows_per_chunk=off.rows_per_chunk, progress=False)
    eval_store = ff.open_store(args.eval)
    result: dict[str, Any] = {"benchmark": "shuffle_minilm", "argv": sys.argv[1:], "rows": off.rows, "d_in": off.d_in,
                              "k": args.k, "d_dict": args.d_dict, "epochs": args.epochs, "batch_size": 4096, "seed": args.seed}
    seqs = off.read(0, off.rows, "seq_ids")
    rng = np.random.default_rng(0)
    result["uniform_sampling_distinct_sequences_per_batch"] = round(
        float(np.mean([len(np.unique(seqs[rng.choice(off.rows, 4096, replace=False)])) for _ in range(50)])), 1)
    for label, store in (("source_order", off), ("write_shuffled", on)):
        print(f"[shuffle-minilm] {label}", file=sys.stderr, flush=True)
        run = work / f"run-{label}"
        ff.train("topk", {"k": args.k, "d_dict": args.d_dict}, store=store.url, out=str(run), epochs=args.epochs,
                 batch_size=4096, holdout_rows=0, seed=args.seed, threads=1, progress=False)
        result[label] = {"write_shuffle_rows": store.write_shuffle_rows, "distinct_sequences_per_batch": round(distinct_per_batch(store, 4096), 1),
                         **evaluate(run, eval_store)}
    provenance.emit(result, provenance.out_path(args.out, "shuffle_minilm"))


if __name__ == "__main__":
    main()
