"""Durable file writes shared by the spool and the dead-letter file.

A write counts as done only once its bytes are fsync'd, and a new file's directory
entry is fsync'd too, so both survive a crash or a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: Path, data: bytes, *, append: bool) -> None:
    """Write all of ``data`` to ``path`` (appended or truncating) and fsync it; OSError on failure."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:  # os.write may take less than asked (signals, pipes, some filesystems)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (new or renamed files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
