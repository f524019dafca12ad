"""Transcoders against autoencoders at the same L0, and a crosscoder over every block, on the stdlib GPT-2.

The model is ``featureforge tiny-lm``'s (4 blocks, d_model 128, trained on the standard library;
``--model``). Rows are read from the live model in one pass per batch with hooks on every block's
MLP input and output and every block's output (until multi-site stores land, issue #23 part A;
then ``featureforge cache -o hook=...`` gives the same rows). Per block ``l``:

* ``transcoder`` (and ``skip=true``): MLP input -> MLP output, TopK k;
* ``topk`` autoencoder on the MLP output, same k and width;
* both spliced in place of the MLP output on held-out documents: CE-loss score
  ``(CE_zero - CE) / (CE_zero - CE_clean)`` with zero = the MLP's output zeroed, KL(clean || spliced).

Then one ``crosscoder`` over the four block outputs (k and width as given): per-block FVU on
held-out rows, decoder-norm shares, and its CE-loss score with all four blocks replaced at once
(zero: all four zeroed). Training uses the loop's step contract (``featureforge.testing.train_steps``)
on rows scaled as the loop scales them. Prints one JSON object (with provenance) and writes it to ``--out``.

    .venv/bin/python benchmarks/coders_gpt2.py --model stores/models/stdlib-gpt2 [--rows 120000] [--k 16] [--d-dict 1024]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def capture(source: Any, blocks: int, rows: int, start_doc: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """Rows at the stored positions of every block's MLP input/output and block output (one pass per batch)."""
    from featureforge.sites import HookSite

    model = source.loaded.model
    sites = {}
    for l in range(blocks):
        sites[f"h.{l}.mlp:input"] = HookSite.find(model, f"transformer.h.{l}.mlp", "input")
        sites[f"h.{l}.mlp:output"] = HookSite.find(model, f"transformer.h.{l}.mlp", "output")
        sites[f"h.{l}"] = HookSite.find(model, f"transformer.h.{l}", "output")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in sites}
    seen, last_doc = 0, start_doc
    with source.splice(None) as live:
        for b in live.batches(start_doc=start_doc):
            held: dict[str, torch.Tensor] = {}
            handles = [s.attach(lambda x, k=k: held.__setitem__(k, x)) for k, s in sites.items()]
            try:
                live(b.input_ids, b.attention_mask, replace="none", token_mask=b.token_mask)
            finally:
                for h in handles:
                    h.remove()
            mask = b.token_mask.to(next(iter(held.values())).device)
            for k in sites:
                out[k].append(held[k][mask].float().cpu())
            seen += int(mask.sum())
            last_doc = max(last_doc, int(b.doc_ids.max()))
            if seen >= rows:
                break
    return {k: torch.cat(v)[:rows] for k, v in out.items()}, last_doc + 1


def scale(x: torch.Tensor) -> float:
    """The loop's normalisation: rows times s have mean squared norm d."""
    return float((x.shape[-1] / x.pow(2).sum(-1).mean()) ** 0.5) if x.dim() == 2 else 1.0


