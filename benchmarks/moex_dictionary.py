"""Routed dictionaries against TopK at equal total width and equal L0: speed, FLOPs, FVU.

``moex`` (MoE-X dictionary, featureforge-moex), ``switch`` (Switch SAE, featureforge-moex) and
``topk`` (featureforge-sae) each get ``d_dict`` latents and keep ``k`` per row, on one synthetic
store made with ``featureforge cache --source synthetic``. For each trainer:

* ``train_rows_per_s``: rows through ``featureforge.train`` (the whole loop: reader, step,
  bookkeeping) per wall-clock second, and ``step_rows_per_s``: one training step (loss, backward,
  Adam, decoder upkeep) on a fixed batch, median over rounds run round-robin so machine load
  hits all trainers alike; ``encode_rows_per_s``: the encoder alone (``sparse_encode``: values
  and indices, no dense codes), same way.
* ``flops_per_row``: analytic multiply-adds x 2 of the forward pass (see ``flops``).
* ``fvu`` / ``l0``: the reconstruction evaluator on the store's held-out rows.

    python benchmarks/moex_dictionary.py [--quick] [--out benchmarks/results/moex_dictionary/moex_dictionary.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import provenance

FULL = dict(d_in=128, n_features=2048, mean_active=8.0, rows=262144, d_dict=4096, n_experts=8, top_k=2, k=32, batch=4096, rounds=7)
QUICK = dict(d_in=32, n_features=128, mean_active=4.0, rows=16384, d_dict=256, n_experts=8, top_k=2, k=8, batch=1024, rounds=2)


def flops(trainer: str, s: dict, batch: int) -> dict:
    """Forward FLOPs per row (2 x multiply-adds): router + encoder + decoder.

    topk: dense encoder 2*d*N, sparse decoder 2*k*d. switch: router 2*d*M, one expert's encoder
    2*d*D (D = N/M). moex: scores x.mu and x^2.sigma^2 (4*d*M) plus the expert statistics 4*M*D*d
    once per batch (amortised over its rows), top_k experts' encoders 2*top_k*d*D.
    """
    d, N, M, k = s["d_in"], s["d_dict"], s["n_experts"], s["k"]
    D = N // M
    decoder = 2 * k * d
    if trainer == "topk":
        router, encoder = 0, 2 * d * N
    elif trainer == "switch":
        router, encoder = 2 * d * M, 2 * d * D
    else:
        router, encoder = 4 * d * M + 4 * M * D * d / batch, 2 * s["top_k"] * d * D
    return {"router": router, "encoder": encoder, "decoder": decoder, "total": router + encoder + decoder}


def trainer_options(name: str, s: dict) -> dict:
    if name == "topk":
        return {"d_dict": s["d_dict"], "k": s["k"]}
    opts = {"d_dict": s["d_dict"], "k": s["k"], "n_experts": s["n_experts"]}
    if name == "moex":
        opts["top_k"] = s["top_k"]
    return opts


def time_steps(trainers: dict, x: torch.Tensor, rounds: int) -> dict:
    """Median seconds of one training step and of the encoder alone, round-robin over trainers."""
    from featureforge.training import apply_update, fresh_state

    setups = {}
    for name, trainer in trainers.items():
        d = trainer.build(x.shape[1])
        trainer.initialize(d, x)
        setups[name] = (trainer, d, torch.optim.Adam(d.parameters(), lr=1e-4))
    step_t = {n: [] for n in trainers}
    enc_t = {n: [] for n in trainers}
    for r in range(rounds + 1):
        for name, (trainer, d, opt) in setups.items():
            state = fresh_state(d.d_dict)
            state.step = r
            t0 = time.perf_counter()
            out = trainer.loss(d, {"acts": x}, state)
            out.loss.backward()
            apply_update(trainer, d, opt, state)
            t1 = time.perf_counter()
            with torch.no_grad():
                d.sparse_encode(x)  # values + indices: no dense [n, d_dict] codes
            t2 = time.perf_counter()
            if r:  # round 0 warms up
                step_t[name].append(t1 - t0)
                enc_t[name].append(t2 - t1)
    return {n: {"step_s": statistics.median(step_t[n]), "encode_s": statistics.median(enc_t[n])} for n in trainers}


def main(argv=None) -> dict:
    import featureforge

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default=None)
    provenance.add_out_argument(p, "moex_dictionary")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="moex-dict-"))
    work.mkdir(parents=True, exist_ok=True)
    store = featureforge.cache("synthetic", {"d_in": s["d_in"], "n_features": s["n_features"], "mean_active": s["mean_active"], "seed": 0},
                               store=str(work / "synthetic.zarr"), rows=s["rows"], rows_per_chunk=s["rows"] // 16, progress=False, overwrite=True)
    names = [n for n in ("topk", "switch", "moex") if n in featureforge.get_registry().names("trainer")]
    registry = featureforge.get_registry()
    trainers = {n: registry.get("trainer", n)(trainer_options(n, s)) for n in names}
    x = torch.as_tensor(store.group["acts"][: s["batch"]]).float()
    x = x * (s["d_in"] / x.pow(2).sum(1).mean()).sqrt()  # training units, as the loop feeds them
    timings = time_steps(trainers, x, s["rounds"])
    result = {"benchmark": "moex_dictionary", "quick": args.quick, "settings": s, "torch_threads": torch.get_num_threads(), "trainers": {}}
    for name in names:
        t0 = time.perf_counter()
        [run] = featureforge.train(name, trainer_options(name, s), store=store, out=work / name, progress=False, overwrite=True,
                                   batch_size=s["batch"], lr=None, warmup_steps=10)
        seconds = time.perf_counter() - t0
        from featureforge.run import read_metrics
        last = read_metrics(run)[-1]
        report = featureforge.evaluate(run, store=store, evaluators=["reconstruction"])
        metrics = report["evaluators"]["reconstruction"]["metrics"]
        f = flops(name, s, s["batch"])
        result["trainers"][name] = {
            "options": trainer_options(name, s),
            "fvu": metrics["fvu"], "l0": metrics["l0"], "dead_fraction": metrics["dead_fraction"],
            "train_rows": last.get("rows"), "train_seconds": round(seconds, 2),
            "train_rows_per_s": round(last.get("rows", 0) / seconds),
            "step_rows_per_s": round(s["batch"] / timings[name]["step_s"]),
            "encode_rows_per_s": round(s["batch"] / timings[name]["encode_s"]),
            "flops_per_row": f, "encoder_flops_vs_topk": f["encoder"] / flops("topk", s, s["batch"])["encoder"],
        }
        print(name, json.dumps(result["trainers"][name]), file=sys.stderr, flush=True)
    provenance.emit(result, provenance.out_path(args.out, "moex_dictionary"))
    return result


if __name__ == "__main__":
    main()
