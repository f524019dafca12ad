"""The ``hf`` source through the real command line, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

FEATUREFORGE = [sys.executable, "-m", "featureforge.cli"]


def run(env, *args, timeout=300):
    return subprocess.run(FEATUREFORGE + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, f"expected a failure:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_plugins_json_lists_hf_from_featureforge_hf(cli_env):
    result = run(cli_env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = [p for p in data["plugins"] if p["name"] == "hf"]
    assert len(rows) == 1 and rows[0]["kind"] == "source"
    assert rows[0]["distribution"] == "featureforge-hf"
    options = {o["name"]: o for o in rows[0]["options"]}
    for key in ("model", "hook", "site", "data", "context_size", "batch_size", "dtype", "include_special_tokens", "grads", "seed", "device", "max_docs"):
        assert options[key]["help"], key
    assert data["problems"] == []


@pytest.fixture(scope="module")
def cached(tmp_path_factory, cli_env, short_docs_jsonl):
    """Six short stdlib documents cached from MiniLM's encoder.layer.3 by `featureforge cache`."""
    store = tmp_path_factory.mktemp("hf-cli") / "minilm.zarr"
    result = run(
        cli_env, "cache", "--source", "hf", "-o", f"data={short_docs_jsonl}", "-o", "context_size=256", "-o", "seed=none",
        "-o", "batch_size=4", "--store", store, "--rows", 100_000, "--rows-per-chunk", 256,
    )
    assert result.returncode == 0, result.stderr
    assert f"to {store}" in result.stdout
    return store


def test_cache_writes_acts_and_token_columns_without_special_or_padding_tokens(cached):
    import featureforge as ff

    store = ff.open_store(cached)
    assert store.complete and store.d_in == 384
    assert set(store.columns) == {"acts", "token_ids", "doc_ids", "seq_ids", "positions"}
    n = store.rows
    tokens = store.read(0, n, "token_ids")
    positions = store.read(0, n, "positions")
    docs = store.read(0, n, "doc_ids")
    assert n > 100
    assert not np.isin(tokens, [0, 100, 101, 102, 103]).any()  # [PAD] [UNK] [CLS] [SEP] [MASK]
    assert positions.min() == 1  # [CLS] sits at position 0 and is not stored
    assert sorted(set(docs.tolist())) == list(range(6))
    prov = store.provenance
    assert prov["hook"] == "encoder.layer.3" and prov["site"] == "output" and prov["context_size"] == 256
    assert prov["model_class"] == "BertModel" and prov["config_sha256"] and "short.jsonl" in prov["data"]


def test_cached_acts_equal_a_direct_forward_at_the_hook(cached, short_docs_jsonl):
    """Each document is one window here, so (doc_id, position) names a row; compare with BertModel."""
    import featureforge as ff
    from transformers import AutoModel, AutoTokenizer

    from featureforge_hf._model import default_model_path

    store = ff.open_store(cached)
    n = store.rows
    acts, docs, positions, tokens = (store.read(0, n, c) for c in ("acts", "doc_ids", "positions", "token_ids"))
    assert len({(d, p) for d, p in zip(docs.tolist(), positions.tolist())}) == n  # one window per document
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = [json.loads(line)["text"] for line in open(short_docs_jsonl)]
    for doc_id, text in enumerate(texts):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states[4][0]  # output of encoder.layer.3
        rows = docs == doc_id
        pos = positions[rows]
        np.testing.assert_array_equal(tokens[rows], enc["input_ids"][0, pos].numpy())
        np.testing.assert_allclose(acts[rows], hidden[pos].numpy(), rtol=1e-4, atol=1e-4)


BAD_INPUTS = [
    (["-o", "model=nobody/no-such-model"], ["nobody/no-such-model", "-o model=/path/to/folder"]),
    (["-o", "hook=encoder.layer.30"], ["encoder.layer.30", "nearest: encoder.layer.3"]),
    (["-o", "context_size=1000"], ["context_size=1000", "512", "-o context_size=512"]),
    (["-o", "data=EMPTY"], ["holds no text", "-o data="]),
    (["-o", "grads=true"], ["grads=true needs a causal language model", "-o grads=false"]),
]


@pytest.mark.parametrize("args,needles", BAD_INPUTS, ids=["offline-model", "hook", "context", "empty-data", "grads-encoder"])
def test_bad_input_is_one_error_line_naming_problem_and_fix(args, needles, tmp_path, cli_env):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    args = [a.replace("EMPTY", str(empty)) for a in args]
    result = run(cli_env, "cache", "--source", "hf", *args, "--store", tmp_path / "s.zarr", "--rows", 1000)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "s.zarr").exists()  # refused before any store was made
