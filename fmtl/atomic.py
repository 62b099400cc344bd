"""Atomic file writes: a temporary file in the same directory, fsync, rename, fsync of the directory.

A process killed at any moment leaves either the old file or the complete new one, never a
half-written file: the bytes go to ``.<name>.<random>.tmp`` next to the target, are flushed to
disk (``fsync``), then ``os.replace`` renames the temporary file over the target (atomic on
POSIX within one file system), and the directory is fsync'ed so that the rename itself survives
a power loss. Every file fmtl writes for keeps (checkpoints, ``config.toml``, ``results.json``,
tables, dataset caches) goes through :func:`write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write", "TMP_SUFFIX", "temporary_files"]

#: Suffix of the temporary files :func:`write` creates (a kill can leave one behind).
TMP_SUFFIX = ".tmp"


def temporary_files(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files a killed :func:`write` of ``path`` may have left behind.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".a.json.x1y2.tmp").write_text("half")
        >>> [p.name for p in temporary_files(d / "a.json")]
        ['.a.json.x1y2.tmp']
    """
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def write(path: str | os.PathLike[str], data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Writes ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``, fsync of the directory).

    Args:
        path: the target file; its directory must exist.
        data: text (written as UTF-8), bytes, or a function that writes into the open binary file
            (e.g. ``lambda f: torch.save(obj, f)``).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> write(p, "one"); write(p, b"two"); write(p, lambda f: f.write(b"three"))
        >>> p.read_text(), temporary_files(p)
        ('three', [])
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems cannot open or fsync a directory
        pass
