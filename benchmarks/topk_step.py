"""Speed of one `topk` training step (featureforge-sae) against the matmul that bounds it.

A step is what the featureforge loop does per batch: ``trainer.loss`` (fused sparse TopK
encoder + sparse decoder + FVU), ``backward``, ``before_step`` (remove the decoder-parallel
gradient), ``Adam.step``, ``after_step`` (renormalise decoder rows), zero grads. Measured at
d_in=384, d_dict=4096, k=32, batch 4096 (defaults) on ``--threads`` threads, in fp32 and under
bf16 autocast, with Adam as the loop builds it (``foreach=True``) and with ``fused=True``.

The bound: one step must at least run the encoder matmul ``[batch, d_in] x [d_in, d_dict]``
(everything else is sparse), so ``bound_rows_per_s = batch / t(matmul)``; the script prints
the fraction of it that the whole step reaches. All contenders run round-robin (matmul, our
step in four variants, and a baseline step implementing sparsify's published algorithm: dense
``relu(linear)`` + ``topk``, index_add backward, embedding_bag decoder), so a busy machine slows
them alike; times are medians over ``--steps`` rounds, minima in ``*_best``. The split then
times each kernel and each phase of a step on its own. The JSON is also written to ``--out`` with the
run's provenance (torch threads, CPU flags: what decides the bf16 path).

    python benchmarks/topk_step.py [--steps 10] [--threads 2] [--d-in 384 --d-dict 4096 --k 32 --batch 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import provenance


class _IndexAddEncoder(torch.autograd.Function):
    """Baseline: sparsify's published algorithm (fused_encoder.py), written here from its
    description: dense ``relu(linear)`` + ``topk`` forward; backward with ``embedding_bag`` for
    the input and ``index_add_`` of per-entry outer products ``[n*k, d_in]`` for the weight."""

    @staticmethod
    def forward(ctx, x, W, b, k):
        pre = torch.nn.functional.relu(torch.nn.functional.linear(x, W, b))
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
        ctx.save_for_backward(x, W, indices)
        return values, indices

    @staticmethod
    def backward(ctx, g, _):
        x, W, indices = ctx.saved_tensors
        grad_x = torch.nn.functional.embedding_bag(indices, W, mode="sum", per_sample_weights=g)
        outer = (g.unsqueeze(2) * x.unsqueeze(1)).reshape(-1, x.shape[1])
        grad_W = torch.zeros_like(W).index_add_(0, indices.reshape(-1), outer)
        grad_b = torch.zeros(W.shape[0], dtype=W.dtype).index_add_(0, indices.reshape(-1), g.reshape(-1))
        return grad_x, grad_W, grad_b, None


def _baseline_step(x, k, d_dict, threads_adam="foreach"):
    """One step of the sparsify-style baseline (same model, same loss, eager embedding_bag decoder)."""
    torch.manual_seed(0)
    d_in = x.shape[1]
    enc = torch.nn.Linear(d_in, d_dict)
    W_dec = torch.nn.Parameter(enc.weight.detach().clone() / enc.weight.detach().norm(dim=1, keepdim=True))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    params = [enc.weight, enc.bias, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4, **{threads_adam: True})

    def step():
        values, indices = _IndexAddEncoder.apply(x - b_dec, enc.weight, enc.bias, k)
        x_hat = torch.nn.functional.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum") + b_dec
        loss = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        opt.zero_grad(set_to_none=True)

    return step


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
    provenance.add_out_argument(parser, "topk_step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from featureforge.training import apply_update, fresh_state
    from featureforge_sae import TopKTrainer
    from featureforge_sae._kernels import _Pattern, compute_dtype, select_topk, sparse_decode

    n, d_in, d_dict, k = args.batch, args.d_in, args.d_dict, args.k
    trainer = TopKTrainer(d_dict=d_dict, k=k)
    x = torch.randn(n, d_in)

    def fresh():
        torch.manual_seed(0)
        dictionary = trainer.build(d_in)
        trainer.initialize(dictionary, x[:4096])
        state = fresh_state(d_dict)
        if args.dead_fraction > 0:
            dead = torch.randperm(d_dict)[: int(args.dead_fraction * d_dict)]
            state.rows_since_fired[dead] = trainer._horizon(state)
        return dictionary, state

    results: dict[str, object] = {
        "benchmark": "topk_step",
        "shape": {"batch": n, "d_in": d_in, "d_dict": d_dict, "k": k, "dead_fraction": args.dead_fraction},
    }

    # -- everything round-robin, so that a busy machine slows all contenders alike ---------------
    W = torch.randn(d_dict, d_in)
    out_buf = torch.empty(n, d_dict)
    bf_x, bf_W = x.bfloat16(), W.bfloat16()

    def our_step(autocast: bool, adam: str):
        dictionary, state = fresh()
        opt = torch.optim.Adam(dictionary.parameters(), lr=1e-4, **{adam: True})
        batch = {"acts": x}

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = trainer.loss(dictionary, batch, state)
            out.loss.backward()
            apply_update(trainer, dictionary, opt, state)

        return step

    contenders = {
        # The bound: one step must at least run this product (everything else is sparse).
        "matmul_fp32": lambda: torch.mm(x, W.t(), out=out_buf),
        # The same into a fresh [batch, d_dict] output: what a naive step pays in page faults.
        "matmul_fp32_fresh_output": lambda: torch.mm(x, W.t()),
        "matmul_bf16": lambda: torch.mm(bf_x, bf_W.t()),
        "step_fp32_adam_foreach": our_step(False, "foreach"),
        "step_fp32_adam_fused": our_step(False, "fused"),
        "step_bf16_autocast_adam_foreach": our_step(True, "foreach"),
        "step_bf16_autocast_adam_fused": our_step(True, "fused"),
        "baseline_sparsify_algorithm_adam_foreach": _baseline_step(x, k, d_dict),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        fn()
        fn()
    for _ in range(args.steps):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    flops = 2.0 * n * d_in * d_dict
    mm = times["matmul_fp32"]
    bound, bound_best = n / statistics.median(mm), n / min(mm)
    for name, v in times.items():
        entry: dict[str, float] = {**_summary(v), "rows_per_s": n / statistics.median(v), "rows_per_s_best": n / min(v)}
        if name.startswith("matmul"):
            entry["gflops"] = flops / statistics.median(v) / 1e9
        else:
            entry["fraction_of_matmul_bound"] = (n / statistics.median(v)) / bound
            entry["fraction_of_matmul_bound_best"] = (n / min(v)) / bound_best
        results[name] = entry
    results["bound_rows_per_s"] = bound
    results["bound_rows_per_s_best"] = bound_best
    results["speedup_vs_baseline"] = statistics.median(times["baseline_sparsify_algorithm_adam_foreach"]) / statistics.median(times["step_fp32_adam_foreach"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results["bf16_encoder_matmul_dtype"] = str(compute_dtype(torch.device("cpu"), torch.float32)).replace("torch.", "")

    # -- where a step's time goes (fp32, fused Adam) ---------------------------------------------
    dictionary, state = fresh()
    out_buf = None
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
    provenance.emit(results, provenance.out_path(args.out, "topk_step"))


if __name__ == "__main__":
    main()
