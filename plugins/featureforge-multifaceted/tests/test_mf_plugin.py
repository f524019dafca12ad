"""The distribution is found through its entry point and registers the evaluator and the command."""

from __future__ import annotations

import json
import subprocess

from mf_helpers import FEATUREFORGE


def test_featureforge_plugins_lists_facets_evaluator_and_dashboard_command(cli_env):
    out = subprocess.run([FEATUREFORGE, "plugins", "--json"], capture_output=True, text=True, env=cli_env, check=True)
    data = json.loads(out.stdout)
    facets = [p for p in data["plugins"] if p["kind"] == "evaluator" and p["name"] == "facets"]
    assert facets and facets[0]["distribution"] == "featureforge-multifaceted"
    assert {"top_n", "max_facets", "min_silhouette", "site", "latents"} <= {o["name"] for o in facets[0]["options"]}
    commands = {c["name"]: c["distribution"] for c in data["commands"]}
    assert commands.get("dashboard") == commands.get("facets-vision") == "featureforge-multifaceted"
    assert not [p for p in data["problems"] if "multifaceted" in json.dumps(p)]


def test_bad_option_value_is_one_line(cli_env, tmp_path):
    import featureforge
    import pytest

    with pytest.raises(featureforge.OptionError, match="top_n=0 must be at least 1"):
        featureforge.get_registry().get("evaluator", "facets")({"top_n": 0})
