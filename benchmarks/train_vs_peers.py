"""TopK SAE training, featureforge vs EleutherAI sparsify, SAELens and dictionary_learning, on the same rows.

    .venv/bin/python benchmarks/train_vs_peers.py            # full: 2M-row store, 1M training rows (~25 min, 2 cores)
    .venv/bin/python benchmarks/train_vs_peers.py --quick    # smoke: 200k-row store, 100k training rows

Prints one JSON object on stdout (progress goes to stderr); also written to ``--out`` with the run's
provenance (default: a new file under benchmarks/results/train_vs_peers/).

Data: featureforge's ``synthetic`` source (d_in 384, 2048 true features, mean_active 20, the
source's other defaults) cached once into a Zarr store (two writer processes), reused by later
runs. The eval rows are the store's held-out chunks (the last ~65536 rows), never trained on.
Peers read the same rows from a float32 ``.npy`` exported from the store (training rows first,
then the eval rows); featureforge reads the store. Every system trains in the same units: rows
times the store's normalisation scale (mean squared norm = d_in), which featureforge applies itself.

Systems (each a subprocess running a worker in benchmarks/peers/ with its own venv's python):
featureforge ``topk`` fp32 and bf16 through ``featureforge.train`` (project .venv); sparsify's
SparseCoder with its trainer's step, SAELens' TopKTrainingSAE + SAETrainer (both .peers/venv);
dictionary_learning's TopKTrainer (.peers/venv-dl; $PEERS_VENV/$PEERS_VENV_DL override). All: d_sae 4096, k 32, batch 4096, Adam,
fp32 (unless bf16), 2 torch threads, the library's default lr, 10% warm-up. Install the peers with
``bash benchmarks/install_peers.sh``; a system whose venv is missing or whose worker fails is
reported with the reason and the others still run.

Metrics, all on the eval rows in one place (featureforge.evaluation): FVU = Σ‖x−x̂‖²/Σ‖x−x̄‖²,
L0, dead latents (never active on the eval rows), MMCS (mean over true features of the best
cosine with a decoder row), MCC (Hungarian matching of true vs learned code correlations),
recovered@0.9; peak RSS of the worker process (ru_maxrss, whole process incl. imports and eval);
rows/s over training steps only (data generation excluded, the first steps excluded as warm-up;
for peers the step excludes reading the batch, featureforge's windows include its reader).
The matmul FLOP bound is the rows/s of [4096,384]@[384,4096] alone at 2 threads, fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import provenance
import timing

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(__file__).resolve().parent / "peers"
SYSTEMS = ("featureforge-fp32", "featureforge-bf16", "sparsify", "saelens", "dictionary_learning")
SOURCE_OPTIONS = {"d_in": 384, "n_features": 2048, "mean_active": 20.0, "seed": 0}


def log(msg: str) -> None:
    print(f"[train_vs_peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def matmul_bound(threads: int, batch: int, d_in: int, d_sae: int, repeats: int = 15) -> dict:
    """Rows/s if the encoder forward matmul [batch,d_in]@[d_in,d_sae] were a step's only cost."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        times = timing.matmul_seconds(batch, d_in, d_sae, dt, repeats, warmup=3)
        best, med = min(times), float(np.median(times))
        out[name] = {"matmul_s_best": best, "matmul_s_median": med, "gflops_best": 2 * batch * d_in * d_sae / best / 1e9,
                     "rows_per_s_bound": batch / best, "rows_per_s_bound_median": batch / med}
    return out


