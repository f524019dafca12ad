"""Store benchmark: cache write speed, shuffled-read speed against the sequential ceiling, and the
reading process's peak memory as the store grows. Prints one JSON object on stdout (progress on
stderr), also written to ``--out`` with the run's provenance.

    python benchmarks/store.py            # full run: 1 GiB read stores, RSS at 1/2/4/8 GiB
    python benchmarks/store.py --quick    # a couple of minutes: 0.5 GiB read stores, RSS at 0.25/0.5/1 GiB

What is measured (see docs/benchmarks.md, "Store"):

* write: ``featureforge.cache("array", path=X.npy)`` rows/s at d=768, fp32 and bf16. The source is
  the built-in ``array`` source reading a generated ``.npy`` (memory-mapped, in the page cache),
  so the figure is the store's write path plus a memcpy out of the source file; the store's bytes
  land in the page cache (no fsync), as they do for any `featureforge cache` run. Dirty pages of
  earlier steps are flushed (``os.sync``) before each timed write.
* read: one full epoch through ``store.loader(batch_size=4096)`` (the ShuffledReader) at d=384 and
  d=768, fp32 and bf16, warm page cache (a warm-up epoch first, which also checks every chunk's
  crc32c once: later epochs read chunks this process has checked and that have not changed since
  at full speed); and the same with every chunk's checksum computed again (``verifying``). Both
  next to the ceiling: reading every
  chunk file of ``acts/`` in order with ``numpy.fromfile`` (one more value summed so nothing is
  skipped). Each figure is the median of ``--repeats`` runs, interleaved; the best run is kept too,
  and rows per CPU-second of the process (all its threads), steadier on a shared machine.
* checksum cost: the same d=768 fp32 rows cached without checksums (format 1) and with them,
  read in interleaved epochs: format 1, format 2 checked once per process, format 2 checked every
  epoch.
* shuffle quality: distinct sequences per 4,096-row batch from a store of 128-row sequences
  streamed in order (1,048,576 rows, d=768 fp32 chunking, write-shuffle window and read window;
  and with no write shuffle), against uniform sampling.
* memory: a fresh ``python`` per store size reads one full epoch; reported are its peak RSS
  (VmHWM), its RSS just before reading (after importing torch and opening the store), the
  difference, and the reader's window-buffer bytes.

Stores are made under ``--dir`` (default: a temporary folder in ``stores/``, which git ignores)
and deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import provenance

GIB = 2**30
REPO = Path(__file__).resolve().parent.parent


def log(*args: Any) -> None:
    print("[bench-store]", *args, file=sys.stderr, flush=True)


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def environment() -> dict[str, Any]:
    """The libraries the store's figures depend on and the load at the start (CPU, torch, threads: ``provenance``)."""
    import zarr

    import featureforge

    return {
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "featureforge": featureforge.__version__,
        "load_average_at_start": load_average(),
    }


# -- inputs ---------------------------------------------------------------------------------------
def make_npy(path: Path, rows: int, d: int) -> Path:
    """A float32 .npy [rows, d] of Gaussian values (a random block, shifted per block: cheap)."""
    if path.exists():
        return path
    log(f"generating {path.name}: {rows} x {d} float32 ({rows * d * 4 / GIB:.2f} GiB)")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    block = 16384
    base = np.random.default_rng(0).standard_normal((block, d), dtype=np.float32)
    for i, start in enumerate(range(0, rows, block)):
        stop = min(rows, start + block)
        np.add(base[: stop - start], np.float32(i * 1e-3), out=out[start:stop])
    out.flush()
    del out
    return path


def cache_store(npy: Path, store: Path, rows: int, dtype: str) -> tuple[Any, float]:
    import featureforge

    if store.exists():
        shutil.rmtree(store)
    os.sync()  # start clean: no dirty pages from earlier steps throttling this write
    t0 = time.perf_counter()
    opened = featureforge.cache("array", {"path": str(npy)}, store=str(store), rows=rows, dtype=dtype, progress=False)
    return opened, time.perf_counter() - t0


