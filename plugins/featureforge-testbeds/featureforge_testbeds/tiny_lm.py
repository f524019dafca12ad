"""Training the small stdlib-text GPT-2 on CPU: the causal LM reachable without a download.

``featureforge tiny-lm`` (``cli.py``) trains it once into ``TINY_LM_DIR`` (or ``--out``) and
afterwards only prints where it is (cached; ``--retrain`` trains again); the causal demo does the
same on first use. The text is this machine's standard library (the ``hf`` source's default data),
the tokenizer a byte-level BPE trained here and the model a randomly initialised ``transformers``
GPT-2 (both from ``featureforge_hf.tiny``); every 50th document is held out for the validation
loss. Training stops after ``minutes``. With ``checkpoints`` N the model is also saved N times on the
way (``OUT/checkpoints/``, listed in the report), for comparing units over training.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

#: Where ``featureforge tiny-lm`` and the causal demo keep the model (relative to the working folder).
TINY_LM_DIR = "stores/models/stdlib-gpt2"
REPORT = "train_report.json"


@dataclasses.dataclass
class TinyLMConfig:
    """Size, data budget and time budget of one training run."""

    minutes: float = 5.0
    layers: int = 4
    d_model: int = 128
    heads: int = 4
    context: int = 128
    vocab: int = 2048
    batch_size: int = 16
    lr: float = 1e-3
    max_chars: int = 4_000_000
    threads: int = 1
    seed: int = 0
    steps: int = 0
    """Train exactly this many optimiser steps (the schedule and checkpoints follow steps, so models of
    several seeds are saved at the same steps); 0: train until ``minutes`` run out."""
    checkpoints: int = 0
    """Also save the model this many times during training (at equal fractions of the time budget), each into
    ``OUT/checkpoints/NN-stepS`` (a Hugging Face folder like OUT): the persistence of units over training."""


def cached_report(out: str | Path) -> dict[str, Any] | None:
    """The training report of a model already trained into ``out`` (None if there is none)."""
    path = Path(out) / REPORT
    if not (Path(out) / "config.json").exists() or not path.exists():
        return None
    return json.loads(path.read_text())


def train_gpt2(out: str | Path, cfg: TinyLMConfig, progress: Any = None) -> dict[str, Any]:
    """Train and save the model into ``out``; returns (and writes) the training report."""
    import torch

    from featureforge_hf import stdlib_documents
    from featureforge_hf.tiny import build_gpt2, make_tokenizer, save_model

    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    docs, chars = [], 0
    for doc in stdlib_documents():
        docs.append(doc)
        chars += len(doc)
        if chars >= cfg.max_chars:
            break
    train_docs = [d for i, d in enumerate(docs) if i % 50]
    val_docs = [d for i, d in enumerate(docs) if i % 50 == 0]
    tokenizer = make_tokenizer(train_docs, vocab_size=cfg.vocab)

    def stream(texts: list[str]) -> torch.Tensor:  # packed: each document after its BOS token
        return torch.tensor(list(itertools.chain.from_iterable(tokenizer(texts, add_special_tokens=True)["input_ids"])), dtype=torch.long)

    def batch_of(tokens: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return torch.stack([tokens[s : s + cfg.context] for s in starts.tolist()])

    train, val = stream(train_docs), stream(val_docs)
    prep_s = time.perf_counter() - started
    model = build_gpt2(tokenizer, n_layer=cfg.layers, n_embd=cfg.d_model, n_head=cfg.heads, n_positions=cfg.context, seed=cfg.seed)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    n_val = min(16, max(1, (len(val) - cfg.context) // (cfg.context * cfg.batch_size)))
    val_starts = torch.arange(n_val * cfg.batch_size) * cfg.context
    val_batches = [batch_of(val, val_starts[i * cfg.batch_size : (i + 1) * cfg.batch_size]) for i in range(n_val)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    budget, warmup = cfg.minutes * 60.0, 50
    losses: list[float] = []
    step = 0
    saved: list[dict[str, Any]] = []
    train_start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - train_start
        done = step / cfg.steps if cfg.steps else elapsed / budget  # fraction of the run behind us
        if len(saved) < cfg.checkpoints and done >= (len(saved) + 1) / (cfg.checkpoints + 1) and step > 0:
            saved.append(_checkpoint(out, model, tokenizer, len(saved), step))
        if done >= 1.0 and step > 0:
            break
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch_of(train, torch.randint(0, len(train) - cfg.context, (cfg.batch_size,), generator=gen))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if progress is not None:
            progress(min(done, 1.0) * budget)
    train_s = time.perf_counter() - train_start
    model.eval()
    with torch.no_grad():
        val_loss = sum(float(model(input_ids=b, labels=b).loss) for b in val_batches) / len(val_batches)
    folder = save_model(out, model, tokenizer)
    tail = losses[-max(1, min(50, len(losses) // 10)) :]
    report = {
        "model": str(folder),
        "params": sum(p.numel() for p in model.parameters()),
        "config": {"n_layer": cfg.layers, "n_embd": cfg.d_model, "n_head": cfg.heads, "n_positions": cfg.context, "vocab_size": len(tokenizer)},
        "data": {"stdlib_chars": chars, "train_tokens": len(train), "val_tokens": len(val), "documents": len(docs)},
        "steps": step,
        "tokens_seen": step * cfg.batch_size * cfg.context,
        "tokens_per_s": round(step * cfg.batch_size * cfg.context / train_s, 1),
        "train_loss": round(sum(tail) / len(tail), 4),
        "first_loss": round(losses[0], 4),
        "val_loss": round(val_loss, 4),
        "prep_s": round(prep_s, 1),
        "train_s": round(train_s, 1),
        "threads": cfg.threads,
        "options": dataclasses.asdict(cfg),
        "checkpoints": saved,
    }
    (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _checkpoint(out: str | Path, model: Any, tokenizer: Any, index: int, step: int) -> dict[str, Any]:
    """Save the model as it is now into ``OUT/checkpoints/NN-stepS`` (then back to training mode)."""
    from featureforge_hf.tiny import save_model

    model.eval()
    folder = save_model(Path(out) / "checkpoints" / f"{index:02d}-step{step}", model, tokenizer)
    model.train()
    return {"path": str(folder), "step": step}


def train_with_bar(out: str | Path, cfg: TinyLMConfig, enabled: bool | None = None) -> dict[str, Any]:
    """:func:`train_gpt2` with a progress bar over its time budget (``featureforge tiny-lm``, the causal demo)."""
    from featureforge import progress_bar

    with progress_bar(int(cfg.minutes * 60), "tiny-lm", unit="s", enabled=enabled) as bar:
        seen = [0]

        def tick(elapsed: float) -> None:
            bar.update(int(elapsed) - seen[0])
            seen[0] = int(elapsed)

        return train_gpt2(out, cfg, progress=tick)
