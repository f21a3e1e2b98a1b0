"""The DEAP engine: NSGA-II over (quality, size) with the budget as a constraint, EvoPress-style
level moves, uniform crossover, repair to budget, elitism, and two-stage selection (screen many
offspring on few tokens, re-score the survivors on the full calibration set).

DEAP's `creator` classes are made here and nowhere else. Every random draw comes from one
`random.Random` whose state is checkpointed, so a resumed run asks exactly what it would have.
"""

from __future__ import annotations

import random
from typing import Any

from deap import base, creator, tools

from evo.search.engines.base import Genome, Problem, Request, Score, register_engine
from evo.search.engines.operators import drop_swap, fill, level_move, repair, resample_genes, warm_start
from evo.errors import EvoError

SCREEN_STAGE = 1
FINAL_STAGE = 2
INFEASIBLE_QUALITY = 1e12  # quality given to a genome over budget, scaled by how far over it is

if not hasattr(creator, "EvoFitness"):
    creator.create("EvoFitness", base.Fitness, weights=(-1.0, -1.0))  # minimise quality and bytes
if not hasattr(creator, "EvoIndividual"):
    creator.create("EvoIndividual", list, fitness=creator.EvoFitness)


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def constrained_fitness(score: Score, budget_bytes: int) -> tuple[float, float]:
    """(quality, bytes); over budget, quality becomes a penalty that grows with the excess, so
    any feasible genome dominates every infeasible one."""
    if score.size_bytes <= budget_bytes:
        return (score.quality, float(score.size_bytes))
    excess = (score.size_bytes - budget_bytes) / budget_bytes
    return (INFEASIBLE_QUALITY * (1.0 + excess), float(score.size_bytes))


def pareto_front(archive: dict[Genome, Score], budget_bytes: int) -> list[tuple[Genome, Score]]:
    """Non-dominated (quality, bytes) points among evaluations under budget, by size ascending."""
    points = sorted(((g, s) for g, s in archive.items() if s.size_bytes <= budget_bytes),
                    key=lambda item: (item[1].size_bytes, item[1].quality, item[0]))
    front, best_quality = [], float("inf")
    for genome, score in points:
        if score.quality < best_quality:
            front.append((genome, score))
            best_quality = score.quality
    return front


