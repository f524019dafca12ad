"""Train EleutherAI sparsify's TopK SparseCoder on the benchmark rows (run with the peers venv's python).

sparsify's own ``Trainer`` only trains on a live Hugging Face model's hookpoints, so this worker
performs exactly the step that ``sparsify.trainer.Trainer.fit`` performs per batch with
``loss_fn="fvu"``, ``optimizer="adam"``, ``grad_acc_steps=micro_acc_steps=1`` (sparsify 1.3.x):

1. first step only: ``b_dec`` = batch mean;
2. ``set_decoder_norm_to_unit_norm()``; dead mask = tokens since fired > ``dead_feature_threshold``;
3. ``out = sae(x, dead_mask=..., total_variance=Σ‖x−x̄‖²)``; loss = fvu + auxk_alpha·auxk_loss;
4. ``loss.backward()``; ``sae.remove_gradient_parallel_to_decoder_directions()``;
5. ``Adam.step()``; ``zero_grad()``; ``get_linear_schedule_with_warmup`` step; dead bookkeeping.

Adam's lr is sparsify's default 2e-4/sqrt(num_latents/2^14). sparsify's warm-up default (1000
steps) exceeds this run's step count, so warm-up is capped at 10% of the steps like featureforge's.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import common  # noqa: E402


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--auxk-alpha", type=float, default=1 / 32)
    p.add_argument("--dead-feature-threshold", type=int, default=10_000_000)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch = common.setup_torch(args.threads)
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup  # what sparsify.trainer uses

    rows = common.NpyRows(args.data)
    steps = args.train_rows // args.batch_size
    warmup = min(1000, max(1, steps // 10))
    torch.manual_seed(args.seed)
    cfg = SparseCoderConfig(activation="topk", num_latents=args.d_sae, k=args.k, normalize_decoder=True)
    sae = SparseCoder(rows.d, cfg, device="cpu", dtype=torch.float32)
    lr = args.lr or 2e-4 / (sae.num_latents / 2**14) ** 0.5
    adam = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = get_linear_schedule_with_warmup(adam, warmup, steps)
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    timer = common.StepTimer()
    fvu_log = []
    for step, x in timer.timed_batches(rows, args.train_rows, args.batch_size, args.scale, torch):
        t0 = common.now()
        if step == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > args.dead_feature_threshold if args.auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        o = sae(x, dead_mask=dead_mask, total_variance=total_variance)
        loss = o.fvu + args.auxk_alpha * o.auxk_loss + o.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        sched.step()
        with torch.no_grad():
            did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
            did_fire[o.latent_indices.flatten()] = True
            since_fired += x.shape[0]
            since_fired[did_fire] = 0
        fvu = float(o.fvu.detach())
        timer.step_s.append(common.now() - t0)
        if step % 25 == 0 or step == steps - 1:
            fvu_log.append([step, fvu])

    def encode_decode(x):
        top_acts, top_indices, _ = sae.encode(x)
        return top_acts, top_indices, sae.decode(top_acts, top_indices)

    common.write_eval(out, rows, args, encode_decode, sae.W_dec, torch)
    common.finish(out, {
        "system": "sparsify",
        "versions": common.versions("eai-sparsify", "torch"),
        "api": "sparsify.SparseCoder; the per-batch step of sparsify.trainer.Trainer (fvu + auxk, decoder-grad projection, Adam, linear warm-up/decay)",
        "settings": {"d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "lr": lr, "warmup_steps": warmup,
                     "schedule": "linear warm-up then linear decay to 0 (get_linear_schedule_with_warmup)",
                     "auxk_alpha": args.auxk_alpha, "dead_feature_threshold": args.dead_feature_threshold,
                     "train_rows": steps * args.batch_size, "dtype": "float32", "threads": args.threads},
        "timing": timer.rows_per_s(args.batch_size),
        "train_fvu_log": fvu_log,
    })


if __name__ == "__main__":
    main()
