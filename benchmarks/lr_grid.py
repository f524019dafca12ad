"""TopK quality against the learning rate and schedule on synthetic stores: the evidence for the default rate.

    .venv/bin/python benchmarks/lr_grid.py SHAPE ROWS LRS SCHEDULES > results.jsonl
    .venv/bin/python benchmarks/lr_grid.py s128 300000 default,1e-3,3e-3,1e-2,3e-2 default,const

SHAPE is s64 (d 64, 512 latents, k 8), s128 (d 128, 1024, k 16) or s384 (d 384, 4096, k 32); LRS
are numbers or `default` (no --lr: the trainer's rate for the run); SCHEDULES are `default`
(warm-up + 20% decay) or `const`. One JSON line per run on stdout (held-out FVU, L0, dead
fraction, MMCS, MCC, recovered@0.9); stores and runs go under $LR_GRID_DIR (default
/tmp/featureforge-lr-grid). One torch thread. Results of this session: benchmarks/results_lr_grid.jsonl.
"""
import json, sys, time, os
import torch
torch.set_num_threads(1)
import featureforge as ff
from featureforge.evaluation import evaluate

SHAPES = {
    "s64": dict(src=dict(d_in=64, n_features=512, mean_active=4.0, seed=0), d_dict=512, k=8),
    "s128": dict(src=dict(d_in=128, n_features=1024, mean_active=8.0, seed=0), d_dict=1024, k=16),
    "s384": dict(src=dict(d_in=384, n_features=2048, mean_active=20.0, seed=0), d_dict=4096, k=32),
}
shape = sys.argv[1]; rows = int(sys.argv[2]); lrs = sys.argv[3].split(","); scheds = sys.argv[4].split(",")
cfg = SHAPES[shape]
root = os.path.join(os.environ.get("LR_GRID_DIR", "/tmp/featureforge-lr-grid"), shape)
store_path = f"{root}/store.zarr"
if not os.path.exists(store_path + "/zarr.json"):
    ff.cache("synthetic", cfg["src"], store=store_path, rows=max(rows, 300_000) + 70_000, progress=False)
for sched in scheds:
    for lr in lrs:
        extra = {} if sched == "default" else {"warmup_steps": 0, "decay_fraction": 0.0} if sched == "const" else {"decay_fraction": 0.0}
        out = f"{root}/r{rows}_{sched}_lr{lr}"
        t = time.time()
        kw = {} if lr == "default" else {"lr": float(lr)}
        ff.train("topk", {"d_dict": cfg["d_dict"], "k": cfg["k"]}, store=store_path, out=out, rows=rows, progress=False, overwrite=True, **kw, **extra)
        rep = evaluate(out, store_path)
        flat = {}
        for ev, block in rep["evaluators"].items():
                m = block["metrics"]
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k in ("fvu", "mmcs", "dead_fraction", "recovered", "recovered_fraction", "l0", "mcc"):
                        flat[k] = round(v, 4)
        print(json.dumps({"shape": shape, "rows": rows, "sched": sched, "lr": lr, **flat, "s": round(time.time()-t)}), flush=True)
