"""Rendering of the library's progress at the CLI edge: one rich bar per long step (a count, its
total, elapsed and remaining time at the step's own measured rate), and the search's bar.

On a terminal the bars are live; otherwise each step prints a line when it starts, at most every
PLAIN_EVERY_SECONDS while it runs, and when it ends, so logs stay short and still show progress.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from evo.progress import StepProgress

PLAIN_EVERY_SECONDS = 30.0


class _RemainingColumn(ProgressColumn):
    """Time remaining from the task's own recent rate (rich's estimate), or the search's estimate in
    the `eta` field; blank for open-ended steps, whose total is a bound, not a goal."""

    def __init__(self) -> None:
        super().__init__()
        self._rich = TimeRemainingColumn()

    def render(self, task) -> Text:
        if task.fields.get("open_ended"):
            return Text("")
        eta = task.fields.get("eta", "rich")
        if eta == "rich":
            return self._rich.render(task)
        return Text("-:--:--" if eta is None else _clock(eta), style="progress.remaining")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """Bars for StepProgress reports and for the search's per-evaluation Progress."""

    def __init__(self, console: Console, *, fitness: str = "kl") -> None:
        self.console = console
        self.live = console.is_terminal
        self.fitness = fitness
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), _RemainingColumn(),
            TextColumn("{task.fields[detail]}"), console=console, disable=not self.live,
        )
        self.tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._printed: dict[str, float] = {}
        self._finished: set[str] = set()

    def __enter__(self) -> "ProgressDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    # --- steps ------------------------------------------------------------------------------------

    def step(self, p: StepProgress) -> None:
        now = time.perf_counter()
        first = p.step not in self.tasks
        if first:
            self.tasks[p.step] = self.progress.add_task(p.step, total=p.total, unit=p.unit, detail="",
                                                        open_ended=p.open_ended)
            self._started[p.step] = now
        self.progress.update(self.tasks[p.step], completed=p.done, total=p.total)
        if self.live:
            return
        finished = p.total is not None and p.done >= p.total and not p.open_ended
        if finished and p.step in self._finished:
            return
        if first or finished or now - self._printed.get(p.step, 0.0) >= PLAIN_EVERY_SECONDS:
            total = "?" if p.total is None else p.total
            elapsed = now - self._started[p.step]
            self.console.print(f"{p.step}: {p.done}/{total} {p.unit} ({elapsed:.1f} s)", highlight=False)
            self._printed[p.step] = now
            if finished:
                self._finished.add(p.step)

    # --- the search ---------------------------------------------------------------------------------

    def search(self, p) -> None:
        """Render evo.search.loop.Progress: the best is the point `evo export` would pick now."""
        best = f"{p.best_quality:.4f} at {p.best_bytes / 1e6:.3f} MB" if p.best_quality is not None else "-"
        detail = (f"gen {p.generation}/{p.generations} stage {p.stage} best {self.fitness} {best} "
                  f"front {p.front_size} {p.evals_per_second:.2f} eval/s")
        if p.workers:  # Ray actors: each one's rate, a dead one marked
            detail += " (" + ", ".join(f"{w.name.split()[0]} {w.evals_per_second:.2f}" + ("" if w.alive else " dead")
                                       for w in p.workers) + " eval/s)"
        if "evaluations" not in self.tasks:
            self.tasks["evaluations"] = self.progress.add_task("evaluations", total=p.evaluations_total, unit="",
                                                               detail="", open_ended=False, eta=None)
        self.progress.update(self.tasks["evaluations"], completed=p.evaluations_done, total=p.evaluations_total,
                             detail=detail, eta=p.eta_seconds)
        if not self.live:
            eta = "-" if p.eta_seconds is None else f"{p.eta_seconds / 60:.1f} min"
            self.console.print(f"[{p.evaluations_done}/{p.evaluations_total}] {detail} ETA {eta}", highlight=False)
