"""``import featureforge`` changes no environment variable; the CLI shortens OpenMP's spin before
torch loads (featureforge.runtime), and leaves a user's own choice alone."""

import os
import subprocess
import sys

OWN = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
SHOW = "import os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


def run(env_extra: dict[str, str], code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in OWN}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_importing_featureforge_and_every_plugin_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import featureforge, featureforge.store, featureforge.training, "
            "featureforge.evaluation; featureforge.get_registry().names('source'); "
            "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); print(changed)")
    assert run({}, code) == "[]"


def test_the_cli_entry_point_sets_a_short_spin_before_torch_loads():
    code = ("import sys; from featureforge import cli; sys.argv = ['featureforge', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n" + SHOW)
    assert run({}, code).splitlines()[-1] == "10000 None"


def test_the_opt_in_keeps_a_users_wait_policy_or_spin_count():
    code = "import featureforge.runtime as r; print(r.short_openmp_spin()); " + SHOW
    assert run({}, code) == "True\n10000 None"
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}, code) == "False\nNone ACTIVE"
    assert run({"GOMP_SPINCOUNT": "123"}, code) == "False\n123 None"


def test_the_opt_in_does_nothing_once_torch_is_loaded():
    code = "import torch, featureforge.runtime as r; print(r.short_openmp_spin()); " + SHOW
    assert run({}, code) == "False\nNone None"
