"""The GPU suite: TopK training and HF caching throughput on one CUDA device, in under 8 minutes.

Prints one JSON object and writes it, with its provenance, to ``--out`` (default
``benchmarks/results/gpu_suite/<UTC time>.json``):

- ``topk.<shape>`` for d 768 / 24,576 latents / k 32 (``small``) and d 4096 / 65,536 / k 64
  (``large``), batch 4096, each in ``float32`` and ``bfloat16`` (the loop's ``dtype=bfloat16``:
  autocast, fp32 master weights):

  * ``featureforge_step``: rows/s of featureforge's ``topk`` trainer step on batches already on
    the device (loss under the loop's autocast, backward, the trainer's decoder-gradient
    projection, fused Adam, renormalisation, dead-latent bookkeeping): the kernels' ceiling;
  * ``sparsify_step``: the same for EleutherAI sparsify's ``SparseCoder`` in this process (the
    per-batch step of ``sparsify.trainer.Trainer`` with Adam and ``loss_fn=fvu``; its decoder is
    Triton's when ``triton`` imports). sparsify's ``forward`` always runs under bf16 autocast on
    CUDA, so its ``float32`` cell calls the undecorated ``forward.__wrapped__``. "sparsify not
    installed" where ``import sparsify`` gives no ``SparseCoder``;
  * ``featureforge_loop``: ``featureforge.train`` end to end on the on-disk synthetic store
    (shuffled reader, host-to-device copies, logging, the final checkpoint), sized to about
    ``loop_seconds`` at the slower of the step and reader rates; steady state = median
    ``rows_per_s`` of the metrics.jsonl windows after the first two;
  * ``reader``: rows/s the store's shuffled reader delivers to the device alone;
  * ``vs_sparsify``: featureforge step rows/s over sparsify's, per dtype.

- ``hf_cache``: stored tokens/s of ``featureforge.cache`` with the ``hf`` source over a randomly
  initialised GPT-2 small (``GPT2Config()`` defaults, BOS/EOS ids of a byte-level BPE tokenizer
  trained here on standard-library text: no download), model in float32 and bfloat16; steady
  state = (N2 - N1) / (t2 - t1) over two cache calls of N1 < N2 tokens.

Every cell has ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated``, reset before it). A
cell that fails records its one-line error and the suite goes on; ``--budget-s`` skips cells
once the suite has run that long. Without CUDA the suite refuses in one line (exit code 2);
``--fake-tiny`` runs every code path on the CPU at tiny shapes (the tests use it).

    python benchmarks/gpu_suite.py                               # on a CUDA machine
    python benchmarks/gpu_suite.py --fake-tiny --out /tmp/x.json  # the CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEATUREFORGE_PROGRESS", "0")

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "gpu_suite: no CUDA device is visible to torch; run it on a CUDA machine, or pass --fake-tiny for the CPU check of its code path"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A TopK shape and the synthetic store it trains on."""

    d_in: int
    d_dict: int
    k: int
    store_rows: int
    #: Upper bound on featureforge_loop's rows (keeps a reader-bound loop inside its budget).
    loop_max_rows: int

    def synthetic_options(self) -> dict[str, Any]:
        # Few true features keep the source's ground truth and rows cheap to make; speed does not
        # depend on them.
        return {"d_in": self.d_in, "n_features": min(8192, 2 * self.d_in), "mean_active": 16.0, "seed": 0}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and time budgets of one suite run."""

    device: str
    shapes: dict[str, Shape]
    batch_size: int
    warmup_steps: int
    step_seconds: float
    step_max_steps: int
    loop_seconds: float
    loop_min_steps: int
    reader_seconds: float
    hf_rows: tuple[int, int]
    hf_context: int
    hf_batch: int
    gpt2: dict[str, Any]
    tokenizer_vocab: int
    writers: int


CUDA = Profile(
    device="cuda",
    shapes={"small": Shape(768, 24576, 32, store_rows=131072, loop_max_rows=6_000_000),
            "large": Shape(4096, 65536, 64, store_rows=65536, loop_max_rows=1_500_000)},
    batch_size=4096, warmup_steps=5, step_seconds=5.0, step_max_steps=2000, loop_seconds=12.0, loop_min_steps=40,
    reader_seconds=3.0, hf_rows=(262_144, 1_048_576), hf_context=1024, hf_batch=32, gpt2={}, tokenizer_vocab=8192,
    writers=max(1, min(8, os.cpu_count() or 1)),
)
FAKE_TINY = Profile(
    device="cpu",
    shapes={"small": Shape(32, 128, 4, store_rows=4096, loop_max_rows=2048),
            "large": Shape(48, 192, 8, store_rows=4096, loop_max_rows=2048)},
    batch_size=256, warmup_steps=1, step_seconds=0.05, step_max_steps=3, loop_seconds=0.0, loop_min_steps=4,
    reader_seconds=0.05, hf_rows=(256, 768), hf_context=64, hf_batch=4,
    gpt2={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 512}, tokenizer_vocab=400, writers=1,
)
DTYPES = ("float32", "bfloat16")


def log(msg: str) -> None:
    print(f"[gpu_suite] {msg}", file=sys.stderr, flush=True)


# -- where and what -------------------------------------------------------------------------------
def device_info(device: str) -> dict[str, Any]:
    """torch/CUDA versions and the GPU (name, capability, memory), or the CPU in fake mode."""
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "float32_matmul_precision": torch.get_float32_matmul_precision(), "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info.update(gpu=None, capability=None, gpu_memory_gib=None, gpu_count=0, bf16_supported=None)
    return info


# -- measurement helpers ---------------------------------------------------------------------------
def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, Any]]:
    """Fills ``peak_memory_bytes`` (None off CUDA) for the block, the counter reset before it."""
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out: dict[str, Any] = {}
    try:
        yield out
    finally:
        if device == "cuda":
            torch.cuda.synchronize()
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            out["peak_memory_gib"] = round(out["peak_memory_bytes"] / 2**30, 2)
        else:
            out["peak_memory_bytes"] = None
            out["peak_memory_gib"] = None


def timed_steps(step: Callable[[int], None], prof: Profile, rows_per_step: int) -> dict[str, Any]:
    """Steady-state rate of ``step(i)``: ``warmup_steps`` untimed, then until ``step_seconds``."""
    for i in range(prof.warmup_steps):
        step(i)
    synchronize(prof.device)
    start = time.perf_counter()
    n = 0
    while n < prof.step_max_steps and (n < 3 or time.perf_counter() - start < prof.step_seconds):
        step(prof.warmup_steps + n)
        n += 1
        if n % 8 == 0:
            synchronize(prof.device)  # the time check then sees finished work, not queued work
    synchronize(prof.device)
    wall = time.perf_counter() - start
    return {"rows_per_s": round(n * rows_per_step / wall), "ms_per_step": round(1000 * wall / n, 3),
            "steps_timed": n, "warmup_steps": prof.warmup_steps}


def autocast_for(device: str, dtype: str) -> Any:
    """The loop's autocast for a compute dtype (featureforge.training: bf16 autocast, fp32 weights)."""
    import torch

    if dtype == "bfloat16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- data ------------------------------------------------------------------------------------------
