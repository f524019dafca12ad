"""Bad input is refused in one line that names the problem and the fix."""

from __future__ import annotations

import subprocess

import pytest

import featureforge
from featureforge_multifaceted.cli import dashboard
from mf_helpers import FEATUREFORGE, SYNTHETIC



def _error(args, env) -> str:
    done = subprocess.run([FEATUREFORGE, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def other_seed_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mf-other") / "seed2.zarr"
    return featureforge.cache("synthetic", {**SYNTHETIC, "seed": 2}, store=str(path), rows=4096, rows_per_chunk=4096, progress=False)


def test_store_of_other_width(synthetic_run, tmp_path, cli_env):
    wide = featureforge.cache("synthetic", {**SYNTHETIC, "d_in": 16}, store=str(tmp_path / "w.zarr"), rows=4096, progress=False)
    line = _error(["dashboard", str(synthetic_run), "--store", wide.url, "--out", str(tmp_path / "o")], cli_env)
    assert "d_in=32" in line and "d_in=16" in line


def test_store_of_other_provenance(synthetic_run, other_seed_store, tmp_path):
    with pytest.raises(featureforge.BadInputError, match=r"seed=1 \(store has 2\); pass the store the run was trained on"):
        dashboard(str(synthetic_run), other_seed_store.url, str(tmp_path / "o"))


def test_text_contexts_need_token_ids(synthetic_run, synthetic_store, tmp_path):
    with pytest.raises(featureforge.BadInputError, match="has no token_ids column.*or pass -o contexts=off"):
        dashboard(str(synthetic_run), synthetic_store.url, str(tmp_path / "o"), ("contexts=on",))


def test_latent_out_of_range(synthetic_run, synthetic_store, tmp_path):
    with pytest.raises(featureforge.BadInputError, match=r"latent index 32 is out of range: the dictionary has 32 latents; pick 0\.\.31"):
        dashboard(str(synthetic_run), synthetic_store.url, str(tmp_path / "o"), ("latents=3,32",))


def test_evaluate_command_runs_the_facets_evaluator(synthetic_run, synthetic_store, tmp_path, cli_env):
    done = subprocess.run([FEATUREFORGE, "evaluate", str(synthetic_run), "--store", synthetic_store.url, "--evaluator", "facets",
                           "-o", "facets.latents=0,5", "--json"], capture_output=True, text=True, env=cli_env, check=True)
    import json

    metrics = json.loads(done.stdout)["evaluators"]["facets"]["metrics"]
    assert metrics["analysed"] == 2 and metrics["rows"] == 32768


def test_live_embeddings_need_token_ids_and_a_layer_in_range(synthetic_run, synthetic_store, tiny_text, tmp_path):
    with pytest.raises(featureforge.BadInputError, match="no token_ids column"):
        dashboard(str(synthetic_run), synthetic_store.url, str(tmp_path / "a"), ("embed=pooled",))
    with pytest.raises(featureforge.OptionError, match="not acts, pooled or layer:N"):
        dashboard(str(synthetic_run), synthetic_store.url, str(tmp_path / "b"), ("embed=layer",))
    store, run = tiny_text
    with pytest.raises(featureforge.BadInputError, match=r"embed=layer:99 is out of range: the model has hidden states 0..2"):
        dashboard(str(run), store.url, str(tmp_path / "c"), ("embed=layer:99", "latents=1"))
