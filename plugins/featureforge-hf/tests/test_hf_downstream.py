"""The ``downstream`` evaluator: the dictionary spliced into the live model on held-out text.

An identity dictionary (x̂ = x) must score 1 and a zero dictionary (x̂ = 0, i.e. zero ablation)
must score 0, on MiniLM (pooled-embedding score) and on a tiny random GPT-2 (CE-loss score):
this proves the splice really reaches the model's output.
"""

from __future__ import annotations

import pytest
import torch

import featureforge as ff
from featureforge.dictionary import Dictionary
from ffhf_dictionaries import GradientStep, Identity, Zero
from featureforge.errors import FeatureforgeError
from featureforge import EvaluationContext


def _downstream(**options):
    return ff.get_registry().get("evaluator", "downstream")(options)


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "minilm.zarr"
    return ff.cache("hf", {"max_docs": 12, "context_size": 64, "batch_size": 8}, store=str(path), rows=1500, rows_per_chunk=500, progress=False)


@pytest.fixture(scope="module")
def gpt2_store(tmp_path_factory, tiny_gpt2):
    path = tmp_path_factory.mktemp("stores") / "gpt2.zarr"
    options = {"model": tiny_gpt2, "hook": "transformer.h.0", "context_size": 48, "batch_size": 4, "max_docs": 20}
    return ff.cache("hf", options, store=str(path), rows=1200, rows_per_chunk=400, progress=False)


def _context(store, tmp_path):
    return EvaluationContext(store, tmp_path / "plots", progress=False)


def test_encoder_identity_scores_one_and_zero_scores_zero(minilm_store, tmp_path):
    evaluator = _downstream(max_sequences=12)
    result = evaluator.evaluate(Identity(384), _context(minilm_store, tmp_path))
    m = result.metrics
    assert m["kind"] == "encoder" and m["hook"] == "encoder.layer.3"
    assert m["start_doc"] == int(minilm_store.read(0, minilm_store.rows, "doc_ids").max()) + 1, "held out: after the stored documents"
    assert m["sequences"] == 12
    assert m["cos_dist_dictionary"] == pytest.approx(0.0, abs=1e-5)
    assert m["cos_dist_zero"] > 0.05 and m["cos_dist_mean"] > 0.01
    assert m["embedding_score"] == pytest.approx(1.0, abs=1e-4) and m["score"] == m["embedding_score"]
    assert (tmp_path / "plots" / "downstream.png").stat().st_size > 1000
    zero = evaluator.evaluate(Zero(384), _context(minilm_store, tmp_path)).metrics
    assert zero["cos_dist_dictionary"] == pytest.approx(m["cos_dist_zero"], rel=1e-5)
    assert zero["embedding_score"] == pytest.approx(0.0, abs=1e-4)


def test_causal_lm_identity_scores_one_and_zero_scores_zero(gpt2_store, tmp_path):
    evaluator = _downstream(max_sequences=8, batch_size=4)
    m = evaluator.evaluate(Identity(32), _context(gpt2_store, tmp_path)).metrics
    assert m["kind"] == "causal-lm" and m["tokens"] > 50
    assert m["ce_dictionary"] == pytest.approx(m["ce_clean"], abs=1e-5)
    assert m["kl_dictionary"] == pytest.approx(0.0, abs=1e-5)
    assert abs(m["ce_zero"] - m["ce_clean"]) > 1e-3 and m["kl_zero"] > 0 and m["kl_mean"] > 0
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-3) and m["score"] == m["ce_loss_score"]
    assert m["ce_increase"] == pytest.approx(0.0, abs=1e-5)
    zero = evaluator.evaluate(Zero(32), _context(gpt2_store, tmp_path)).metrics
    assert zero["ce_dictionary"] == pytest.approx(m["ce_zero"], rel=1e-5)
    assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-3)


def test_gradient_selecting_dictionary_is_also_spliced_with_live_gradients(gpt2_store, tmp_path):
    m = _downstream(max_sequences=8, batch_size=4).evaluate(GradientStep(32, eps=0.05), _context(gpt2_store, tmp_path)).metrics
    # Plain encode is zero ablation; the gradient step lowers the loss only if each row got its own dL/dx.
    assert m["ce_dictionary"] == pytest.approx(m["ce_zero"], rel=1e-5)
    assert m["ce_dictionary_grads"] < m["ce_clean"] - 1e-4 and m["kl_dictionary_grads"] > 0
    expected = (m["ce_zero"] - m["ce_dictionary_grads"]) / (m["ce_zero"] - m["ce_clean"])
    assert m["ce_loss_score_grads"] == pytest.approx(expected) and m["score"] == m["ce_loss_score"]
    plain = _downstream(max_sequences=8, batch_size=4).evaluate(Identity(32), _context(gpt2_store, tmp_path)).metrics
    assert "ce_dictionary_grads" not in plain


