"""MoE-X claim (2) at small scale: validation loss of dense GELU, Switch and MoE-X language models.

Yang et al. 2025 (arXiv 2503.07639) claim MoE-X's interpretability costs no language-modelling
quality. Here: byte-level models (``featureforge_testbeds.chess_lm.ChessLM`` with a 256-byte vocabulary)
on the Python standard library's source (the ``hf`` source's default text, nothing downloaded),
every 20th document held out for validation; dense GELU, Switch and MoE-X MLPs at equal active
parameters (8 experts, top-2, width 2 d_model), same steps, batch, learning rate and data order
per seed, several seeds. Prints one JSON object (also written to ``--out`` after every model).

    python benchmarks/moex_text.py --out benchmarks/results/moex_text/moex_text.json   # ~10 CPU-minutes per seed
    python benchmarks/moex_text.py --quick                                   # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import provenance

FULL = dict(n_layer=3, d_model=64, n_head=4, context=64, steps=300, batch_size=16, max_chars=2_000_000, val_rows=256, lr=3e-3)
QUICK = dict(n_layer=1, d_model=16, n_head=2, context=32, steps=4, batch_size=4, max_chars=60_000, val_rows=8, lr=3e-3)


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def byte_rows(docs: list[str], context: int) -> torch.Tensor:
    """The documents' UTF-8 bytes, concatenated and cut into ``[n, context]`` rows."""
    data = np.frombuffer("\n".join(docs).encode("utf-8"), dtype=np.uint8)
    n = len(data) // context
    return torch.from_numpy(data[: n * context].astype(np.int64)).view(n, context)


def load_text(s: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from featureforge_hf import stdlib_documents

    docs, chars = [], 0
    for doc in stdlib_documents():
        docs.append(doc)
        chars += len(doc)
        if chars >= s["max_chars"]:
            break
    train = byte_rows([d for i, d in enumerate(docs) if i % 20], s["context"])
    val = byte_rows([d for i, d in enumerate(docs) if i % 20 == 0], s["context"])[: s["val_rows"]]
    return train, val, {"documents": len(docs), "chars": chars, "train_rows": len(train), "val_rows": len(val)}


def spread(values: list[float]) -> dict:
    """Mean, sample std and range over seeds."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "min": float(a.min()), "max": float(a.max()), "n": len(a)}


def main(argv=None) -> dict:
    from featureforge_testbeds import chess_lm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--kinds", default="gelu,switch,moex")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None)
    provenance.add_out_argument(p, "moex_text", help="rewritten after every model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", default=None, help="comma list of result files (e.g. one per seed) to combine into --out; trains nothing")
    args = p.parse_args(argv)
    out = provenance.out_path(args.out, "moex_text")
    if args.merge:
        parts = [json.loads(Path(x).read_text()) for x in args.merge.split(",")]
        if any(part["settings"] != parts[0]["settings"] for part in parts):
            raise SystemExit("moex_text --merge: the files were run with different settings; merge only runs of one grid")
        result = parts[0] | {"runs": {}, "merged_from": args.merge.split(","), "seconds": sum(part["seconds"] for part in parts),
                             "merged_provenance": [part.get("provenance") for part in parts]}
        for part in parts:
            for kind, per_seed in part["runs"].items():
                result["runs"].setdefault(kind, {}).update(per_seed)
        return emit(result, out)
    torch.set_num_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    if args.steps:
        s["steps"] = args.steps
    t0 = time.perf_counter()
    train, val, data = load_text(s)
    log("text", data)
    result: dict = {"benchmark": "moex_text", "quick": args.quick, "settings": s, "data": data, "torch_threads": torch.get_num_threads(), "runs": {}}

    def flush() -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        provenance.save(result, out)

    seeds = [int(x) for x in args.seeds.split(",")]
    kinds = args.kinds.split(",")
    for seed in seeds:
        for kind in kinds:
            torch.manual_seed(seed)
            cfg = chess_lm.LMConfig(mlp=kind, n_layer=s["n_layer"], d_model=s["d_model"], n_head=s["n_head"], context=s["context"], vocab_size=256)
            model = chess_lm.ChessLM(cfg)
            r = chess_lm.train_lm(model, train, val, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed)
            result["runs"].setdefault(kind, {})[str(seed)] = {"val_loss": r.val_loss, "train_loss": r.train_loss, "seconds": r.seconds,
                                                               "active_mlp_params": model.active_mlp_params(),
                                                               "params": sum(p.numel() for p in model.parameters())}
            log(kind, "seed", seed, "val loss", round(r.val_loss, 4), f"{r.seconds:.0f}s")
            flush()
    return emit(result, out)


def emit(result: dict, out: Path) -> dict:
    """Add the over-seeds table and paired differences, write ``out``, print the JSON."""
    runs = result["runs"]
    result["table"] = {kind: {"val_loss": spread([v["val_loss"] for v in per_seed.values()]),
                              "val_bits_per_byte": spread([v["val_loss"] / np.log(2) for v in per_seed.values()]),
                              "active_mlp_params": next(iter(per_seed.values()))["active_mlp_params"],
                              "params": next(iter(per_seed.values()))["params"]} for kind, per_seed in runs.items()}
    result["paired_val_loss"] = {}
    for a, b in (("moex", "gelu"), ("switch", "gelu"), ("moex", "switch")):
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        if seeds:
            result["paired_val_loss"][f"{a}-{b}"] = spread([runs[a][sd]["val_loss"] - runs[b][sd]["val_loss"] for sd in seeds])
    provenance.emit(result, out)
    return result


if __name__ == "__main__":
    main()
