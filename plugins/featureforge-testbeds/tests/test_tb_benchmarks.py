"""The MoE-X benchmarks on the testbeds (chess, Othello, text) run end to end in their quick modes
and print the promised JSON.

Slow (about 15-40 s each on a busy 2-core machine, the paper preset about 15 minutes): ``pytest -m slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tb_helpers import BENCHMARKS


def _script(args: list[str | Path], out: Path) -> dict:
    """Run a benchmark with ``--out out``; what it prints is what it wrote."""
    result = subprocess.run([sys.executable, *map(str, args), "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    return printed


def _run(script: str, tmp_path: Path) -> dict:
    """``script --quick`` on one thread, its work in ``tmp_path``."""
    return _script([BENCHMARKS / script, "--quick", "--threads", "1", "--workdir", tmp_path / "work"], tmp_path / "result.json")


@pytest.mark.slow
def test_moex_chess_quick(tmp_path):
    r = _run("moex_chess.py", tmp_path)
    assert set(r["models"]) == {"gelu", "switch", "moex", "sae_topk_on_gelu"}
    for name, row in r["table"].items():
        assert 0 <= row["coverage"] <= 1 and 0 <= row["reconstruction"] <= 1, name
    for kind in ("gelu", "switch", "moex"):
        assert r["models"][kind]["train"]["active_mlp_params"] == r["models"]["gelu"]["train"]["active_mlp_params"]
        assert (tmp_path / "work" / "models" / kind / "model.safetensors").exists()


@pytest.mark.slow
def test_moex_othello_quick_resumes_and_merges(tmp_path):
    args = [BENCHMARKS / "moex_othello.py", "--quick", "--upcycle", "--workdir", tmp_path / "work"]
    r0 = _script(args + ["--seeds", "0"], tmp_path / "s0.json")
    assert set(r0["runs"]) == {"untrained", "gelu", "switch", "moex", "router_only", "relu_only", "sae_topk_on_gelu", "moex_upcycled"}
    for name, per_seed in r0["runs"].items():
        row = per_seed["0"]
        assert 0 <= row["coverage"] <= 1 and 0 <= row["reconstruction"] <= 1, name
    assert r0["runs"]["moex"]["0"]["active_mlp_params"] == r0["runs"]["gelu"]["0"]["active_mlp_params"]
    # A rerun with the same --out trains nothing new: the runs come back unchanged.
    assert _script(args + ["--seeds", "0"], tmp_path / "s0.json")["runs"] == r0["runs"]
    _script(args + ["--seeds", "1", "--kinds", "gelu,moex", "--no-sae"], tmp_path / "s1.json")
    merged = _script([BENCHMARKS / "moex_othello.py", "--merge", f"{tmp_path / 's0.json'},{tmp_path / 's1.json'}"], tmp_path / "m.json")
    assert merged["table"]["moex"]["coverage"]["n"] == 2 and merged["table"]["switch"]["coverage"]["n"] == 1
    assert merged["table"]["gelu"]["probe_gap_residual"]["n"] == 2
    assert merged["verdict_inputs"]["moex-gelu"]["coverage"]["n"] == 2
    # Issue #16's bar: per layer gaps paired by seed, and per trained model and seed the criteria with their layer.
    assert merged["table"]["gelu"]["probe_gap_colour_layer1"]["n"] == 2
    crit = merged["criteria"]["gelu"]["1"]
    base, row = merged["runs"]["untrained"]["1"]["layers"], merged["runs"]["gelu"]["1"]["layers"]
    best = str(crit["best_layer_colour"])
    assert crit["gap_colour_best_layer"] == pytest.approx(row[best]["linear_probe_f1_colour"] - base[best]["linear_probe_f1_colour"])
    assert crit["gap_colour_best_layer"] >= max(crit["gap_colour_last_layer"], crit["gap_colour_mean_layers"] - 1e-12)
    assert crit["a_met"] == (crit["legal_top1"] >= 0.95) and "sae_topk_on_gelu" not in merged["criteria"]
    tables = subprocess.run([sys.executable, str(BENCHMARKS / "moex_tables.py"), str(tmp_path / "m.json")], capture_output=True, text=True, timeout=60)
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert "| GELU MLP (dense) | " in tables.stdout and "seeds meeting (a) and (b, colour)" in tables.stdout
    assert "Residual probe F1 per layer" in tables.stdout and "| moex-gelu | " in tables.stdout


@pytest.mark.slow
def test_moex_othello_curve_tiny(tmp_path):
    sets = ["--set", "n_layer=2", "--set", "d_model=16", "--set", "n_head=2", "--set", "train_games=64", "--set", "val_games=8", "--set", "eval_games=24"]
    r = _script([BENCHMARKS / "moex_othello_curve.py", "--steps", "100", "--checks", "0.5,1.0", *sets], tmp_path / "c.json")
    assert [p["step"] for p in r["points"]] == [51, 100] and r["settings"]["d_model"] == 16
    last = r["points"][-1]
    assert last["gap_colour_layer1"] == pytest.approx(last["layers"]["1"]["colour"] - r["untrained"]["layers"]["1"]["colour"])
    assert 0 < last["train_seconds"] <= r["train_seconds"] + 1e-6 and 0 <= r["untrained"]["legal_top1"] <= 1


@pytest.mark.slow
def test_moex_text_quick(tmp_path):
    r = _script([BENCHMARKS / "moex_text.py", "--quick", "--seeds", "0,1"], tmp_path / "t.json")
    assert set(r["table"]) == {"gelu", "switch", "moex"}
    assert len({row["active_mlp_params"] for row in r["table"].values()}) == 1
    assert r["paired_val_loss"]["moex-gelu"]["n"] == 2


@pytest.mark.slow
@pytest.mark.timeout(1800)  # paper-size models on a CPU: about 15 minutes on a busy 2-core machine
def test_moex_chess_paper_preset_dry_run(tmp_path):
    """The paper-scale preset builds, trains two steps under bf16 autocast, upcycles and probes (CPU)."""
    r = _script([BENCHMARKS / "moex_chess.py", "--preset", "paper", "--dry-run", "--kinds", "gelu,moex", "--upcycle", "--threads", "2",
                 "--workdir", tmp_path / "work", "-o", "bf16=true"], tmp_path / "p.json")
    assert r["preset"] == "paper" and r["dry_run"] and r["bf16"] and r["device"] == "cpu"
    s = r["settings"]
    assert (s["n_layer"], s["d_model"], s["n_head"], s["steps"]) == (8, 512, 8, 2)
    assert set(r["models"]) == {"gelu", "moex", "moex_upcycled"}
    for row in r["models"].values():
        assert row["train"]["steps"] >= 1 and row["val_loss"] == row["val_loss"]  # finite, not NaN
    assert r["models"]["moex"]["train"]["active_mlp_params"] == r["models"]["gelu"]["train"]["active_mlp_params"]
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "moex_chess.py"), "--quick", "-o", "colour=blue"], capture_output=True, text=True)
    assert bad.returncode != 0 and "use -o device=" in bad.stderr and "Traceback" not in bad.stderr