def _cache_part(options: dict[str, Any], path: str, rows: int, rank: int, world: int) -> None:
    """One writer of a synthetic store (run in a worker process)."""
    import featureforge

    featureforge.cache("synthetic", options, store=path, rows=rows, rank=rank, world_size=world, progress=False)


def synthetic_store(path: Path, options: dict[str, Any], rows: int, writers: int = 1) -> tuple[Any, float]:
    """The synthetic store at ``path``, reused when complete with these options; (store, seconds spent).

    Several writers are worker processes (one thread each), each caching its own chunks.
    """
    import featureforge

    if path.exists():
        try:
            store = featureforge.open_store(str(path))
            if store.complete and store.rows == rows and {**store.source.get("options", {}), **options} == store.source.get("options"):
                return store, 0.0
        except Exception:  # noqa: BLE001 - an unreadable store is rewritten below
            pass
    t0 = time.perf_counter()
    if writers == 1:
        featureforge.cache("synthetic", options, store=str(path), rows=rows, overwrite=path.exists(), progress=False)
    else:
        if path.exists():
            import shutil

            shutil.rmtree(path)
        _parallel_cache(options, path, rows, writers)
    store = featureforge.open_store(str(path))
    if not store.complete:
        raise RuntimeError(f"synthetic store {path} is incomplete after caching ({store.rows} of {rows} rows)")
    return store, time.perf_counter() - t0


