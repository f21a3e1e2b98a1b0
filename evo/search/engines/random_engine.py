"""Random search: uniformly drawn genomes repaired to the budget, each scored at the final stage.
The baseline evo's DEAP search must beat at the same number of evaluations.

Counted like DEAP: a first batch (the "initial population"), then one batch per generation, so
`--generations G --population P` makes P × (G + 1) evaluations."""

from __future__ import annotations

import random
from typing import Any

from evo.search.engines.base import (FINAL_STAGE, Genome, Problem, Request, Score, check_engine_state, pair,
                                     pareto_front, pending_from_json, pending_to_json, register_engine, rng_state,
                                     set_rng_state, unpair)
from evo.search.space import random_genome

TRIES_PER_GENOME = 50  # random draws per wanted genome before a batch settles for fewer (duplicates)


@register_engine("random")
class RandomEngine:
    name = "random"

    def __init__(self, problem: Problem, *, population: int = 12, seed: int = 0, **_ignored: Any) -> None:
        self.problem = problem
        self.batch = population
        self.rng = random.Random(seed)
        self.generation = 0
        self.initialised = False  # the first batch is generation 0's population, not a generation
        self.archive: dict[Genome, Score] = {}
        self._pending: list[Request] = []

    @classmethod
    def evaluations_planned(cls, *, population: int, generations: int, multi_stage: bool = True) -> int:
        return population * (generations + 1)

    def ask(self) -> list[Request]:
        if not self._pending:
            genomes: list[Genome] = []
            for _ in range(TRIES_PER_GENOME * self.batch):
                genome = random_genome(self.problem, self.rng)
                if genome not in self.archive and genome not in genomes:
                    genomes.append(genome)
                if len(genomes) == self.batch:
                    break
            self._pending = [Request(g, FINAL_STAGE) for g in genomes]
        return list(self._pending)

    def tell(self, results: list[tuple[Request, Score]]) -> None:
        for request, score in results:
            self.archive[request.genome] = score
        self._pending = []
        if self.initialised:
            self.generation += 1
        self.initialised = True

    def at_generation_boundary(self) -> bool:
        return self.initialised and not self._pending

    def front(self) -> list[tuple[Genome, Score]]:
        return pareto_front(self.archive.items(), self.problem.budget_bytes)

    def state_dict(self) -> dict[str, Any]:
        return {"engine": self.name, "generation": self.generation,
                "initialised": self.initialised, "rng": rng_state(self.rng),
                "archive": [pair(g, s) for g, s in self.archive.items()],  # in the order told: appended (store.py)
                "pending": pending_to_json(self._pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_engine_state(state, self.name)
        self.generation = int(state["generation"])
        self.initialised = bool(state["initialised"])
        set_rng_state(self.rng, state["rng"])
        self.archive = dict(unpair(p) for p in state["archive"])
        self._pending = pending_from_json(state["pending"])