def test_mean_ablation_uses_the_store_mean(gpt2_store, tmp_path):
    """A dictionary that always outputs the store's mean scores like mean ablation."""

    mean = torch.tensor(gpt2_store.normalisation()["mean"], dtype=torch.float32)

    class Mean(Identity):
        def decode_normalised(self, codes):
            return (mean.to(codes.device) * self.input_scale).expand_as(codes)

    m = _downstream(max_sequences=8, batch_size=4).evaluate(Mean(32), _context(gpt2_store, tmp_path)).metrics
    assert m["ce_dictionary"] == pytest.approx(m["ce_mean"], rel=1e-5)
    assert m["ce_loss_score_vs_mean"] == pytest.approx(0.0, abs=1e-4)


def test_text_file_as_held_out_data(minilm_store, tmp_path):
    data = tmp_path / "held.txt"
    docs = [f"Document {i}: the parser reads line {i} and returns a list of tokens." for i in range(6)]
    data.write_text("\n\n".join(docs))
    m = _downstream(data=str(data)).evaluate(Identity(384), _context(minilm_store, tmp_path)).metrics
    assert m["sequences"] == 6 and "held.txt" in m["held_out"] and "start_doc" not in m
    assert m["embedding_score"] == pytest.approx(1.0, abs=1e-4)


def test_store_without_a_live_model_is_refused_in_one_line(tmp_path):
    store = ff.cache("synthetic", {"d_in": 8, "n_features": 16}, store=str(tmp_path / "toy.zarr"), rows=256, progress=False)
    with pytest.raises(FeatureforgeError) as exc:
        _downstream().evaluate(Identity(8), _context(store, tmp_path))
    message = str(exc.value)
    assert "'synthetic'" in message and "cannot run a live model" in message and "\n" not in message


def test_dictionary_of_another_width_is_refused_in_one_line(minilm_store, tmp_path):
    with pytest.raises(FeatureforgeError) as exc:
        _downstream(max_sequences=2).evaluate(Identity(16), _context(minilm_store, tmp_path))
    message = str(exc.value)
    assert "d_in=16" in message and "encoder.layer.3" in message and "384" in message and "\n" not in message


def test_dictionary_device_and_mode_are_restored(minilm_store, tmp_path):
    dictionary = Identity(384).train()
    _downstream(max_sequences=2).evaluate(dictionary, _context(minilm_store, tmp_path))
    assert dictionary.training and dictionary.input_scale.device.type == "cpu"


def test_options_are_checked():
    with pytest.raises(ff.OptionError, match="max_sequences=0"):
        _downstream(max_sequences=0)
    assert "downstream" in ff.get_registry().names("evaluator")


# -- evaluation during training -------------------------------------------------------------------
class Linear(Dictionary):
    def __init__(self, d_in: int, d_dict: int):
        super().__init__(d_in, d_dict)
        self.W = torch.nn.Parameter(torch.randn(d_dict, d_in) / d_in**0.5)

    def encode_normalised(self, x):
        return torch.relu(x @ self.W.T)

    def decode_normalised(self, codes):
        return codes @ self.W


class LinearTrainer(ff.DictionaryTrainer):
    name = "test-linear"
    description = "test-only ReLU autoencoder with tied weights"

    def build(self, d_in):
        return Linear(d_in, 64)

    def learning_rate(self, dictionary, steps=None):
        return 3e-3

    def loss(self, dictionary, batch, state):
        from featureforge.roles import StepOutput

        x = batch["acts"]
        z = dictionary.encode_normalised(x)
        x_hat = dictionary.decode_normalised(z)
        return StepOutput(loss=(x - x_hat).pow(2).sum(-1).mean(), x_hat=x_hat)


class _TrainerPlugin:
    @ff.hookimpl
    def featureforge_register_trainers(self, register):
        register(LinearTrainer)


def test_training_on_an_hf_store_evaluates_downstream_by_default(gpt2_store, tmp_path):
    from featureforge.plugins import get_registry
    from featureforge.evaluation import default_evaluators

    assert default_evaluators(gpt2_store, "training") == ["downstream"], "the hf plugin declares itself the training default"
    assert default_evaluators(gpt2_store) == ["reconstruction"], "evaluate: the live model is not spliced unless asked"
    plugin = _TrainerPlugin()
    get_registry().register_plugin(plugin, "test-hf-trainer", "0")
    try:
        [run] = ff.train("test-linear", store=gpt2_store.url, out=str(tmp_path / "run"), batch_size=128, epochs=2, log_every=2,
                         eval_every=4, eval_options=["downstream.max_sequences=4", "downstream.batch_size=4"], progress=False)
    finally:
        get_registry().unregister_plugin(plugin)
    import json

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval_seconds" in line]
    assert evals and {"downstream/ce_loss_score", "downstream/kl_dictionary", "downstream/ce_clean", "downstream/score"} <= set(evals[0])
    assert all(0 < line["downstream/tokens"] <= 4 * 47 for line in evals), "max_sequences=4 of 48 tokens"
    assert (run / "plots" / "during_training" / "downstream.png").exists()
