"""docs/plugins.md is enough to write a plugin: ``tests/guide_plugin`` was written from the guide
alone, and here it is pip-installed as a real distribution (dist-info, entry point) and its own
suite, subclassing the three conformance suites of ``featureforge.testing``, passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from storehelpers import pip_install_target

GUIDE_PLUGIN = Path(__file__).resolve().parent / "guide_plugin"


@pytest.fixture(scope="module")
def guide_site(tmp_path_factory) -> Path:
    site = pip_install_target(GUIDE_PLUGIN, tmp_path_factory.mktemp("guide-plugin"))
    assert list(site.glob("featureforge_guide-0.1.0.dist-info"))
    return site


def test_the_plugin_written_from_the_guide_passes_the_conformance_suites(guide_site, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guide_site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "FEATUREFORGE_PLUGINS": "featureforge-guide", "FEATUREFORGE_STRICT_PLUGINS": "1", "FEATUREFORGE_PROGRESS": "0",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "pytest"), "-rs",
         str(GUIDE_PLUGIN / "conformance_guide.py")],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # Source, trainer and evaluator suites all ran; the trainer declares no formats and the source
    # no splice, so those two tests are skipped with a reason.
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b1[0-9] passed, 2 skipped\b", summary), summary
    assert "declares no export formats" in out and "does not declare can_splice" in out, out[-2000:]
