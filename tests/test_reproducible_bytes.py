"""A built-in source's rows are a function of (options, row index) alone (issue #12).

The same synthetic store is cached by fresh interpreters with 1 and 2 BLAS/OpenMP threads, with 1
and 2 writers (``--rank``/``--world-size``), with two chunk sizes and (on AVX2 x86 machines) with
OpenBLAS's Haswell kernels forced, and the stored bytes are compared: chunk files byte for byte
where the layout is the same, decoded arrays where the chunk size differs. ``OPENBLAS_CORETYPE``
set by the machine is passed on, never removed (older OpenBLAS builds need it).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featureforge as ff

ROWS = 10_000
QUADRATIC = {"d_in": 64, "n_features": 512, "downstream": True, "important_features": 32, "seed": 3}
GATED = dict(QUADRATIC, readout="gated")


def cache_in_subprocess(store: Path, options: dict, *, threads: int, rows_per_chunk: int, world_size: int = 1,
                        coretype: str | None = None) -> None:
    """``featureforge cache`` as a user runs it, once per writer, in interpreters with ``threads`` threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATUREFORGE_")}
    env.update(FEATUREFORGE_PROGRESS="0", FEATUREFORGE_PLUGINS="", OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    for rank in range(world_size):
        args = [sys.executable, "-m", "featureforge.cli", "cache", "--source", "synthetic", "--store", str(store),
                "--rows", str(ROWS), "--rows-per-chunk", str(rows_per_chunk), "--rank", str(rank),
                "--world-size", str(world_size), *[f"-o{k}={v}" for k, v in options.items()]]
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every data chunk's bytes (rows, gradients, chunk statistics, ground truth) by relative path."""
    out = {}
    for column in ("acts", "grads", "chunk_stats", "ground_truth"):
        for path in sorted((store / column).rglob("*")):
            if path.is_file() and path.name != "zarr.json":
                out[str(path.relative_to(store))] = path.read_bytes()
    return out


def avx2_x86() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


#: OpenBLAS's Haswell kernels where they run (AVX2 x86): with them, on the old code, the thread
#: count and the rows per BLAS call changed the last bits of many rows.
HASWELL = "Haswell" if avx2_x86() else None


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One writer, two threads, the machine's own BLAS kernel, 4096-row chunks."""
    store = tmp_path_factory.mktemp("bytes") / "baseline.zarr"
    cache_in_subprocess(store, QUADRATIC, threads=2, rows_per_chunk=4096)
    return store


VARIANTS = {
    "one thread": dict(threads=1),
    "haswell kernel": dict(threads=2, coretype=HASWELL),
    "haswell kernel, one thread": dict(threads=1, coretype=HASWELL),
    "two writers of one thread each, as torchrun starts them": dict(threads=1, world_size=2, coretype=HASWELL),
}


@pytest.mark.parametrize("how", list(VARIANTS))
def test_store_bytes_equal_whatever_the_threads_writers_or_blas_kernel(baseline, tmp_path, how):
    store = tmp_path / "other.zarr"
    cache_in_subprocess(store, QUADRATIC, rows_per_chunk=4096, **VARIANTS[how])
    expected, got = chunk_files(baseline), chunk_files(store)
    assert sorted(got) == sorted(expected) and len(expected) > 6
    differ = [name for name in expected if got[name] != expected[name]]
    assert not differ, f"chunks differ in bytes ({how}): {differ}"


def test_store_rows_equal_whatever_the_chunk_size(baseline, tmp_path):
    store = tmp_path / "small-chunks.zarr"
    cache_in_subprocess(store, QUADRATIC, threads=1, rows_per_chunk=1000, coretype=HASWELL)
    a, b = ff.open_store(baseline), ff.open_store(store)
    for column in ("acts", "grads"):
        left, right = a.read(0, ROWS, column), b.read(0, ROWS, column)
        assert left.dtype == right.dtype == np.float32
        assert left.tobytes() == right.tobytes(), f"{column} differ between 4096- and 1000-row chunks"


def test_gated_readout_bytes_equal_across_threads_writers_and_chunk_sizes(tmp_path):
    here = ff.cache("synthetic", GATED, store=str(tmp_path / "here.zarr"), rows=ROWS, rows_per_chunk=4096, progress=False)
    other = tmp_path / "other.zarr"
    cache_in_subprocess(other, GATED, threads=1, rows_per_chunk=1500, world_size=2, coretype=HASWELL)
    for column in ("acts", "grads"):
        assert here.read(0, ROWS, column).tobytes() == ff.open_store(other).read(0, ROWS, column).tobytes(), column


@pytest.mark.parametrize("options", [QUADRATIC, GATED], ids=["quadratic", "gated"])
def test_any_row_range_gives_the_same_bytes_with_gradients(options):
    whole = ff.make_source("synthetic", options).rows(0, 9000)
    for start, stop in [(0, 1), (4095, 4097), (17, 5000), (8999, 9000)]:
        part = ff.make_source("synthetic", options).rows(start, stop)
        for column in ("acts", "grads"):
            assert part[column].tobytes() == whole[column][start:stop].tobytes(), (column, start, stop)


def test_array_source_store_bytes_equal_whatever_the_writers_or_chunk_size(tmp_path):
    values = np.random.default_rng(0).standard_normal((5000, 24)).astype(np.float64)  # widened to float32 on read
    np.save(tmp_path / "acts.npy", values)
    options = {"path": str(tmp_path / "acts.npy")}
    one = ff.cache("array", options, store=str(tmp_path / "one.zarr"), rows_per_chunk=1024, progress=False)
    for rank in (0, 1):
        two = ff.cache("array", options, store=str(tmp_path / "two.zarr"), rows_per_chunk=1024, rank=rank, world_size=2, progress=False)
    small = ff.cache("array", options, store=str(tmp_path / "small.zarr"), rows_per_chunk=333, progress=False)
    assert chunk_files(tmp_path / "one.zarr") == chunk_files(tmp_path / "two.zarr")
    assert one.read(0, 5000).tobytes() == small.read(0, 5000).tobytes() == values.astype(np.float32).tobytes()
    assert ff.open_store(two.url).read(0, 5000).tobytes() == one.read(0, 5000).tobytes()
