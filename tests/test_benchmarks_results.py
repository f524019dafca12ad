"""benchmarks/ keeps its promises to a reader: every results file the docs cite exists, and a
benchmark run writes ``--out`` with the provenance benchmarks/README.md describes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"benchmarks/results/[A-Za-z0-9_./{},-]+")


def _cited_paths(text: str) -> list[str]:
    """Results paths named in ``text``, with ``{a,b}`` alternatives expanded (patterns with ``*``, ``$`` or ``<`` skipped)."""
    paths = []
    for match in CITED.finditer(text):
        if text[match.end():match.end() + 1] in ("*", "$", "<"):
            continue
        path = match.group(0).rstrip(".,")
        if "{" in path:
            head, rest = path.split("{", 1)
            options, tail = rest.split("}", 1)
            paths += [head + option + tail for option in options.split(",")]
        elif not path.endswith("/"):
            paths.append(path)
    return paths


def test_every_results_file_the_docs_cite_exists():
    docs = [REPO / "README.md", REPO / "benchmarks" / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("plugins/*/README.md")]
    missing = [f"{doc.relative_to(REPO)}: {path}" for doc in docs for path in _cited_paths(doc.read_text())
               if not (REPO / path).exists()]
    assert not missing, "cited results files that do not exist:\n" + "\n".join(missing)
    assert not list((REPO / "benchmarks").glob("results_*")), "results files belong under benchmarks/results/<script>/"


def test_a_benchmark_writes_out_with_its_provenance(tmp_path):
    out = tmp_path / "nested" / "synthetic.json"
    argv = [sys.executable, "benchmarks/synthetic_throughput.py", "--rows", "2048", "--repeats", "1", "--only", "default_d64", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads(out.read_text())
    assert json.loads(done.stdout) == written and f"wrote {out}" in done.stderr
    assert written["default_d64"]["source_rows_per_s"] > 0
    p = written["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert p["source"]["commit"] == (head or None) and isinstance(p["source"]["dirty"], bool)
    assert p["command"].endswith("benchmarks/synthetic_throughput.py --rows 2048 --repeats 1 --only default_d64 --out " + str(out))
    assert p["machine"]["cpu"] and {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(p["machine"])
    import torch

    assert p["torch"]["version"] == torch.__version__
    assert p["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"num_threads", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OPENBLAS_CORETYPE"} <= set(p["torch"])
