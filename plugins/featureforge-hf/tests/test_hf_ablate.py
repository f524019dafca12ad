"""``featureforge ablate``: the CE change of ablating a comparison's universal set of neurons vs random sets (tiny GPT-2s)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import featureforge as ff
from featureforge.cli import cli

HOOK = "transformer.h.0.mlp.act"  # the MLP's GELU output: 64 neurons


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_sample):
    """Two random tiny GPT-2s over the same tokens, their neurons as runs, and a comparison of them by the CLI."""
    from featureforge_hf.tiny import build_gpt2, make_tokenizer, save_model

    tokenizer = make_tokenizer(stdlib_sample, 400)
    root = tmp_path_factory.mktemp("ablate")
    found: dict[str, str] = {}
    for s in (0, 1):
        model = save_model(root / f"gpt2-{s}", build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=s), tokenizer)
        opts = {"model": str(model), "hook": HOOK, "context_size": 32, "max_docs": 12, "batch_size": 8, "device": "cpu"}
        store = ff.cache("hf", opts, store=str(root / f"store{s}"), rows=1536, rows_per_chunk=256, progress=False)
        found[f"store{s}"] = store.url
        found[f"run{s}"] = str(ff.train("neurons", store=store.url, out=str(root / f"neurons{s}"), progress=False)[0])
    found["compare"] = str(root / "cmp")
    result = CliRunner().invoke(cli, ["compare", found["run0"], found["run1"], "--store", found["store0"], "--store", found["store1"],
                                      "--out", found["compare"]])
    assert result.exit_code == 0, result.output
    return found


def _ablate(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["ablate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_top_units_of_a_comparison_against_frequency_matched_random_sets(setup):
    cmp = setup["compare"]
    out = _ablate(setup["run0"], "--from-compare", cmp, "--top", "0.1", "--random-sets", "2", "--sequences", "8")
    runs0 = json.loads(open(f"{cmp}/runs/0.json").read())
    excess = runs0["excess_correlation"]
    top = sorted(sorted(range(64), key=lambda i: (-excess[i], i))[:6])  # 10% of 64, rounded
    assert out["ablated"] == top and out["units"] == 6 and out["mode"] == "mean"
    assert out["selection"] == "top 0.1 of units by excess correlation"
    assert out["tokens"] > 0 and out["ce_clean"] > 0
    assert out["delta_ce_ablated"] != 0.0 and len(out["delta_ce_random"]) == 2 and all(d != 0.0 for d in out["delta_ce_random"])
    freq = runs0["firing_frequency"]
    for chosen in out["random_sets"].values():
        assert len(set(chosen)) == 6 and not set(chosen) & set(top)
        assert max(abs(a - b) for a, b in zip(sorted(freq[i] for i in chosen), sorted(freq[i] for i in top))) < 0.25
    # written beside the comparison, and a line of its report
    assert json.loads(open(f"{cmp}/ablation/0.json").read())["delta_ce_ablated"] == out["delta_ce_ablated"]
    row = json.loads(open(f"{cmp}/compare.json").read())["runs"][0]["ablation"]
    assert row["file"] == "ablation/0.json" and row["delta_ce_random"] == out["delta_ce_random"] and row["units"] == 6
    # fewer held-out sequences, fewer tokens; zero ablation differs from mean ablation on the same set
    zero = _ablate(setup["run0"], "--from-compare", cmp, "--top", "0.1", "--random-sets", "0", "--sequences", "4", "--mode", "zero")
    assert 0 < zero["tokens"] < out["tokens"] and zero["delta_ce_random"] == [] and zero["delta_ce_ablated"] != out["delta_ce_ablated"]


def test_ablating_no_units_changes_the_loss_by_exactly_zero(setup, tmp_path):
    # --above 2: no excess correlation exceeds 2, so the set is empty and every edit must be the identity
    out = _ablate("neurons1", "--from-compare", setup["compare"], "--above", "2", "--sequences", "4", "--out", str(tmp_path / "a.json"))
    assert out["units"] == 0 and out["ablated"] == [] and out["tokens"] > 0
    assert out["delta_ce_ablated"] == 0.0 and out["delta_ce_random"] == [0.0, 0.0, 0.0]
    assert json.loads((tmp_path / "a.json").read_text())["ce_clean"] == out["ce_clean"]
    zero = _ablate(setup["run1"], "--units", "", "--mode", "zero", "--random-sets", "1", "--sequences", "4")
    assert zero["delta_ce_ablated"] == 0.0 and zero["delta_ce_random"] == [0.0] and zero["ce_clean"] == out["ce_clean"]


def test_given_units_are_ablated_on_the_runs_own_store_and_printed(setup, tmp_path):
    (tmp_path / "units.json").write_text(json.dumps({"units": [3, 5, 9]}))
    result = CliRunner().invoke(cli, ["ablate", setup["run0"], "--units", str(tmp_path / "units.json"), "--random-sets", "1", "--sequences", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("mean-ablated 3 units of ") and "(given units)" in lines[0] and "clean CE" in lines[0]
    assert lines[1].startswith("  ablated set: ΔCE ") and lines[2].startswith("  random set 0 (frequency-matched): ΔCE ")


@pytest.mark.parametrize(("args", "message"), [
    (["--units", "3,64"], r"^Error: unit 64 is out of range for run .*neurons0 \(64 units\); pass units in 0\.\.63$"),
    (["--from-compare", "{tmp}", "--top", "0.1"], r"^Error: .* is not a comparison folder \(no compare.json\); pass the --out folder"),
    (["--from-compare", "{cmp}", "--top", "1.5"], r"^Error: --top is a fraction of the units in \[0, 1\], got 1.5$"),
    (["--top", "0.1"], r"^Error: --top and --above pick units from a comparison; pass --from-compare COMPARISON too$"),
    ([], r"^Error: nothing to ablate; pass --units or --from-compare COMPARISON$"),
    (["--units", "3,9,3"], r"^Error: unit 3 is named twice; pass each unit once$"),
    (["--units", "a,b"], r"^Error: --units 'a,b' is not a comma list of unit numbers"),
])
def test_bad_input_is_refused_in_one_line(setup, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, cmp=setup["compare"]) for a in args]
    result = CliRunner().invoke(cli, ["ablate", setup["run0"], *args])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert re.match(message, result.output.strip()), result.output


def test_a_run_outside_the_comparison_is_refused(setup, tmp_path):
    other = str(ff.train("neurons", store=setup["store1"], out=str(tmp_path / "elsewhere"), progress=False)[0])
    result = CliRunner().invoke(cli, ["ablate", other, "--from-compare", setup["compare"], "--top", "0.1"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: run {other} is not part of comparison {setup['compare']} (runs: neurons0, neurons1); "
                                     "pass one of its runs or compare it first")
