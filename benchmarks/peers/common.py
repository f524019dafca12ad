"""Shared by the worker scripts of benchmarks/train_vs_peers.py; runs in any venv (numpy + torch only).

Every worker trains one TopK SAE on the same rows and writes the same outputs into ``--out``:

- ``eval_indices.npy`` int32 [n_eval, k] and ``eval_values.npy`` float32 [n_eval, k]: the active
  latents of every eval row, from the library's *own* encode (values 0 where fewer than k fire);
- ``eval_xhat.npy`` float32 [n_eval, d_in]: the library's own reconstruction of the eval rows;
- ``decoder.npy`` float32 [d_sae, d_in]: decoder directions (one row per latent);
- ``result.json``: library versions, settings, per-step timings and derived rows/s.

Inputs and outputs are in *training units*: the raw rows times ``--scale`` (the store's
normalisation, so the mean squared row norm is d_in), the units featureforge itself trains in.
Rows are read from a float32 ``.npy`` with ``readinto`` into a reused buffer (not a memmap), so a
worker's RSS holds no file-backed pages of the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

WARMUP_STEPS = 10  # featureforge: its first metrics window (log_every=10 steps)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="float32 .npy [N, d_in] (raw rows)")
    p.add_argument("--train-rows", type=int, required=True, help="train on rows [0, train_rows)")
    p.add_argument("--eval-start", type=int, required=True, help="first eval row in --data")
    p.add_argument("--eval-rows", type=int, required=True)
    p.add_argument("--scale", type=float, required=True, help="multiply rows by this (training units)")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="Adam's peak learning rate (default: the library's own default)")
    p.add_argument("--out", required=True)
    return p


def setup_torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return torch


class NpyRows:
    """Contiguous row ranges of a float32 C-order .npy, read with readinto (no mmap)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise SystemExit(f"{self.path}: expected a C-order float32 2-D array, got {dtype} {shape} fortran={fortran}")
        self.n, self.d = shape
        self.f = open(self.path, "rb", buffering=0)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        n = stop - start
        if out is None or out.shape[0] != n:
            out = np.empty((n, self.d), dtype=np.float32)
        self.f.seek(self.offset + start * self.d * 4)
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):
            r = self.f.readinto(view[got:])
            if not r:
                raise SystemExit(f"{self.path}: short read at row {start}")
            got += r
        return out


def train_batches(rows: NpyRows, train_rows: int, batch: int, scale: float, torch):
    """Yield (step, x) over rows [0, train_rows) in order, x a scaled float32 tensor; drops the last partial batch."""
    buf = np.empty((batch, rows.d), dtype=np.float32)
    for step, start in enumerate(range(0, train_rows - batch + 1, batch)):
        rows.read(start, start + batch, buf)
        x = torch.from_numpy(buf.copy())
        x.mul_(scale)
        yield step, x


class StepTimer:
    """Wall time of each training step and, apart, of reading its batch."""

    def __init__(self):
        self.step_s: list[float] = []
        self.read_s: list[float] = []

    def rows_per_s(self, batch: int, warmup: int = WARMUP_STEPS) -> dict:
        w = warmup if len(self.step_s) > warmup else 0
        steps, reads = self.step_s[w:], self.read_s[w:]
        total = sum(steps)
        return {
            "steps": len(self.step_s),
            "warmup_steps_excluded": w,
            "step_s_median": float(np.median(steps)) if steps else None,
            "rows_per_s": len(steps) * batch / total if total > 0 else None,
            "rows_per_s_incl_read": len(steps) * batch / (total + sum(reads)) if total > 0 else None,
            "rows_per_s_median_step": batch / float(np.median(steps)) if steps else None,
            "train_wall_s": sum(self.step_s) + sum(self.read_s),
        }

    def timed_batches(self, rows: "NpyRows", train_rows: int, batch: int, scale: float, torch):
        """Yield (step, x) like train_batches, timing the reads."""
        it = train_batches(rows, train_rows, batch, scale, torch)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.read_s.append(time.perf_counter() - t)
            yield item


def write_eval(out: Path, rows: NpyRows, args, encode_decode, decoder, torch, batch: int = 4096) -> None:
    """Run the library's own encode/decode over the eval rows; save indices, values, x̂ and the decoder.

    ``encode_decode(x) -> (values [b, k'], indices [b, k'], x_hat [b, d])``; k' may exceed k for
    dense codes (only the k largest |values| are kept then, which loses nothing for a TopK SAE).
    """
    n, k = args.eval_rows, args.k
    idx = np.zeros((n, k), dtype=np.int32)
    val = np.zeros((n, k), dtype=np.float32)
    with open(out / "eval_xhat.npy", "wb") as fx:  # written batch by batch: no [n, d] array in memory, no mmap
        np.lib.format.write_array_header_1_0(fx, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, rows.d)})
        with torch.no_grad():
            for s in range(0, n, batch):
                e = min(n, s + batch)
                x = torch.from_numpy(rows.read(args.eval_start + s, args.eval_start + e)).mul_(args.scale)
                v, i, xh = encode_decode(x)
                v, i = v.float(), i.long()
                if v.shape[1] > k:
                    top = v.abs().topk(k, dim=1)
                    v, i = v.gather(1, top.indices), i.gather(1, top.indices)
                val[s:e, : v.shape[1]] = v.numpy()
                idx[s:e, : i.shape[1]] = i.numpy().astype(np.int32)
                fx.write(np.ascontiguousarray(xh.float().numpy()).tobytes())
    np.save(out / "eval_indices.npy", idx)
    np.save(out / "eval_values.npy", val)
    np.save(out / "decoder.npy", decoder.detach().float().cpu().numpy())


def finish(out: Path, result: dict) -> None:
    result.setdefault("python", sys.version.split()[0])
    result.setdefault("platform", platform.platform())
    result["worker_peak_rss_mib"] = peak_rss_mib()
    result["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE")
    (out / "result.json").write_text(json.dumps(result, indent=2))


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM of its own address space.

    Not getrusage's ru_maxrss: Linux carries the parent's high-water RSS into a child across
    fork/vfork + exec, so a child of a big parent reports the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions(*names: str) -> dict:
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def now() -> float:
    return time.perf_counter()
