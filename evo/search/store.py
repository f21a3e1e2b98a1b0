"""The run directory: spec, append-only journal of finished evaluations, atomic per-generation
checkpoints, Pareto front and best config. JSON/TOML only, no pickle.

A run killed at any instant resumes from the last checkpoint; evaluations finished after it are
read back from the journal, so nothing is lost and nothing is evaluated twice. Each journal line
is written and flushed to the kernel when its evaluation ends (a killed process loses none); the
search fsyncs the journal once per generation (`sync`), before the generation's checkpoint, instead
of once per line or per asked batch: at 50 evaluations/s a per-line fsync was a real share of the
loop, and a generation of staged selection asks several batches. A power loss can cost the lines
after the last sync, all of them after the last checkpoint: the run resumes from that checkpoint and
evaluates them again, deterministically, to the same values.

The checkpoint stays the same size however long the run: an engine state's lists that only grow
(APPEND_ONLY: DEAP's and random search's archive of final scores, optuna's told trials) are appended
to their own file (`checkpoint.archive.jsonl`, one item a line) and checkpoint.json names how many
lines and bytes of it belong to the state, so a generation writes its new items only, not the whole
archive again (at EvoPress's 20,000 evaluations the archive holds over a thousand genomes). Lines past
that count (a process killed between the append and the checkpoint) are ignored when read and cut
off at the next write. A checkpoint of an older evo, with the lists inline, is read as before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Iterator, Protocol, TypeVar

from evo.constants import CHECKPOINT_FILE, CHECKPOINT_ITEMS_FILE, FRONT_FILE, JOURNAL_FILE, MB, RUN_FILE, SPEC_FILE
from evo.errors import EvoError
from evo.fileio import atomic_write_text
from evo.types import FrontPoint

STORE_FORMAT = 1
APPEND_ONLY = ("archive", "told")  # engine state lists that only grow: appended, not rewritten (see above)


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


class Scored(Protocol):
    quality: float
    size_bytes: int


Point = TypeVar("Point", bound=Scored)


def best_under_budget(points: Iterable[Point], budget_bytes: int) -> Point | None:
    """The point a run stands for under a budget: the best quality among those that fit, the
    smaller artifact on a tie. The one rule for the search's best.toml, evo report and evo export."""
    fitting = [p for p in points if p.size_bytes <= budget_bytes]
    return min(fitting, key=lambda p: (p.quality, p.size_bytes)) if fitting else None


def evaluation_key(genome: tuple[int, ...], stage: int) -> str:
    return f"s{stage}:" + ".".join(str(g) for g in genome)


