"""The plugin is listed through its entry point, and bad input fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import featureforge
from featureforge import OptionError
from featureforge_moex.trainers import MoEXTrainer, SwitchTrainer

FEATUREFORGE = [sys.executable, "-m", "featureforge.cli"]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATUREFORGE_PLUGINS", "FEATUREFORGE_DEBUG")}
    env.update({"FEATUREFORGE_PLUGINS": "featureforge-moex", "FEATUREFORGE_STRICT_PLUGINS": "1", "FEATUREFORGE_PROGRESS": "0"})
    return env


def test_featureforge_plugins_lists_moex_and_switch():
    out = subprocess.run(FEATUREFORGE + ["plugins", "--json"], capture_output=True, text=True, env=cli_env(), check=True)
    listed = {(p["kind"], p["name"]): p for p in json.loads(out.stdout)["plugins"]}
    for key in [("trainer", "moex"), ("trainer", "switch")]:
        entry = listed[key]
        assert entry["distribution"] == "featureforge-moex"
        assert entry["description"]
        assert all(opt["help"] for opt in entry["options"]), f"{key} has an option without help"


def test_registry_returns_the_classes():
    registry = featureforge.get_registry()
    assert registry.get("trainer", "moex") is MoEXTrainer
    assert registry.get("trainer", "switch") is SwitchTrainer


@pytest.mark.parametrize(
    "cls, options, fragment",
    [
        (MoEXTrainer, {"top_k": 9, "n_experts": 8}, "top_k=9 must be between 1 and n_experts=8"),
        (MoEXTrainer, {"d_dict": 100, "n_experts": 8}, "d_dict=100 is not divisible by n_experts=8"),
        (MoEXTrainer, {"d_dict": 64, "n_experts": 8, "top_k": 2, "k": 17}, "k=17 exceeds the 16 latents of the routed experts"),
        (SwitchTrainer, {"d_dict": 64, "n_experts": 8, "k": 9}, "k=9 exceeds the 8 latents"),
        (SwitchTrainer, {"k": 0}, "k=0 must be positive"),
        (SwitchTrainer, {"lb_coef": -1}, "lb_coef"),
        (MoEXTrainer, {"d_dict": 64, "expansion_factor": 2}, "not both"),
        (MoEXTrainer, {"n_experts": 0}, "n_experts=0"),
    ],
)
def test_bad_options_are_refused_in_one_line(cls, options, fragment):
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_width_from_expansion_is_checked_once_d_in_is_known():
    with pytest.raises(OptionError, match="d_dict=60 is not divisible by n_experts=8"):
        MoEXTrainer(expansion_factor=2).build(30)
    assert MoEXTrainer().build(16).d_dict == 128


def test_cli_refuses_bad_trainer_options_in_one_line(moex_synthetic_store, tmp_path):
    from click.testing import CliRunner

    from featureforge.cli import cli

    result = CliRunner().invoke(cli, ["train", "--trainer", "moex", "-o", "top_k=12", "--store", str(moex_synthetic_store.url), "--out", str(tmp_path / "r")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "top_k=12 must be between 1 and n_experts=8" in lines[0]


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys, featureforge_moex, featureforge_moex.plugin, featureforge_moex.trainers; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=cli_env())
