"""Contrastive steering vectors against single SAE latents on the stdlib GPT-2 (docs/methods/steering.md).

For a few concepts defined by prompt pairs taken from this machine's standard library (code lines
vs docstring prose; ``return`` lines vs assignments; ``raise`` lines vs plain calls): the
mean-difference vector at ``--hook``, its decomposition in a TopK dictionary's latents
(non-negative pursuit, cosine ranking), then one ``steering`` evaluator run scoring the vector and
the candidate latents (the fit's top three, the top three by cosine) with the same metrics and the
random-direction control. "Best single latent" is reported two ways: chosen a priori (the fit's
largest weight) and after the fact (the candidate with the largest output-score gain at the top α,
which is selected on the scored numbers and so flatters the latent). Then a concept score the
evaluator does not have: on 32 held-out contexts, the mean gain in log P(next token ∈ T_c), T_c the
20 tokens most over-represented in the positive prompts, for every handle and α, against 8 random
directions of equal push.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/steering_vectors.py --workdir /tmp/vec_bench

Needs the tiny LM (``featureforge tiny-lm``), a store at ``--hook`` and a TopK run on it (made here
when missing). Prints one JSON object (also written to ``--out``); steps already done in
``--workdir`` are reused.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import math
import sys
import tokenize
from pathlib import Path
from typing import Any

import featureforge as ff

import provenance

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("output_score_gain", "stability", "kl_rest", "ce_increase")


def stdlib_lines(limit_files: int = 400) -> dict[str, list[str]]:
    """Code lines, docstring lines, ``return`` lines, assignments, ``raise`` lines and bare calls of stdlib modules (sorted, deterministic)."""
    from featureforge_hf._data import stdlib_files

    found: dict[str, list[str]] = {"code": [], "prose": [], "return": [], "assign": [], "raise": [], "call": []}
    for path in sorted(stdlib_files())[:limit_files]:
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = text.splitlines()
        doc_lines: set[int] = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc_lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        try:
            comment_lines = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT}
        except (tokenize.TokenError, IndentationError, SyntaxError):
            continue
        for n, line in enumerate(lines, 1):
            s = line.strip()
            if n in doc_lines:
                s = s.replace('"""', "").replace("'''", "").strip()  # a docstring's opening or closing line
            if not 24 <= len(s) <= 80 or n in comment_lines:
                continue
            if n in doc_lines:
                words = s.split()
                if len(words) >= 5 and sum(c.isalpha() or c == " " for c in s) / len(s) > 0.9 and not s.startswith((">>>", "...")):
                    found["prose"].append(s)
                continue
            if "(" in s and not s.startswith(("def ", "class ", "@", "#", '"', "'")):
                found["code"].append(s)
            if s.startswith("return ") and len(s) > 12:
                found["return"].append(s)
            elif s.startswith("raise ") and "(" in s:
                found["raise"].append(s)
            elif "=" in s and s.split("=")[0].strip().isidentifier() and "==" not in s:
                found["assign"].append(s)
            elif s.endswith(")") and s.split("(")[0].replace(".", "").isidentifier():
                found["call"].append(s)
    return found


