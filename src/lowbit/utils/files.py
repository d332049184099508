"""Atomic file writes: write to a temporary name in the same folder, then rename.

``os.replace`` is atomic on POSIX, so a reader (or a crash) never sees a
half-written file at the target path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from lowbit.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, then rename."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: pass a file name inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}): pass a path in a writable folder") from None
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a saved model is an ordinary file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