def _parallel_cache(options: dict[str, Any], path: Path, rows: int, writers: int) -> None:
    import multiprocessing

    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: "1" for k in names})  # the spawned writers start with one thread each
    try:
        with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(_cache_part, options, str(path), rows, r, writers) for r in range(writers)]:
                f.result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resident_batches(store: Any, batch_size: int, count: int, device: str) -> list[Any]:
    """``count`` batches of the store's first rows on the device, in training units (normalised)."""
    import torch

    scale = float(store.normalisation().get("scale", 1.0))
    rows = store.read(0, min(store.rows, batch_size * count))
    x = torch.from_numpy(rows).to(device) * scale
    return [b for b in x.split(batch_size) if len(b) == batch_size]


# -- TopK cells ------------------------------------------------------------------------------------
def featureforge_step_cell(shape: Shape, batches: list[Any], dtype: str, prof: Profile) -> dict[str, Any]:
    """featureforge's topk trainer step on resident batches, as the loop runs it (minus logging)."""
    import torch

    import featureforge
    from featureforge import TrainState

    trainer = featureforge.get_registry().get("trainer", "topk")({"d_dict": shape.d_dict, "k": shape.k})
    torch.manual_seed(0)
    sae = trainer.build(shape.d_in).to(prof.device)
    with torch.no_grad():
        trainer.initialize(sae, batches[0])
    params = [p for p in sae.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=float(trainer.learning_rate(sae)), fused=True)
    state = TrainState(step=0, rows_seen=0, rows_since_fired=torch.zeros(sae.d_dict, dtype=torch.long, device=prof.device),
                       dead_after=10_000_000)
    autocast = autocast_for(prof.device, dtype)
    last: dict[str, Any] = {}

    def step(i: int) -> None:
        state.step, state.rows_seen = i, i * prof.batch_size
        with autocast:
            out = trainer.loss(sae, {"acts": batches[i % len(batches)]}, state)
        out.loss.backward()
        trainer.before_step(sae, state)
        adam.step()
        trainer.after_step(sae, state)
        adam.zero_grad(set_to_none=True)
        with torch.no_grad():
            state.rows_since_fired.add_(prof.batch_size)
            state.rows_since_fired.masked_fill_(out.active, 0)
        last["loss"] = out.loss.detach()

    with peak_memory(prof.device) as mem:
        cell = timed_steps(step, prof, prof.batch_size)
    cell.update(mem, final_fvu=round(float(last["loss"]), 4), dead_after=10_000_000)
    return cell


