"""featureforge shortens OpenMP's spin before torch loads, and leaves a user's own choice alone."""

import os
import subprocess
import sys

CODE = "import featureforge, os, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


def run(env_extra: dict[str, str], code: str = CODE) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "FEATUREFORGE_SET_GOMP_SPINCOUNT")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_import_before_torch_sets_a_short_spin():
    assert run({}) == "10000 None"


def test_a_users_wait_policy_or_spin_count_is_kept():
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == "None ACTIVE"
    assert run({"GOMP_SPINCOUNT": "123"}) == "123 None"


def test_nothing_is_set_when_torch_was_imported_first():
    code = "import torch, featureforge, os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    assert run({}, code) == "None None"
