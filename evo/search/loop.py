"""The search loop: an engine asks for genomes, the evaluator scores them (quality, exact bytes),
the run store journals every evaluation and checkpoints every generation.

It knows nothing about DEAP: any engine with the ask/tell protocol of evo.search.engines plugs in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from evo import __version__
from evo.constants import (
    BEST_FILE,
    CALIBRATION_FILE,
    CHECKPOINT_FILE,
    FINAL_STAGE,
    MB,
    REFERENCE_FILE,
    RUN_FILE,
    SIZE_CACHE_DIR,
    SPEC_FILE,
    STATS_FILE,
)
from evo.errors import EvoError
from evo.progress import REFERENCE, SIZE_TABLE, STATISTICS, StepCallback, StepProgress, counter
from evo.search.store import RunStore, best_under_budget, evaluation_key
from evo.types import FrontPoint

CCDS_CANDIDATES = 1024  # sequences embedded for CCDS in a search: enough for k ≤ 16 clusters, ~1 min on CPU
CCDS_CANDIDATES_PER_SAMPLE = 64  # fewer calibration sequences need fewer candidates: 8 samples embed 512
DECODED_CONFIGS = 1 << 12  # genomes whose configs config_of keeps; beyond this they are decoded anew


def ccds_candidates(samples: int) -> int:
    """Sequences a search embeds for its CCDS draw: 64 per calibration sequence, at most
    CCDS_CANDIDATES (16 samples or more: 1,024, as before; the CPU's default 8: 512, half the
    embedding time of the quick start)."""
    return min(CCDS_CANDIDATES, CCDS_CANDIDATES_PER_SAMPLE * samples)


@dataclass(frozen=True)
class SearchSpec:
    """Everything that determines a run. A resumed run must be given the same spec (only
    `generations` may grow, to extend a finished run)."""

    budget_bytes: int
    model: str = "smollm2-135m"
    corpus: tuple[str, ...] = ("calibration_mix",)
    space: str = "default"
    engine: str = "deap"
    sampler: str | None = None  # optuna's sampler (tpe, nsga2, random); only with engine "optuna"
    generations: int = 10
    population: int = 12
    fitness: str = "kl"
    seed: int = 0
    samples: int = 16
    clusters: int = 8
    seq_len: int = 256
    screen_sequences: int = 4
    screen_tokens: int = 128
    top_k: int = 256  # dense reference: top-256 log-probs + tail mass + 16 tail samples (±0.3 % of exact KL)
    multi_stage: bool = True
    seed_configs: tuple[str, ...] = ()
    # EvoPress's schedule: (tokens, survivors) per stage, the first (tokens, 0); () = the two-stage
    # screen/full default. See evo.search.schedule.
    stages: tuple[tuple[int, int], ...] = ()
    # The dtype the model is loaded in: its weights' bits decide every size and quality of the run.
    # "auto" is resolved when the run starts (bfloat16 on CUDA, float32 on CPU) and recorded, so a
    # resume or an export loads the same weights on any device.
    dtype: str = "auto"
    evo_version: str = __version__

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.model.strip():  # `dir/` and `dir` are one model (and one run)
            object.__setattr__(self, "model", os.path.normpath(self.model))
        if self.budget_bytes <= 0:
            raise EvoError("--budget-mb must be positive")
        if self.fitness not in ("kl", "ppl"):
            raise EvoError(f"--fitness {self.fitness!r} is unknown: use kl or ppl")
        if self.generations < 0:
            raise EvoError("--generations must be 0 or more")
        from evo.search.engines.base import check_engine

        check_engine(self.engine)
        if self.sampler is not None and self.engine != "optuna":
            raise EvoError(f"--sampler applies to --engine optuna only (this run's engine is {self.engine})")
        if self.engine == "optuna":
            from evo.search.engines.optuna_engine import check_sampler

            object.__setattr__(self, "sampler", check_sampler(self.sampler or "tpe"))
        if self.screen_tokens > self.seq_len or self.screen_sequences > self.samples:
            raise EvoError("the screening stage must use at most the calibration set (sequences and tokens)")
        for name in ("population", "samples", "clusters", "seq_len", "screen_sequences", "screen_tokens", "top_k"):
            if getattr(self, name) < 1:
                raise EvoError(f"--{name.replace('_', '-')} must be at least 1")
        if self.stages:
            from evo.search.schedule import build_schedule

            object.__setattr__(self, "stages", tuple((int(t), int(n)) for t, n in self.stages))
            if not self.multi_stage:
                raise EvoError("--stages and --single-stage exclude each other")
            if self.engine != "deap":
                raise EvoError(f"--stages is a schedule of the deap engine: use --engine deap (not {self.engine})")
            build_schedule(self.stages, samples=self.samples, seq_len=self.seq_len)
        if self.dtype != "auto":
            from evo.modelio import dtype_name

            object.__setattr__(self, "dtype", dtype_name(self.dtype))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["corpus"] = list(self.corpus)
        data["seed_configs"] = list(self.seed_configs)
        data["stages"] = [list(stage) for stage in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the run's spec") -> "SearchSpec":
        """A spec read from a file: wrong fields or types are one EvoError naming the file."""
        if not isinstance(data, dict):
            raise EvoError(f"{where} is not a JSON object: this run cannot be resumed")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvoError(f"{where} has unknown field(s) {unknown}: it was written by another evo or edited; "
                           "this run cannot be resumed")
        data = dict(data)
        try:
            data["corpus"] = tuple(data["corpus"])
            data["seed_configs"] = tuple(data.get("seed_configs", ()))
            data["stages"] = tuple(tuple(stage) for stage in data.get("stages", ()))
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise EvoError(f"{where} lacks a field or has one of the wrong type ({exc}): "
                           "this run cannot be resumed") from None

    def rescoring(self) -> tuple[tuple[int, int], ...]:
        """(stage number, survivors) of the stages after the screen; () for the default two stages."""
        from evo.search.schedule import build_schedule

        if not self.stages:
            return ()
        return tuple((s.number, s.survivors) for s in build_schedule(self.stages, samples=self.samples,
                                                                     seq_len=self.seq_len)[1:])

    def mismatches(self, other: "SearchSpec") -> list[str]:
        """The settings in which `other` (asked on resume) differs; "auto" dtype asks for the run's."""
        ignored = {"generations", "evo_version"} | ({"dtype"} if "auto" in (self.dtype, other.dtype) else set())
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in ignored and mine[k] != theirs.get(k)]


