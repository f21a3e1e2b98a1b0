"""Progress of long library steps, reported through a callback: the library never prints.

A step (embedding, k-means, statistics, dense reference, size table, evaluations) reports
StepProgress(step, done, total, unit); whoever called renders it (the CLI with rich).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The names of the steps a search or a calibration reports, in the order they run.
EMBEDDING = "embedding"
KMEANS = "k-means"
STATISTICS = "activation statistics"
REFERENCE = "dense reference"
SIZE_TABLE = "size table"


@dataclass(frozen=True)
class StepProgress:
    """`done` of `total` units of one step finished; total None while it is not known.

    open_ended: the step is a table filled on demand (the size table), so `total` bounds it but
    it is not expected to reach it and no time remaining can be promised.
    """

    step: str
    done: int
    total: int | None
    unit: str = ""
    open_ended: bool = False


StepCallback = Callable[[StepProgress], None]
CountCallback = Callable[[int, int], None]  # (done, total), the older per-function convention


def counter(callback: StepCallback | None, step: str, unit: str = "") -> CountCallback | None:
    """A (done, total) callback for a function that counts, reporting as `step` to `callback`."""
    if callback is None:
        return None

    def report(done: int, total: int) -> None:
        callback(StepProgress(step, int(done), int(total), unit))

    return report
