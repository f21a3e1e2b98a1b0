"""The run directory: spec, append-only fsync'd journal of finished evaluations, atomic
per-generation checkpoints, Pareto front and best config. JSON/TOML only, no pickle.

A run killed at any instant resumes from the last checkpoint; evaluations finished after it are
read back from the journal, so nothing is lost and nothing is evaluated twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from evo.errors import EvoError
from evo.fileio import atomic_write_text

SPEC_FILE = "spec.json"
JOURNAL_FILE = "journal.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
FRONT_FILE = "front.json"
BEST_FILE = "best.toml"
CALIBRATION_FILE = "calibration.json"
SIZE_CACHE_DIR = "size_cache"
MANIFEST_FILE = "run.json"  # written last at creation: its presence marks a complete run directory
STORE_FORMAT = 1


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class JournalEntry:
    """One finished evaluation: which genome, at which stage, and what it scored."""

    key: str  # genome key + stage: the identity of an evaluation
    genome: tuple[int, ...]
    stage: int
    quality: float
    size_bytes: int
    seconds: float
    index: int  # position in the journal: evaluations are numbered in the order they finished

    def to_dict(self) -> dict:
        return {"key": self.key, "genome": list(self.genome), "stage": self.stage, "quality": self.quality,
                "size_bytes": self.size_bytes, "seconds": round(self.seconds, 4), "index": self.index}

    @classmethod
    def from_dict(cls, data: dict) -> "JournalEntry":
        return cls(key=str(data["key"]), genome=tuple(int(g) for g in data["genome"]), stage=int(data["stage"]),
                   quality=float(data["quality"]), size_bytes=int(data["size_bytes"]),
                   seconds=float(data["seconds"]), index=int(data["index"]))


def evaluation_key(genome: tuple[int, ...], stage: int) -> str:
    return f"s{stage}:" + ".".join(str(g) for g in genome)


class RunStore:
    """Files of one run directory. Create with `create` (new run) or `open` (resume)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.lock = None  # a RunLock when this store created the run
        self._journal: dict[str, JournalEntry] = {}

    # --- creation and opening ------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike, spec: dict) -> "RunStore":
        """Create the run atomically (evo.search.lifecycle) and hold its lock while the store lives."""
        from evo.search.lifecycle import create_run_directory

        directory = Path(directory)
        lock = create_run_directory(directory, spec)
        store = cls(directory)
        store.lock = lock
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, *, read_journal: bool = True) -> "RunStore":
        """Open a run; read_journal=False only looks (the journal is read, and a torn last line
        truncated, by the process that holds the run's lock)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise EvoError(f"run directory {directory} does not exist: check the path or start a new search")
        from evo.search.lifecycle import is_partial_creation

        if is_partial_creation(directory):
            raise EvoError(f"the creation of run {directory} was interrupted before its first step: "
                           f"start it again with --run-dir {directory} (it is treated as new)")
        if not (directory / MANIFEST_FILE).is_file() or not (directory / SPEC_FILE).is_file():
            raise EvoError(f"{directory} is not an evo run directory (no {MANIFEST_FILE} / {SPEC_FILE})")
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            manifest.get("format")
        except (ValueError, RecursionError, AttributeError):
            raise EvoError(f"{directory / MANIFEST_FILE} is corrupt: this run cannot be resumed") from None
        if manifest.get("format") != STORE_FORMAT:
            raise EvoError(f"{directory} was written by an incompatible evo (run format {manifest.get('format')})")
        store = cls(directory)
        if read_journal:
            store._read_journal()
        return store

    def spec(self) -> dict:
        try:
            return json.loads((self.directory / SPEC_FILE).read_text())
        except (ValueError, OSError, RecursionError):
            raise EvoError(f"{self.directory / SPEC_FILE} is corrupt: this run cannot be resumed") from None

    # --- journal -------------------------------------------------------------------------------

    def _read_journal(self) -> None:
        path = self.directory / JOURNAL_FILE
        if not path.exists():
            return
        lines = path.read_bytes().split(b"\n")
        good_bytes = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                entry = JournalEntry.from_dict(json.loads(line))
            except (KeyError, ValueError, TypeError, RecursionError):
                if number >= len(lines) - 1:
                    # a torn last line: the process died mid-append; that evaluation was not finished
                    with open(path, "r+b") as handle:
                        handle.truncate(good_bytes)
                    break
                raise EvoError(f"{path}:{number} is corrupt (not the last line, so not a torn write): "
                               "this run cannot be resumed safely") from None
            if entry.key in self._journal or entry.index != len(self._journal):
                raise EvoError(f"{path}:{number} repeats evaluation {entry.key} or is out of order (index "
                               f"{entry.index}, expected {len(self._journal)}): the journal was edited or two "
                               "processes wrote it; this run cannot be resumed safely")
            self._journal[entry.key] = entry
            good_bytes += len(line) + 1

    def lookup(self, key: str) -> JournalEntry | None:
        return self._journal.get(key)

    def entries(self) -> list[JournalEntry]:
        return sorted(self._journal.values(), key=lambda e: e.index)

    def __len__(self) -> int:
        return len(self._journal)

    def append(self, genome: tuple[int, ...], stage: int, quality: float, size_bytes: int, seconds: float) -> JournalEntry:
        key = evaluation_key(genome, stage)
        if key in self._journal:
            raise RuntimeError(f"evaluation {key} is already journaled")  # a bug, never user input
        entry = JournalEntry(key=key, genome=tuple(genome), stage=stage, quality=float(quality),
                             size_bytes=int(size_bytes), seconds=seconds, index=len(self._journal))
        with open(self.directory / JOURNAL_FILE, "a", encoding="utf-8") as handle:
            handle.write(dumps(entry.to_dict()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._journal[key] = entry
        return entry

    # --- checkpoint, front, best ---------------------------------------------------------------

    def write_checkpoint(self, state: dict) -> None:
        atomic_write_text(self.directory / CHECKPOINT_FILE, dumps({"format": STORE_FORMAT, **state}) + "\n")

    def read_checkpoint(self) -> dict | None:
        path = self.directory / CHECKPOINT_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError):
            raise EvoError(f"{path} is corrupt: this run cannot be resumed (the journal is intact; start a new "
                           "run with the same seed to reuse nothing, or restore the file)") from None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise EvoError(f"{path} has an unknown format: this run cannot be resumed")
        if not isinstance(data.get("generation"), int) or not isinstance(data.get("engine"), dict):
            raise EvoError(f"{path} lacks its generation or engine state (or they have the wrong type): "
                           "this run cannot be resumed")
        return data

    def write_json(self, name: str, data: Any) -> Path:
        path = self.directory / name
        atomic_write_text(path, json.dumps(data, sort_keys=True, indent=2) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.directory / name
        atomic_write_text(path, text)
        return path

    def read_json(self, name: str) -> Any:
        path = self.directory / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise EvoError(f"{path} is missing: the run has not finished a generation yet") from None
        except (ValueError, RecursionError):
            raise EvoError(f"{path} is corrupt") from None

    def path(self, name: str) -> Path:
        return self.directory / name

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries())