def _check_field_types(spec: "SearchSpec") -> None:
    """A spec read back from JSON holds what its annotations say (bool is not an int here)."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        kind = str(f.type)
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "str | None":
            ok = value is None or isinstance(value, str)
        elif kind == "tuple[str, ...]":
            ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        elif kind.startswith("tuple"):
            ok = isinstance(value, tuple)
        else:
            ok = True
        if not ok:
            raise EvoError(f"setting {f.name} is {value!r}, not of type {kind}")


@dataclass(frozen=True)
class Progress:
    """What the loop reports after each evaluation (the CLI renders it)."""

    generation: int
    generations: int
    evaluations_done: int
    evaluations_total: int
    new_evaluations: int  # run in this process (not read back from the journal)
    best_quality: float | None
    best_bytes: int | None
    front_size: int
    evals_per_second: float
    eta_seconds: float | None  # from each stage's measured seconds per evaluation (evo.search.live)
    stage: int
    phase: str = "search"
    workers: tuple = ()  # evo.search.workers.WorkerRate per Ray actor, with --workers


@dataclass
class SearchResult:
    run_dir: Path
    front: list[FrontPoint]
    best: FrontPoint | None
    evaluations: int
    new_evaluations: int
    interrupted: bool = False
    extra: dict = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
StatusCallback = Callable[[str], None]
TableProgress = Callable[[int, int], None]  # (size-table pairs coded, pairs total)


def evaluations_planned(spec: SearchSpec) -> int:
    """Evaluations an uninterrupted run makes, as its engine counts them."""
    from evo.search.engines.base import engine_class

    extra = {"stages": spec.rescoring()} if spec.stages else {}
    return engine_class(spec.engine).evaluations_planned(population=spec.population, generations=spec.generations,
                                                         multi_stage=spec.multi_stage, **extra)


class SearchSession:
    """A run directory opened with everything needed to evaluate genomes (model, calibration,
    stats, dense reference, size model). Built by `open_session`; used by search and export."""

    def __init__(self, store, spec, loaded, space, calibration, evaluator, size_model, activation_stats, genes,
                 status):
        self.lock = None  # the run's RunLock, held while the session lives
        self.store = store
        self.spec = spec
        self.loaded = loaded
        self.space = space
        self.calibration = calibration
        self.evaluator = evaluator
        self.size_model = size_model
        self.activation_stats = activation_stats
        self.genes = genes
        self.status = status
        self.size_table = None  # a filled SizeTable once run_search has coded the space (fill_size_table)
        self.memory_plan = None  # the MemoryPlan open_session printed and enforced (evo.search.memory_plan)
        self.levels = None  # the LevelStore of every (tensor, setting) of the space (fill_size_table)
        self.hessians = getattr(size_model, "hessians", None)  # the run's Hessians when the space has gptq (evo.search.levels)
        self._configs: dict[tuple, object] = {}  # config_of's memo

    def config_of(self, genome):
        """The genome's config, memoised (configs are immutable): a survivor re-scored at each later stage,
        the front and the best of every checkpoint are decoded once."""
        genome = tuple(genome)
        config = self._configs.get(genome)
        if config is None:
            if len(self._configs) >= DECODED_CONFIGS:
                self._configs.clear()
            config = self._configs[genome] = self.space.decode(genome, self.loaded.info)
        return config

    def size_of(self, genome, config=None) -> int:
        """The genome's artifact bytes: from the size table when there is one, else from its config
        (`config`, when the caller has decoded it already, is not decoded again)."""
        if self.size_table is not None:
            return self.size_table.artifact_bytes(genome)
        return self.size_model.artifact_bytes(config if config is not None else self.config_of(genome))

    def fill_size_table(self, *, workers: int | None = None, progress: TableProgress | None = None, pool=None,
                        levels: bool | None = None):
        """Code every (tensor, setting) pair of the space into the run's size cache, in `workers`
        processes (all cores by default) or on a WorkerPool's actors, and size genomes from the
        table from now on. levels: build the level database (None: on CUDA and for gptq spaces;
        True also on a CPU, as the benchmarks' CPU smoke runs do; False never, levels are then
        computed on first use)."""
        from evo.evaluate.resident import logits_bytes
        from evo.search.levels import LevelStore
        from evo.search.size_table import SizeTable

        if getattr(self.space, "format", None) == "gguf":
            return None  # its size model is already a table: metadata once, a lookup per tensor
        if self.size_table is None:
            table = SizeTable(self.space, self.loaded.info, self.size_model)
            evaluator = self.evaluator
            if pool is not None and self.hessians is not None:
                # gptq levels on Ray actors: each builds its own database for its evaluator, and they
                # split the coding of the sizes into the run's size cache; this process only reads them
                pool.build_levels(status=self.status)
                if all(table.is_coded(*pair) for pair in table.pairs()):
                    table.fill(workers=workers, pool=pool)
                    self.size_table = table
                    return table
                # an actor died with its share uncoded: this process builds the levels, coding the rest
            if levels is None:
                levels = evaluator.device.type == "cuda" or self.hessians is not None
            if not levels and self.hessians is not None:
                raise EvoError("a gptq space's levels need the run's Hessians: they are always built")
            if not levels:
                # On a CPU the whole database would hold every level in RAM (the default space on the
                # default model: ~23 GB dequantized, ~3.6 GB as codes) and take minutes to build: the
                # sizes are coded as before and the evaluator computes a level when a candidate first
                # asks for it, into its cache. gptq levels (which need the run's Hessians) are built.
                table.fill(workers=workers, progress=progress, pool=pool)
                self.size_table = table
                return table
            # every level quantized once: its codes give the sizes, its weights the evaluator's swaps
            dtype = next(self.loaded.model.parameters()).dtype
            reserve = logits_bytes(*evaluator.token_ids.shape, self.loaded.info.vocab_size, dtype.itemsize)
            database = LevelStore(table, device=evaluator.device, dtype=dtype, hessians=self.hessians,
                                  reserve_bytes=reserve)
            database.build(workers=workers, progress=progress)
            table.fill(workers=workers, pool=pool)  # every size is in the cache now: nothing is coded twice
            evaluator.levels = database
            self.levels = database
            self.size_table = table
        return self.size_table


def open_session(
    spec: SearchSpec,
    run_dir: Path,
    *,
    resume: bool,
    device: str = "cpu",
    trust_remote_code: bool = False,
    status: StatusCallback | None = None,
    progress: StepCallback | None = None,
    extend: bool = False,
    compile: str = "off",
) -> SearchSession:
    """Create or reopen a run directory and prepare the evaluator.

    Everything checkable is checked before the first expensive step: the spec, the space, the
    model path, the seed configs and the corpus before the model loads, the budget against the
    space's reach right after (before CCDS, statistics and the reference). A new run directory is
    created only then, atomically, and removed again if the run is refused before its first
    evaluation. The run is locked for this process's life. On resume the run's own generations are
    kept unless `extend` (the user asked for `spec.generations`); spec.json is rewritten only
    once the resume is accepted. The model is loaded in the run's dtype (spec.dtype; "auto"
    takes the run's recorded one on resume). `progress` hears the long steps: embedding, k-means,
    statistics, dense reference, size table. `compile` is the evaluator's torch.compile mode
    (FitnessConfig.compile; CUDA only, not part of the spec: it changes speed, not the run).
    """
    from evo.data.ccds import CalibrationConfig, build_calibration_set
    from evo.data.calibset import CalibrationSet
    from evo.data.corpus import read_corpus
    from evo.modelio import auto_dtype_name, load_model, resolve_model_source
    from evo.search.lifecycle import (
        check_directory_path,
        is_complete_run,
        normalize_run_dir,
        open_run_directory,
        remove_run_directory,
    )
    from evo.search.space import SearchSpace

    say = status or (lambda message: None)
    run_dir = normalize_run_dir(run_dir)
    space = SearchSpace.load(spec.space)  # a bad space fails before anything is written
    resolve_model_source(spec.model)
    _load_seed_configs(spec)
    rewrite_spec = False
    lock = None
    if resume:
        if not is_complete_run(run_dir):
            RunStore.open(run_dir)  # says what is missing
        store = RunStore.open(run_dir, read_journal=False)
        spec_data = store.spec()
        stored = SearchSpec.from_dict(spec_data.get("search") if isinstance(spec_data, dict) else None,
                                      where=str(run_dir / SPEC_FILE))
        differing = stored.mismatches(spec)
        if differing:
            stored_values, asked = stored.to_dict(), spec.to_dict()
            details = ", ".join(f"{k} {stored_values[k]!r} in the run, {asked[k]!r} asked" for k in differing)
            raise EvoError(
                f"run {run_dir} was started with other settings ({details}): "
                f"resume with the run's options, or start a new run with another --run-dir"
            )
        lock = open_run_directory(run_dir)  # refuses while another process holds the run
        store = RunStore.open(run_dir)  # the journal is read under the lock
        store.read_checkpoint()  # a malformed checkpoint fails before the model loads
        if extend and spec.generations > stored.generations:
            say(f"extending run {run_dir} from {stored.generations} to {spec.generations} generations")
            rewrite_spec = True
        else:
            if extend and spec.generations < stored.generations:
                say(f"run {run_dir} has {stored.generations} generations; keeping them "
                    f"(--generations {spec.generations} cannot shrink a run)")
            spec = replace(spec, generations=stored.generations)
        if spec.dtype == "auto":
            spec = replace(spec, dtype=stored.dtype)  # a run from before the dtype was recorded: "auto"
    else:
        check_directory_path(run_dir, "--run-dir")
    if spec.dtype == "auto":  # a GGUF space encodes float32 weights, as llama-quantize does (norms stay exact)
        spec = replace(spec, dtype="float32" if getattr(space, "format", None) == "gguf" else auto_dtype_name(device))
    calibration_path = run_dir / CALIBRATION_FILE
    corpus = None
    if not (resume and calibration_path.exists()):
        corpus = read_corpus(list(spec.corpus))  # a missing or empty corpus fails before the model loads
    from evo.search.memory_plan import plan_for_run

    plan = plan_for_run(spec, space, device=device, run_dir=run_dir, trust_remote_code=trust_remote_code)
    if plan is not None:  # from the config alone: an impossible model is refused before its weights load
        say(plan.table())
        plan.check()
    say(f"loading model {spec.model} ({spec.dtype})")
    loaded = load_model(spec.model, dtype=spec.dtype, device=device, trust_remote_code=trust_remote_code)
    if plan is None:
        plan = plan_for_run(spec, space, device=device, run_dir=run_dir, info=loaded.info)
        say(plan.table())
        plan.check()
    created = False
    if not resume:
        lock = _create_checked_run(spec, space, loaded, run_dir, say)
        created = True
        store = RunStore(run_dir)
    try:
        if calibration_path.exists():
            calibration = CalibrationSet.load(calibration_path)
        else:
            say("drawing the CCDS calibration set")
            corpus = corpus if corpus is not None else read_corpus(list(spec.corpus))
            config = CalibrationConfig(samples=spec.samples, clusters=spec.clusters, heldout=spec.samples,
                                       seq_len=spec.seq_len, seed=spec.seed, max_candidates=ccds_candidates(spec.samples))
            calibration = build_calibration_set(loaded, corpus, config, progress=progress)
            calibration.save(calibration_path)
        evaluator, size_model, stats = _build_evaluator(store, spec, loaded, calibration, say, progress, space=space,
                                                         compile=compile)
        genes = space.genes(loaded.info)
        session = SearchSession(store, spec, loaded, space, calibration, evaluator, size_model, stats, genes, say)
        session.memory_plan = plan  # the level tiers' capacities (evo.search.memory_plan)
        tuple(_seed_genomes(session))  # a seed config the space cannot express fails before any evaluation
        if rewrite_spec:
            # other records (the Hessians' digest, evo.search.levels) stay
            store.write_json(SPEC_FILE, {**store.spec(), "search": spec.to_dict(), "space": space.to_dict()})
    except EvoError:
        if created and len(store) == 0:
            remove_run_directory(run_dir, lock)  # refused before any evaluation: leave nothing behind
        raise
    session.lock = lock  # held for the process's life (released by the kernel when it ends)
    return session


def run_spec(run_dir: Path, *, dtype: str = "auto") -> tuple[RunStore, SearchSpec]:
    """An existing run and the spec that reopens it exactly, in the dtype it recorded. Another
    dtype is refused: the run's sizes and qualities hold for the weights it searched."""
    from evo.modelio import dtype_name

    store = RunStore.open(run_dir, read_journal=False)  # read only: no lock, nothing written
    data = store.spec()
    spec = SearchSpec.from_dict(data.get("search") if isinstance(data, dict) else None,
                                where=str(Path(run_dir) / SPEC_FILE))
    if dtype != "auto":
        if spec.dtype not in ("auto", dtype_name(dtype)):
            raise EvoError(f"run {run_dir} was searched in {spec.dtype}; its sizes and qualities hold for those "
                           f"weights, not {dtype_name(dtype)}: leave --dtype out (or pass --dtype {spec.dtype})")
        spec = replace(spec, dtype=dtype_name(dtype))
    return store, spec


