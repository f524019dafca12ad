"""Train a small GPT-2-style language model on the Python standard library's own source, on CPU.

The training itself is ``featureforge_testbeds.train_gpt2``, also the documented command
``featureforge tiny-lm`` (cached after the first run); this script keeps the benchmark's knobs.
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
import json
import os
from pathlib import Path

from featureforge_testbeds import TinyLMConfig, train_gpt2

ROOT = Path(__file__).resolve().parents[1]


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
    a = parser.parse_args()
    cfg = TinyLMConfig(minutes=a.minutes, layers=a.layers, d_model=a.d_model, heads=a.heads, context=a.context, vocab=a.vocab,
                       batch_size=a.batch_size, lr=a.lr, max_chars=a.max_chars, threads=a.threads, seed=a.seed)
    print(json.dumps(train_gpt2(Path(a.out_root) / a.name, cfg), indent=2))


if __name__ == "__main__":
    main()
