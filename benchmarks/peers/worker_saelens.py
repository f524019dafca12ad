"""Train SAELens' TopK training SAE with its own SAETrainer on the benchmark rows (peers venv's python).

``TopKTrainingSAE`` + ``SAETrainer`` (sae-lens 6.x) driven through ``SAETrainer.step(batch)``, the
public per-batch seam ``SAETrainer.fit`` calls (training_forward_pass → MSE + TopK aux loss →
backward → clip_grad_norm 1.0 → Adam → lr scheduler), with ``maybe_reset_sparsity`` and the step
counter advanced as ``fit`` does; no W&B, no checkpoints. SAELens' defaults: lr 3e-4,
``rescale_acts_by_decoder_norm=True``, ``decoder_init_norm=0.1``, aux coefficient 1.0, dead window
1000 steps. Rows arrive already normalised (``normalize_activations="none"``). Warm-up and decay
follow featureforge's schedule shape (10% linear warm-up, linear decay over the last 20%), or with
``--schedule constant`` SAELens' own default (constant rate, no warm-up, no decay).
``--sparse-activations`` and ``--no-rescale`` set ``use_sparse_activations=True`` and
``rescale_acts_by_decoder_norm=False``.
"""

from __future__ import annotations

from pathlib import Path

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--schedule", choices=["featureforge", "constant"], default="featureforge")
    p.add_argument("--sparse-activations", action="store_true")
    p.add_argument("--no-rescale", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch = common.setup_torch(args.threads)
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    rows = common.NpyRows(args.data)
    steps = args.train_rows // args.batch_size
    warmup = min(1000, max(1, steps // 10)) if args.schedule == "featureforge" else 0
    decay = int(steps * 0.2) if args.schedule == "featureforge" else 0
    torch.manual_seed(args.seed)
    sae_cfg = TopKTrainingSAEConfig(d_in=rows.d, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                                    normalize_activations="none", use_sparse_activations=args.sparse_activations,
                                    rescale_acts_by_decoder_norm=not args.no_rescale)
    sae = TopKTrainingSAE(sae_cfg)
    lr = args.lr or 3e-4  # SAELens' default
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * args.batch_size, train_batch_size_samples=args.batch_size,
                                   lr=lr, lr_end=lr / 10, lr_warm_up_steps=warmup, lr_decay_steps=decay, device="cpu",
                                   autocast=False)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    timer = common.StepTimer()
    fvu_log = []
    for step, x in timer.timed_batches(rows, args.train_rows, args.batch_size, args.scale, torch):
        t0 = common.now()
        trainer.maybe_reset_sparsity()
        o = trainer.step(x)
        trainer.n_training_steps += 1
        timer.step_s.append(common.now() - t0)
        if step % 25 == 0 or step == steps - 1:
            with torch.no_grad():
                fvu = float((o.sae_out - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
            fvu_log.append([step, fvu])
    sae.eval()

    def encode_decode(x):
        acts = sae.encode(x)
        top = acts.topk(args.k, dim=1)
        return top.values, top.indices, sae.decode(acts)

    decoder = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    common.write_eval(out, rows, args, encode_decode, decoder, torch)
    common.finish(out, {
        "system": "saelens",
        "versions": common.versions("sae-lens", "torch"),
        "api": "sae_lens TopKTrainingSAE + SAETrainer.step (the per-batch seam of SAETrainer.fit)",
        "settings": {"d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "lr": trainer_cfg.lr,
                     "warmup_steps": warmup, "decay_steps": decay, "schedule": "constant with linear warm-up and decay" if args.schedule == "featureforge" else "constant (SAELens's default)",
                     "aux_loss_coefficient": sae_cfg.aux_loss_coefficient, "rescale_acts_by_decoder_norm": sae_cfg.rescale_acts_by_decoder_norm,
                     "decoder_init_norm": sae_cfg.decoder_init_norm, "use_sparse_activations": sae_cfg.use_sparse_activations, "train_rows": steps * args.batch_size, "dtype": "float32",
                     "threads": args.threads},
        "timing": timer.rows_per_s(args.batch_size),
        "train_fvu_log": fvu_log,
    })


if __name__ == "__main__":
    main()