# -- data -------------------------------------------------------------------------------------------
def ensure_store(path: Path, rows: int) -> tuple[object, float | None]:
    """The synthetic store at ``path`` (cached with two writer processes unless already complete)."""
    import featureforge
    from featureforge.store import finalize

    if path.exists():
        try:
            store = featureforge.open_store(str(path))
            same = store.source.get("name") == "synthetic" and all(store.source.get("options", {}).get(k) == v for k, v in SOURCE_OPTIONS.items())
            if store.complete and same and store.rows == rows:
                log(f"reusing store {path} ({store.rows} rows)")
                return store, None
            log(f"store {path} differs or is incomplete (rows={store.rows}, complete={store.complete}); it is completed/rewritten")
        except Exception as exc:  # noqa: BLE001
            log(f"store {path} unreadable ({exc}); rewriting")
    overwrite = path.exists() and not _resumable(path, rows)
    t0 = time.perf_counter()
    code = (
        "import sys, featureforge\n"
        "featureforge.cache('synthetic', %r, store=sys.argv[1], rows=int(sys.argv[2]), rank=int(sys.argv[3]), world_size=2,"
        " overwrite=sys.argv[4] == '1', progress=False)\n" % (SOURCE_OPTIONS,)
    )
    log(f"caching {rows} synthetic rows into {path} with 2 writer processes")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-c", code, str(path), str(rows), "0", "1" if overwrite else "0"], env=env)
    time.sleep(5)  # rank 0 creates (or wipes) the store before rank 1 opens it
    second = subprocess.Popen([sys.executable, "-c", code, str(path), str(rows), "1", "0"], env=env)
    if first.wait() or second.wait():
        raise SystemExit(f"caching the store {path} failed")
    store = finalize(featureforge.open_store(str(path)))
    return store, time.perf_counter() - t0


def _resumable(path: Path, rows: int) -> bool:
    try:
        import featureforge

        store = featureforge.open_store(str(path))
        return store.source.get("options", {}) and all(store.source["options"].get(k) == v for k, v in SOURCE_OPTIONS.items()) and store.rows_allocated == rows
    except Exception:  # noqa: BLE001
        return False


def export_npy(store, path: Path, train_rows: int, eval_start: int, eval_stop: int) -> None:
    """float32 .npy: rows [0, train_rows) then the eval rows [eval_start, eval_stop)."""
    n = train_rows + (eval_stop - eval_start)
    meta = path.with_suffix(".json")
    want = {"store": store.url, "rows": store.rows, "train_rows": train_rows, "eval": [eval_start, eval_stop]}
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == want:
        log(f"reusing {path}")
        return
    log(f"exporting {n} rows to {path}")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, store.d_in))
    block = 65536
    for s in range(0, train_rows, block):
        e = min(train_rows, s + block)
        arr[s:e] = store.read(s, e)
    for s in range(eval_start, eval_stop, block):
        e = min(eval_stop, s + block)
        arr[train_rows + s - eval_start : train_rows + e - eval_start] = store.read(s, e)
    arr.flush()
    del arr
    meta.write_text(json.dumps(want))


# -- workers ----------------------------------------------------------------------------------------
def run_worker(name: str, python: str, script: str, argv: list[str], out: Path, timeout: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    logf = out / "worker.log"
    if not Path(python).exists():
        return {"status": "not run", "reason": f"{python} does not exist; run `bash benchmarks/install_peers.sh`"}
    cmd = [python, str(PEERS_DIR / script), *argv, "--out", str(out)]
    log(f"{name}: {' '.join(cmd[:2])} ... (log: {logf})")
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=argv[argv.index("--threads") + 1], TQDM_DISABLE="1")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    (out / "result.json").unlink(missing_ok=True)
    with open(logf, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(PEERS_DIR))
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            timed_out = True
    wall = time.perf_counter() - t0
    # ru_maxrss of a child is useless here (Linux carries the parent's high-water RSS across
    # vfork+exec); the worker reports its own VmHWM instead.
    info = {"wall_s": wall, "loadavg_before": load0, "loadavg_after": os.getloadavg()}
    result_file = out / "result.json"
    if rc != 0 or not result_file.exists():
        tail = logf.read_text(errors="replace").strip().splitlines()[-15:]
        reason = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {rc}"
        return {"status": "failed", "reason": reason, "log_tail": tail, **info}
    (out / "run.json").write_text(json.dumps(info))
    result = json.loads(result_file.read_text())
    return {"status": "ok", **info, **result, "peak_rss_mib": result["worker_peak_rss_mib"]}


def reuse_worker(out: Path) -> dict | None:
    """An earlier run's outputs in ``out`` (``--reuse``), or None."""
    if not (out / "result.json").exists() or not (out / "eval_xhat.npy").exists():
        return None
    result = json.loads((out / "result.json").read_text())
    info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {"loadavg_before": [None], "loadavg_after": [None]}
    return {"status": "ok", **info, **result, "peak_rss_mib": result["worker_peak_rss_mib"], "reused": True}


