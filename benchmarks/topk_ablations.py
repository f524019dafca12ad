"""Ablations of the topk trainer on a synthetic store: one JSON line per run (issue 14, dead latents at high lr).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/topk_ablations.py --store STORE --rows 300000 --lr 1e-2 \
        [--warmup 7 --decay 0.9] [--bdec mean] [--nogate] [--dead-after 20480] [--aux-enc-off | --aux-part no_bdec]

Trains ``topk`` through ``featureforge.train`` (1 thread, held-out rows as train_vs_peers.py holds
them out) and evaluates reconstruction and ground truth on the held-out rows: FVU, MMCS, dead
(never active there), plus the share of latents silent in training for a quarter / half of the
run at its end (from the checkpoint). Switches that change the step itself patch the plugin's
encoder backward in this process only:

* ``--nogate``: the top-k picks with a non-positive pre-activation also pass gradient (what
  sparsify's fused encoder does: its backward has no ReLU gate);
* ``--aux-enc-off``: AuxK trains the decoder only (sparsify's encoder ignores the gradient of its
  pre-activations, so its AuxK never reaches the encoder);
* ``--aux-part no_bdec`` / ``bdec_only``: AuxK's encoder gradient without / with only its b_dec part.

Switches for issue 22 (what SAELens's TopK does differently), patched the same way:

* ``--init-enc-norm N``: encoder rows rescaled to norm N at initialisation (the decoder stays the
  encoder's rows at unit norm); SAELens starts both at 0.1 (``decoder_init_norm``);
* ``--free-decoder``: decoder rows not held at unit norm and the raw gradient (``-o decoder=free
  -o unit_gradient=false``), starting at unit norm unless ``--init-dec-norm N`` (``-o init_decoder_norm``);
* ``--mse``: the loss is the summed squared error per row (SAELens) instead of the batch FVU;
* ``--grad-clip G``: the loop's ``-t grad_clip`` (SAELens clips at 1.0);
* ``--rescale`` (with ``--free-decoder``): pre-activations are multiplied by their decoder row's
  norm and the decoder reconstructs with unit rows (SAELens's ``rescale_acts_by_decoder_norm``),
  in training and in evaluation.

One JSON line on stdout, also appended to ``--out`` with the run's provenance (pass the same ``--out``
to collect a grid in one file). Results of the 2026-12-03 session:
benchmarks/results/topk_ablations/topk_ablations.jsonl.
"""
import argparse
import json
import os
import time

import torch

import provenance



def patch_backward(nogate: bool, aux_enc_off: bool, aux_part: str | None) -> None:
    """Replace TopKEncode._backward by a variant (linear in the two gradients, so parts can be split)."""
    from featureforge_sae import _kernels as K

    orig = K.TopKEncode._backward

    def ungated(ctx, g_values, g_aux):
        x, W_enc, b_dec, values, aux_values = ctx.saved_tensors
        main, aux = ctx.patterns
        has_aux = aux.indices.shape[1] > 0
        g = g_values.to(W_enc.dtype)
        g_a = g_aux.to(W_enc.dtype) if has_aux else None
        grad_c = torch.zeros(W_enc.shape[0], dtype=W_enc.dtype).index_add_(0, main.indices.reshape(-1), g.reshape(-1))
        if has_aux:
            grad_c.index_add_(0, aux.indices.reshape(-1), g_a.reshape(-1))
        grad_W = main.t_matmul(g, x)
        if has_aux:
            grad_W += aux.t_matmul(g_a, x)
        grad_W.addr_(grad_c, b_dec, alpha=-1)
        return None, grad_W, grad_c, -(grad_c @ W_enc), None, None, None, None

    base = ungated if nogate else orig

    def patched(ctx, g_values, g_aux):
        if g_aux is None or g_aux.shape[1] == 0:
            return base(ctx, g_values, g_aux)
        if aux_enc_off:
            return base(ctx, g_values, torch.zeros_like(g_aux))
        if aux_part is None:
            return base(ctx, g_values, g_aux)
        m = base(ctx, g_values, torch.zeros_like(g_aux))
        a = base(ctx, torch.zeros_like(g_values), g_aux)
        out = [u if v is None else v if u is None else u + v for u, v in zip(m, a)]
        if aux_part == "no_bdec":
            out[3] = m[3]
        else:  # bdec_only
            out[1], out[2] = m[1], m[2]
        return tuple(out)

    K.TopKEncode._backward = staticmethod(patched)