class RunStore:
    """Files of one run directory. Create with `create` (new run) or `open` (resume)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.lock = None  # a RunLock when this store created the run
        self._journal: dict[str, JournalEntry] = {}
        self._unsynced = False  # journal lines appended with durable=False since the last sync()
        # per APPEND_ONLY key: (items, bytes, last item's line) of its file that the checkpoint on disk holds
        self._appended: dict[str, tuple[int, int, str]] = {}

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
        if not (directory / RUN_FILE).is_file() or not (directory / SPEC_FILE).is_file():
            raise EvoError(f"{directory} is not an evo run directory (no {RUN_FILE} / {SPEC_FILE})")
        try:
            manifest = json.loads((directory / RUN_FILE).read_text())
            manifest.get("format")
        except (ValueError, RecursionError, AttributeError):
            raise EvoError(f"{directory / RUN_FILE} is corrupt: this run cannot be resumed") from None
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

    def append(self, genome: tuple[int, ...], stage: int, quality: float, size_bytes: int, seconds: float, *,
               durable: bool = True) -> JournalEntry:
        """Journal a finished evaluation; durable=False leaves the fsync to the next sync()."""
        key = evaluation_key(genome, stage)
        if key in self._journal:
            raise RuntimeError(f"evaluation {key} is already journaled")  # a bug, never user input
        entry = JournalEntry(key=key, genome=tuple(genome), stage=stage, quality=float(quality),
                             size_bytes=int(size_bytes), seconds=seconds, index=len(self._journal))
        with open(self.directory / JOURNAL_FILE, "a", encoding="utf-8") as handle:
            handle.write(dumps(entry.to_dict()) + "\n")  # flushed to the kernel when the file closes
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
            else:
                self._unsynced = True
        self._journal[key] = entry
        return entry

    def sync(self) -> None:
        """fsync the journal if lines were appended since the last sync (see the module docstring)."""
        if not self._unsynced:
            return
        with open(self.directory / JOURNAL_FILE, "a", encoding="utf-8") as handle:
            os.fsync(handle.fileno())
        self._unsynced = False

    # --- checkpoint, front, best ---------------------------------------------------------------

    def write_checkpoint(self, state: dict) -> None:
        """Write the checkpoint atomically; the engine state's APPEND_ONLY lists go to their files first
        (only the items the last checkpoint lacks), so checkpoint.json never names lines not on disk."""
        engine = state.get("engine")
        if isinstance(engine, dict):
            engine = dict(engine)
            for key in APPEND_ONLY:
                if isinstance(engine.get(key), list):
                    engine[key] = self._append_items(key, engine[key])
            state = {**state, "engine": engine}
        atomic_write_text(self.directory / CHECKPOINT_FILE, dumps({"format": STORE_FORMAT, **state}) + "\n")

    def _append_items(self, key: str, items: list) -> dict:
        if key not in self._appended and (self.directory / CHECKPOINT_FILE).exists():
            self.read_checkpoint()  # what the checkpoint on disk holds of this file (nothing if inline)
        count, size, last = self._appended.get(key, (0, 0, ""))
        if len(items) < count or (count and dumps(items[count - 1]) != last):
            # a bug, never user input: the engine's list must only grow, in the same order
            raise RuntimeError(f"engine state {key!r} is not an extension of the checkpointed one")
        new = "".join(dumps(item) + "\n" for item in items[count:]).encode()
        path = self.directory / CHECKPOINT_ITEMS_FILE.format(key=key)
        with open(path, "r+b" if path.exists() else "wb") as handle:
            handle.truncate(size)  # lines past the checkpoint's count: a process killed before its checkpoint
            handle.seek(size)
            handle.write(new)
            handle.flush()
            os.fsync(handle.fileno())
        if items:
            last = dumps(items[-1])
        self._appended[key] = (len(items), size + len(new), last)
        return {"file": path.name, "items": len(items), "bytes": size + len(new)}

    def _read_items(self, key: str, ref: dict) -> list:
        """The first ref["items"] lines of an APPEND_ONLY key's file (see write_checkpoint)."""
        path = self.directory / CHECKPOINT_ITEMS_FILE.format(key=key)
        try:
            count, size = int(ref["items"]), int(ref["bytes"])
            with open(path, "rb") as handle:
                data = handle.read(size)
            items = [json.loads(line) for line in data.split(b"\n")[:-1]]
        except FileNotFoundError:
            raise EvoError(f"{path} is missing: this run's checkpoint cannot be resumed (restore the file)") from None
        except (KeyError, TypeError, ValueError, RecursionError):
            items, count, size, data = [], -1, 0, b""
        if len(items) != count or len(data) != size or (data and not data.endswith(b"\n")):
            raise EvoError(f"{path} is shorter than {CHECKPOINT_FILE} says or corrupt: this run cannot be resumed "
                           "(restore the file)")
        self._appended[key] = (count, size, dumps(items[-1]) if items else "")
        return items

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
        for key in APPEND_ONLY:
            ref = data["engine"].get(key)
            if isinstance(ref, dict):
                data["engine"][key] = self._read_items(key, ref)
            elif isinstance(ref, list):
                self._appended.pop(key, None)  # inline (an older evo): the next checkpoint writes the file anew
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

    def write_front(self, front: list[FrontPoint], *, budget_bytes: int, metric: str, generation: int) -> Path:
        return self.write_json(FRONT_FILE, {"budget_bytes": budget_bytes, "metric": metric, "generation": generation,
                                            "front": [point.to_dict() for point in front]})

    def read_front(self) -> tuple[list[FrontPoint], int]:
        """The front of the last finished generation and the run's budget."""
        data = self.read_json(FRONT_FILE)
        return [FrontPoint.from_dict(p) for p in data["front"]], int(data["budget_bytes"])

    def choose(self, budget_bytes: int | None = None) -> tuple[FrontPoint, int]:
        """The best front point under a budget (default: the run's), and that budget."""
        front, budget = self.read_front()
        budget = budget_bytes if budget_bytes is not None else budget
        best = best_under_budget(front, budget)
        if best is None:
            smallest = min((p.size_bytes for p in front), default=None)
            raise EvoError(
                f"no configuration of run {self.directory} fits {budget / MB:.3f} MB"
                + (f"; its smallest is {smallest / MB:.3f} MB: raise --budget-mb" if smallest else "")
            )
        return best, budget

    def path(self, name: str) -> Path:
        return self.directory / name

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries())
