"""The core's tests run on the core alone: no entry-point plugin loads, whatever is installed.

For each test module here, ``FEATUREFORGE_PLUGINS=""`` (unless the environment names plugins)
limits the registry to the built-ins, in this process and in every CLI the tests start, and the
registry is rebuilt so; both are restored after the module, so the plugins' own tests in the same
session see every installed plugin. Tests of a plugin's behaviour live in that plugin's tests/;
the core tests about discovery (tests/test_plugins.py, the guide plugin) set the variable
themselves. So ``pip uninstall`` of every plugin leaves ``pytest tests/`` green.
"""

import os
from typing import Iterator

import pytest

import featureforge.plugins


@pytest.fixture(scope="module", autouse=True)
def core_plugins_only() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATUREFORGE_PLUGINS", os.environ.get("FEATUREFORGE_PLUGINS", ""))
        patch.setattr(featureforge.plugins, "_registry", None)
        yield
