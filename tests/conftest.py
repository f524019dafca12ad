"""The core's tests run on the core alone: no entry-point plugin loads, whatever is installed.

``FEATUREFORGE_PLUGINS=""`` (unless the environment names plugins) limits the registry to the built-ins, here and
in every CLI the tests start. Tests of a plugin's behaviour live in that plugin's own tests/;
the few core tests that are about discovery (tests/test_plugins.py, the guide plugin) set the
variable themselves. So ``pip uninstall`` of every plugin leaves ``pytest tests/`` green.
"""

import os

os.environ.setdefault("FEATUREFORGE_PLUGINS", "")