# -- evaluation -------------------------------------------------------------------------------------
def evaluate(out: Path, x: np.ndarray, true_codes: np.ndarray | None, features: np.ndarray | None, d_sae: int) -> dict:
    """FVU, L0 and dead latents on the eval rows; with ground truth (synthetic stores) also MMCS, MCC, recovered@0.9."""
    import torch

    from featureforge import evaluation as ev

    idx = np.load(out / "eval_indices.npy")
    val = np.load(out / "eval_values.npy")
    xhat = np.load(out / "eval_xhat.npy", mmap_mode="r")
    decoder = np.load(out / "decoder.npy")
    active = val != 0
    counts = np.bincount(idx[active].ravel(), minlength=d_sae)
    stats = ev.CodeMatchStats(true_codes.shape[1], d_sae) if true_codes is not None else None
    sse, n = 0.0, x.shape[0]
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        codes = torch.zeros(e - s, d_sae)
        codes.scatter_(1, torch.from_numpy(idx[s:e].astype(np.int64)), torch.from_numpy(val[s:e]))
        if stats is not None:
            stats.update(torch.from_numpy(true_codes[s:e]), codes)
        sse += float(((x[s:e].astype(np.float64) - np.asarray(xhat[s:e], dtype=np.float64)) ** 2).sum())
    xd = x.astype(np.float64)
    sst = float(((xd - xd.mean(0)) ** 2).sum())
    base = {"fvu": sse / sst, "l0": float(active.sum(1).mean()), "dead": int((counts == 0).sum()),
            "dead_fraction": float((counts == 0).mean()), "eval_rows": n}
    if stats is None:
        return base | {"mmcs": None, "mcc": None, "recovered_best_0.9": None}
    match, corr = stats.match()
    present = (stats.fire_t > 0).cpu().numpy()
    matched = np.array([float(corr[i, j]) if j >= 0 else 0.0 for i, j in enumerate(match)])
    return base | {
        "mmcs": ev.metrics.mmcs(features, decoder),
        "mcc": float(matched[present].mean()),
        "recovered_best_0.9": ev.metrics.recovered_fraction(features, decoder, threshold=0.9),
    }


def speed_target(settings: dict | None) -> float:
    """Issue #14: >= 2x sparsify's rows/s at the main shape (d_in 384, 4096 latents, k 32), >= 1.5x elsewhere."""
    s = settings or {}
    main = (s.get("d_in", 384), s.get("d_sae", 4096), s.get("k", 32)) == (384, 4096, 32)
    return 2.0 if main else 1.5