def import_sparsify() -> Any:
    """EleutherAI sparsify's module, or None; its import-time notes go to stderr, not our JSON."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import sparsify
    except ImportError:
        return None
    return sparsify if hasattr(sparsify, "SparseCoder") else None


def sparsify_step_cell(sparsify: Any, shape: Shape, batches: list[Any], dtype: str, prof: Profile) -> dict[str, Any]:
    """sparsify's per-batch training step (``Trainer.fit`` with Adam, fvu loss, no dead latents yet)."""
    import inspect

    import torch

    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(activation="topk", num_latents=shape.d_dict, k=shape.k, normalize_decoder=True)
    torch.manual_seed(0)
    sae = SparseCoder(shape.d_in, cfg, device=prof.device, dtype=torch.float32)
    sae.b_dec.data = batches[0].mean(0)
    adam = torch.optim.Adam(sae.parameters(), lr=2e-4 / (shape.d_dict / 2**14) ** 0.5)
    # float32: the undecorated forward (the decorated one autocasts to bf16 on CUDA, always).
    forward = sae.forward if dtype == "bfloat16" else SparseCoder.forward.__wrapped__.__get__(sae)
    takes_variance = "total_variance" in inspect.signature(SparseCoder.forward).parameters
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=prof.device)
    last: dict[str, Any] = {}

    def step(i: int) -> None:
        x = batches[i % len(batches)]
        sae.set_decoder_norm_to_unit_norm()
        extra = {"total_variance": (x - x.mean(0)).pow(2).sum()} if takes_variance else {}
        out = forward(x, dead_mask=None, **extra)
        loss = out.fvu + out.auxk_loss / 32 + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.latent_indices.flatten()] = 0
        last["fvu"] = out.fvu.detach()

    with peak_memory(prof.device) as mem:
        cell = timed_steps(step, prof, prof.batch_size)
    decoder = getattr(getattr(sparsify, "utils", None), "decoder_impl", None)
    cell.update(mem, final_fvu=round(float(last["fvu"]), 4), sparsify_version=getattr(sparsify, "__version__", None),
                decoder_impl=getattr(decoder, "__name__", None),
                autocast="bf16 (SparseCoder.forward's own on CUDA)" if dtype == "bfloat16" else "none (forward.__wrapped__)")
    return cell


def reader_cell(store: Any, prof: Profile) -> dict[str, Any]:
    """Rows/s of the store's shuffled reader, each batch copied to the device."""
    rows, reader = 0, store.loader(prof.batch_size, seed=0)
    it = iter(reader)
    start = time.perf_counter()
    try:
        while rows < prof.batch_size * 3 or time.perf_counter() - start < prof.reader_seconds:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(reader)
                continue
            batch["acts"].to(prof.device, non_blocking=True).float()
            rows += len(batch["acts"])
        synchronize(prof.device)
    finally:
        it.close()
    return {"rows_per_s": round(rows / (time.perf_counter() - start)), "rows": rows}


