"""Distributed evaluation on Ray (`evo search --workers N [--ray-address ADDR]`): one stateful actor
per GPU (or per CPU slot) holds the resident model, its cached levels and the calibration batch, and
the engine's asked batch is spread over the actors; the driver keeps the journal and checkpoints.

Ray (not a home-made scheduler) starts the processes, places them on GPUs and reports their deaths:
a candidate whose actor dies is re-queued on the others, so nothing is lost, and since only the
driver journals, nothing is journaled twice. A candidate's quality does not depend on which actor
scored it (each rebuilds the driver's evaluator from the same inputs, with one micro-batch size fixed
by the driver and one thread per CPU slot), so N workers end with the same front as one. The size
table is coded by the same actors.

A space with gptq levels: the driver collects the run's Hessians once (RUN/hessians, their digest in
spec.json); every actor opens them (checked against the digest) and builds its own level database for
its evaluator, and the actors split the coding of the sizes, each writing its share into the run's
size cache, which the driver then reads (it builds no level database of its own unless an actor died
with its share uncoded). The actors read and write the run directory, so on a multi-machine cluster
it must be on a filesystem they all mount at the same path.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from evo.constants import FINAL_STAGE
from evo.errors import EvoError

OBJECT_STORE_BYTES = 200 * 10**6  # a local cluster's shared memory: the inputs are sent once, results are floats
IN_FLIGHT_PER_WORKER = 2  # tasks queued on an actor: the next starts while the driver journals the last
PAIRS_PER_TASK = 16  # size-table pairs coded per actor call


@dataclass(frozen=True)
class WorkerSettings:
    """How many evaluation actors to run and where.

    workers: actors (one GPU each on CUDA, one CPU slot each otherwise). address: an existing Ray
    cluster to join (`ray start --head` prints it); None starts a local one sized for the workers.
    """

    workers: int
    address: str | None = None
    object_store_bytes: int = OBJECT_STORE_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise EvoError(f"--workers {self.workers!r} must be 1 or more")
        if self.address is not None and not self.address.strip():
            raise EvoError("--ray-address is empty: pass host:port of the cluster's head, or leave it out")

    def check_local(self, device: str) -> None:
        """Refuse, before anything is loaded or created, more workers than a local cluster has GPUs
        (device: the run's device type, "cuda" or "cpu"; a joined cluster says what it has itself)."""
        if self.address is not None or device != "cuda":
            return
        import torch

        gpus = torch.cuda.device_count()
        if self.workers > gpus:
            raise EvoError(f"--workers {self.workers} asks for one GPU each but this machine has {gpus}: "
                           "lower --workers or join a cluster with --ray-address")


@dataclass(frozen=True)
class ActorInputs:
    """What an actor rebuilds the driver's evaluator from (sent once through Ray's object store)."""

    model: str
    dtype: str
    trust_remote_code: bool
    info: Any  # the driver's ModelInfo: the actor's model must have the same tensors
    token_ids: Any
    fitness: Any
    reference: Any
    stats: Any
    stage_shapes: dict
    threads: int  # torch threads per actor on the CPU (1 per slot: the same arithmetic on every actor)
    levels: Any = None  # LevelInputs when the space has gptq levels (the actor builds its level database)


@dataclass(frozen=True)
class LevelInputs:
    """What an actor builds its level database from: the space, and the run's Hessians and size cache
    (paths in the run directory; the Hessians' digest is the one spec.json records)."""

    space: Any
    hessians_dir: str
    hessians_digest: str
    levels_device: str
    size_cache_dir: str
    prefer_decode_speed: bool


@dataclass(frozen=True)
class WorkerRate:
    """One actor's throughput, for the progress display."""

    name: str
    evaluations: int
    evals_per_second: float  # over the actor's own evaluation seconds (startup and waits excluded)
    alive: bool = True


class EvaluationActor:
    """The body of a Ray actor: a resident model and its evaluator, built once."""

    def __init__(self, inputs: ActorInputs) -> None:
        import torch

        from evo.evaluate.evaluator import Evaluator
        from evo.modelio import load_model

        torch.set_num_threads(max(1, inputs.threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        loaded = load_model(inputs.model, dtype=inputs.dtype, device=device,
                            trust_remote_code=inputs.trust_remote_code)
        self.stats = inputs.stats
        # the CPU copy the evaluator restores from, and the size table is coded from
        self.weights = {name: p.detach().to("cpu", copy=True) for name, p in loaded.model.named_parameters()}
        # The driver's ModelInfo: a model that differs in any tensor is refused here (check_matches).
        self.evaluator = Evaluator(loaded.model, inputs.info, inputs.token_ids, inputs.fitness, inputs.reference,
                                   stats=inputs.stats, base_weights=self.weights)
        self.evaluator.stage_shapes = dict(inputs.stage_shapes)
        self._loaded = loaded
        self._levels_inputs = inputs.levels

    def build_levels(self, share: tuple[int, int] = (0, 1)) -> int:
        """Build this actor's level database (gptq spaces) for its evaluator, coding the sizes of its
        `share` of the table into the run's size cache (LevelStore.build); the sizes it coded."""
        from evo.compress.size import ArtifactMetadata, SizeCache, SizeModel
        from evo.evaluate.hessian import HessianSet
        from evo.evaluate.resident import logits_bytes
        from evo.search.levels import LevelStore
        from evo.search.size_table import SizeTable

        spec = self._levels_inputs
        if spec is None or self.evaluator.levels is not None:
            return 0
        hessians = HessianSet.open(spec.hessians_dir, expected_digest=spec.hessians_digest)
        hessians.levels_device = spec.levels_device
        loaded = self._loaded
        # the driver's size model, over this actor's CPU copy of the weights: the same cache keys
        size_model = SizeModel(loaded.info, self.weights, SizeCache(spec.size_cache_dir),
                               ArtifactMetadata(loaded.model, loaded.tokenizer, loaded.info), stats=self.stats,
                               device=self.evaluator.device, prefer_decode_speed=spec.prefer_decode_speed)
        size_model.hessians = hessians
        table = SizeTable(spec.space, self.evaluator.info, size_model)
        dtype = next(loaded.model.parameters()).dtype
        reserve = logits_bytes(*self.evaluator.token_ids.shape, self.evaluator.info.vocab_size, dtype.itemsize)
        levels = LevelStore(table, device=self.evaluator.device, dtype=dtype, hessians=hessians,
                            reserve_bytes=reserve)
        summary = levels.build(workers=1, share=share)
        self.evaluator.levels = levels
        return summary.sizes_coded

    def where(self) -> str:
        import socket

        return f"{socket.gethostname()}:{os.getpid()}:{self.evaluator.device}"

    def evaluate(self, config, stage: int) -> tuple[float, float]:
        tic = time.perf_counter()
        quality = self.evaluator.evaluate(config, stage)
        return quality, time.perf_counter() - tic

    def encode_pairs(self, pairs: list) -> list:
        """Size-table entries of (tensor, setting) pairs, coded from this actor's CPU copy of the weights."""
        from evo.search.size_table import encode_pairs

        return encode_pairs(pairs, self.weights, self.stats)


def _level_inputs(session) -> LevelInputs | None:
    """What the actors build their level databases from: None unless the space has gptq levels."""
    hessians = getattr(session, "hessians", None)
    if hessians is None:
        return None
    from evo.constants import SIZE_CACHE_DIR
    from evo.search.levels import HESSIANS_DIR

    store = session.store
    return LevelInputs(space=session.space, hessians_dir=str(store.path(HESSIANS_DIR)),
                       hessians_digest=hessians.digest, levels_device=getattr(hessians, "levels_device", "cpu"),
                       size_cache_dir=str(store.path(SIZE_CACHE_DIR)),
                       prefer_decode_speed=bool(session.size_model.prefer_decode_speed))


def require_ray():
    try:
        import ray
    except ImportError:
        raise EvoError("--workers needs Ray: pip install 'evo[ray]' (or pip install ray)") from None
    return ray


@dataclass
class _Worker:
    name: str
    actor: Any
    evaluations: int = 0
    seconds: float = 0.0
    alive: bool = True
    in_flight: int = 0


@dataclass
class _Task:
    index: int  # position in the batch (evaluations) or chunk number (size table)
    method: str
    args: tuple
    attempts: int = 0


@dataclass
class WorkerPool:
    """The actors of a run, and the scheduling of a batch over them (see the module docstring)."""

    workers: list[_Worker]
    started_ray: bool
    device: str
    requeued: int = 0  # tasks re-run on another actor after theirs died

    # --- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(cls, session, settings: WorkerSettings, *, trust_remote_code: bool = False,
              status: Callable[[str], None] | None = None) -> "WorkerPool":
        """Start (or join) Ray and one actor per worker, each built from the session's inputs."""
        say = status or (lambda message: None)
        ray = require_ray()
        device = session.evaluator.device.type
        gpus = 1 if device == "cuda" else 0
        started_ray = False
        if not ray.is_initialized():
            if settings.address:
                say(f"joining the Ray cluster at {settings.address}")
                try:
                    ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                             logging_level="error")
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise EvoError(f"cannot join the Ray cluster at {settings.address}: {_first_line(exc)} "
                                   "(is `ray start --head` running there, with the same Ray version?)") from None
            else:
                import torch

                settings.check_local(device)
                local_gpus = torch.cuda.device_count() if device == "cuda" else 0
                # address="local": a new cluster, never one that RAY_ADDRESS or a running `ray start` names
                ray.init(address="local", num_cpus=settings.workers, num_gpus=local_gpus,
                         object_store_memory=settings.object_store_bytes,
                         include_dashboard=False, log_to_driver=False, logging_level="error")
            started_ray = True
        spec, evaluator = session.spec, session.evaluator
        # One micro-batch size for every actor, fixed here: sized from each actor's free memory it could
        # differ between them (and in time), and with it the float sums of a candidate's KL.
        fitness = evaluator.fitness
        if fitness.batch_size is None:
            fitness = replace(fitness, batch_size=evaluator.micro_batch(*evaluator.stage_shape(FINAL_STAGE)))
        inputs = ActorInputs(model=spec.model, dtype=spec.dtype, trust_remote_code=trust_remote_code,
                             info=session.loaded.info, token_ids=evaluator.token_ids.cpu(), fitness=fitness,
                             reference=evaluator.reference, stats=session.activation_stats,
                             stage_shapes=dict(evaluator.stage_shapes), threads=1,
                             levels=_level_inputs(session))
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(EvaluationActor)
        shared = ray.put(inputs)
        actors = [remote.remote(shared) for _ in range(settings.workers)]
        say(f"starting {settings.workers} Ray worker(s), each loading {spec.model} on {device}")
        pool = cls([], started_ray, device)
        try:
            names = ray.get([actor.where.remote() for actor in actors])
        except ray.exceptions.RayError as exc:
            pool.workers = [_Worker(str(i), a) for i, a in enumerate(actors)]
            pool.close()
            raise EvoError(f"a Ray worker failed to start: {_first_line(exc)}") from None
        pool.workers = [_Worker(f"w{i} {name}", actor) for i, (actor, name) in enumerate(zip(actors, names))]
        return pool

    def build_levels(self, status: Callable[[str], None] | None = None) -> int:
        """Have every actor build its level database (gptq spaces), the live actors splitting the coding
        of the sizes the run's size cache lacks (actor i of n codes the table's pairs i, i+n, …). An
        actor that dies here is dropped, and the sizes of its share stay missing (the caller codes
        them). Returns the sizes the actors coded."""
        ray = require_ray()
        live = [w for w in self.workers if w.alive]
        if status is not None and live:
            status(f"building the level database on {len(live)} Ray worker(s), each coding 1/{len(live)} of the sizes")
        refs = [w.actor.build_levels.remote((i, len(live))) for i, w in enumerate(live)]
        coded = 0
        for worker, ref in zip(live, refs):
            try:
                coded += ray.get(ref)
            except ray.exceptions.RayActorError:
                worker.alive = False
        if not any(w.alive for w in self.workers):
            raise EvoError("every Ray worker has died: resume with `evo search --resume RUN` (with fewer "
                           "--workers, or none)")
        return coded

    def close(self) -> None:
        ray = require_ray()
        for worker in self.workers:
            try:
                ray.kill(worker.actor)
            except Exception:  # already dead, or the cluster is gone: nothing left to free
                pass
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- scheduling -----------------------------------------------------------------------------------

    @property
    def actors(self) -> list:
        """The live actors (a test kills one of them)."""
        return [w.actor for w in self.workers if w.alive]

    def rates(self) -> tuple[WorkerRate, ...]:
        """Each actor's evaluations and its rate over the seconds it spent evaluating them."""
        return tuple(WorkerRate(w.name, w.evaluations, w.evaluations / w.seconds if w.seconds > 0 else 0.0, w.alive)
                     for w in self.workers)

    def _run(self, tasks: Sequence[_Task]) -> Iterator[tuple[_Task, Any, _Worker]]:
        """Run tasks over the live actors, at most IN_FLIGHT_PER_WORKER each, yielding (task, result,
        worker) as they finish; a task whose actor died goes back to the queue's front."""
        ray = require_ray()
        queue = deque(tasks)
        running: dict = {}  # object ref → (task, worker)
        while queue or running:
            for worker in self.workers:
                while worker.alive and queue and worker.in_flight < IN_FLIGHT_PER_WORKER:
                    task = queue.popleft()
                    ref = getattr(worker.actor, task.method).remote(*task.args)
                    running[ref] = (task, worker)
                    worker.in_flight += 1
            if not running:
                raise EvoError("every Ray worker has died: the journal holds what finished; "
                               "resume with `evo search --resume RUN` (with fewer --workers, or none)")
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            task, worker = running.pop(ref)
            worker.in_flight -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError:
                worker.alive = False  # its other tasks fail the same way and are re-queued too
                task.attempts += 1
                self.requeued += 1
                queue.appendleft(task)
                continue
            yield task, result, worker

    def evaluate(self, items: dict[str, tuple[Any, int]]) -> "BatchResults":
        """Start scoring {key: (config, stage)}; results are read by key, in any order, from the
        returned object."""
        keys = list(items)
        tasks = [_Task(i, "evaluate", items[key]) for i, key in enumerate(keys)]
        return BatchResults(self._run(tasks), keys)

    def encode_pairs(self, pairs: list) -> Iterator:
        """Size-table entries of `pairs`, in the pairs' order, coded over the actors."""
        chunks = [pairs[i:i + PAIRS_PER_TASK] for i in range(0, len(pairs), PAIRS_PER_TASK)]
        tasks = [_Task(i, "encode_pairs", (chunk,)) for i, chunk in enumerate(chunks)]
        finished: dict[int, list] = {}
        next_chunk = 0
        for task, entries, _ in self._run(tasks):
            finished[task.index] = entries
            while next_chunk in finished:
                yield from finished.pop(next_chunk)
                next_chunk += 1


class BatchResults:
    """The results of one batch as they arrive: `get(key)` blocks until that item is scored."""

    def __init__(self, running: Iterator, keys: list[str]) -> None:
        self._running = running
        self._keys = keys
        self._results: dict[str, tuple[float, float]] = {}

    def get(self, key: str) -> tuple[float, float]:
        """(quality, seconds the actor spent) of the item `key`."""
        while key not in self._results:
            try:
                task, (quality, seconds), worker = next(self._running)
            except StopIteration:
                raise RuntimeError(f"batch item {key} was never scored") from None
            worker.evaluations += 1
            worker.seconds += seconds
            self._results[self._keys[task.index]] = (quality, seconds)
        return self._results.pop(key)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