@register_engine("deap")
class DeapEngine:
    """NSGA-II (mu + lambda) with two-stage evaluation; see the module docstring."""

    name = "deap"

    def __init__(
        self,
        problem: Problem,
        *,
        population: int = 12,
        offspring: int | None = None,
        survivors: int | None = None,
        crossover_prob: float = 0.5,
        mutation_rate: float = 0.1,
        max_level_moves: int = 3,
        multi_stage: bool = True,
        seed: int = 0,
        **_ignored: Any,  # settings meant for other engines (e.g. sampler)
    ) -> None:
        if population < 2:
            raise EvoError(f"--population {population} is too small: use at least 2")
        self.problem = problem
        self.population_size = population
        self.offspring_size = offspring or 2 * population
        self.survivors_size = survivors or max(1, population // 2) if multi_stage else self.offspring_size
        self.crossover_prob = crossover_prob
        self.mutation_rate = mutation_rate
        self.max_level_moves = max_level_moves
        self.multi_stage = multi_stage
        self.rng = random.Random(seed)
        self.generation = 0
        self.phase = "init"
        self.population: list[tuple[Genome, Score]] = []
        self.archive: dict[Genome, Score] = {}  # every final-stage score: the Pareto front's source
        self._pending: list[Request] = []
        self._screened: list[tuple[Genome, Score]] = []

    # --- ask / tell ----------------------------------------------------------------------------

    def ask(self) -> list[Request]:
        if self._pending:
            return list(self._pending)
        if self.phase == "init":
            genomes = self._initial_population()
            stage = FINAL_STAGE
        elif self.phase == "screen":
            genomes = self._offspring()
            stage = SCREEN_STAGE if self.multi_stage else FINAL_STAGE
        else:  # confirm: the best screened offspring get the full evaluation
            ranked = sorted(self._screened, key=lambda item: (constrained_fitness(item[1], self.problem.budget_bytes), item[0]))
            genomes = [g for g, _ in ranked[: self.survivors_size]]
            stage = FINAL_STAGE
        self._pending = [Request(tuple(g), stage) for g in genomes]
        return list(self._pending)

    def tell(self, results: list[tuple[Request, Score]]) -> None:
        asked = {(r.genome, r.stage) for r in self._pending}
        if {(r.genome, r.stage) for r, _ in results} != asked:
            raise RuntimeError("tell() must report exactly the requests of the last ask()")
        self._pending = []
        scored = [(r.genome, s) for r, s in results]
        if self.phase == "init":
            self._remember(scored)
            self.population = self._select(scored, self.population_size)
            self.phase = "screen"
            return
        if self.phase == "screen" and self.multi_stage:
            self._screened = scored
            self.phase = "confirm"
            return
        self._remember(scored)
        self.population = self._select(self.population + scored, self.population_size)
        self._screened = []
        self.phase = "screen"
        self.generation += 1

    def at_generation_boundary(self) -> bool:
        return self.phase == "screen" and not self._pending

    def front(self) -> list[tuple[Genome, Score]]:
        return pareto_front(self.archive, self.problem.budget_bytes)

    # --- population building ------------------------------------------------------------------

    def _initial_population(self) -> list[Genome]:
        return warm_start(self.problem, self.rng, self.population_size)

    def _offspring(self) -> list[Genome]:
        problem, rng = self.problem, self.rng
        seen = {g for g, _ in self.population} | set(self.archive)
        children: list[Genome] = []
        attempts = 0
        while len(children) < self.offspring_size and attempts < 50 * self.offspring_size:
            attempts += 1
            first, second = self._tournament(), self._tournament()
            child = list(first)
            if rng.random() < self.crossover_prob:
                random.seed(rng.getrandbits(64))  # DEAP's operators draw from the global generator
                child, _ = tools.cxUniform(list(first), list(second), indpb=0.5)
            genome = tuple(child)
            for _ in range(rng.randint(1, self.max_level_moves)):
                genome = level_move(genome, problem, rng)
            genome = resample_genes(genome, problem, rng, self.mutation_rate)
            if problem.fixed_drops is not None:
                genome = drop_swap(genome, problem, rng)
            genome = fill(repair(genome, problem, rng), problem, rng)
            if genome in seen:
                continue
            seen.add(genome)
            children.append(genome)
        return children

    def _tournament(self) -> Genome:
        """Binary tournament on (front rank, crowding) — NSGA-II's mating selection."""
        a, b = self.rng.sample(range(len(self.population)), 2) if len(self.population) > 1 else (0, 0)
        return self.population[min(a, b)][0]  # population is kept sorted best first by _select

    def _select(self, scored: list[tuple[Genome, Score]], k: int) -> list[tuple[Genome, Score]]:
        """NSGA-II environmental selection (elitist), returned best first: by front, then crowding."""
        unique = dict(scored)  # a genome seen twice keeps its last score
        individuals = []
        for genome in sorted(unique):
            individual = creator.EvoIndividual(genome)
            individual.fitness.values = constrained_fitness(unique[genome], self.problem.budget_bytes)
            individuals.append(individual)
        chosen = tools.selNSGA2(individuals, min(k, len(individuals)))
        fronts = tools.sortNondominated(chosen, len(chosen))
        ordered = []
        for front in fronts:
            tools.emo.assignCrowdingDist(front)
            ordered += sorted(front, key=lambda ind: (-ind.fitness.crowding_dist, ind.fitness.values, tuple(ind)))
        return [(tuple(ind), unique[tuple(ind)]) for ind in ordered]

    def _remember(self, scored: list[tuple[Genome, Score]]) -> None:
        for genome, score in scored:
            self.archive[genome] = score

    # --- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "generation": self.generation,
            "phase": self.phase,
            "rng": _rng_state(self.rng),
            "population": [_pair(g, s) for g, s in self.population],
            "screened": [_pair(g, s) for g, s in self._screened],
            "archive": [_pair(g, s) for g, s in sorted(self.archive.items())],
            "pending": [[list(r.genome), r.stage] for r in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("engine") != self.name:
            raise EvoError(f"checkpoint was written by engine {state.get('engine')!r}, not {self.name!r}: "
                           f"resume with --engine {state.get('engine')}")
        self.generation = int(state["generation"])
        self.phase = state["phase"]
        _set_rng_state(self.rng, state["rng"])
        self.population = [_unpair(p) for p in state["population"]]
        self._screened = [_unpair(p) for p in state["screened"]]
        self.archive = dict(_unpair(p) for p in state["archive"])
        self._pending = [Request(tuple(g), int(stage)) for g, stage in state["pending"]]


def _pair(genome: Genome, score: Score) -> list:
    return [list(genome), score.quality, score.size_bytes]


def _unpair(item: list) -> tuple[Genome, Score]:
    return tuple(int(g) for g in item[0]), Score(float(item[1]), int(item[2]))