def concepts(n: int) -> dict[str, tuple[list[str], list[str]]]:
    """concept -> (positive, negative) prompts, ``n`` each, spread evenly over the library."""
    lines = stdlib_lines()

    def pick(items: list[str]) -> list[str]:
        unique = list(dict.fromkeys(items))
        step = max(1, len(unique) // n)
        return unique[::step][:n]

    return {"code_vs_prose": (pick(lines["code"]), pick(lines["prose"])),
            "return_vs_assign": (pick(lines["return"]), pick(lines["assign"])),
            "raise_vs_call": (pick(lines["raise"]), pick(lines["call"]))}


def concept_tokens(live: Any, pos: list[str], neg: list[str], n: int = 20) -> list[int]:
    """The ``n`` tokens most over-represented in the positive prompts against the negative ones (add-one log ratio, >= 3 uses)."""
    from collections import Counter

    cp = Counter(t for p in pos for t in live.prompt_ids(p))
    cn = Counter(t for p in neg for t in live.prompt_ids(p))
    tp, tn = sum(cp.values()), sum(cn.values())
    ratio = {t: math.log((cp[t] + 1) / tp) - math.log((cn[t] + 1) / tn) for t in cp if cp[t] >= 3}
    return sorted(ratio, key=lambda t: -ratio[t])[:n]


def held_out_contexts(live: Any, store: Any, n: int, tokens: int = 32) -> tuple[Any, Any, Any]:
    """The first ``n`` held-out windows (documents after the store's) with at least ``tokens`` real tokens, cut to ``tokens``."""
    import torch

    start = max(int(store.read(r.index * store.rows_per_chunk, r.index * store.rows_per_chunk + r.rows, "doc_ids").max())
                for r in store.committed_chunks()) + 1
    ids, keep = [], []
    for b in live.batches(start_doc=start, max_sequences=4 * n):
        for i in range(b.input_ids.shape[0]):
            if int(b.attention_mask[i].sum()) >= tokens and len(ids) < n:
                ids.append(b.input_ids[i, :tokens])
                keep.append(b.token_mask[i, :tokens])
    stacked = torch.stack(ids)
    return stacked, torch.ones_like(stacked), torch.stack(keep)


def concept_score(live: Any, store: Any, dictionary: Any, vec: Any, latents: list[int], pos: list[str], neg: list[str],
                  alphas: list[float], vector_alphas: list[float], contexts: int, seed: int = 0, controls: int = 8) -> dict[str, Any]:
    """Mean gain in log P(next token ∈ T_c) at the last position of held-out contexts, T_c the concept's tokens.

    Each handle at each α, and ``controls`` random directions of the same push (seeded; mean and sd), on the same contexts:
    does the edit move the output towards the concept the prompts define (not only towards its own
    promoted tokens, which the evaluator's output score measures)?
    """
    import torch

    from featureforge.interventions import DirectionEdit, Intervention, direction_replacement, latent_directions, replacement
    from featureforge.steering import store_typical

    T = torch.tensor(concept_tokens(live, pos, neg))
    ids, mask, keep = held_out_contexts(live, store, contexts)

    def target(out: Any) -> Any:
        return torch.logsumexp(torch.log_softmax(out[:, -1].double(), -1)[:, T], -1)

    clean = target(live(ids, mask, replace="none"))
    gen = torch.Generator().manual_seed(seed)
    typical = store_typical(dictionary, store)
    handles: list[tuple[str, Any, Any, float, list[float]]] = [("vector", None, vec.direction, vec.typical, vector_alphas)]
    for i in latents:
        unit, size = latent_directions(dictionary, [i], typical)
        handles.append((f"latent {i}", i, unit[0], float(size[0]), alphas))
    out: dict[str, Any] = {"tokens": live.token_texts(T.tolist()), "contexts": int(ids.shape[0])}
    for label, how, direction, size, strengths in handles:
        rands = torch.randn(controls, direction.shape[0], generator=gen)
        row: dict[str, float] = {"push_norm": round(size, 4)}
        for a in strengths:
            if label == "vector":
                fn = direction_replacement(DirectionEdit(direction, "add", a, torch.tensor([size])))
            else:
                fn = replacement(dictionary, [Intervention((how,), "add", a)], typical)
            row[f"a{a:g}"] = round(float((target(live(ids, mask, replace=fn, token_mask=keep)) - clean).mean()), 4)
            ctl = torch.tensor([float((target(live(ids, mask, replace=direction_replacement(DirectionEdit(r, "add", a * size, units="absolute")),
                                                   token_mask=keep)) - clean).mean()) for r in rands])
            row[f"control_a{a:g}"] = round(float(ctl.mean()), 4)  # mean and sd over `controls` random directions of equal push
            row[f"control_sd_a{a:g}"] = round(float(ctl.std()), 4)
        out[label] = row
    return out


def ablation(live: Any, store: Any, dictionary: Any, vec: Any, latents: list[int], pos: list[str], neg: list[str], contexts: int,
             seed: int = 0, controls: int = 8) -> dict[str, Any]:
    """Project out the vector, the span of ``latents``' decoder rows, or a random direction / random span of the same rank.

    On the held-out contexts: the change in log P(next token ∈ T_c) at the last position and in the
    mean next-token CE over every position (the subspace handle of ``featureforge steer --mode ablate``).
    """
    import torch

    from featureforge.interventions import DirectionEdit, direction_replacement, latent_directions

    T = torch.tensor(concept_tokens(live, pos, neg))
    ids, mask, keep = held_out_contexts(live, store, contexts)

    def measure(fn: Any) -> tuple[float, float]:
        out = live(ids, mask, replace=fn, token_mask=keep).double()
        lp = torch.log_softmax(out, -1)
        ce = -lp[:, :-1].gather(-1, ids[:, 1:, None]).mean()
        return float(torch.logsumexp(lp[:, -1][:, T], -1).mean()), float(ce)

    base = measure("none")
    gen = torch.Generator().manual_seed(seed)
    unit, _ = latent_directions(dictionary, latents)
    spans = {"vector": vec.direction[None], f"latents {','.join(map(str, latents))}": unit,
             "vector + latents": torch.cat([vec.direction[None], unit])}
    out: dict[str, Any] = {}
    for label, rows in spans.items():
        got = measure(direction_replacement(DirectionEdit(rows, "ablate")))
        rand = [measure(direction_replacement(DirectionEdit(torch.randn(rows.shape[0], rows.shape[1], generator=gen), "ablate")))
                for _ in range(controls)]
        out[label] = {"rank": int(rows.shape[0]), "concept_change": round(got[0] - base[0], 4), "ce_change": round(got[1] - base[1], 4),
                      "control_concept_change": round(sum(r[0] - base[0] for r in rand) / controls, 4),
                      "control_ce_change": round(sum(r[1] - base[1] for r in rand) / controls, 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default=str(ROOT / "stores" / "models" / "stdlib-gpt2"))
    p.add_argument("--hook", default="transformer.h.1")
    p.add_argument("--rows", type=int, default=150_000)
    p.add_argument("--d-dict", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--prompts", type=int, default=64, help="Prompts per side of each concept.")
    p.add_argument("--contexts", type=int, default=32)
    p.add_argument("--alphas", default="2,4,8", help="Latents' strengths, × typical firing value.")
    p.add_argument("--vector-alphas", default="0.25,0.5,1", help="Vectors' strengths, × typical projection (1: the whole concept shift).")
    p.add_argument("--threads", type=int, default=1)
    provenance.add_out_argument(p, "steering_vectors")
    a = p.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(Path(a.model).resolve())
    store_path, run_dir = work / "store.zarr", work / "topk"
    try:
        store = ff.open_store(str(store_path))
        assert store.complete
    except Exception:
        store = ff.cache("hf", {"model": model, "hook": a.hook, "batch_size": 32}, store=str(store_path), rows=a.rows, overwrite=True, progress=False)
    if not (run_dir / "config.json").exists() or json.loads((run_dir / "config.json").read_text()).get("status") != "complete":
        ff.train("topk", {"d_dict": a.d_dict, "k": a.k}, store=str(store_path), out=str(run_dir), overwrite=True, epochs=2.0,
                 batch_size=1024, threads=a.threads, progress=False)
    options = dict(store.source["options"])
    results: dict[str, Any] = {}
    alphas = [float(x) for x in a.alphas.split(",")]
    top_tag = f"a{alphas[-1]:g}"
    for name, (pos, neg) in concepts(a.prompts).items():
        done = work / f"{name}.json"
        if done.exists():
            results[name] = json.loads(done.read_text())
            continue
        vec_dir = work / f"vec_{name}"
        vec = ff.vector("hf", options, positive=pos, negative=neg, out=str(vec_dir), overwrite=True)
        dec = ff.decompose(str(vec_dir), str(run_dir), store=store, k=8, top=5, contexts=2)
        fit_ids = [f["latent"] for f in dec.fit[:3]]
        cos_ids = [c["latent"] for c in dec.cosine[:3]]
        candidates = list(dict.fromkeys(fit_ids + cos_ids))
        ff.evaluate(run_dir, store, {"steering": {"latents": 0, "latent_ids": ",".join(map(str, candidates)), "vectors": str(vec_dir),
                                                           "contexts": a.contexts, "alphas": a.alphas, "vector_alphas": a.vector_alphas}}, out_dir=work / f"eval_{name}")
        from featureforge.run import plots_dir

        table = json.loads((plots_dir(work / f"eval_{name}") / "steering.json").read_text())

        def numbers(row: dict[str, Any]) -> dict[str, Any]:
            return {k: round(v, 5) for k, v in row.items() if isinstance(v, float) and k.split("_a")[0].removeprefix("control_") in KEYS + ("push_norm",)}

        latents = {int(r["latent"]): numbers(r) | {"contexts": r["contexts"]} for r in table["latents"]}
        a_priori = next((i for i in fit_ids if i in latents), None)
        post_hoc = max(latents, key=lambda i: latents[i][f"output_score_gain_{top_tag}"]) if latents else None
        results[name] = {
            "prompts": [len(pos), len(neg)], "examples": [pos[:2], neg[:2]],
            "vector": {"typical": vec.typical, "difference_norm": vec.stats["difference_norm"], "row_rms_norm": vec.stats["row_rms_norm"],
                       **numbers(table["vectors"][0])},
            "decomposition": {"explained": round(dec.explained, 4), "fit_cosine": round(dec.fit_cosine, 4),
                              "fit": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items() if k != "contexts"}
                                      | {"contexts": [c["text"][-24:] + "[" + c["token"] + "]" for c in f.get("contexts", [])]} for f in dec.fit],
                              "cosine": dec.cosine},
            "latents": latents, "best_latent_a_priori": a_priori, "best_latent_post_hoc": post_hoc,
            "skipped_candidates": [i for i in candidates if i not in latents],
        }
        done.write_text(json.dumps(results[name]))
        print(json.dumps({name: results[name]["vector"]}), file=sys.stderr, flush=True)
    from featureforge.steering import live_source
    from featureforge.vectors import load_vector

    dictionary = ff.load(str(run_dir))
    with live_source(store).splice(dictionary) as live:
        for name, (pos, neg) in concepts(a.prompts).items():
            if "concept_score" not in results[name]:
                latents = sorted(int(i) for i in results[name]["latents"])
                results[name]["concept_score"] = concept_score(live, store, dictionary, load_vector(work / f"vec_{name}"), latents, pos, neg,
                                                               alphas, [float(x) for x in a.vector_alphas.split(",")], a.contexts)
                (work / f"{name}.json").write_text(json.dumps(results[name]))
            if "ablation" not in results[name]:
                top3 = [f["latent"] for f in results[name]["decomposition"]["fit"][:3]]
                results[name]["ablation"] = ablation(live, store, dictionary, load_vector(work / f"vec_{name}"), top3, pos, neg, a.contexts)
                (work / f"{name}.json").write_text(json.dumps(results[name]))
            if "pca" not in results[name]:  # the top direction of the paired differences, on the same footing
                mean_vec = load_vector(work / f"vec_{name}")
                pca = ff.vector("hf", options, positive=pos, negative=neg, method="pca", out=str(work / f"vec_{name}_pca"), overwrite=True)
                score = concept_score(live, store, dictionary, pca, [], pos, neg, alphas, [float(x) for x in a.vector_alphas.split(",")], a.contexts)
                results[name]["pca"] = {"cosine_to_mean": round(float(pca.direction @ mean_vec.direction), 4), "typical": round(pca.typical, 4),
                                        "explained_by_top": round(pca.stats["explained_by_top"], 4), "concept_score": score["vector"]}
                (work / f"{name}.json").write_text(json.dumps(results[name]))
    provenance.emit({"setup": {**vars(a), "store_rows": store.rows}, "concepts": results}, provenance.out_path(a.out, "steering_vectors"))


if __name__ == "__main__":
    main()