def store_bytes(store: Path) -> int:
    return sum(os.path.getsize(f) for f in glob.glob(str(store / "acts" / "c" / "**" / "*"), recursive=True) if os.path.isfile(f))


# -- reading --------------------------------------------------------------------------------------
def read_epoch(store: Any, epoch: int, batch_size: int, verify_all: bool = False) -> tuple[int, float, float]:
    """One epoch through the loader: rows, wall seconds, CPU seconds of this process (all threads).

    The reader checks a chunk's crc32c the first time the process reads that file (and after it
    changes); ``verify_all`` forgets earlier checks first, so every chunk's checksum is computed.
    """
    from featureforge.store import VERIFIED

    if verify_all:
        VERIFIED.__init__()
    reader = store.loader(batch_size=batch_size, seed=0)
    reader.set_epoch(epoch)
    rows = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in reader:
        rows += batch["acts"].shape[0]
    return rows, time.perf_counter() - t0, time.process_time() - c0


def read_sequential(store_path: Path) -> tuple[int, float, float]:
    """The ceiling: every chunk file of acts/ in chunk order, through numpy.fromfile."""
    files = sorted(glob.glob(str(store_path / "acts" / "c" / "*" / "*")), key=lambda p: int(Path(p).parent.name))
    total = 0.0
    nbytes = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for f in files:
        data = np.fromfile(f, dtype=np.uint8)
        total += float(data[-1])
        nbytes += data.nbytes
    return nbytes, time.perf_counter() - t0, time.process_time() - c0


def bench_read(store_path: Path, repeats: int, batch_size: int) -> dict[str, Any]:
    import featureforge

    store = featureforge.open_store(str(store_path))
    row_bytes = store.d_in * (4 if store.dtype == "float32" else 2)
    read_epoch(store, 1000, batch_size)  # warm-up: page cache, buffers
    read_sequential(store_path)
    loader, seq, loader_cpu, seq_cpu, checking, checking_cpu = [], [], [], [], [], []
    for rep in range(repeats):
        rows, dt, cpu = read_epoch(store, rep, batch_size)
        assert rows == store.rows, (rows, store.rows)
        loader.append(rows / dt)
        loader_cpu.append(rows / cpu)
        rows, dt, cpu = read_epoch(store, rep, batch_size, verify_all=True)
        checking.append(rows / dt)
        checking_cpu.append(rows / cpu)
        nbytes, dt, cpu = read_sequential(store_path)
        seq.append(nbytes / row_bytes / dt)
        seq_cpu.append(nbytes / row_bytes / cpu)
    reader = store.loader(batch_size=batch_size)
    med_l, med_s = statistics.median(loader), statistics.median(seq)
    return {
        "d": store.d_in,
        "dtype": store.dtype,
        "rows": store.rows,
        "store_gib": round(store_bytes(store_path) / GIB, 3),
        "rows_per_chunk": store.rows_per_chunk,
        "window_rows": reader.chunks_per_window * store.rows_per_chunk,
        "checksums": store.info()["checksums"],
        "loader_rows_per_s": round(med_l),
        "loader_rows_per_s_best": round(max(loader)),
        "loader_verifying_every_chunk_rows_per_s": round(statistics.median(checking)),
        "loader_verifying_every_chunk_rows_per_cpu_s": round(statistics.median(checking_cpu)),
        "sequential_fromfile_rows_per_s": round(med_s),
        "sequential_fromfile_rows_per_s_best": round(max(seq)),
        "loader_gb_per_s": round(med_l * row_bytes / 1e9, 2),
        "sequential_gb_per_s": round(med_s * row_bytes / 1e9, 2),
        "ratio": round(med_l / med_s, 3),
        "ratio_best": round(max(loader) / max(seq), 3),
        "loader_rows_per_cpu_s": round(statistics.median(loader_cpu)),
        "sequential_rows_per_cpu_s": round(statistics.median(seq_cpu)),
        "runs_loader": [round(x) for x in loader],
        "runs_loader_verifying": [round(x) for x in checking],
        "runs_sequential": [round(x) for x in seq],
        "load_average": load_average(),
    }


