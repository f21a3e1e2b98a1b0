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

from evo.errors import EvoError
from evo.search.engines.base import (FINAL_STAGE, SCREEN_STAGE, Genome, Problem, Request, Score, check_engine_state,
                                     fits_budget, pair, pareto_front, pending_from_json, pending_to_json,
                                     register_engine, rng_state, set_rng_state, unpair)
from evo.search.space import drop_swap, fill, level_move, repair, resample_genes, warm_start

INFEASIBLE_QUALITY = 1e12  # quality given to a genome over budget, scaled by how far over it is
TRIES_PER_CHILD = 50  # offspring drawn per wanted child before a generation settles for fewer (duplicates)

if not hasattr(creator, "EvoFitness"):
    creator.create("EvoFitness", base.Fitness, weights=(-1.0, -1.0))  # minimise quality and bytes
if not hasattr(creator, "EvoIndividual"):
    creator.create("EvoIndividual", list, fitness=creator.EvoFitness)


def constrained_fitness(score: Score, budget_bytes: int) -> tuple[float, float]:
    """(quality, bytes); over budget, quality becomes a penalty that grows with the excess, so
    any feasible genome dominates every infeasible one."""
    if fits_budget(score, budget_bytes):
        return (score.quality, float(score.size_bytes))
    excess = (score.size_bytes - budget_bytes) / budget_bytes
    return (INFEASIBLE_QUALITY * (1.0 + excess), float(score.size_bytes))


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
        stages: tuple[tuple[int, int], ...] = (),
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
        # (stage number, survivors) of each re-scoring stage after the screen (evo.search.schedule);
        # by default one: the final stage for survivors_size genomes
        self.rescoring = tuple(stages) or ((FINAL_STAGE, self.survivors_size),)
        self.step = 0  # index into rescoring while confirming
        self.rng = random.Random(seed)
        self.generation = 0
        self.phase = "init"
        self.population: list[tuple[Genome, Score]] = []
        self.archive: dict[Genome, Score] = {}  # every final-stage score: the Pareto front's source
        self._pending: list[Request] = []
        self._screened: list[tuple[Genome, Score]] = []

    @classmethod
    def evaluations_planned(cls, *, population: int, generations: int, multi_stage: bool = True,
                            stages: tuple[tuple[int, int], ...] = ()) -> int:
        """The initial population, then per generation the screened offspring and the survivors
        re-scored at each later stage (without multi-stage, the offspring once)."""
        offspring = 2 * population
        survivors = max(1, population // 2) if multi_stage else 0
        if stages:
            survivors = sum(min(n, offspring) for _, n in stages)
        return population + generations * (offspring + survivors)

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
            stage, survivors = self.rescoring[self.step]
            genomes = [g for g, _ in ranked[:survivors]]
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
            self.step = 0
            return
        if self.phase == "confirm" and self.step + 1 < len(self.rescoring):
            self._screened = scored  # the next stage re-scores the best of these
            self.step += 1
            return
        self._remember(scored)
        self.population = self._select(self.population + scored, self.population_size)
        self._screened = []
        self.phase = "screen"
        self.generation += 1

    def at_generation_boundary(self) -> bool:
        return self.phase == "screen" and not self._pending

    def front(self) -> list[tuple[Genome, Score]]:
        return pareto_front(self.archive.items(), self.problem.budget_bytes)

    # --- population building ------------------------------------------------------------------

    def _initial_population(self) -> list[Genome]:
        return warm_start(self.problem, self.rng, self.population_size)

    def _offspring(self) -> list[Genome]:
        problem, rng = self.problem, self.rng
        seen = {g for g, _ in self.population} | set(self.archive)
        children: list[Genome] = []
        attempts = 0
        while len(children) < self.offspring_size and attempts < TRIES_PER_CHILD * self.offspring_size:
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
            "step": self.step,
            "rng": rng_state(self.rng),
            "population": [pair(g, s) for g, s in self.population],
            "screened": [pair(g, s) for g, s in self._screened],
            "archive": [pair(g, s) for g, s in self.archive.items()],  # in the order told: appended (store.py)
            "pending": pending_to_json(self._pending),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_engine_state(state, self.name)
        self.generation = int(state["generation"])
        self.phase = state["phase"]
        self.step = int(state.get("step", 0))  # checkpoints of two-stage runs have no step
        set_rng_state(self.rng, state["rng"])
        self.population = [unpair(p) for p in state["population"]]
        self._screened = [unpair(p) for p in state["screened"]]
        self.archive = dict(unpair(p) for p in state["archive"])
        self._pending = pending_from_json(state["pending"])
