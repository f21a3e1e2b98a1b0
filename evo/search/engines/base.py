"""The ask/tell protocol every engine implements, the objects it exchanges, and the registry.

An engine proposes Requests (a genome and the evaluation stage it wants), is told their Scores,
and exposes its state as JSON so a run directory can checkpoint and resume it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from evo.errors import EvoError
from evo.search.space import Gene

Genome = tuple[int, ...]


@dataclass(frozen=True)
class Score:
    """What an evaluation measured: quality (lower is better: KL or perplexity) and exact bytes."""

    quality: float
    size_bytes: int


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


class Engine(Protocol):
    name: str
    generation: int  # completed generations

    def ask(self) -> list[Request]: ...

    def tell(self, results: list[tuple[Request, Score]]) -> None: ...

    def at_generation_boundary(self) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def front(self) -> list[tuple[Genome, Score]]: ...


ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def wrap(factory):
        ENGINES[name] = factory
        return factory

    return wrap


def check_engine(name: str) -> str:
    import evo.search.engines.deap_engine  # noqa: F401  (each registers itself; optuna is imported when used)
    import evo.search.engines.optuna_engine  # noqa: F401
    import evo.search.engines.random_engine  # noqa: F401

    if name not in ENGINES:
        raise EvoError(f"unknown engine {name!r}: use one of {', '.join(sorted(ENGINES))}")
    return name


def make_engine(name: str, problem: Problem, **settings) -> Engine:
    return ENGINES[check_engine(name)](problem, **settings)
