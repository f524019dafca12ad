"""Train saprmarks' dictionary_learning TopK SAE with its own TopKTrainer (run with .peers/venv-dl's python).

``dictionary_learning.trainers.top_k.TopKTrainer`` and its public per-batch ``update(step, x)``
(geometric-median ``b_dec`` init on step 0, MSE + auxk loss (alpha 1/32), backward, decoder-grad
projection, clip_grad_norm 1.0, Adam, LambdaLR schedule, decoder renormalisation) — exactly what
``dictionary_learning.training.trainSAE`` calls per batch, without its logging, W&B or saving.
lr is the trainer's default 2e-4/sqrt(dict_size/2^14); warm-up and decay follow featureforge's
schedule shape (10% linear warm-up, linear decay over the last 20%; the trainer's own default
warm-up of 1000 steps exceeds this run's step count).
"""

from __future__ import annotations

from pathlib import Path

import common


def main() -> None:
    args = common.parser(__doc__).parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch = common.setup_torch(args.threads)
    from dictionary_learning.trainers.top_k import TopKTrainer

    rows = common.NpyRows(args.data)
    steps = args.train_rows // args.batch_size
    warmup = min(1000, max(1, steps // 10))
    decay_start = max(warmup + 1, int(steps * 0.8))
    trainer = TopKTrainer(steps=steps, activation_dim=rows.d, dict_size=args.d_sae, k=args.k, layer=0, lm_name="synthetic",
                          warmup_steps=warmup, decay_start=decay_start if decay_start < steps else None, seed=args.seed,
                          device="cpu")
    timer = common.StepTimer()
    fvu_log = []
    for step, x in timer.timed_batches(rows, args.train_rows, args.batch_size, args.scale, torch):
        t0 = common.now()
        trainer.update(step, x)
        timer.step_s.append(common.now() - t0)
        if step % 25 == 0 or step == steps - 1:
            with torch.no_grad():
                fvu = float((trainer.ae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
            fvu_log.append([step, fvu])
    ae = trainer.ae

    def encode_decode(x):
        encoded, top_vals, top_idx, _ = ae.encode(x, return_topk=True)
        return top_vals, top_idx, ae.decode(encoded)

    common.write_eval(out, rows, args, encode_decode, ae.decoder.weight.T, torch)
    common.finish(out, {
        "system": "dictionary_learning",
        "versions": common.versions("dictionary-learning", "torch", "nnsight"),
        "api": "dictionary_learning.trainers.top_k.TopKTrainer.update (the per-batch call of dictionary_learning.training.trainSAE)",
        "settings": {"d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "lr": trainer.lr, "warmup_steps": warmup,
                     "decay_start": decay_start, "auxk_alpha": trainer.auxk_alpha, "train_rows": steps * args.batch_size,
                     "dtype": "float32", "threads": args.threads},
        "timing": timer.rows_per_s(args.batch_size),
        "train_fvu_log": fvu_log,
        "note": "the FVU log's extra forward pass (every 25 steps) is outside the timed step",
    })


if __name__ == "__main__":
    main()
