"""The ``hf`` source and ``downstream`` evaluator pass the conformance suites plugin authors get
from ``featureforge.testing``, on a tiny random GPT-2 (with gradients) built in the test session."""

from __future__ import annotations

import pytest

import featureforge
from featureforge.testing import EvaluatorTests, SourceTests


class TestHFSource(SourceTests):
    source = "hf"
    distribution = "featureforge-hf"
    rows = 48

    @pytest.fixture
    def plugin_options(self, tiny_gpt2):
        return {"model": tiny_gpt2, "hook": "transformer.h.0", "context_size": 32, "batch_size": 4, "max_docs": 6, "grads": True}


class TestDownstreamEvaluator(EvaluatorTests):
    evaluator = "downstream"
    distribution = "featureforge-hf"
    options = {"max_sequences": 4, "batch_size": 4}

    @pytest.fixture(scope="class")
    @classmethod
    def evaluation_store(cls, tiny_gpt2, tmp_path_factory):
        options = {"model": tiny_gpt2, "hook": "transformer.h.0", "context_size": 32, "batch_size": 4, "max_docs": 10}
        return featureforge.cache("hf", options, store=str(tmp_path_factory.mktemp("conf") / "gpt2.zarr"), rows=400,
                                  rows_per_chunk=200, progress=False)


class TestSteeringEvaluator(TestDownstreamEvaluator):
    evaluator = "steering"
    options = {"latents": 2, "contexts": 12, "context_tokens": 8, "alphas": "4"}