def compute_targets(summary: dict, bound: dict, machine: dict, settings: dict | None = None) -> dict:
    """The issues' targets, from the summary rows and the matmul bound."""
    def ratio(a, b):
        ra, rb = summary.get(a, {}), summary.get(b, {})
        return ra["rows_per_s"] / rb["rows_per_s"] if ra.get("rows_per_s") and rb.get("rows_per_s") else None

    targets = {}
    ff32, ff16, sp = summary.get("featureforge-fp32", {}), summary.get("featureforge-bf16", {}), summary.get("sparsify", {})
    if ff32.get("rows_per_s") and sp.get("rows_per_s"):
        r = ratio("featureforge-fp32", "sparsify")
        ok_q = ff32["fvu"] <= sp["fvu"] and (ff32["mmcs"] is None or ff32["mmcs"] >= sp["mmcs"])
        goal = speed_target(settings)
        targets["fp32_vs_sparsify"] = {"speedup": r, "target": goal, "quality_equal_or_better": ok_q, "met": r >= goal and ok_q}
    if ff16.get("rows_per_s") and sp.get("rows_per_s"):
        r = ratio("featureforge-bf16", "sparsify")
        ref = ff32 if ff32.get("fvu") is not None else sp
        ok_q = ff16["fvu"] <= ref["fvu"] * 1.02 and (ff16["mmcs"] is None or ff16["mmcs"] >= ref["mmcs"] - 0.005)
        targets["bf16_vs_sparsify"] = {"speedup": r, "target": 2.5, "no_quality_loss_vs_fp32": ok_q, "met": r >= 2.5 and ok_q,
                                       "quality_rule": "bf16 FVU <= 1.02 x fp32 FVU and MMCS >= fp32 MMCS - 0.005"}
    for name, key in (("featureforge-fp32", "fp32"), ("featureforge-bf16", "bf16")):
        if summary.get(name, {}).get("rows_per_s"):
            frac = summary[name]["rows_per_s"] / bound[key]["rows_per_s_bound"]
            targets[f"{key}_fraction_of_matmul_bound"] = {
                "fraction": frac, "target": 0.9, "met": frac >= 0.9, "bound_rows_per_s": bound[key]["rows_per_s_bound"],
                "fraction_of_median": summary[name]["rows_per_s"] / bound[key]["rows_per_s_bound_median"]}
    if summary.get("featureforge-bf16", {}).get("rows_per_s") and not machine["avx512_bf16"] and not machine["amx_bf16"]:
        targets["bf16_fraction_of_fp32_matmul_bound"] = {
            "fraction": summary["featureforge-bf16"]["rows_per_s"] / bound["fp32"]["rows_per_s_bound"], "target": 0.9,
            "met": summary["featureforge-bf16"]["rows_per_s"] / bound["fp32"]["rows_per_s_bound"] >= 0.9,
            "bound_rows_per_s": bound["fp32"]["rows_per_s_bound"],
            "why": "this CPU has no AVX512-BF16/AMX: featureforge-sae keeps the encoder matmul in fp32 under bf16 autocast"}
    return targets


