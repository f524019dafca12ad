"""benchmarks/gpu_suite.py run as a user runs it: its whole code path on the CPU at tiny shapes
(``--fake-tiny``) reports every figure, and without CUDA it refuses in one line (issue #22). The suite benchmarks the topk trainer and the hf source, so it runs with the installed
plugins (not the core-only registry of tests/conftest.py) and is skipped where they are absent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("featureforge_sae", reason="the GPU suite benchmarks the featureforge-sae plugin")
pytest.importorskip("featureforge_hf", reason="the GPU suite benchmarks the featureforge-hf source")

REPO = Path(__file__).resolve().parents[1]
SUITE = "benchmarks/gpu_suite.py"
DTYPES = ("float32", "bfloat16")


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path even on a machine with a GPU
    env.pop("FEATUREFORGE_PLUGINS", None)  # every installed plugin, as a user's run sees them
    return subprocess.run([sys.executable, SUITE, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def _figure(cell: dict, key: str) -> float:
    assert cell.get("status") == "ok", cell
    value = cell[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, cell)
    return value


def test_fake_tiny_runs_every_cell_and_reports_every_key(tmp_path):
    out = tmp_path / "suite.json"
    done = _run("--fake-tiny", "--out", str(out), "--work", str(tmp_path / "work"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert json.loads(out.read_text()) == result
    assert result["mode"] == "fake-tiny"
    assert len(result["provenance"]["source"]["commit"].strip()) == 40 and "gpu_suite.py --fake-tiny" in result["provenance"]["command"]
    for key in ("gpu", "torch", "cuda", "capability", "gpu_memory_gib"):
        assert key in result["device"]
    assert result["provenance"]["torch"]["cpu_capability"] and "avx2" in result["provenance"]["machine"]
    assert set(result["topk"]) == {"small", "large"}
    for name, shape in result["topk"].items():
        assert shape["store"]["status"] == "ok" and shape["store"]["rows"] > 0
        assert set(shape["shape"]) == {"d_in", "d_dict", "k", "batch_size"}
        _figure(shape["reader"], "rows_per_s")
        for dtype in DTYPES:
            step = shape["featureforge_step"][dtype]
            _figure(step, "rows_per_s")
            assert {"ms_per_step", "steps_timed", "peak_memory_bytes", "final_fvu"} <= set(step)
            loop = shape["featureforge_loop"][dtype]
            _figure(loop, "rows_per_s")
            assert loop["steps"] >= 4 and math.isfinite(loop["final_train_fvu"]) and "peak_memory_bytes" in loop
            sparsify = shape["sparsify_step"][dtype]
            assert sparsify["status"] in ("ok", "sparsify not installed"), sparsify
            if sparsify["status"] == "ok":
                _figure(sparsify, "rows_per_s")
                assert shape["vs_sparsify"][dtype] > 0
            else:
                assert shape["vs_sparsify"][dtype] is None
    hf = result["hf_cache"]
    assert hf["model"]["status"] == "ok" and hf["model"]["config"]["n_layer"] == 2
    for dtype in DTYPES:
        _figure(hf[dtype], "tokens_per_s_whole_call")
        # The steady-state rate is a difference of two tiny calls' times here: noise can make it undefined.
        assert hf[dtype]["tokens_per_s"] is None or hf[dtype]["tokens_per_s"] > 0
        assert [c["tokens"] for c in hf[dtype]["calls"]] == [256, 768]
        assert hf[dtype]["hook"] and "peak_memory_bytes" in hf[dtype]
    assert result["wall_s"] > 0


def test_without_cuda_it_refuses_in_one_line():
    done = _run()
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_suite: no CUDA device") and "--fake-tiny" in lines[0]
