"""Speed of one `topk` training step (featureforge-sae) against the matmul that bounds it.

A step is what the featureforge loop does per batch: ``trainer.loss`` (fused sparse TopK
encoder + sparse decoder + FVU), ``backward``, ``before_step`` (remove the decoder-parallel
gradient), ``Adam.step``, ``after_step`` (renormalise decoder rows), zero grads. Measured at
d_in=384, d_dict=4096, k=32, batch 4096 (defaults) on ``--threads`` threads, in fp32 and under
bf16 autocast, with Adam as the loop builds it (``foreach=True``) and with ``fused=True``.

The bound: one step must at least run the encoder matmul ``[batch, d_in] x [d_in, d_dict]``
(everything else is sparse), so ``bound_rows_per_s = batch / t(matmul)``; the script prints
the fraction of it that the whole step reaches. Times are medians over ``--steps`` steps
(minimum in ``*_best``), so a busy machine shows as a spread, not as a wrong ratio.

    python benchmarks/topk_step.py [--steps 10] [--threads 2] [--d-in 384 --d-dict 4096 --k 32 --batch 4096]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _timed(fn, steps: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-dict", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dead-fraction", type=float, default=0.0, help="fraction of latents marked dead (engages AuxK)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from featureforge.roles import TrainState
    from featureforge_sae import TopKTrainer
    from featureforge_sae._kernels import _Pattern, compute_dtype, select_topk, sparse_decode

    n, d_in, d_dict, k = args.batch, args.d_in, args.d_dict, args.k
    trainer = TopKTrainer(d_dict=d_dict, k=k)
    x = torch.randn(n, d_in)

    def fresh():
        torch.manual_seed(0)
        dictionary = trainer.build(d_in)
        trainer.initialize(dictionary, x[:4096])
        state = TrainState(step=0, rows_seen=0, rows_since_fired=torch.zeros(d_dict, dtype=torch.long))
        if args.dead_fraction > 0:
            dead = torch.randperm(d_dict)[: int(args.dead_fraction * d_dict)]
            state.rows_since_fired[dead] = trainer.options.dead_after
        return dictionary, state

    results: dict[str, object] = {
        "benchmark": "topk_step",
        "shape": {"batch": n, "d_in": d_in, "d_dict": d_dict, "k": k, "dead_fraction": args.dead_fraction},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }

    # -- the bound: the dense encoder matmul alone ----------------------------------------------
    W = torch.randn(d_dict, d_in)
    out_buf = torch.empty(n, d_dict)
    mm = _timed(lambda: torch.mm(x, W.t(), out=out_buf), args.steps)
    mm_fresh = _timed(lambda: torch.mm(x, W.t()), args.steps)
    bf_x, bf_W = x.bfloat16(), W.bfloat16()
    mm_bf16 = _timed(lambda: torch.mm(bf_x, bf_W.t()), max(3, args.steps // 3), warmup=1)
    flops = 2.0 * n * d_in * d_dict
    bound = n / statistics.median(mm)
    results["matmul_fp32"] = {**_summary(mm), "gflops": flops / statistics.median(mm) / 1e9, "bound_rows_per_s": bound,
                              "bound_rows_per_s_best": n / min(mm)}
    # The same product into a freshly allocated [batch, d_dict] output: the page faults of a new
    # 64 MiB buffer are part of what a naive step pays (the fused kernel reuses one buffer).
    results["matmul_fp32_fresh_output"] = _summary(mm_fresh)
    results["matmul_bf16"] = {**_summary(mm_bf16), "gflops": flops / statistics.median(mm_bf16) / 1e9}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoder_dtype = str(compute_dtype(torch.device("cpu"), torch.float32)).replace("torch.", "")
    results["bf16_encoder_matmul_dtype"] = encoder_dtype

    # -- whole steps ----------------------------------------------------------------------------
    def run(autocast: bool, adam: str) -> list[float]:
        dictionary, state = fresh()
        opt = torch.optim.Adam(dictionary.parameters(), lr=1e-4, **{adam: True})
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else (lambda: torch.autocast("cpu", enabled=False))
        batch = {"acts": x}

        def step():
            with ctx():
                out = trainer.loss(dictionary, batch, state)
            out.loss.backward()
            trainer.before_step(dictionary, state)
            opt.step()
            trainer.after_step(dictionary, state)
            opt.zero_grad(set_to_none=True)

        return _timed(step, args.steps)

    for label, autocast in (("fp32", False), ("bf16_autocast", True)):
        for adam in ("foreach", "fused"):
            times = run(autocast, adam)
            rows = n / statistics.median(times)
            results[f"step_{label}_adam_{adam}"] = {
                **_summary(times),
                "rows_per_s": rows,
                "rows_per_s_best": n / min(times),
                "fraction_of_matmul_bound": rows / bound,
                "fraction_of_matmul_bound_best": (n / min(times)) / (n / min(mm)),
            }

    # -- where a step's time goes (fp32, fused Adam) ---------------------------------------------
    dictionary, state = fresh()
    opt = torch.optim.Adam(dictionary.parameters(), lr=1e-4, fused=True)
    W_enc, b_enc = dictionary.encoder.weight.detach(), dictionary.encoder.bias.detach()
    pre = torch.addmm(b_enc, x, W_enc.t())
    values, indices = select_topk(pre, k)
    split = {
        "encoder_matmul": _timed(lambda: torch.addmm(b_enc, x, W_enc.t(), out=pre), args.steps),
        "topk_select": _timed(lambda: select_topk(pre, k), args.steps),
        "topk_torch_topk": _timed(lambda: torch.topk(pre, k, dim=-1, sorted=False), args.steps),
        "decode_forward": _timed(lambda: sparse_decode(values, indices, dictionary.W_dec.detach()), args.steps),
        "transpose_sort": _timed(lambda: _Pattern(indices, d_dict).transpose(), args.steps),
    }
    phases: dict[str, list[float]] = {"loss_forward": [], "backward": [], "before_step": [], "optimizer": [], "after_step": [], "zero_grad": []}
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        out = trainer.loss(dictionary, {"acts": x}, state)
        t1 = time.perf_counter()
        out.loss.backward()
        t2 = time.perf_counter()
        trainer.before_step(dictionary, state)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        trainer.after_step(dictionary, state)
        t5 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        if i >= 2:
            for key, a, b in (("loss_forward", t0, t1), ("backward", t1, t2), ("before_step", t2, t3), ("optimizer", t3, t4),
                              ("after_step", t4, t5), ("zero_grad", t5, t6)):
                phases[key].append(b - a)
    results["split_ms_median"] = {
        **{f"kernel_{k_}": 1e3 * statistics.median(v) for k_, v in split.items()},
        **{f"step_{k_}": 1e3 * statistics.median(v) for k_, v in phases.items()},
    }
    results["split_ms_best"] = {
        **{f"kernel_{k_}": 1e3 * min(v) for k_, v in split.items()},
        **{f"step_{k_}": 1e3 * min(v) for k_, v in phases.items()},
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