# -- report -----------------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown_table(report: dict) -> str:
    """The summary and targets as Markdown (``--markdown RESULTS.json`` prints them)."""
    bound = report["matmul_bound"]["fp32"]["rows_per_s_bound"]  # None after --no-bound
    summary = report["summary"]
    sp = summary.get("sparsify", {}).get("rows_per_s")
    lines = ["| system | train rows | rows/s | rows/s incl. reading | vs sparsify | of fp32 matmul bound | peak RSS MiB | FVU | L0 | dead | MMCS | MCC | recovered@0.9 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        if r["status"] != "ok":
            lines.append(f"| {name} | – | {r['status']}: {r.get('reason')} |" + " |" * 10)
            continue
        vs = f"{r['rows_per_s'] / sp:.2f}x" if sp else "–"
        of_bound = f"{r['rows_per_s'] / bound:.2f}" if bound else "–"
        lines.append(
            f"| {name} | {r['train_rows']:,} | {r['rows_per_s']:,.0f} | {r['rows_per_s_incl_read']:,.0f} | {vs} | {of_bound} | "
            f"{r['peak_rss_mib']:,.0f} | {r['fvu']:.4f} | {r['l0']:.1f} | {r['dead']} | {_num(r['mmcs'])} | {_num(r['mcc'])} | {_num(r['recovered_best_0.9'])} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for key, t in (report.get("targets") or {}).items():
        if "speedup" in t:
            q = t.get("quality_equal_or_better", t.get("no_quality_loss_vs_fp32"))
            lines.append(f"| {key}: >= {t['target']}x sparsify rows/s, quality {'>= sparsify' if 'fp32' in key else 'as fp32'} | "
                         f"{t['speedup']:.2f}x, quality {'ok' if q else 'worse'} | {'yes' if t['met'] else 'no'} |")
        elif "fraction" in t:
            extra = f", {t['fraction_of_median']:.2f} of the median-time bound" if "fraction_of_median" in t else ""
            lines.append(f"| {key}: >= {t['target']} | {t['fraction']:.2f} of {t['bound_rows_per_s']:,.0f} rows/s{extra} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 200k-row store, 100k training rows, 16384 eval rows")
    p.add_argument("--store-rows", type=int)
    p.add_argument("--train-rows", type=int)
    p.add_argument("--eval-rows", type=int, help="held-out rows requested (whole chunks at the store's end)")
    p.add_argument("--peer-train-rows", action="append", default=[], metavar="SYSTEM=ROWS",
                   help="train one system on fewer rows (a very slow peer); its rows/s stays comparable")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from: {', '.join(SYSTEMS)}")
    p.add_argument("--store", help="store path (default: stores/train-vs-peers[-quick].zarr)")
    p.add_argument("--workdir", help="outputs (default: /tmp/featureforge-train-vs-peers[-quick])")
    p.add_argument("--peers-venv", default=os.environ.get("PEERS_VENV", str(ROOT / ".peers" / "venv")),
                   help="SAELens/sparsify venv (default $PEERS_VENV, else .peers/venv: %(default)s)")
    p.add_argument("--peers-venv-dl", default=os.environ.get("PEERS_VENV_DL", str(ROOT / ".peers" / "venv-dl")),
                   help="dictionary_learning venv (default $PEERS_VENV_DL, else .peers/venv-dl: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-in", type=int, default=SOURCE_OPTIONS["d_in"], help="width of the synthetic store (the small shape: 128)")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--ff-option", action="append", default=[], metavar="KEY=VALUE", help="extra featureforge topk option")
    p.add_argument("--saelens-arg", action="append", default=[], metavar="ARG",
                   help="extra argument of the SAELens worker, e.g. --saelens-arg=--schedule=constant (see peers/worker_saelens.py)")
    p.add_argument("--ff-size-option", default="d_dict", help="featureforge topk option naming the dictionary width")
    p.add_argument("--profile-steps", type=int, default=0, help="also profile featureforge fp32 for this many steps (WORKDIR/profile-fp32/profile.txt)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    p.add_argument("--reuse", action="store_true", help="reuse each system's outputs already in WORKDIR (re-evaluate without retraining)")
    p.add_argument("--shape", metavar="D_IN/D_SAE/K",
                   help="synthetic shape: d_in, dictionary width and k (n_features = D_SAE/2, mean_active = 5K/8); "
                        "the default store and workdir get a -dD_IN-D_SAE-kK suffix")
    p.add_argument("--peer-lrs", metavar="LR,LR,...",
                   help="train sparsify and SAELens once per learning rate (named SYSTEM@lr=LR); featureforge keeps its default")
    p.add_argument("--no-bound", action="store_true", help="skip the matmul FLOP bound (quality-only runs)")
    p.add_argument("--real-store", metavar="PATH",
                   help="train on an existing store of real activations (e.g. `featureforge cache --source hf`) instead of "
                        "the synthetic one: no ground truth, so MMCS/MCC/recovered are not reported; --workdir is required")
    p.add_argument("--markdown", metavar="RESULTS_JSON", help="only print the Markdown table of an earlier run's results file")
    provenance.add_out_argument(p, "train_vs_peers")
    args = p.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return

    quick = args.quick
    shape_suffix = ""
    if args.shape:
        d_in, args.d_sae, args.k = (int(v) for v in args.shape.split("/"))
        SOURCE_OPTIONS.update(d_in=d_in, n_features=args.d_sae // 2, mean_active=5 * args.k / 8)
        shape_suffix = f"-d{d_in}-{args.d_sae}-k{args.k}"
    store_rows = args.store_rows or (200_000 if quick else 2_000_000)
    train_rows = args.train_rows or (100_000 if quick else 1_000_000)
    eval_request = args.eval_rows or (16_384 if quick else 65_536)
    suffix = ("-quick" if quick else "") + shape_suffix
    if not args.shape and args.d_in != SOURCE_OPTIONS["d_in"]:
        SOURCE_OPTIONS["d_in"] = args.d_in  # same 2048 true features
        suffix += f"-d{args.d_in}"
    store_path = Path(args.store or ROOT / "stores" / f"train-vs-peers{suffix}.zarr")
    work = Path(args.workdir or f"/tmp/featureforge-train-vs-peers{suffix}")
    work.mkdir(parents=True, exist_ok=True)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = {s.split("@")[0] for s in systems} - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    per_system_rows = {}
    for item in args.peer_train_rows:
        key, _, value = item.partition("=")
        per_system_rows[key] = int(value)

    import torch

    torch.set_num_threads(args.threads)
    machine = provenance.machine()
    source = provenance.source_state()
    if args.reuse:
        source["note"] = "recorded when re-evaluating (--reuse); reused workers may have trained on an earlier tree"
    log(f"machine: {machine['cpu']}, {machine['cpus_visible']} cpus, avx512_bf16={machine['avx512_bf16']}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r}, load {machine['load_average']}")

    from featureforge.store import split_chunks

    if args.real_store:
        import featureforge

        if not args.workdir:
            p.error("--real-store needs --workdir (outputs of different stores must not mix)")
        store_path = Path(args.real_store).resolve()  # workers run in benchmarks/peers
        store, cache_s = featureforge.open_store(str(store_path)), None
        if not store.complete:
            p.error(f"{store_path} is not a complete store; finish it with `featureforge cache ... --resume`")
    else:
        store, cache_s = ensure_store(store_path, store_rows)
    train_chunks, held = split_chunks(store, eval_request)
    eval_start = held[0].index * store.rows_per_chunk
    eval_stop = eval_start + sum(c.rows for c in held)
    assert eval_stop == store.rows, "held-out chunks must be the store's last rows"
    max_train = max([train_rows, *per_system_rows.values()])
    if max_train > eval_start:
        raise SystemExit(f"{max_train} training rows exceed the {eval_start} rows before the eval rows; cache more rows")
    npy = work / "acts.npy"
    export_npy(store, npy, max_train, eval_start, eval_stop)
    scale = float(store.normalisation()["scale"])

    if args.no_bound:
        bound = {"fp32": {"rows_per_s_bound": None}, "bf16": {"rows_per_s_bound": None}}
    else:
        log("measuring the matmul FLOP bound")
        bound = matmul_bound(args.threads, args.batch_size, store.d_in, args.d_sae)
    if not args.no_bound:
        log(f"bound fp32 {bound['fp32']['rows_per_s_bound']:.0f} rows/s, bf16 {bound['bf16']['rows_per_s_bound']:.0f} rows/s")

    common = ["--data", str(npy), "--eval-start", str(max_train), "--eval-rows", str(eval_stop - eval_start), "--scale", repr(scale),
              "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    ff_extra = ["--store", str(store_path), "--holdout-rows", str(eval_request), "--size-option", args.ff_size_option]
    for opt in args.ff_option:
        ff_extra += ["-o", opt]
    venv = ROOT / ".venv" / "bin" / "python"
    ff_python = str(venv) if venv.exists() else sys.executable
    plan = {
        "featureforge-fp32": (ff_python, "worker_featureforge.py", ff_extra + ["--dtype", "float32"]),
        "featureforge-bf16": (ff_python, "worker_featureforge.py", ff_extra + ["--dtype", "bfloat16"]),
        "sparsify": (f"{args.peers_venv}/bin/python", "worker_sparsify.py", []),
        "saelens": (f"{args.peers_venv}/bin/python", "worker_saelens.py", list(args.saelens_arg)),
        "dictionary_learning": (f"{args.peers_venv_dl}/bin/python", "worker_dictionary_learning.py", []),
    }
    if args.peer_lrs:
        lrs = [v.strip() for v in args.peer_lrs.split(",") if v.strip()]
        systems = [f"{s}@lr={lr}" if s in ("sparsify", "saelens") else s for s in systems for lr in (lrs if s in ("sparsify", "saelens") else [None])]
    results: dict[str, dict] = {}
    for name in systems:
        system, _, lr = name.partition("@lr=")
        python, script, extra = plan[system]
        extra = extra + (["--lr", lr] if lr else [])
        rows = per_system_rows.get(system, train_rows)
        if args.reuse and (old := reuse_worker(work / name)) is not None:
            log(f"{name}: reusing the outputs in {work / name}")
            results[name] = old
            continue
        results[name] = run_worker(name, python, script, common + ["--train-rows", str(rows)] + extra, work / name, args.timeout)
        r = results[name]
        log(f"{name}: {r['status']}" + (f" {r.get('timing', {}).get('rows_per_s', 0):.0f} rows/s, peak RSS {r['peak_rss_mib']:.0f} MiB"
                                         if r["status"] == "ok" else f" ({r.get('reason')})"))
    profile = None
    if args.profile_steps and args.reuse and (work / "profile-fp32" / "profile.txt").exists():
        profile = str(work / "profile-fp32" / "profile.txt")
    elif args.profile_steps:
        r = run_worker("featureforge-fp32 profile", ff_python, "worker_featureforge.py",
                       common + ["--train-rows", str(train_rows), "--profile-steps", str(args.profile_steps)] + ff_extra,
                       work / "profile-fp32", args.timeout)
        profile = str(work / "profile-fp32" / "profile.txt") if (work / "profile-fp32" / "profile.txt").exists() else r.get("log_tail")

    bound_before = bound_after = bound
    if not args.no_bound:
        log("measuring the matmul FLOP bound again")
        bound_after = matmul_bound(args.threads, args.batch_size, store.d_in, args.d_sae)
        bound = {key: max(bound_before[key], bound_after[key], key=lambda b: b["rows_per_s_bound"]) for key in bound_before}
        log(f"bound fp32 {bound_after['fp32']['rows_per_s_bound']:.0f} rows/s, bf16 {bound_after['bf16']['rows_per_s_bound']:.0f} rows/s; "
            f"using the faster of the two measurements")
    log("evaluating")
    x = np.load(npy, mmap_mode="r")[max_train:] * np.float32(scale)
    x = np.ascontiguousarray(x, dtype=np.float32)
    from featureforge.api import make_source

    if args.real_store:
        true_codes = features = None
    else:
        synthetic = make_source("synthetic", dict(store.source.get("options") or SOURCE_OPTIONS))
        true_codes = synthetic.codes(eval_start, eval_stop)
        features = store.ground_truth()["features"]
    for name, r in results.items():
        if r["status"] != "ok":
            continue
        t = time.perf_counter()
        r["eval"] = evaluate(work / name, x, true_codes, features, args.d_sae)
        log(f"{name}: {r['eval']} ({time.perf_counter() - t:.0f} s)")

    summary = {}
    for name, r in results.items():
        row = {"status": r["status"]}
        if r["status"] == "ok":
            row.update({
                "rows_per_s": r["timing"]["rows_per_s"],
                "rows_per_s_incl_read": r["timing"].get("rows_per_s_incl_read"),
                "rows_per_s_median_step": r["timing"].get("rows_per_s_median_step"),
                "loadavg_during": [r["loadavg_before"][0], r["loadavg_after"][0]],
                "train_rows": r["settings"]["train_rows"],
                "lr": r["settings"].get("lr"),
                "peak_rss_mib": round(r["peak_rss_mib"], 1),
                **{k: r["eval"][k] for k in ("fvu", "l0", "dead", "mmcs", "mcc", "recovered_best_0.9")},
                "versions": r.get("versions"),
            })
        else:
            row["reason"] = r.get("reason")
        summary[name] = row

    settings = {"d_in": store.d_in, "d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "threads": args.threads, "optimizer": "Adam"}
    targets = {} if args.no_bound else compute_targets(summary, bound, machine, settings)
    best = {}  # each system's lowest-FVU run over --peer-lrs
    for name, row in summary.items():
        system = name.partition("@lr=")[0]
        if row.get("fvu") is not None and (system not in best or row["fvu"] < summary[best[system]]["fvu"]):
            best[system] = name
    machine["loadavg_end"] = os.getloadavg()
    report = {
        "benchmark": "train_vs_peers",
        "mode": "quick" if quick else "full",
        "machine": machine,
        "featureforge_source": source,
        "data": {"source": store.source.get("name") if args.real_store else "synthetic",
                 "options": store.source.get("options") if args.real_store else SOURCE_OPTIONS, "store": str(store_path), "store_rows": store.rows,
                 "cache_s": cache_s, "eval_rows": [eval_start, eval_stop], "train_rows": train_rows, "scale": scale,
                 "npy": str(npy)},
        "settings": settings,
        "matmul_bound": bound,
        "matmul_bound_measurements": {"before_workers": bound_before, "after_workers": bound_after},
        "summary": summary,
        "best_lr_run": best,
        "targets": targets,
        "profile": profile,
        "details": results,
        "parent_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    provenance.emit(report, provenance.out_path(args.out, "train_vs_peers"))


if __name__ == "__main__":
    main()