def loop_cell(store: Any, d_dict: int, k: int, dtype: str, device: str, rows: int, batch_size: int, out: Path,
              **train_options: Any) -> dict[str, Any]:
    """``featureforge.train`` of the topk trainer; steady-state rows/s from its metrics.jsonl windows."""
    import featureforge

    steps = rows // batch_size
    log_every = max(1, steps // 10)
    start = time.perf_counter()
    featureforge.train("topk", {"d_dict": d_dict, "k": k}, store=store, out=out, overwrite=True, progress=False, rows=rows,
                       batch_size=batch_size, dtype=dtype, device=device, log_every=log_every, checkpoint_every=10**12,
                       **train_options)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [line["rows_per_s"] for line in lines]
    steady = rates[2:] if len(rates) >= 4 else rates[1:] or rates
    return {"rows_per_s": round(statistics.median(steady)), "rows_per_s_windows": [round(r) for r in rates],
            "windows_skipped": len(rates) - len(steady), "rows": steps * batch_size, "steps": steps, "log_every": log_every,
            "train_call_s": round(wall, 2), "final_train_fvu": round(lines[-1]["fvu"], 4), "run": str(out)}


def featureforge_loop_cell(store: Any, shape: Shape, dtype: str, prof: Profile, rate: float | None, work: Path) -> dict[str, Any]:
    """The loop cell sized to ``loop_seconds`` at ``rate`` rows/s (bounded), its run folder removed after."""
    import shutil

    rows = int((rate or 0) * prof.loop_seconds)
    rows = max(prof.loop_min_steps * prof.batch_size, min(rows, shape.loop_max_rows))
    rows -= rows % prof.batch_size
    out = work / f"run-{shape.d_in}-{dtype}"
    try:
        with peak_memory(prof.device) as mem:
            cell = loop_cell(store, shape.d_dict, shape.k, dtype, prof.device, rows, prof.batch_size, out,
                             holdout_rows=0, dead_after=10_000_000)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    cell.update(mem)
    cell.pop("run")
    return cell


# -- HF caching ------------------------------------------------------------------------------------
def gpt2_folder(folder: Path, prof: Profile) -> dict[str, Any]:
    """A randomly initialised GPT-2 (``GPT2Config()`` defaults unless the profile shrinks it) and a
    BPE tokenizer trained here, saved where ``-o model=FOLDER`` loads them; returns its facts."""
    import itertools

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from featureforge_hf import stdlib_documents
    from featureforge_hf.tiny import make_tokenizer

    tokenizer = make_tokenizer(itertools.islice(stdlib_documents(), 300), prof.tokenizer_vocab)
    config = GPT2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **prof.gpt2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"config": {k: getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")},
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_vocab": len(tokenizer),
            "weights": "random (GPT2LMHeadModel(GPT2Config(...)), seed 0)"}


def hf_cell(model_dir: Path, dtype: str, prof: Profile, work: Path) -> dict[str, Any]:
    """Stored tokens/s of ``featureforge.cache`` with the hf source: whole call and steady state."""
    import shutil

    import featureforge

    options = {"model": str(model_dir), "context_size": prof.hf_context, "batch_size": prof.hf_batch, "dtype": dtype,
               "device": prof.device}
    timings = []
    with peak_memory(prof.device) as mem:
        for rows in (min(prof.hf_rows[0], 4096), *prof.hf_rows):  # the first call warms up the device
            path = work / f"hf-{dtype}-{rows}.zarr"
            start = time.perf_counter()
            store = featureforge.cache("hf", options, store=str(path), rows=rows, progress=False)
            timings.append((store.rows, time.perf_counter() - start))
            hook = store.provenance.get("hook")
            shutil.rmtree(path, ignore_errors=True)
    (n1, t1), (n2, t2) = timings[1:]
    cell = {"tokens_per_s": round((n2 - n1) / (t2 - t1)) if t2 > t1 else None, "tokens_per_s_whole_call": round(n2 / t2),
            "calls": [{"tokens": n, "seconds": round(t, 2)} for n, t in timings[1:]], "hook": hook,
            "context_size": prof.hf_context, "batch_size": prof.hf_batch, "store_dtype": "float32"}
    cell.update(mem)
    return cell


# -- the suite -------------------------------------------------------------------------------------
class Suite:
    """Runs cells in order; one that fails or comes after the budget records why instead of a figure."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def cell(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            return {"status": f"skipped: the suite had run {elapsed:.0f} s, past --budget-s {self.budget_s:.0f}"}
        log(f"{name} ({elapsed:.0f} s)")
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others
            traceback.print_exc(file=sys.stderr)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return {"status": "error", "error": f"{type(exc).__name__}: {first}"}
        result.setdefault("status", "ok")
        result["cell_s"] = round(time.perf_counter() - t0, 2)
        return result


def topk_shape(suite: Suite, name: str, shape: Shape, prof: Profile, sparsify: Any, work: Path) -> dict[str, Any]:
    """Every TopK cell of one shape: store, step cells (featureforge, sparsify), reader, loop cells."""
    out: dict[str, Any] = {"shape": {"d_in": shape.d_in, "d_dict": shape.d_dict, "k": shape.k, "batch_size": prof.batch_size}}
    box: dict[str, Any] = {}

    def make_store() -> dict[str, Any]:
        box["store"], seconds = synthetic_store(work / f"synthetic-{name}.zarr", shape.synthetic_options(), shape.store_rows, prof.writers)
        return {"rows": box["store"].rows, "source": "synthetic", "options": shape.synthetic_options(),
                "writers": prof.writers, "seconds": round(seconds, 1)}

    out["store"] = suite.cell(f"{name}: synthetic store", make_store)
    if "store" not in box:
        return out
    batches = resident_batches(box["store"], prof.batch_size, 4, prof.device)
    for key in ("featureforge_step", "sparsify_step", "featureforge_loop", "vs_sparsify"):
        out[key] = {}
    for dtype in DTYPES:
        out["featureforge_step"][dtype] = suite.cell(f"{name}: featureforge step {dtype}",
                                                     lambda: featureforge_step_cell(shape, batches, dtype, prof))
        if sparsify is None:
            out["sparsify_step"][dtype] = {"status": "sparsify not installed"}
        else:
            out["sparsify_step"][dtype] = suite.cell(f"{name}: sparsify step {dtype}",
                                                     lambda: sparsify_step_cell(sparsify, shape, batches, dtype, prof))
        ff_rate = out["featureforge_step"][dtype].get("rows_per_s")
        sp_rate = out["sparsify_step"][dtype].get("rows_per_s")
        out["vs_sparsify"][dtype] = round(ff_rate / sp_rate, 3) if ff_rate and sp_rate else None
    del batches
    out["reader"] = suite.cell(f"{name}: reader", lambda: reader_cell(box["store"], prof))
    for dtype in DTYPES:
        # Sized by the slower of the step and the reader: the loop cannot beat either.
        rates = [c.get("rows_per_s") for c in (out["featureforge_step"][dtype], out["reader"])]
        rate = min((r for r in rates if r), default=None)
        out["featureforge_loop"][dtype] = suite.cell(f"{name}: featureforge loop {dtype}",
                                                     lambda: featureforge_loop_cell(box["store"], shape, dtype, prof, rate, work))
    return out


def hf_section(suite: Suite, prof: Profile, work: Path) -> dict[str, Any]:
    model_dir = work / "gpt2-random"
    out: dict[str, Any] = {"model": suite.cell("hf: random GPT-2", lambda: gpt2_folder(model_dir, prof))}
    for dtype in DTYPES:
        out[dtype] = suite.cell(f"hf: cache {dtype}", lambda: hf_cell(model_dir, dtype, prof, work)) \
            if out["model"]["status"] == "ok" else {"status": "skipped: no model"}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    provenance.add_out_argument(p, "gpu_suite")
    p.add_argument("--fake-tiny", action="store_true", help="run every code path on the CPU at tiny shapes (the tests' check)")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the cells that would start after this many seconds")
    p.add_argument("--work", type=Path, help="folder for the stores and runs (default: a temporary folder, removed after)")
    p.add_argument("--only", default="", help="comma list of sections: small, large, hf (default all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.fake_tiny and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    prof = FAKE_TINY if args.fake_tiny else CUDA
    suite = Suite(args.budget_s)
    only = set(filter(None, args.only.split(",")))
    result: dict[str, Any] = {"suite": "gpu_suite", "mode": "fake-tiny" if args.fake_tiny else "cuda",
                              "device": device_info(prof.device),
                              "settings": {"batch_size": prof.batch_size, "step_seconds": prof.step_seconds,
                                           "loop_seconds": prof.loop_seconds, "budget_s": args.budget_s}}
    sparsify = import_sparsify()
    result["sparsify"] = {"installed": sparsify is not None, "version": getattr(sparsify, "__version__", None)}
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_suite-")))
        work.mkdir(parents=True, exist_ok=True)
        result["topk"] = {name: topk_shape(suite, name, shape, prof, sparsify, work)
                          for name, shape in prof.shapes.items() if not only or name in only}
        if not only or "hf" in only:
            result["hf_cache"] = hf_section(suite, prof, work)
    result["wall_s"] = round(time.perf_counter() - suite.start, 1)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    provenance.emit(result, provenance.out_path(args.out, "gpu_suite"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
