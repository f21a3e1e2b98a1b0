"""The Optuna engine: optuna's samplers (TPE, NSGA-II, random) over the same genes, evaluator and
run directory as the DEAP engine, behind evo's ask/tell protocol.

- Every gene is a categorical parameter over its choice indices; the study has two objectives,
  quality and bytes, both minimised, and the budget is optuna's constraint: every trial carries
  `constraints["budget"] = size − budget` (feasible when ≤ 0), which TPE and NSGA-II read. (optuna 5
  deprecated the samplers' `constraints_func` in favour of constraints set on the trial.)
- A proposal over budget is repaired with evo's repair (and the budget left is filled), exactly as
  DEAP's offspring are. The trial that enters the study holds the genome that was evaluated: the
  sampler's proposal is recorded as a failed trial with a `repaired_into` attribute and the repaired
  genome is enqueued as the next trial. So the study shows what was evaluated, and the proposals.
- The first batch is evo's warm start (seeds, the uniform configurations nearest the budget, random
  repaired genomes), enqueued.
- Exact resume without pickling a sampler: the engine's state is the list of finished trials (genome,
  scores, optuna's system attributes) that its JSON checkpoint holds. Each batch is asked from a
  study rebuilt from that list, with a sampler seeded from (seed, generation). An uninterrupted run
  and a resumed one rebuild the same study and draw the same batch.
- The run directory's `optuna_journal.log` is an optuna journal file (JournalStorage) rewritten
  atomically after every batch from the same list, so `optuna-dashboard runs/<id>/optuna_journal.log`
  opens the study; it is a view of the run, never read back.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable

from evo.constants import OPTUNA_JOURNAL_FILE
from evo.errors import EvoError
from evo.fileio import atomic_path
from evo.search.engines.base import (FINAL_STAGE, Genome, Problem, Request, Score, check_engine_state, pareto_front,
                                     pending_from_json, pending_to_json, register_engine)
from evo.search.space import fill, repair, warm_start

STUDY_NAME = "evo"
SIZE_ATTR = "size_bytes"
GENOME_ATTR = "genome"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _tpe(seed: int, population: int) -> Any:
    # multivariate TPE models the genes jointly; constant liar spreads a batch asked before any is told
    return _optuna().samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=population)


def _nsga2(seed: int, population: int) -> Any:
    return _optuna().samplers.NSGAIISampler(seed=seed, population_size=population)


def _random(seed: int, population: int) -> Any:
    return _optuna().samplers.RandomSampler(seed=seed)


# optuna 5 reads each trial's constraints (Trial.set_constraint / create_trial(constraints=...));
# its samplers' `constraints_func` is deprecated, so evo records the budget constraint on every trial
SAMPLERS: dict[str, Callable[[int, int], Any]] = {"tpe": _tpe, "nsga2": _nsga2, "random": _random}
ASKS_PER_TRIAL = 20  # trials asked per wanted genome before a batch settles for fewer (repeats)


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise EvoError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)} with --engine optuna")
    return name


@register_engine("optuna")
class OptunaEngine:
    name = "optuna"

    def __init__(self, problem: Problem, *, population: int = 12, seed: int = 0, sampler: str | None = None,
                 **_ignored: Any) -> None:
        if population < 2:
            raise EvoError(f"--population {population} is too small: use at least 2")
        self.problem = problem
        self.batch = population
        self.seed = seed
        self.sampler_name = check_sampler(sampler or "tpe")
        self.generation = 0
        self.initialised = False  # the first batch is generation 0's population, not a generation
        self.told: list[dict[str, Any]] = []  # finished trials, in order: the whole state of the study
        self.proposals: list[dict[str, Any]] = []  # repaired proposals, shown in the journal as failed trials
        self._pending: list[Request] = []
        self._pending_attrs: list[dict[str, Any]] = []
        self._frozen: list[Any] = []  # optuna FrozenTrials of `told`, built lazily
        self._distribution_cache: dict[str, Any] | None = None
        self.journal_path = Path(problem.workdir) / OPTUNA_JOURNAL_FILE if problem.workdir is not None else None

    @classmethod
    def evaluations_planned(cls, *, population: int, generations: int, multi_stage: bool = True) -> int:
        return population * (generations + 1)  # one batch of trials per generation, after the first

    # --- ask / tell ----------------------------------------------------------------------------

    def ask(self) -> list[Request]:
        if self._pending:
            return list(self._pending)
        optuna = _optuna()
        study = self._study(optuna.storages.InMemoryStorage(), self._sampler())
        distributions = self._distributions()
        rng = random.Random(f"{self.seed}:{self.generation}:{int(self.initialised)}")
        if not self.initialised:
            for genome in warm_start(self.problem, rng, self.batch):
                study.enqueue_trial(self._params(genome), skip_if_exists=False)
        known = {tuple(t[GENOME_ATTR]) for t in self.told}
        genomes: list[Genome] = []
        attrs: list[dict[str, Any]] = []
        attempts = 0
        while len(genomes) < self.batch and attempts < ASKS_PER_TRIAL * self.batch:
            attempts += 1
            trial = study.ask(distributions)
            proposal = self._genome(trial.params)
            genome = fill(repair(proposal, self.problem, rng), self.problem, rng)
            if genome != proposal:
                trial.set_user_attr("repaired_into", list(genome))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self.proposals.append({"params": dict(trial.params)})
                study.enqueue_trial(self._params(genome), skip_if_exists=False)
                trial = study.ask(distributions)
            if genome in known:  # evaluated before: no new information; tell the study so it moves on
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            known.add(genome)
            genomes.append(genome)
            system_attrs = study.get_trials(deepcopy=False)[trial.number].system_attrs
            attrs.append({k: v for k, v in system_attrs.items() if not k.startswith("constraints")})
        self._pending = [Request(g, FINAL_STAGE) for g in genomes]
        self._pending_attrs = attrs
        return list(self._pending)

    def tell(self, results: list[tuple[Request, Score]]) -> None:
        if {r.genome for r, _ in results} != {r.genome for r in self._pending}:
            raise RuntimeError("tell() must report exactly the requests of the last ask()")
        scores = {r.genome: s for r, s in results}
        for request, system_attrs in zip(self._pending, self._pending_attrs):
            score = scores[request.genome]
            self.told.append({GENOME_ATTR: list(request.genome), "quality": score.quality,
                              SIZE_ATTR: score.size_bytes, "system_attrs": _jsonable(system_attrs)})
        self._pending, self._pending_attrs = [], []
        if self.initialised:
            self.generation += 1
        self.initialised = True
        self._write_journal()

    def at_generation_boundary(self) -> bool:
        return self.initialised and not self._pending

    def front(self) -> list[tuple[Genome, Score]]:
        archive = {tuple(t[GENOME_ATTR]): Score(t["quality"], t[SIZE_ATTR]) for t in self.told}
        return pareto_front(archive.items(), self.problem.budget_bytes)

    # --- the study -----------------------------------------------------------------------------

    def _distributions(self) -> dict[str, Any]:
        if self._distribution_cache is None:
            categorical = _optuna().distributions.CategoricalDistribution
            self._distribution_cache = {gene.name: categorical(list(range(len(gene.choices))))
                                        for gene in self.problem.genes}
        return self._distribution_cache

    def _params(self, genome: Genome) -> dict[str, int]:
        return {gene.name: int(value) for gene, value in zip(self.problem.genes, genome)}

    def _genome(self, params: dict[str, int]) -> Genome:
        return tuple(int(params[gene.name]) for gene in self.problem.genes)

    def _sampler(self):
        # one seed per batch: the sampler's randomness is a function of the checkpointed state
        seed = (self.seed * 1_000_003 + self.generation * 2 + int(self.initialised)) % 2**32
        return SAMPLERS[self.sampler_name](seed, self.batch)

    def _study(self, storage, sampler):
        """A study holding exactly the finished trials of this engine's state."""
        optuna = _optuna()
        study = optuna.create_study(storage=storage, sampler=sampler, study_name=STUDY_NAME,
                                    directions=["minimize", "minimize"])
        study.set_metric_names(["quality", "size_bytes"])
        study.add_trials([self._frozen_trial(i) for i in range(len(self.told))])
        return study

    def _frozen_trial(self, index: int):
        """The told trial as optuna's FrozenTrial, built once (validating 200 distributions is slow)."""
        while len(self._frozen) <= index:
            t = self.told[len(self._frozen)]
            self._frozen.append(_optuna().trial.create_trial(
                params=self._params(tuple(t[GENOME_ATTR])), distributions=self._distributions(),
                values=[t["quality"], float(t[SIZE_ATTR])],
                user_attrs={SIZE_ATTR: t[SIZE_ATTR], GENOME_ATTR: t[GENOME_ATTR]},
                system_attrs=dict(t["system_attrs"]),  # create_trial adds the constraint to this dict
                constraints={"budget": float(t[SIZE_ATTR] - self.problem.budget_bytes)},
            ))
        return self._frozen[index]

    def _write_journal(self) -> None:
        """Rewrite the run's optuna journal (for optuna-dashboard) atomically from the state."""
        if self.journal_path is None:
            return
        optuna = _optuna()
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        # An absolute path: optuna's lock is a symlink to the journal, which dangles when relative.
        journal = Path(os.path.abspath(self.journal_path))
        # The temp name is fresh each time, so a lock a killed writer left never blocks this one;
        # evo holds the run directory's lock, so it is the only writer: clear such leftovers.
        for stale in journal.parent.glob(f".{journal.name}*.tmp.lock*"):
            stale.unlink(missing_ok=True)
        with atomic_path(journal) as tmp:
            storage = JournalStorage(JournalFileBackend(str(tmp)))
            study = self._study(storage, optuna.samplers.RandomSampler(seed=0))
            study.set_user_attr("budget_bytes", self.problem.budget_bytes)
            study.set_user_attr("sampler", self.sampler_name)
            study.set_user_attr("repaired_proposals", len(self.proposals))
            del study, storage

    # --- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"engine": self.name, "sampler": self.sampler_name, "generation": self.generation,
                "initialised": self.initialised, "told": self.told, "proposals": len(self.proposals),
                "pending": pending_to_json(self._pending),
                "pending_attrs": [_jsonable(a) for a in self._pending_attrs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_engine_state(state, self.name)
        if state.get("sampler") != self.sampler_name:
            raise EvoError(f"checkpoint was written with sampler {state.get('sampler')!r}, not "
                           f"{self.sampler_name!r}: resume with --sampler {state.get('sampler')}")
        self.generation = int(state["generation"])
        self.initialised = bool(state["initialised"])
        self.told = list(state["told"])
        self._frozen = []
        self.proposals = [{}] * int(state.get("proposals", 0))
        self._pending = pending_from_json(state["pending"])
        self._pending_attrs = list(state.get("pending_attrs", []))


def _jsonable(value: Any) -> Any:
    """optuna's system attributes as JSON (tuples become lists), so a checkpoint holds them exactly."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
