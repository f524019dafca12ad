"""Helpers shared by the store, cache-CLI, reader and source tests (imported, not collected)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FEATUREFORGE = [sys.executable, "-m", "featureforge.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give, with progress bars off and only built-in plugins."""
    env = dict(os.environ)
    env.pop("FEATUREFORGE_DEBUG", None)
    env.update({"FEATUREFORGE_PROGRESS": "0", "FEATUREFORGE_PLUGINS": ""})
    env.update(extra)
    return env


def run_cli(*args: Any, ok: bool = True, timeout: float = 180, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``featureforge ARGS`` as a subprocess; with ``ok`` assert it succeeded."""
    result = subprocess.run(
        FEATUREFORGE + [str(a) for a in args], capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=cwd
    )
    if ok:
        assert result.returncode == 0, f"featureforge {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def popen_cli(*args: Any) -> subprocess.Popen:
    return subprocess.Popen(
        FEATUREFORGE + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )


def run_python(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(**env), timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code != 0, stderr exactly one ``Error: ...`` line containing every needle, no traceback."""
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("Error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def tree_state(root: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (sha256, mtime_ns)."""
    out = {}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def tree_bytes(root: str | os.PathLike) -> dict[str, str]:
    return {k: v[0] for k, v in tree_state(root).items()}


def zarr_arrays(store_path: str | os.PathLike, names: Iterable[str]) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    return {name: group[name][...] for name in names}


def marker(store_path: str | os.PathLike, rank: int = 0) -> dict[str, Any] | None:
    """The commit marker of writer ``rank`` read straight from its zarr.json (None if not there yet)."""
    try:
        return json.loads((Path(store_path) / "writers" / str(rank) / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def row_counter(rows: np.ndarray) -> collections.Counter:
    """Multiset of rows by their bytes."""
    rows = np.ascontiguousarray(rows)
    return collections.Counter(row.tobytes() for row in rows)


def read_epoch(reader: Any, column: str = "acts") -> np.ndarray:
    """One epoch of a reader's batches concatenated, as raw numpy (bfloat16 viewed as int16)."""
    import torch

    parts = []
    for batch in reader:
        t = batch[column]
        parts.append(t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy())
    return np.concatenate(parts) if parts else np.zeros((0,))


def pip_install_target(src: Path, root: Path) -> Path:
    """Install the plugin folder ``src`` for real (dist-info, entry points) into ``root/site``,
    offline and without dependencies, as a folder to put on ``PYTHONPATH``; returns that folder."""
    import shutil

    copy = root / "src"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(copy)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site
