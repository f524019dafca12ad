"""Crash-safe file writes that honour the user's umask.

A temporary sibling plus ``os.replace`` means a crash never leaves half a file. ``mkstemp``
creates its file with mode 0600 whatever the umask, so the final file is given the mode an
ordinary ``open()`` would have produced (0666 minus the umask).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process umask (probed with a stricter mask, so a concurrent file create is never looser)."""
    old = os.umask(0o077)
    os.umask(old)
    return old


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` (0666) or ``mkdir()`` (0777) would give a new file or folder now."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write a file through a temporary sibling and a rename, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))
