"""Atomic file writes: a temp file in the same folder, fsync, then os.replace.

A process killed at any instant leaves either the old file or the new one, never half of one.
Every file evo writes in place (run directories, caches, references, configs) goes through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (safetensors, optuna); when
    the block ends the file is fsync'd and renamed onto `path`, or removed if the block failed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_directory(new: Path, target: Path, *, trash_prefix: str) -> None:
    """Move directory `new` onto `target`. An existing `target` is moved aside first (a directory
    with files cannot be replaced by rename) into a temp folder named `trash_prefix…` beside it,
    and put back if the final rename fails, so the old one survives a failure."""
    if not target.exists():
        os.replace(new, target)
        return
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=trash_prefix))
    os.replace(target, trash / "old")
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(trash / "old", target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
