"""Durable file writes: a reader sees the old file or the new one, never a torn mix."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and durably; return its sha256 (hex).

    The bytes go to a temporary file in the same directory, which is fsynced, renamed over
    ``path``, and the directory fsynced, so a crash at any moment leaves either the complete old
    file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()
