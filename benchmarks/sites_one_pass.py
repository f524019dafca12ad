"""Caching every block of a GPT-2 in one forward pass (``-o hook=all-blocks``) against one cache per block.

A randomly initialised 4-block ``transformers`` GPT-2 (``featureforge_hf.tiny.make_gpt2``, the same
shape family as the stdlib GPT-2 of ``featureforge tiny-lm``; random weights do not change the cost
of a forward pass) over the standard library's text. Prints one JSON object (also written to
``--out``, with the run's provenance): wall seconds of the one-pass cache of all blocks, of the four
separate caches, their ratio, and whether every site of the one-pass store equals its separate
cache byte for byte. With ``--train-rows N`` it also times training a TopK dictionary per block
(featureforge-sae's ``topk``) with ``--sites all`` (one pass over the store) against one run per
block, and checks each member's weights equal its separate run's. Each figure is the best of
``--repeats`` interleaved runs.

    .venv/bin/python benchmarks/sites_one_pass.py [--rows 16384] [--n-embd 128] [--repeats 2] [--train-rows 65536]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")

import numpy as np  # noqa: E402

import featureforge as ff  # noqa: E402
from featureforge_hf import stdlib_documents  # noqa: E402
from featureforge_hf.tiny import make_gpt2  # noqa: E402

import provenance  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=0, help="Also time training (0: caching only).")
    parser.add_argument("--d-dict", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    provenance.add_out_argument(parser, "sites_one_pass")
    args = parser.parse_args()
    out = provenance.out_path(args.out, "sites_one_pass")
    work = Path(tempfile.mkdtemp(prefix="ff-sites-bench-"))
    try:
        model = make_gpt2(work / "model", list(itertools.islice(stdlib_documents(), 400)), n_layer=args.blocks, n_embd=args.n_embd,
                          n_head=4, n_positions=args.context, vocab_size=512)
        opts = {"model": str(model), "context_size": args.context, "device": "cpu"}
        hooks = [f"transformer.h.{i}" for i in range(args.blocks)]
        one_pass, separate = [], []
        for rep in range(args.repeats):
            start = time.perf_counter()
            both = ff.cache("hf", dict(opts, hook="all-blocks"), store=work / f"all{rep}", rows=args.rows, rows_per_chunk=2048, progress=False)
            one_pass.append(time.perf_counter() - start)
            start = time.perf_counter()
            stores = [ff.cache("hf", dict(opts, hook=h), store=work / f"{h}-{rep}", rows=args.rows, rows_per_chunk=2048, progress=False) for h in hooks]
            separate.append(time.perf_counter() - start)
        same = all(np.array_equal(both.site(h).read(0, both.rows), s.read(0, s.rows)) for h, s in zip(hooks, stores))
        result = {
            "benchmark": "sites_one_pass",
            "model": f"random GPT-2, {args.blocks} blocks, n_embd {args.n_embd}, context {args.context}",
            "rows": args.rows,
            "sites": both.sites,
            "one_pass_all_blocks_s": min(one_pass),
            "separate_caches_s": min(separate),
            "speedup": min(separate) / min(one_pass),
            "runs_s": {"one_pass": one_pass, "separate": separate},
            "identical_to_separate_caches": bool(same),
        }
        if args.train_rows:
            result["training"] = _time_training(both, hooks, work, args)
        provenance.emit(result, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _time_training(store: ff.ActivationStore, hooks: list[str], work: Path, args: argparse.Namespace) -> dict:
    """``train --sites all`` against one ``train --site`` per block on the same store."""
    opts = {"k": args.k, "d_dict": args.d_dict}
    settings = {"rows": args.train_rows, "batch_size": 1024, "progress": False, "checkpoint_every": 10**12}
    together, apart = [], []
    for rep in range(args.repeats):
        start = time.perf_counter()
        runs = ff.train("topk", opts, store=store, out=work / f"train-all{rep}", sites="all", **settings)
        together.append(time.perf_counter() - start)
        start = time.perf_counter()
        alone = [ff.train("topk", opts, store=store, out=work / f"train-{h}-{rep}", site=h, **settings)[0] for h in hooks]
        apart.append(time.perf_counter() - start)
    same = all((a / "weights.safetensors").read_bytes() == (b / "weights.safetensors").read_bytes() for a, b in zip(runs, alone))
    return {"trainer": "topk", "options": opts, "rows": args.train_rows, "batch_size": 1024,
            "sites_all_s": min(together), "separate_runs_s": min(apart), "speedup": min(apart) / min(together),
            "runs_s": {"sites_all": together, "separate": apart}, "weights_identical_to_separate_runs": bool(same)}


if __name__ == "__main__":
    main()
