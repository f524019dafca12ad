"""The guide plugin's own test suite, as its author writes it from docs/plugins.md.

Not collected by featureforge's test run (the name does not start with ``test_``):
``tests/test_guide_plugin.py`` installs the plugin and runs this file with pytest.
"""

from featureforge.testing import EvaluatorTests, SourceTests, TrainerTests


class TestWaves(SourceTests):
    source = "guide-waves"
    options = {"d_in": 8, "n_features": 16}
    distribution = "featureforge-guide"


class TestTied(TrainerTests):
    trainer = "guide-tied"
    options = {"d_dict": 32}
    distribution = "featureforge-guide"


class TestMeanCode(EvaluatorTests):
    evaluator = "mean-code"
    distribution = "featureforge-guide"
