"""Every trainer of featureforge-sae passes the conformance suite plugin authors get from
``featureforge.testing`` (listed, trains, deterministic, loads, evaluates, exports and imports)."""

from __future__ import annotations

from featureforge.testing import TrainerTests


class TestTopK(TrainerTests):
    trainer = "topk"
    options = {"k": 4, "d_dict": 64}
    distribution = "featureforge-sae"


class TestBatchTopK(TrainerTests):
    trainer = "batchtopk"
    options = {"k": 4, "d_dict": 64}
    distribution = "featureforge-sae"


class TestReLU(TrainerTests):
    trainer = "relu"
    options = {"d_dict": 64, "l1_warmup_rows": 0, "l1_coef": 1.0}
    train_kwargs = {"lr": 3e-3}  # the trainer's 5e-5 (Anthropic's, for long runs) needs far more than a test's steps
    distribution = "featureforge-sae"


class TestGSAE(TrainerTests):
    trainer = "gsae"
    options = {"k": 4, "d_dict": 64}
    distribution = "featureforge-sae"


class TestJumpReLU(TrainerTests):
    trainer = "jumprelu"
    options = {"d_dict": 64, "l0_warmup_rows": 0}
    distribution = "featureforge-sae"


class TestMatryoshka(TrainerTests):
    trainer = "matryoshka"
    options = {"k": 4, "d_dict": 64, "prefixes": [8, 16, 32]}
    distribution = "featureforge-sae"