def is_run(run_dir: Path) -> bool:
    """Whether a directory holds a run (to resume it instead of refusing to start one there)."""
    return (Path(run_dir) / RUN_FILE).exists()



def _load_seed_configs(spec: SearchSpec) -> None:
    from evo.compress.config import CompressionConfig

    for path in spec.seed_configs:
        CompressionConfig.load(path)  # a missing or malformed file fails before the model loads


def _create_checked_run(spec: SearchSpec, space, loaded, run_dir: Path, say: StatusCallback):
    """Check the budget against the space's reach estimated from the weights alone (seconds),
    then create the run directory atomically and return its lock."""
    from evo.search.budget import check_budget, early_budget_range
    from evo.search.lifecycle import create_run_directory

    say("checking the budget against the space's smallest and largest artifacts")
    check_budget(spec.budget_bytes, early_budget_range(space, loaded), fixed_drops=space.fixed_drops)
    return create_run_directory(run_dir, {"search": spec.to_dict(), "space": space.to_dict()})


def dense_reference(store: RunStore, spec: SearchSpec, loaded, tokens, say, progress) -> DenseReference:
    """The run's dense top-k reference: read from the run directory, else computed once and saved."""
    from evo.evaluate.reference import DenseReference

    reference_path = store.path(REFERENCE_FILE)
    if reference_path.exists():
        return DenseReference.load(reference_path)
    say("computing the dense model's reference outputs")
    reference = DenseReference.compute(loaded.model, tokens, top_k=spec.top_k,
                                       progress=counter(progress, REFERENCE, "batches"))
    reference.save(reference_path)
    return reference


