"""The ``moex`` and ``switch`` trainers pass the conformance suite plugin authors get from
``featureforge.testing`` (listed, train, deterministic, load, evaluate, export what they declare)."""

from __future__ import annotations

from featureforge.testing import TrainerTests


class TestMoEX(TrainerTests):
    trainer = "moex"
    options = {"d_dict": 64, "n_experts": 4, "top_k": 2, "k": 4}
    distribution = "featureforge-moex"


class TestSwitch(TrainerTests):
    trainer = "switch"
    options = {"d_dict": 64, "n_experts": 4, "k": 4}
    distribution = "featureforge-moex"