def bench_checksum_cost(npy: Path, workdir: Path, rows: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """The checksums' read cost at d=768 fp32: the same rows in a store without checksums (format 1)
    and with them, read in interleaved epochs: format 1, format 2 (each chunk checked once per
    process), format 2 checking every chunk every epoch."""
    import featureforge
    import featureforge.store._creation as creation

    plain, summed = workdir / "cost-v1", workdir / "cost-v2"
    original = creation.array_codecs
    creation.array_codecs = lambda checksum: {"compressors": None}
    try:
        cache_store(npy, plain, rows, "float32")
    finally:
        creation.array_codecs = original
    cache_store(npy, summed, rows, "float32")
    stores = {"v1": featureforge.open_store(str(plain)), "v2": featureforge.open_store(str(summed))}
    assert stores["v1"].info()["checksums"] is None and stores["v2"].info()["checksums"] == "crc32c"
    for store in stores.values():
        read_epoch(store, 1000, batch_size)
    runs: dict[str, list[tuple[float, float]]] = {"no_checksums": [], "checked_once": [], "checked_every_epoch": []}
    for rep in range(repeats):
        for key, store, verify_all in (("no_checksums", stores["v1"], False), ("checked_once", stores["v2"], False), ("checked_every_epoch", stores["v2"], True)):
            n, dt, cpu = read_epoch(store, rep, batch_size, verify_all=verify_all)
            runs[key].append((n / dt, n / cpu))
    shutil.rmtree(plain)
    shutil.rmtree(summed)
    out: dict[str, Any] = {"d": 768, "dtype": "float32", "rows": rows}
    for key, values in runs.items():
        out[key] = {
            "rows_per_s": round(statistics.median(v[0] for v in values)),
            "rows_per_cpu_s": round(statistics.median(v[1] for v in values)),
            "runs": [round(v[0]) for v in values],
        }
    base = out["no_checksums"]
    for key in ("checked_once", "checked_every_epoch"):
        out[key]["vs_no_checksums"] = round(out[key]["rows_per_s"] / base["rows_per_s"], 3)
        out[key]["vs_no_checksums_per_cpu_s"] = round(out[key]["rows_per_cpu_s"] / base["rows_per_cpu_s"], 3)
    out["load_average"] = load_average()
    return out


def bench_shuffle_quality(workdir: Path, rows: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    """Distinct sequences per batch from the shuffled reader, against uniform random sampling.

    A streaming source of ``seq_len``-row sequences (rows in order, as a sequence source emits
    them) with a ``seq_ids`` column naming each row's sequence, cached with the chunking of a d=768
    fp32 store (4,096-row chunks) and the write-side shuffle window of d=768 fp32, and once with no
    write shuffle (``write_shuffle_rows=0``, the store layout before issue #14); read with the
    default reader window. Uniform sampling draws ``batch_size`` rows of the same store without
    replacement (issue #14, "Batches as mixed as random sampling").
    """
    import featureforge

    class Sequences(featureforge.ActivationSource):
        name = "bench-sequences"

        @property
        def d_in(self) -> int:
            return 8

        @property
        def n_rows(self) -> int:
            return rows

        @property
        def columns(self) -> dict[str, str]:
            return {"seq_ids": "int64"}

        def stream(self, rank: int = 0, world_size: int = 1, skip_rows: int = 0, max_rows: int | None = None):  # noqa: ANN201
            for start in range(skip_rows, rows, 8192):
                idx = np.arange(start, min(rows, start + 8192))
                yield {"acts": np.repeat(idx[:, None], 8, axis=1).astype(np.float32), "seq_ids": idx // seq_len}

    rpc = featureforge.store.default_rows_per_chunk(768, "float32")
    window = featureforge.store.default_write_shuffle_rows(768, "float32")
    rng = np.random.default_rng(0)
    uniform = statistics.mean(len(np.unique(rng.choice(rows, batch_size, replace=False) // seq_len)) for _ in range(50))
    out: dict[str, Any] = {"rows": rows, "sequence_rows": seq_len, "rows_per_chunk": rpc, "batch_size": batch_size,
                           "uniform_sampling_distinct_sequences_per_batch": round(uniform, 1), "target_ratio": 0.9}
    for label, shuffle in (("no_write_shuffle", 0), ("default", window)):
        path = workdir / f"sequences-{label}"
        store = featureforge.cache(Sequences(), store=str(path), rows_per_chunk=rpc, write_shuffle_rows=shuffle, progress=False)
        reader = store.loader(batch_size=batch_size, columns=("acts", "seq_ids"), seed=0, drop_last=True)
        got = statistics.mean(len(np.unique(batch["seq_ids"].numpy())) for batch in reader)
        out[label] = {"write_shuffle_rows": shuffle, "read_window_rows": reader.chunks_per_window * rpc,
                      "distinct_sequences_per_batch": round(got, 1), "ratio": round(got / uniform, 3)}
        shutil.rmtree(path)
    out["distinct_sequences_per_batch"] = out["default"]["distinct_sequences_per_batch"]
    out["ratio"] = out["default"]["ratio"]
    return out


# -- memory ---------------------------------------------------------------------------------------
def rss_child(store_path: str, batch_size: int) -> None:
    """Runs in a fresh process: read one epoch, report peak RSS against the RSS before reading."""
    import featureforge

    store = featureforge.open_store(store_path)
    reader = store.loader(batch_size=batch_size, seed=0)
    baseline = proc_status("VmRSS")
    rows = 0
    t0 = time.perf_counter()
    for batch in reader:
        rows += batch["acts"].shape[0]
    dt = time.perf_counter() - t0
    peak = proc_status("VmHWM")
    print(
        json.dumps(
            {
                "rows": rows,
                "baseline_rss_mib": round(baseline / 2**20, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
                "peak_minus_baseline_mib": round((peak - baseline) / 2**20, 1),
                "buffer_mib": round(reader.buffer_bytes / 2**20, 1),
                "batch_mib": round(batch_size * store.d_in * (4 if store.dtype == "float32" else 2) / 2**20, 1),
                "rows_per_s": round(rows / dt),
            }
        )
    )


def bench_rss(npy: Path, workdir: Path, sizes_gib: list[float], d: int, batch_size: int) -> list[dict[str, Any]]:
    out = []
    for size in sizes_gib:
        rows = int(size * GIB / (d * 4))
        store = workdir / f"rss-{size}g"
        log(f"memory: writing a {size} GiB store ({rows} rows, d={d} fp32)")
        _, write_s = cache_store(npy, store, rows, "float32")
        log(f"memory: reading one epoch of it in a fresh process")
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(store), "--batch-size", str(batch_size)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child failed: {proc.stderr[-2000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append({"store_gib": round(store_bytes(store) / GIB, 3), "write_rows_per_s": round(rows / write_s), **child})
        shutil.rmtree(store)
    return out


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small stores (0.5 GiB reads, 0.25/0.5/1 GiB memory sweep)")
    parser.add_argument("--read-gib", type=float, default=None, help="size of each fp32 read store (bf16 ones are half)")
    parser.add_argument("--rss-gib", type=str, default=None, help="comma list of store sizes for the memory sweep")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per read figure (median reported)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dir", type=str, default=None, help="where to make stores (default: a temp folder under stores/)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and .npy files")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--checksum-cost-only", action="store_true", help="only the with/without-checksums read comparison")
    parser.add_argument("--rss-child", type=str, default=None, help=argparse.SUPPRESS)
    provenance.add_out_argument(parser, "store")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.batch_size)
        return
    os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")

    read_gib = args.read_gib or (0.5 if args.quick else 1.0)
    rss_sizes = [float(x) for x in (args.rss_gib or ("0.25,0.5,1" if args.quick else "1,2,4,8")).split(",")]
    repeats = args.repeats or (3 if args.quick else 5)
    parent = Path(args.dir) if args.dir else (REPO / "stores" if (REPO / "stores").is_dir() else Path(tempfile.gettempdir()))
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-", dir=parent))
    log(f"working in {workdir}")
    out = provenance.out_path(args.out, "store")
    result: dict[str, Any] = {
        "benchmark": "store",
        "environment": environment(),
        "settings": {"read_store_gib_fp32": read_gib, "rss_store_gib": rss_sizes, "repeats": repeats, "batch_size": args.batch_size},
        "write_source": "array (.npy float32, memory-mapped, warm page cache)",
    }
    try:
        # inputs: one .npy per width, big enough for every store made from it
        npys = {}
        for d in (384, 768):
            need = read_gib if d == 384 else max([read_gib] + ([] if args.skip_rss else rss_sizes))
            npys[d] = make_npy(workdir / f"acts-{d}.npy", int(need * GIB / (d * 4)), d)
        for d in (384, 768):  # the generated files are in the page cache; read them once to be sure
            np.load(npys[d], mmap_mode="r")[:: 4096].sum()

        # the first cache() call loads every plugin (seconds): do it before anything is timed
        import featureforge

        featureforge.cache("synthetic", {"d_in": 8}, store=str(workdir / "warm-up"), rows=256, progress=False)
        shutil.rmtree(workdir / "warm-up")

        writes, reads = [], []
        for d in () if args.checksum_cost_only else (768, 384):
            for dtype in ("float32", "bfloat16"):
                rows = int(read_gib * GIB / (d * 4))
                store_path = workdir / f"read-{d}-{dtype}"
                log(f"write: cache d={d} {dtype} ({rows} rows)")
                opened, dt = cache_store(npys[d], store_path, rows, dtype)
                if d == 768:
                    writes.append(
                        {
                            "d": d,
                            "dtype": dtype,
                            "rows": rows,
                            "rows_per_chunk": opened.rows_per_chunk,
                            "seconds": round(dt, 2),
                            "rows_per_s": round(rows / dt),
                            "store_mb_per_s": round(store_bytes(store_path) / dt / 1e6),
                            "load_average": load_average(),
                        }
                    )
                    log(f"write: {writes[-1]['rows_per_s']} rows/s")
                log(f"read: d={d} {dtype}, {repeats} epochs + sequential reads")
                reads.append(bench_read(store_path, repeats, args.batch_size))
                log(f"read: loader {reads[-1]['loader_rows_per_s']} rows/s, sequential {reads[-1]['sequential_fromfile_rows_per_s']} rows/s, ratio {reads[-1]['ratio']}")
                shutil.rmtree(store_path)
        result["write"] = writes
        result["read"] = reads
        log("checksum cost: d=768 fp32 with and without checksums, interleaved epochs")
        result["checksum_cost"] = bench_checksum_cost(npys[768], workdir, int(read_gib * GIB / (768 * 4)), repeats, args.batch_size)
        log(f"checksum cost: {json.dumps({k: v['rows_per_s'] for k, v in result['checksum_cost'].items() if isinstance(v, dict)})}")

        log("shuffle quality: distinct sequences per batch against uniform sampling")
        result["shuffle_quality"] = bench_shuffle_quality(workdir, 1 << 20, 128, args.batch_size)
        log(f"shuffle quality: {json.dumps(result['shuffle_quality'])}")
        if args.checksum_cost_only:
            provenance.emit(result, out)
            return
        if not args.skip_rss:
            result["memory"] = bench_rss(npys[768], workdir, rss_sizes, 768, args.batch_size)

        main_read = next(r for r in reads if r["d"] == 768 and r["dtype"] == "float32")
        targets = {
            "read_d768_fp32_ge_1.2M_rows_per_s": main_read["loader_rows_per_s"] >= 1_200_000,
            "read_d768_fp32_verifying_every_chunk_ge_1.2M_rows_per_s": main_read["loader_verifying_every_chunk_rows_per_s"] >= 1_200_000,
            "read_d768_fp32_ge_half_sequential": main_read["ratio"] >= 0.5,
        }
        if "memory" in result:
            deltas = [m["peak_minus_baseline_mib"] for m in result["memory"]]
            targets["rss_le_buffer_plus_300MiB"] = all(m["peak_minus_baseline_mib"] <= m["buffer_mib"] + 300 for m in result["memory"])
            targets["rss_spread_mib"] = round(max(deltas) - min(deltas), 1)
        result["targets"] = targets
        result["environment"]["load_average_at_end"] = load_average()
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    provenance.emit(result, out)


if __name__ == "__main__":
    main()