def _build_evaluator(store: RunStore, spec: SearchSpec, loaded, calibration, say: StatusCallback,
                     progress: StepCallback | None = None, space=None, compile: str = "off"):
    from evo.evaluate.evaluator import Evaluator, FitnessConfig
    from evo.evaluate.reference import DenseReference
    from evo.compress.size import SizeCache, SizeModel
    from evo.evaluate.stats import collect_activation_stats, load_stats, save_stats
    from evo.search.budget import budget_range, check_budget

    if getattr(space, "format", None) == "gguf":
        from evo.search.gguf_space import build_gguf_evaluator

        return build_gguf_evaluator(store, spec, loaded, calibration, say, progress, space)
    tokens = calibration.calibration.token_ids
    stats_path = store.path(STATS_FILE)
    if stats_path.exists():
        stats = load_stats(stats_path)
    else:
        say("collecting activation statistics")
        stats = collect_activation_stats(loaded.model, loaded.info, tokens,
                                         progress=counter(progress, STATISTICS, "sequences"))
        save_stats(stats, stats_path)
    size_model = SizeModel.for_model(loaded, SizeCache(store.path(SIZE_CACHE_DIR)), stats=stats)
    from evo.search.levels import run_hessians, space_needs_hessians

    gptq = space is not None and space_needs_hessians(space)
    if gptq:  # collected once per run on the model's device, reused on resume (evo.search.levels)
        size_model.hessians = run_hessians(store, loaded, tokens, say=say, progress=progress)
    if progress is not None and space is not None:
        from evo.search.live import size_table_entries

        table = size_table_entries(space, loaded.info)
        size_model.on_entry = lambda known: progress(
            StepProgress(SIZE_TABLE, known, max(known, table), "tensor settings", open_ended=True))
    # The exact check, before the dense reference (the costly step); with gptq the exact extremes are
    # known once the levels are built (make_problem checks them), so the early estimate stands until then.
    if space is not None and not gptq:
        check_budget(spec.budget_bytes, budget_range(space, loaded, size_model), fixed_drops=space.fixed_drops)
    fitness = FitnessConfig(metric=spec.fitness, screen_sequences=spec.screen_sequences,
                            screen_tokens=spec.screen_tokens, top_k=spec.top_k, compile=compile)
    reference = dense_reference(store, spec, loaded, tokens, say, progress)
    # the size model already holds a CPU copy of the dense weights: the evaluator restores from it
    evaluator = Evaluator(loaded.model, loaded.info, tokens, fitness, reference, stats=stats,
                          base_weights=size_model.weights)
    if spec.stages:
        from evo.search.schedule import build_schedule, stage_shape

        schedule = build_schedule(spec.stages, samples=spec.samples, seq_len=spec.seq_len)
        evaluator.stage_shapes = {stage.number: stage_shape(stage, spec.seq_len) for stage in schedule}
    if evaluator.forward.compiled:
        say(f"torch.compile {evaluator.forward.mode} ({evaluator.forward.attention}): the first evaluation of each "
            "stage shape compiles it, 1-2 minutes on a cold cache (--compile off skips this)")
    return evaluator, size_model, stats


