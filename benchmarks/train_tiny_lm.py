"""Train a small GPT-2-style language model on the Python standard library's own source, on CPU.

Nothing is downloaded: the text is this machine's standard library (the ``hf`` source's default
data), the tokenizer a byte-level BPE trained here with ``tokenizers``, the model a randomly
initialised ``transformers`` GPT-2. Training stops after ``--minutes``; the model and tokenizer are
saved as a Hugging Face folder under ``stores/models/<name>`` (git-ignored), usable as
``featureforge cache --source hf -o model=stores/models/<name> -o grads=true ...``.

Prints one JSON object: final train loss (mean of the last steps), validation loss (held-out
documents: every 50th), tokens/s, parameters, steps, where it saved.

    .venv/bin/python benchmarks/train_tiny_lm.py --minutes 5 [--name stdlib-gpt2] [--layers 4] [--d-model 128]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path

import torch

from featureforge_hf import stdlib_documents
from featureforge_hf.tiny import build_gpt2, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents' tokens in one 1-D tensor, each document after a BOS token (packed training)."""
    ids = tokenizer(docs, add_special_tokens=True)["input_ids"]
    return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)


def batch_of(stream: torch.Tensor, starts: torch.Tensor, context: int) -> torch.Tensor:
    return torch.stack([stream[s : s + context] for s in starts.tolist()])


@torch.no_grad()
def mean_loss(model, batches: list[torch.Tensor]) -> float:
    model.eval()
    losses = [float(model(input_ids=b, labels=b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="stdlib-gpt2", help="folder name under --out-root")
    parser.add_argument("--out-root", default=str(ROOT / "stores" / "models"))
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-chars", type=int, default=4_000_000, help="standard-library text used (characters)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    docs, chars = [], 0
    for doc in stdlib_documents():
        docs.append(doc)
        chars += len(doc)
        if chars >= args.max_chars:
            break
    train_docs = [d for i, d in enumerate(docs) if i % 50]
    val_docs = [d for i, d in enumerate(docs) if i % 50 == 0]
    tokenizer = make_tokenizer(train_docs, vocab_size=args.vocab)
    train = token_stream(tokenizer, train_docs)
    val = token_stream(tokenizer, val_docs)
    prep_s = time.perf_counter() - started

    model = build_gpt2(tokenizer, n_layer=args.layers, n_embd=args.d_model, n_head=args.heads, n_positions=args.context, seed=args.seed)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    n_val = min(16, max(1, (len(val) - args.context) // (args.context * args.batch_size)))
    val_starts = torch.arange(n_val * args.batch_size) * args.context
    val_batches = [batch_of(val, val_starts[i * args.batch_size : (i + 1) * args.batch_size], args.context) for i in range(n_val)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    budget = args.minutes * 60.0
    warmup = 50
    losses: list[float] = []
    step = 0
    train_start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - train_start
        if elapsed >= budget and step > 0:
            break
        progress = min(1.0, elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - args.context, (args.batch_size,), generator=gen)
        batch = batch_of(train, starts, args.context)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
    train_s = time.perf_counter() - train_start
    val_loss = mean_loss(model, val_batches)

    out = Path(args.out_root) / args.name
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    from transformers.utils import logging

    logging.disable_progress_bar()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, min(50, len(losses) // 10)) :]
    report = {
        "model": str(out),
        "params": params,
        "config": {"n_layer": args.layers, "n_embd": args.d_model, "n_head": args.heads, "n_positions": args.context, "vocab_size": len(tokenizer)},
        "data": {"stdlib_chars": chars, "train_tokens": len(train), "val_tokens": len(val), "documents": len(docs)},
        "steps": step,
        "tokens_seen": step * args.batch_size * args.context,
        "tokens_per_s": round(step * args.batch_size * args.context / train_s, 1),
        "train_loss": round(sum(tail) / len(tail), 4),
        "first_loss": round(losses[0], 4),
        "val_loss": round(val_loss, 4),
        "prep_s": round(prep_s, 1),
        "train_s": round(train_s, 1),
        "threads": args.threads,
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
