"""The ``facets`` evaluator passes the conformance suite plugin authors get from ``featureforge.testing``."""

from __future__ import annotations

from featureforge.testing import EvaluatorTests


class TestFacetsEvaluator(EvaluatorTests):
    evaluator = "facets"
    distribution = "featureforge-multifaceted"
    options = {"features": 4}