def train(trainer: Any, d_in: int, roles: dict[str, torch.Tensor], epochs: int, batch: int, lr: float | None, seed: int) -> Any:
    from featureforge.testing import train_steps

    torch.manual_seed(seed)
    dictionary = trainer.build(d_in)
    n = len(next(iter(roles.values())))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    batches = []
    for _ in range(epochs):
        for i in range(0, n - batch + 1, batch):
            idx = order[i:i + batch]
            batches.append({r: v[idx] for r, v in roles.items()})
        order = order[torch.randperm(n, generator=torch.Generator().manual_seed(seed + len(batches)))]
    with torch.no_grad():
        trainer.initialize(dictionary, batches[0] if len(roles) > 1 or "acts" not in roles else batches[0]["acts"])
    steps = len(batches)
    train_steps(trainer, dictionary, batches, lr=lr or trainer.learning_rate(dictionary, steps))
    return dictionary.eval(), steps


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def downstream(source: Any, dictionary: Any, start_doc: int, sequences: int, batch_size: int) -> dict[str, float]:
    from featureforge_hf._splice import summarize

    totals: dict[str, float] = {}
    with source.splice(dictionary) as live:
        for b in live.batches(start_doc=start_doc, max_sequences=sequences, batch_size=batch_size):
            for k, v in live.compare(b, ("dictionary", "zero")).items():
                totals[k] = totals.get(k, 0.0) + v
    s = summarize(totals)
    return {"ce_clean": s["ce_clean"], "ce_dictionary": s["ce_dictionary"], "ce_zero": s["ce_zero"],
            "ce_loss_score": s["ce_loss_score"], "kl_dictionary": s["kl_dictionary"], "tokens": s["tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "stores" / "models" / "stdlib-gpt2"))
    p.add_argument("--rows", type=int, default=120_000, help="training rows per site")
    p.add_argument("--eval-rows", type=int, default=16_384, help="held-out rows for FVU")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--d-dict", type=int, default=1024)
    p.add_argument("--cc-k", type=int, default=32, help="crosscoder: active latents per row over all 4 blocks")
    p.add_argument("--cc-d-dict", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-sequences", type=int, default=128)
    p.add_argument("--blocks", default="0,1,2,3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    import provenance

    provenance.add_out_argument(p, "coders_gpt2")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import featureforge as ff
    from featureforge_hf import HFSource
    from featureforge_sae import CrosscoderTrainer, TopKTrainer, TranscoderTrainer
    from featureforge_sae.coder_report import SiteFVU, decoder_norm_shares, share_summary

    t0 = time.perf_counter()
    src = HFSource(model=a.model, hook="transformer.h.0", context_size=128, batch_size=16, seed=0)
    n_blocks = len(src.loaded.model.transformer.h)
    rows, next_doc = capture(src, n_blocks, a.rows)
    held, eval_doc = capture(src, n_blocks, a.eval_rows, start_doc=next_doc)
    capture_s = time.perf_counter() - t0
    result: dict[str, Any] = {"model": a.model, "rows": a.rows, "eval_rows": a.eval_rows, "k": a.k, "d_dict": a.d_dict,
                              "epochs": a.epochs, "batch_size": a.batch_size, "eval_sequences": a.eval_sequences,
                              "held_out_from_doc": eval_doc, "capture_s": round(capture_s, 1), "blocks": {}}
    for l in (int(b) for b in a.blocks.split(",")):
        x, y = rows[f"h.{l}.mlp:input"], rows[f"h.{l}.mlp:output"]
        sx, sy = scale(x), scale(y)
        mlp_in, mlp_out = f"transformer.h.{l}.mlp:input", f"transformer.h.{l}.mlp:output"
        cell: dict[str, Any] = {}
        for label, trainer in (("transcoder", TranscoderTrainer({"k": a.k, "d_dict": a.d_dict, "source": mlp_in, "target": mlp_out})),
                               ("skip_transcoder", TranscoderTrainer({"k": a.k, "d_dict": a.d_dict, "skip": True, "source": mlp_in, "target": mlp_out})),
                               ("topk_on_mlp_out", TopKTrainer({"k": a.k, "d_dict": a.d_dict}))):
            t = time.perf_counter()
            if label == "topk_on_mlp_out":
                d, steps = train(trainer, x.shape[1], {"acts": y * sy}, a.epochs, a.batch_size, None, a.seed)
                d.input_scale.fill_(sy)
                d.config = {"trainer": "topk", "options": trainer.options_dict()}
                site_src = HFSource(model=a.model, hook=f"transformer.h.{l}.mlp", site="output", context_size=128, batch_size=16, seed=0)
                with torch.no_grad():
                    out = d(held[f"h.{l}.mlp:output"])
            else:
                d, steps = train(trainer, x.shape[1], {"acts": x * sx, "target": y * sy}, a.epochs, a.batch_size, None, a.seed)
                d.set_role_scales({"acts": sx, "target": sy})
                d.config = {"trainer": "transcoder", "options": trainer.options_dict()}
                site_src = HFSource(model=a.model, hook=f"transformer.h.{l}.mlp", site="input", context_size=128, batch_size=16, seed=0)
                with torch.no_grad():
                    out = d(held[f"h.{l}.mlp:input"])
            train_s = time.perf_counter() - t
            cell[label] = {"steps": steps, "train_s": round(train_s, 1), "fvu_mlp_out": fvu(held[f"h.{l}.mlp:output"], out.x_hat),
                           "l0": float((out.codes > 0).sum(1).float().mean()),
                           **downstream(site_src, d, eval_doc, a.eval_sequences, 16)}
            print(f"block {l} {label}: {cell[label]}", flush=True)
        result["blocks"][str(l)] = cell
    # crosscoder over the block outputs
    names = [f"transformer.h.{l}" for l in range(n_blocks)]
    stacked = torch.stack([rows[f"h.{l}"] for l in range(n_blocks)], 1)
    scales = [scale(rows[f"h.{l}"]) for l in range(n_blocks)]
    s = torch.tensor(scales)[None, :, None]
    cc = CrosscoderTrainer({"k": a.cc_k, "d_dict": a.cc_d_dict, "sites": ",".join(names)})
    t = time.perf_counter()
    d, steps = train(cc, stacked.shape[2], {"sites": stacked * s}, a.epochs, a.batch_size, None, a.seed)
    d.set_role_scales({"sites": scales})
    d.config = {"trainer": "crosscoder", "options": cc.options_dict()}
    train_s = time.perf_counter() - t
    held_stacked = torch.stack([held[f"h.{l}"] for l in range(n_blocks)], 1)
    stats = SiteFVU(n_blocks)
    with torch.no_grad():
        out = d(held_stacked)
    stats.update(held_stacked, out.x_hat)
    shares = decoder_norm_shares(d.decoder_directions)
    result["crosscoder"] = {"k": a.cc_k, "d_dict": a.cc_d_dict, "steps": steps, "train_s": round(train_s, 1),
                            **stats.result(names), "decoder_norm_shares": share_summary(shares, names),
                            **downstream(src, d, eval_doc, a.eval_sequences, 16)}
    print(f"crosscoder: {result['crosscoder']}", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["featureforge"] = ff.__version__ if hasattr(ff, "__version__") else None
    provenance.emit(result, provenance.out_path(a.out, "coders_gpt2"))


if __name__ == "__main__":
    main()