def make_problem(session: SearchSession):
    from evo.search.engines import Problem
    from evo.search.space import extreme_genome

    spec = session.spec
    seeds = tuple(_seed_genomes(session))
    space_seeds = getattr(session.space, "seed_genomes", None)  # the GGUF space's llama.cpp recipes
    if space_seeds is not None:
        seeds += tuple(g for g in space_seeds(session) if g not in seeds)
    table = session.size_table
    over_budget = None if table is None else (lambda genome: table.exceeds(genome, spec.budget_bytes))
    problem = Problem(genes=session.genes, size_of=session.size_of, budget_bytes=spec.budget_bytes,
                      fixed_drops=session.space.fixed_drops, seeds=seeds, workdir=session.store.directory,
                      over_budget=over_budget)
    smallest = session.size_of(extreme_genome(problem, smallest=True))
    if spec.budget_bytes < smallest:
        raise EvoError(
            f"budget {spec.budget_bytes / MB:.3f} MB is below the smallest artifact this space can reach, "
            f"{smallest / MB:.3f} MB: raise --budget-mb or use a space with lower bit-widths"
        )
    largest = session.size_of(extreme_genome(problem, smallest=False))
    if spec.budget_bytes >= largest and session.space.fixed_drops is None:
        raise EvoError(
            f"budget {spec.budget_bytes / MB:.3f} MB is at or above the largest artifact of this space, "
            f"{largest / MB:.3f} MB: everything fits, nothing to search; lower --budget-mb"
        )
    session.status(f"budget check: {spec.budget_bytes / MB:.3f} MB lies within the space's reach, "
                   f"{smallest / MB:.3f} to {largest / MB:.3f} MB")
    return problem


