"""A run directory's life: its path normalised, created atomically, locked for one process,
cleaned of what killed writers left behind, and removed again when the run is refused before
its first evaluation.

Creation builds spec.json and run.json in a hidden sibling directory and renames it onto the
run's path, so a kill at any instant leaves either no run or a whole one. The lock is an
fcntl.flock on RUN/.lock held for the process's life (the kernel drops it when the process
dies, so a kill -9 never leaves a stale lock behind). A flock belongs to the open file, which a
fork shares: a forked child (a process pool's worker) closes its copy of the descriptor, without
unlocking, so the lock still dies with the process that took it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from evo.constants import LOCK_FILE, MB, RUN_FILE, SPEC_FILE
from evo.errors import EvoError

STAGING_PREFIX = ".evo-creating-"  # a run being created, beside its final path
TEMP_MARKER = ".tmp"  # atomic_write_text's and the optuna engine's temp files: .NAME.<random>.tmp
# Files an interrupted creation by an older evo could leave (spec.json written, run.json not).
PARTIAL_CREATION_FILES = frozenset({SPEC_FILE, LOCK_FILE})


def normalize_run_dir(path: str | os.PathLike) -> Path:
    """The run directory as an absolute, normalised path: `runs/x/` and `runs/x` name one run,
    and engines that keep files of their own (optuna's journal lock) never see a relative path."""
    text = os.fspath(path)
    if not str(text).strip():
        raise EvoError("the run directory is empty: pass --run-dir DIR")
    return Path(os.path.abspath(os.path.expanduser(text)))


def check_directory_path(path: Path, option: str) -> None:
    """A path that will be a directory must not be an existing file (nor lie under one)."""
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise EvoError(f"{option} {path}: {parent} is a file, not a directory: pass another {option}")
        if parent.exists():
            return


def check_budget_mb(value: float | None, option: str = "--budget-mb") -> None:
    """A budget is a finite positive number of MB (nan, inf and 1e400 are refused in one line)."""
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        raise EvoError(f"{option} {value!r}: give a finite positive number of MB, e.g. {option} 70")
    if value * MB > 1e18:
        raise EvoError(f"{option} {value:g}: no artifact is that large; give a budget in MB, e.g. {option} 70")


# --- the lock ---------------------------------------------------------------------------------------


_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()  # this process's locks, for _forget_in_child


def _forget_in_child() -> None:
    for lock in list(_HELD):
        lock._forget()


os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """An exclusive flock on DIR/.lock, held until release() or the process's end. The file holds
    the holder's PID, for the message a second process prints."""

    def __init__(self, directory: Path, handle) -> None:
        self.directory = directory
        self._handle = handle

    @classmethod
    def acquire(cls, directory: Path, shown_as: Path | None = None) -> "RunLock":
        path = Path(directory) / LOCK_FILE
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise EvoError(f"run {shown_as or directory} is in use by PID {pid}: wait for it to finish "
                               "(or stop it), then resume") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        lock = cls(Path(directory), handle)
        _HELD.add(lock)
        return lock

    def _forget(self) -> None:
        """In a forked child: close the inherited descriptor without LOCK_UN (which would unlock the
        parent's open file too); the parent's own descriptor keeps the lock, and its death ends it."""
        if self._handle is not None:
            self._handle.close()  # close(2) keeps a flock while another descriptor of the file is open
            self._handle = None

    def moved_to(self, directory: Path) -> None:
        self.directory = Path(directory)  # the lock is on the inode: a rename keeps it

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# --- creation ---------------------------------------------------------------------------------------


def is_complete_run(directory: Path) -> bool:
    return (directory / RUN_FILE).is_file()


def is_partial_creation(directory: Path) -> bool:
    """A directory an interrupted creation left: it holds only spec.json / the lock / temp files,
    no run.json. No evaluation can have run in it, so it is safe to treat as new."""
    if not directory.is_dir() or is_complete_run(directory):
        return False
    names = {p.name for p in directory.iterdir()}
    return SPEC_FILE in names and all(name in PARTIAL_CREATION_FILES or _is_temp_name(name) for name in names)


def create_run_directory(directory: Path, spec: dict) -> RunLock:
    """Create a run atomically and return its lock: spec.json and run.json are written into a
    hidden sibling, locked there, and the sibling is renamed onto `directory` (absent, empty, or
    left partial by an interrupted creation). Refuses when a run (or anything else) is there."""
    directory = Path(directory)
    check_directory_path(directory, "--run-dir")
    if is_complete_run(directory):
        raise EvoError(f"run directory {directory} already holds a run: resume it with --resume {directory}, "
                       "or pass another --run-dir")
    if directory.exists() and any(directory.iterdir()):
        if not is_partial_creation(directory):
            raise EvoError(f"{directory} is a non-empty directory that is not an evo run: pass another --run-dir")
        previous = RunLock.acquire(directory)  # refuses while another process is creating it
        shutil.rmtree(directory)
        previous.release()
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(directory.parent)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{STAGING_PREFIX}{directory.name}-"))
    lock = None
    try:
        os.chmod(staging, 0o755)
        lock = RunLock.acquire(staging, shown_as=directory)
        _write_synced(staging / SPEC_FILE, json.dumps(spec, sort_keys=True, indent=2) + "\n")
        _write_synced(staging / RUN_FILE, json.dumps({"format": 1, "kind": "evo.run"}, sort_keys=True,
                                                     separators=(",", ":")) + "\n")
        try:
            os.rename(staging, directory)  # replaces an empty directory; fails on a non-empty one
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise EvoError(f"run directory {directory} was created by another process meanwhile: "
                               f"resume it with --resume {directory}") from None
            raise
        lock.moved_to(directory)
        _fsync_directory(directory.parent)
        return lock
    except BaseException:
        if lock is not None and lock.directory == staging:
            lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise


def open_run_directory(directory: Path) -> RunLock:
    """Lock an existing run for this process and remove the temp files killed writers left."""
    lock = RunLock.acquire(directory)
    clean_temp_files(directory)
    return lock


def remove_run_directory(directory: Path, lock: RunLock) -> None:
    """Remove a run this process created and that was refused before any evaluation, so the
    corrected command can start afresh in the same place."""
    shutil.rmtree(directory, ignore_errors=True)
    lock.release()


def clean_temp_files(directory: Path) -> list[Path]:
    """Remove temp files (`.NAME.*.tmp`, optuna's `*.tmp.lock`) of writes a kill interrupted.
    Only the holder of the run's lock calls this, so no live writer owns them."""
    removed = []
    for path in directory.rglob(".*"):
        if path.name != LOCK_FILE and _is_temp_name(path.name) and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def clean_stale_staging(parent: Path) -> None:
    """Remove creations that a kill interrupted (hidden siblings nobody holds a lock on)."""
    for staging in parent.glob(f"{STAGING_PREFIX}*"):
        if not staging.is_dir():
            continue
        try:
            lock = RunLock.acquire(staging)
        except (EvoError, OSError):
            continue  # another process is creating that run now
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and (name.endswith(TEMP_MARKER) or TEMP_MARKER + "." in name)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
