"""benchmarks/peers/worker_featureforge.py evaluates the trained run in the peers' units: its
x_hat on the held-out rows gives the FVU featureforge.evaluate gives (the run folder's weights
are in raw units, the workers' rows in training units; issue #14 found the two mixed up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featureforge as ff

REPO = Path(__file__).resolve().parents[3]


def test_featureforge_worker_reports_the_fvu_that_featureforge_evaluate_reports(tmp_path):
    pytest.importorskip("featureforge_sae")
    from featureforge.store import split_chunks

    store = ff.cache("synthetic", {"d_in": 16, "n_features": 32, "mean_active": 3, "seed": 2}, store=str(tmp_path / "s.zarr"),
                     rows=6144, rows_per_chunk=1024, progress=False)
    _, held = split_chunks(store, 1024)
    eval_start = held[0].index * store.rows_per_chunk
    rows = np.asarray(store.read(0, store.rows), dtype=np.float32)
    np.save(tmp_path / "acts.npy", rows)
    scale = float(store.normalisation()["scale"])
    assert abs(scale - 1.0) > 0.1, "the check needs a store whose scale is not 1"
    out = tmp_path / "worker"
    argv = [sys.executable, str(REPO / "benchmarks" / "peers" / "worker_featureforge.py"), "--data", str(tmp_path / "acts.npy"),
            "--train-rows", "4096", "--eval-start", str(eval_start), "--eval-rows", str(store.rows - eval_start), "--scale", repr(scale),
            "--d-sae", "32", "--k", "4", "--batch-size", "256", "--threads", "1", "--store", str(tmp_path / "s.zarr"),
            "--holdout-rows", "1024", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO / "benchmarks" / "peers", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    x = rows[eval_start:].astype(np.float64) * scale
    x_hat = np.load(out / "eval_xhat.npy").astype(np.float64)
    worker_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    report = ff.evaluate(out / "run", store, ["reconstruction"])
    assert worker_fvu == pytest.approx(report["evaluators"]["reconstruction"]["metrics"]["fvu"], rel=1e-4)
    assert worker_fvu < 0.9  # a trained dictionary, not a broken one
