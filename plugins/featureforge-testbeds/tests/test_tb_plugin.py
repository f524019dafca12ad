"""The testbeds are listed through their entry point, load without torch, and bad input fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import featureforge
from featureforge import OptionError
from featureforge_testbeds.chess_source import ChessLMSource

FEATUREFORGE = [sys.executable, "-m", "featureforge.cli"]


def only_testbeds() -> dict[str, str]:
    """A CLI environment that loads this distribution alone, strictly."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEATUREFORGE_PLUGINS", "FEATUREFORGE_DEBUG")}
    env.update({"FEATUREFORGE_PLUGINS": "featureforge-testbeds", "FEATUREFORGE_STRICT_PLUGINS": "1", "FEATUREFORGE_PROGRESS": "0"})
    return env


def test_featureforge_plugins_lists_the_chess_lm_source():
    out = subprocess.run(FEATUREFORGE + ["plugins", "--json"], capture_output=True, text=True, env=only_testbeds(), check=True)
    listed = {(p["kind"], p["name"]): p for p in json.loads(out.stdout)["plugins"]}
    entry = listed[("source", "chess-lm")]
    assert entry["distribution"] == "featureforge-testbeds" and entry["description"]
    assert all(opt["help"] for opt in entry["options"]), "chess-lm has an option without help"
    assert featureforge.get_registry().get("source", "chess-lm") is ChessLMSource


def test_tiny_lm_command_is_registered():
    done = subprocess.run(FEATUREFORGE + ["tiny-lm", "--help"], capture_output=True, text=True, env=only_testbeds())
    assert done.returncode == 0, done.stderr
    assert "stdlib-gpt2" in done.stdout and "--retrain" in done.stdout


@pytest.mark.parametrize(
    "options, fragment",
    [({}, "needs -o model=FOLDER (a chess model trained with featureforge_testbeds.train_lm"), ({"model": "x", "games": 0}, "games=0")],
)
def test_bad_chess_lm_options_are_refused_in_one_line(options, fragment):
    with pytest.raises(OptionError) as info:
        ChessLMSource(**options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys, featureforge_testbeds, featureforge_testbeds.plugin, featureforge_testbeds.chess_source, "
            "featureforge_testbeds.cli, featureforge_testbeds.tiny_lm; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=only_testbeds())
