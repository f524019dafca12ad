"""The plugin is installed, listed, and its options refuse bad values in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import featureforge
from featureforge.options import parse_options
from featureforge import OptionError
from featureforge_sae import BatchTopKTrainer, JumpReLUTrainer, MatryoshkaTrainer, ReLUTrainer, TopKTrainer


def test_featureforge_plugins_lists_the_trainers():
    env = {k: v for k, v in os.environ.items() if k != "FEATUREFORGE_PLUGINS"}
    out = subprocess.run([sys.executable, "-m", "featureforge.cli", "plugins", "--json"], capture_output=True, text=True, env=env, check=True)
    listed = {(p["kind"], p["name"]): p for p in json.loads(out.stdout)["plugins"]}
    for name in ("topk", "batchtopk", "relu", "jumprelu", "matryoshka", "gsae"):
        entry = listed[("trainer", name)]
        assert entry["distribution"] == "featureforge-sae"
        assert entry["description"]
        assert all(opt["help"] for opt in entry["options"]), f"{name} has an option without help"


def test_registry_returns_the_classes():
    registry = featureforge.get_registry()
    assert registry.get("trainer", "topk") is TopKTrainer
    assert registry.get("trainer", "batchtopk") is BatchTopKTrainer
    assert registry.get("trainer", "relu") is ReLUTrainer
    assert registry.get("trainer", "jumprelu") is JumpReLUTrainer
    assert registry.get("trainer", "matryoshka") is MatryoshkaTrainer


def test_options_parse_from_strings():
    t = TopKTrainer(parse_options(TopKTrainer.Options, ["k=16", "d_dict=512", "decoder_impl=dense", "aux_coef=0"]))
    assert (t.options.k, t.options.d_dict, t.options.decoder_impl, t.options.aux_coef) == (16, 512, "dense", 0.0)


@pytest.mark.parametrize(
    "cls, options, fragment",
    [
        (TopKTrainer, {"k": 64, "d_dict": 64}, "k=64 must be smaller than d_dict=64"),
        (TopKTrainer, {"k": 0}, "k=0 must be positive"),
        (TopKTrainer, {"d_dict": 100, "expansion_factor": 4}, "not both"),
        (TopKTrainer, {"dead_after": 0}, "dead_after"),
        (TopKTrainer, {"k_aux": -1}, "k_aux"),
        (TopKTrainer, {"aux_coef": -0.1}, "aux_coef"),
        (TopKTrainer, {"decoder_impl": "fast"}, "decoder_impl"),
        (TopKTrainer, {"bogus": 1}, "valid options"),
        (BatchTopKTrainer, {"threshold_lr": 0}, "threshold_lr"),
        (BatchTopKTrainer, {"k": 10, "d_dict": 8}, "smaller than d_dict"),
        (ReLUTrainer, {"l1_coef": -1}, "l1_coef"),
        (ReLUTrainer, {"l1_warmup_rows": -5}, "l1_warmup_rows"),
        (ReLUTrainer, {"d_dict": 0}, "d_dict=0"),
        (JumpReLUTrainer, {"l0_coef": -1}, "l0_coef"),
        (JumpReLUTrainer, {"bandwidth": 0}, "bandwidth"),
        (JumpReLUTrainer, {"init_threshold": 0}, "init_threshold"),
        (JumpReLUTrainer, {"l0_warmup_rows": -1}, "l0_warmup_rows"),
        (MatryoshkaTrainer, {"d_dict": 128, "prefixes": (0.5, 0.25)}, "strictly increase"),
        (MatryoshkaTrainer, {"prefixes": (64, 3.5)}, "neither a whole"),
    ],
)
def test_bad_options_are_refused_in_one_line(cls, options, fragment):
    with pytest.raises(OptionError) as info:
        cls(**options) if "decoder_impl" not in options else cls(parse_options(cls.Options, [f"{k}={v}" for k, v in options.items()]))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_k_is_checked_again_once_d_in_is_known():
    trainer = TopKTrainer(k=100, expansion_factor=2)
    with pytest.raises(OptionError, match="k=100 must be smaller than d_dict=64"):
        trainer.build(32)


def test_default_width_is_eight_times_d_in():
    assert TopKTrainer().build(16).d_dict == 128
    assert ReLUTrainer(expansion_factor=2).build(16).d_dict == 32