def patch_rescale() -> None:
    """Select and decode through unit decoder rows, the norms folded into the pre-activations."""
    from featureforge_sae import _models as M
    from featureforge_sae import trainers as T

    def effective(d):
        norms = d.W_dec.norm(dim=1)
        return d.encoder.weight * norms[:, None], d.encoder.bias * norms, d.W_dec / norms[:, None]

    def _encode(self, dictionary, x, dead, k_aux):
        from featureforge_sae._kernels import topk_encode
        W, b, _ = effective(dictionary)
        return topk_encode(x, W, b, dictionary.b_dec, dictionary.k, dead, k_aux)

    def _reconstruction(self, dictionary, values, indices, bias, target, denominator):
        from featureforge_sae._kernels import sparse_reconstruction_loss
        return sparse_reconstruction_loss(values, indices, effective(dictionary)[2], bias, target, denominator)

    def sparse_encode(self, x):
        W, b, _ = effective(self)
        values, indices, _, _ = M.topk_encode(x, W, b, self.b_dec, self.k)
        return values, indices

    T.TopKTrainer._encode = _encode
    T.TopKTrainer._reconstruction = _reconstruction
    M.TopKSAE.sparse_encode = sparse_encode
    M.TopKSAE.sparse_decode = lambda self, values, indices: M.sparse_decode(values, indices, effective(self)[2]) + self.b_dec
    M.TopKSAE.decode_normalised = lambda self, codes: codes.to(self.W_dec.dtype) @ effective(self)[2] + self.b_dec