def _seed_genomes(session: SearchSession):
    """Genomes of known configs given with --seed-configs: only configs the space can express."""
    from evo.compress.config import CompressionConfig

    for path in session.spec.seed_configs:
        config = CompressionConfig.load(path)
        genome = session.space.encode(config, session.loaded.info)
        if genome is None:
            raise EvoError(f"seed config {path} is not expressible in space {session.space.name!r}: "
                           "use a config with the space's bit-widths, rescales and sparsities")
        yield genome


def run_search(
    session: SearchSession,
    *,
    on_progress: ProgressCallback | None = None,
    size_workers: int | None = None,
    on_table: TableProgress | None = None,
    workers=None,
) -> SearchResult:
    """Run (or continue) the search until spec.generations generations are done. The space's size
    table is coded first, in size_workers processes (all cores by default). With `workers` (an
    evo.search.workers.WorkerPool) each asked batch is scored on its Ray actors, and so is the
    size table; the journal and checkpoints are written here either way."""
    from evo.search.engines import Score, make_engine

    spec, store = session.spec, session.store
    session.fill_size_table(workers=size_workers, progress=on_table, pool=workers)
    problem = make_problem(session)
    from evo.search.uniform import write_uniform_points

    write_uniform_points(session)  # the report's reference lines: exact sizes of the space's uniform widths
    engine = make_engine(spec.engine, problem, population=spec.population, seed=spec.seed,
                         multi_stage=spec.multi_stage, sampler=spec.sampler, stages=spec.rescoring())
    checkpoint = store.read_checkpoint()
    if checkpoint is not None:
        try:
            engine.load_state_dict(checkpoint["engine"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EvoError(f"{store.path(CHECKPOINT_FILE)} holds a malformed engine state ({exc!r}): "
                           "this run cannot be resumed") from None
    from evo.search.live import StageClock, planned_by_stage

    total = evaluations_planned(spec)
    planned = planned_by_stage(spec.engine, spec.population, spec.generations, spec.multi_stage)
    done_by_stage = {stage: 0 for stage in planned}
    for entry in store.entries():
        done_by_stage[entry.stage] = done_by_stage.get(entry.stage, 0) + 1
    clock = StageClock({stage: spec.samples * spec.seq_len if stage == FINAL_STAGE
                        else spec.screen_sequences * spec.screen_tokens for stage in planned})
    final_stage = max(planned)
    new_evaluations = 0
    started = time.perf_counter()
    seconds_per_new: list[float] = []
    results: list = []

    # the scores of the engine's front, for the live best: it changes only when the engine is told a batch,
    # so it is read once per batch (at EvoPress's scale the archive holds thousands of genomes)
    told = [score for _, score in engine.front()] if on_progress is not None else []

    def report(stage: int) -> None:
        if on_progress is None:
            return
        # The live best is export's choice over what the engine was told plus this batch's final scores.
        pending = [score for request, score in results if request.stage == final_stage]
        best = best_under_budget(told + pending, spec.budget_bytes)
        done = len(store)
        rate = new_evaluations / max(time.perf_counter() - started, 1e-9)
        remaining = {s: planned[s] - done_by_stage.get(s, 0) for s in planned}
        eta = clock.eta_seconds(remaining) if done < total else 0.0
        on_progress(Progress(generation=engine.generation, generations=spec.generations, evaluations_done=done,
                             evaluations_total=total, new_evaluations=new_evaluations,
                             best_quality=best.quality if best else None,
                             best_bytes=best.size_bytes if best else None, front_size=len(told),
                             evals_per_second=rate, eta_seconds=eta, stage=stage,
                             workers=workers.rates() if workers is not None else ()))

    report(final_stage)  # the count and its total before the first population is built
    while engine.generation < spec.generations or not engine.at_generation_boundary():
        told = [score for _, score in engine.front()] if on_progress is not None else []  # once per batch
        requests = engine.ask()
        results = []
        remote = _submit(session, requests, workers) if workers is not None else None
        for request in requests:
            entry = store.lookup(evaluation_key(request.genome, request.stage))
            if entry is None:
                tic = time.perf_counter()
                config = session.config_of(request.genome)
                if remote is None:
                    quality = session.evaluator.evaluate(config, request.stage)
                else:  # scored on an actor: its own seconds, not the wait
                    quality, seconds = remote.get(evaluation_key(request.genome, request.stage))
                    tic = time.perf_counter() - seconds
                size = session.size_of(request.genome, config)
                seconds = time.perf_counter() - tic
                entry = store.append(request.genome, request.stage, quality, size, seconds, durable=False)
                new_evaluations += 1
                seconds_per_new.append(seconds)
                done_by_stage[request.stage] = done_by_stage.get(request.stage, 0) + 1
                clock.tick(request.stage)
            else:
                clock.restart()  # read back from the journal: the next interval starts now
            results.append((request, Score(entry.quality, entry.size_bytes)))
            report(request.stage)
        engine.tell(results)
        if engine.at_generation_boundary():
            # the generation's journal lines on disk before its checkpoint (one fsync per generation: lines
            # lost after it are re-asked from the previous checkpoint and evaluated again to the same values)
            store.sync()
            _checkpoint(session, engine)
    store.sync()
    result = _result(session, engine, new_evaluations)
    result.extra["seconds_per_evaluation"] = sum(seconds_per_new) / len(seconds_per_new) if seconds_per_new else None
    return result


def _submit(session: SearchSession, requests, workers):
    """Send the batch's evaluations that the journal lacks (each key once) to the worker pool; the
    BatchResults it returns gives each one's (quality, seconds) by key."""
    items: dict[str, tuple] = {}
    for request in requests:
        key = evaluation_key(request.genome, request.stage)
        if key not in items and session.store.lookup(key) is None:
            items[key] = (session.config_of(request.genome), request.stage)
    return workers.evaluate(items)


def _checkpoint(session: SearchSession, engine) -> None:
    """Front and best first, the checkpoint last: a checkpoint never points past what is written."""
    front = _front(session, engine)
    session.store.write_front(front, budget_bytes=session.spec.budget_bytes, metric=session.spec.fitness,
                              generation=engine.generation)
    best = best_under_budget(front, session.spec.budget_bytes)
    if best is not None:
        session.store.write_text(BEST_FILE, session.config_of(best.genome).to_toml())
    session.store.write_checkpoint({"generation": engine.generation, "engine": engine.state_dict()})


def _front(session: SearchSession, engine) -> list[FrontPoint]:
    return [FrontPoint(tuple(genome), score.quality, score.size_bytes, session.config_of(genome).to_dict())
            for genome, score in engine.front()]


def _result(session: SearchSession, engine, new_evaluations: int) -> SearchResult:
    front = _front(session, engine)
    return SearchResult(run_dir=session.store.directory, front=front,
                        best=best_under_budget(front, session.spec.budget_bytes),
                        evaluations=len(session.store), new_evaluations=new_evaluations)
