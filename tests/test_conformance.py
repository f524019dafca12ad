"""The built-in plugins pass the conformance suites plugin authors get from ``featureforge.testing``."""

from __future__ import annotations

import numpy as np
import pytest

from featureforge.testing import EvaluatorTests, SourceTests


class TestSyntheticSource(SourceTests):
    source = "synthetic"
    options = {"d_in": 8, "n_features": 24, "downstream": True, "important_features": 4}
    distribution = "featureforge"


class TestArraySource(SourceTests):
    source = "array"
    distribution = "featureforge"

    @pytest.fixture
    def plugin_options(self, tmp_path):
        path = tmp_path / "acts.npy"
        np.save(path, np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32))
        return {"path": str(path)}


class TestReconstructionEvaluator(EvaluatorTests):
    evaluator = "reconstruction"
    distribution = "featureforge"


class TestGroundTruthEvaluator(EvaluatorTests):
    evaluator = "ground-truth"
    distribution = "featureforge"


def test_the_suites_are_a_pytest_plugin(pytestconfig):
    """Installed through the pytest11 entry point: its fixtures are there without an import."""
    assert pytestconfig.pluginmanager.has_plugin("featureforge")