def patch_trainer(init_enc_norm: float | None, mse: bool) -> None:
    """Replace parts of TopKTrainer in this process (encoder initialisation, loss)."""
    from featureforge_sae import trainers as T

    orig_init = T.TopKTrainer.initialize

    def initialize(self, dictionary, sample):
        orig_init(self, dictionary, sample)
        if init_enc_norm is not None:
            with torch.no_grad():
                W = dictionary.encoder.weight
                W.mul_(init_enc_norm / W.norm(dim=1, keepdim=True))

    T.TopKTrainer.initialize = initialize
    if mse:
        orig_loss = T.TopKTrainer._reconstruction_loss

        def reconstruction_loss(self, dictionary, values, indices, x, total_variance):
            fvu, metrics, x_hat = orig_loss(self, dictionary, values, indices, x, total_variance)
            return fvu * (total_variance / x.shape[0]), metrics, x_hat

        T.TopKTrainer._reconstruction_loss = reconstruction_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--trainer", default="topk", help="topk or another trainer of the family (batchtopk, matryoshka, gsae)")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--epochs", type=float, help="passes over the training chunks instead of --rows")
    p.add_argument("--lr", default="default", help="a rate, or `default` (no --lr: the trainer's rate for the run)")
    p.add_argument("--d-dict", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--warmup", type=int)
    p.add_argument("--decay", type=float)
    p.add_argument("--bdec", choices=["geometric_median", "mean", "zeros"])
    p.add_argument("--nogate", action="store_true")
    p.add_argument("--aux-enc-off", action="store_true")
    p.add_argument("--aux-part", choices=["no_bdec", "bdec_only"])
    p.add_argument("--dead-after", type=int, help="the trainer's -o dead_after")
    p.add_argument("--loop-dead-after", type=int, help="the loop's -t dead_after (e.g. 10000000: the old default)")
    p.add_argument("--k-aux", type=int)
    p.add_argument("--aux-coef", type=float)
    p.add_argument("--decoder", choices=["free", "unit"], help="the trainer's -o decoder")
    p.add_argument("--unit-gradient", choices=["true", "false"], help="the trainer's -o unit_gradient")
    p.add_argument("--init-enc-norm", type=float)
    p.add_argument("--init-dec-norm", type=float)
    p.add_argument("--free-decoder", action="store_true")
    p.add_argument("--mse", action="store_true")
    p.add_argument("--rescale", action="store_true")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--holdout", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--workdir", default="/tmp/featureforge-topk-ablations/run", help="the run folder (replaced)")
    provenance.add_out_argument(p, "topk_ablations", ".jsonl")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import featureforge as ff
    from safetensors.torch import load_file

    if a.nogate or a.aux_enc_off or a.aux_part:
        patch_backward(a.nogate, a.aux_enc_off, a.aux_part)
    if a.init_enc_norm or a.mse:
        patch_trainer(a.init_enc_norm, a.mse)
    if a.rescale:
        patch_rescale()
    opts = {"d_dict": a.d_dict, "k": a.k}
    if a.free_decoder:
        opts.update(decoder="free", unit_gradient=False, init_decoder_norm=a.init_dec_norm or 1.0)
    elif a.init_dec_norm:
        opts["init_decoder_norm"] = a.init_dec_norm
    for key, value in (("b_dec_init", a.bdec), ("dead_after", a.dead_after), ("k_aux", a.k_aux), ("aux_coef", a.aux_coef), ("decoder", a.decoder),
                       ("unit_gradient", None if a.unit_gradient is None else a.unit_gradient == "true")):
        if value is not None:
            opts[key] = value
    kw = dict(batch_size=a.bs, rows=a.rows, threads=a.threads, holdout_rows=a.holdout, progress=False, overwrite=True, log_every=5, seed=a.seed)
    if a.epochs:
        kw.pop("rows")
        kw["epochs"] = a.epochs
    for key, value in (("warmup_steps", a.warmup), ("decay_fraction", a.decay), ("dead_after", a.loop_dead_after),
                         ("grad_clip", a.grad_clip)):
        if value is not None:
            kw[key] = value
    if a.lr != "default":
        kw["lr"] = float(a.lr)
    t = time.time()
    [run] = ff.train(a.trainer, opts, store=a.store, out=a.workdir, **kw)
    train_s = time.time() - t
    rep = ff.evaluate(run, a.store, ["reconstruction", "ground-truth"])
    rec = rep["evaluators"]["reconstruction"]["metrics"]
    gt = rep["evaluators"]["ground-truth"]["metrics"]
    cfg = json.loads((run / "config.json").read_text())
    from featureforge.run import read_metrics
    lines = read_metrics(run)
    silent = load_file(str(run / "checkpoint" / "tensors.safetensors"))["m0.rows_since_fired"].float()
    run_rows = cfg["training_result"]["rows"]
    res = {"tag": a.tag, "trainer": a.trainer, "store": os.path.basename(a.store.rstrip("/")), "rows": a.rows, "bs": a.bs, "steps": cfg["training_result"]["steps"],
           "lr": max(line["lr"] for line in lines), "fvu": round(rec["fvu"], 4), "mmcs": round(gt.get("mmcs", float("nan")), 4),
           "dead": rec.get("dead"), "dead_fraction": round(rec.get("dead_fraction"), 4), "l0": round(rec.get("l0", 0), 2),
           "dead_after_rows": cfg.get("dead_after_rows"), "auxk_lines": sum(1 for line in lines if (line.get("auxk_loss") or 0) > 0),
           "silent_quarter": round(float((silent >= run_rows / 4).float().mean()), 4),
           "silent_half": round(float((silent >= run_rows / 2).float().mean()), 4),
           "args": {k: v for k, v in vars(a).items() if v not in (None, False) and k not in ("store", "workdir", "out")}, "train_s": round(train_s)}
    print(provenance.append_line(res, provenance.out_path(a.out, "topk_ablations", ".jsonl")), flush=True)


if __name__ == "__main__":
    main()
