"""Headless Chromium for the dashboard tests: the DOM after scripts ran, console messages, screenshots."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="mf-chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url],
                              capture_output=True, text=True, timeout=120)


def dump_dom(page: Path, query: str = "") -> tuple[str, list[str]]:
    """(DOM after load, console messages) of a page opened from file://."""
    done = _run(page.absolute().as_uri() + query, "--dump-dom")
    return done.stdout, CONSOLE.findall(done.stderr)


def screenshot(page: Path, out: Path, query: str = "") -> Path:
    _run(page.absolute().as_uri() + query, f"--screenshot={out}", "--window-size=1200,900")
    return out
