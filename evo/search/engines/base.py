"""What every engine shares: the ask/tell protocol and the objects it exchanges, the stage numbers,
the Pareto front under a budget, the checkpoint helpers, and the registry engines join by name.

An engine proposes Requests (a genome and the evaluation stage it wants), is told their Scores,
and exposes its state as JSON so a run directory can checkpoint and resume it exactly. A new
engine is one module in this package that decorates its class with @register_engine.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError
from evo.types import Gene, Genome, Score

__all__ = ["ENGINES", "FINAL_STAGE", "SCREEN_STAGE", "Engine", "Genome", "Problem", "Request", "Score",
           "check_engine", "check_engine_state", "engine_class", "fits_budget", "make_engine", "pair",
           "pareto_front", "pending_from_json", "pending_to_json", "register_engine", "rng_state",
           "set_rng_state", "unpair"]


@dataclass(frozen=True)
class Request:
    """One evaluation an engine wants: stage 1 is the quick screen, the last stage the full score."""

    genome: Genome
    stage: int


@dataclass(frozen=True)
class Problem:
    """What an engine may know about the task: the genome layout, sizes, and the budget."""

    genes: tuple[Gene, ...]
    size_of: Callable[[Genome], int]
    budget_bytes: int
    fixed_drops: int | None = None
    seeds: tuple[Genome, ...] = ()  # known configs to start from (warm start, --seed-configs)
    workdir: Path | None = None  # the run directory, for engines that keep files of their own there
    # size_of(genome) > budget_bytes, answered faster where it can be (a size table decides most genomes
    # from its vectorised sum, exactly: SizeTable.exceeds); None asks size_of
    over_budget: Callable[[Genome], bool] | None = None

    def positions(self, *kinds: str) -> tuple[int, ...]:
        """Positions of the genes of these kinds, ascending (memoised: repair and fill ask at every step)."""
        memo = self.__dict__.get("_positions")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_positions", memo)  # frozen: a memo beside the fields
        found = memo.get(kinds)
        if found is None:
            found = memo[kinds] = tuple(i for i, gene in enumerate(self.genes) if gene.kind in kinds)
        return found

    @property
    def last_choices(self) -> tuple[int, ...]:
        """Each gene's highest choice index (memoised)."""
        found = self.__dict__.get("_last_choices")
        if found is None:
            found = tuple(len(gene.choices) - 1 for gene in self.genes)
            object.__setattr__(self, "_last_choices", found)
        return found

    def exceeds(self, genome: Genome) -> bool:
        """Whether the genome's artifact is over the budget (repair and fill ask this many times per child)."""
        if self.over_budget is not None:
            return self.over_budget(genome)
        return self.size_of(genome) > self.budget_bytes


class Engine(Protocol):
    name: str
    generation: int  # completed generations

    @classmethod
    def evaluations_planned(cls, *, population: int, generations: int, multi_stage: bool = True) -> int:
        """Evaluations an uninterrupted run of `generations` generations makes."""
        ...

    def ask(self) -> list[Request]: ...

    def tell(self, results: list[tuple[Request, Score]]) -> None: ...

    def at_generation_boundary(self) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def front(self) -> list[tuple[Genome, Score]]: ...


# --- the budget and the front ----------------------------------------------------------------------------

Tag = TypeVar("Tag", bound=Hashable)


def fits_budget(score: Score, budget_bytes: int) -> bool:
    """A configuration fits when its whole artifact takes at most the budget's bytes."""
    return score.size_bytes <= budget_bytes


def pareto_front(points: Iterable[tuple[Tag, Score]], budget_bytes: int) -> list[tuple[Tag, Score]]:
    """Non-dominated (quality, bytes) points among those under budget, by size ascending.

    Each point is (tag, score); on equal (size, quality) the smaller tag (a genome, or a journal
    index) stands for them all.
    """
    fitting = sorted(((t, s) for t, s in points if fits_budget(s, budget_bytes)),
                     key=lambda item: (item[1].size_bytes, item[1].quality, item[0]))
    front, best_quality = [], float("inf")
    for tag, score in fitting:
        if score.quality < best_quality:
            front.append((tag, score))
            best_quality = score.quality
    return front


# --- checkpoint helpers -----------------------------------------------------------------------------------


def rng_state(rng: random.Random) -> list:
    """A random.Random's state as JSON."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def pair(genome: Genome, score: Score) -> list:
    """(genome, score) as JSON."""
    return [list(genome), score.quality, score.size_bytes]


def unpair(item: list) -> tuple[Genome, Score]:
    return tuple(int(g) for g in item[0]), Score(float(item[1]), int(item[2]))


def pending_to_json(pending: list[Request]) -> list:
    return [[list(r.genome), r.stage] for r in pending]


def pending_from_json(items: list) -> list[Request]:
    return [Request(tuple(g), int(stage)) for g, stage in items]


def check_engine_state(state: dict[str, Any], name: str) -> None:
    """Refuse a checkpoint written by another engine."""
    if state.get("engine") != name:
        raise EvoError(f"checkpoint was written by engine {state.get('engine')!r}, not {name!r}: "
                       f"resume with --engine {state.get('engine')}")


# --- the registry -------------------------------------------------------------------------------------------

ENGINES: dict[str, type] = {}


def register_engine(name: str):
    def wrap(factory):
        ENGINES[name] = factory
        return factory

    return wrap


def _discover() -> None:
    """Import every module of this package once: each engine registers itself on import (their own
    heavy dependencies, such as optuna, are imported when an engine is made, not here)."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name != "base":
            importlib.import_module(f"{package}.{module.name}")


def check_engine(name: str) -> str:
    _discover()
    if name not in ENGINES:
        raise EvoError(f"unknown engine {name!r}: use one of {', '.join(sorted(ENGINES))}")
    return name


def engine_class(name: str) -> type:
    return ENGINES[check_engine(name)]


def make_engine(name: str, problem: Problem, **settings) -> Engine:
    return engine_class(name)(problem, **settings)
