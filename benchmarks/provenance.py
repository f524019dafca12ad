"""Where a benchmark figure came from, and where its results file goes.

Every script in benchmarks/ that writes results uses this module, so that all results files answer
the same questions: which commit (and was the tree dirty), which command, which CPU (model, AVX2 /
AVX-512 / bf16 flags), which torch and CPU kernel level, and which thread settings. A figure without
these cannot be compared with a rerun on another machine.

It also owns the one output flag: ``--out PATH``, default ``benchmarks/results/<script>/<UTC time>.json``
(or ``.jsonl`` for scripts that append one line per run), so a new run never overwrites a results
file that docs/benchmarks.md cites.

Import it from a script in benchmarks/ as ``import provenance`` (the script's folder is on
``sys.path`` when Python runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_CORETYPE")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpu_model_and_flags() -> tuple[str | None, set[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo or, failing that, lscpu."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and model is None:
                model = value.strip()
    except OSError:
        pass
    if model is None or not flags:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and model is None:
                model = value.strip()
            elif key.strip() == "Flags" and not flags:
                flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


def machine() -> dict[str, Any]:
    """The CPU, its vector flags and the machine's size and load now (flat: results files since 2026-12 use these keys)."""
    model, flags = _cpu_model_and_flags()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {
        "cpu": model,
        **{flag: flag in flags for flag in CPU_FLAGS},
        "cpus_visible": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": mem_gib,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def torch_settings() -> dict[str, Any]:
    """torch's version, the CPU kernel level it dispatches to, and every thread setting that moves CPU timings."""
    import torch

    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        **{name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def source_state() -> dict[str, Any]:
    """The checkout being measured: HEAD, its subject, and whether tracked files differ from it."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # porcelain lines are "XY PATH": keep the leading status column (no strip before slicing)
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "subject": git("log", "-1", "--format=%s").strip(),
            "dirty": bool(changed), "dirty_paths": changed[:50]}


def command() -> str:
    """The command line as a user would type it again (interpreter name, script, arguments)."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def provenance() -> dict[str, Any]:
    """Everything a results file records about how it was made (see the module docstring)."""
    return {"written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command(),
            "source": source_state(), "machine": machine(), "torch": torch_settings()}


def default_out(script: str, suffix: str = ".json") -> Path:
    """A new file under benchmarks/results/<script>/, named by the UTC time: never one a document cites."""
    return RESULTS / script / (time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + suffix)


def add_out_argument(parser: argparse.ArgumentParser, script: str, suffix: str = ".json", help: str = "") -> None:
    """The one output flag every benchmark shares: ``--out PATH``."""
    what = "append one JSON line per run to PATH" if suffix == ".jsonl" else "write the results JSON to PATH"
    parser.add_argument("--out", metavar="PATH", default=None,
                        help=f"{what} (default: benchmarks/results/{script}/<UTC time>{suffix}){'; ' + help if help else ''}")


def out_path(out: str | None, script: str, suffix: str = ".json") -> Path:
    """The value of ``--out``, or the default; call it once per run, so rewrites after each model hit one file."""
    return Path(out) if out else default_out(script, suffix)


def save(result: dict[str, Any], path: str | Path) -> str:
    """Stamp ``result`` with its provenance, write it to ``path`` as indented JSON; return the text written."""
    result["provenance"] = provenance()
    text = json.dumps(result, indent=2, default=float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return text


def emit(result: dict[str, Any], path: str | Path) -> None:
    """Save ``result`` to ``path`` and print the same JSON on stdout; say where it went on stderr."""
    print(save(result, path), flush=True)
    print(f"wrote {path}", file=sys.stderr, flush=True)


def append_line(row: dict[str, Any], path: str | Path) -> str:
    """Stamp one JSONL row with its provenance and append it to ``path``; return the line."""
    row = {**row, "provenance": provenance()}
    line = json.dumps(row, default=float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
    return line
