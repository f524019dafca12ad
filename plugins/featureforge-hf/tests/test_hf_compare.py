"""``featureforge compare`` across stores of different models over the same tokens (neurons of tiny GPT-2s)."""

from __future__ import annotations

import json

import pytest

import featureforge as ff

HOOK = "transformer.h.0.mlp.act"  # the MLP's GELU output: the neurons


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, stdlib_sample):
    """Two randomly initialised tiny GPT-2s (seeds 0 and 1) sharing one tokenizer."""
    from featureforge_hf.tiny import build_gpt2, make_tokenizer, save_model

    tokenizer = make_tokenizer(stdlib_sample, 400)
    root = tmp_path_factory.mktemp("models")
    return [str(save_model(root / f"gpt2-{s}", build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=s), tokenizer))
            for s in (0, 1)]


def _cache(model, path, **extra):
    opts = {"model": model, "hook": HOOK, "context_size": 32, "max_docs": 12, "batch_size": 8, "device": "cpu", **extra}
    return ff.cache("hf", opts, store=str(path), rows=1536, rows_per_chunk=256, progress=False)


@pytest.fixture(scope="module")
def stores(two_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {
        "a": _cache(two_models[0], root / "a"),
        "a_again": _cache(two_models[0], root / "a_again"),
        "b": _cache(two_models[1], root / "b"),
        "b_shuffled": _cache(two_models[1], root / "b_shuffled", seed=7),
    }


@pytest.fixture(scope="module")
def neurons(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("neurons")
    return {k: ff.train("neurons", store=s.url, out=str(root / k), progress=False)[0] for k, s in stores.items()}


def test_the_same_model_cached_twice_has_every_neuron_matched_to_itself(stores, neurons, tmp_path):
    report = ff.compare([neurons["a"], neurons["a_again"]], store=[stores["a"].url, stores["a_again"].url], out=tmp_path / "c",
                        progress=False)
    pair = report["pairs"][0]
    assert "decoder" not in pair and "different stores" in pair["directions"]
    assert report["rows"]["selection"] == "holdout" and len(report["rows"]["stores"]) == 2
    data = json.loads((tmp_path / "c" / pair["file"]).read_text())
    live = [i for i, f in enumerate(data["a_firing_frequency"]) if 0 < f < 1]
    assert live
    assert all(data["a_activation"]["matched"][i] == i for i in live)
    assert all(data["a_activation"]["matched_score"][i] > 0.999 for i in live)


def test_two_models_over_the_same_tokens_compare_by_activation(stores, neurons, tmp_path):
    report = ff.compare([neurons["a"], neurons["b"]], store=[stores["a"].url, stores["b"].url], out=tmp_path / "c", progress=False)
    pair = report["pairs"][0]
    act = pair["activation"]
    # Random models share the tokens, not their units: correlated somewhat, far from the identical case.
    assert 0.0 < act["mean_best"] < 0.99
    assert act["baseline_mean_best"] is not None and "excess_mean" in act
    assert report["runs"][0]["d_dict"] == 64


def test_stores_of_different_token_orders_are_refused_in_one_line(stores, neurons):
    with pytest.raises(ff.BadInputError, match="do not hold the same tokens: token_ids differ at row"):
        ff.compare([neurons["a"], neurons["b_shuffled"]], store=[stores["a"].url, stores["b_shuffled"].url], progress=False)


def test_ablating_units_changes_the_ce_and_random_sets_are_frequency_matched(stores, neurons):
    import numpy as np

    freq = (stores["a"].read(0, 1536) > 0).mean(axis=0)
    units = [int(i) for i in np.argsort(-freq)[:6]]
    impact = ff.comparison.ablation_impact(neurons["a"], units, store=stores["a"], frequency=freq, random_sets=2, max_sequences=8)
    # held out: the documents after every one the store holds
    assert impact["tokens"] > 0 and impact["start_doc"] == int(stores["a"].read(0, 1536, "doc_ids").max()) + 1
    assert impact["delta_ce_ablated"] != 0.0
    for chosen in impact["random_sets"].values():
        assert not set(chosen) & set(units) and len(set(chosen)) == len(units)
        assert np.abs(np.sort(freq[chosen]) - np.sort(freq[units])).max() < 0.25
    zero = ff.comparison.ablation_impact(neurons["a"], units, store=stores["a"], random_sets=1, max_sequences=8, mode="zero")
    assert zero["ce_clean"] == impact["ce_clean"] and zero["delta_ce_ablated"] != impact["delta_ce_ablated"]
