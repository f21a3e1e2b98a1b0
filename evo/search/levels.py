"""The level database of a run: every (tensor, setting) a search space allows, quantized ONCE at the
start of the run; the one pass gives the codes the size table's entries are coded from (entropy coding
in CPU worker processes) and the dequantized weights the evaluator swaps in, so nothing is quantized twice.

GPTQ levels are batched (evo.compress.gptq_batch): every setting of every tensor reading one input of a
layer (q/k/v; gate/up) goes through one column loop per (layer, input), the layer's Hessians loaded once;
the result is bit for bit the per-tensor gptq that `evo compress`/`evo export` run. rtn and mse levels are
compress_tensor's, on the evaluator's device, exactly what the evaluator computed on a cache miss before.

Where each level lives (its tier):
    device  dequantized, in the evaluation dtype, on the evaluation device: the evaluator points the
            parameter at it (no copy), up to `device_bytes` (default: sized from free memory,
            evo.evaluate.resident.cache_budget, leaving the forward's logits);
    host    dequantized in host RAM (CUDA runs only), up to `host_bytes`: copied onto the device;
    codes   the stored form (uint8 codes, fp16 scales): dequantized on the fly, never re-quantized.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import torch

from evo.compress.apply import compress_tensor
from evo.compress.coding import encode_tensor
from evo.compress.gptq_batch import GptqJob, gptq_quantize_many
from evo.compress.plan import hessian_for, needs_hessian_for, stats_for
from evo.compress.quantize import QuantizedTensor, dequantize
from evo.compress.registry import CompressionState, get_operator, pipeline_names
from evo.compress.settings import TensorSetting
from evo.compress.size import SizeEntry
from evo.errors import EvoError

TIERS = ("device", "host", "codes")
LevelProgress = Callable[[int, int], None]  # (levels done, levels total)


@dataclass(frozen=True)
class LevelSummary:
    """How many levels sit in each tier and their bytes; seconds the build took."""

    levels: int
    counts: dict[str, int]
    bytes: dict[str, int]
    sizes_coded: int
    seconds: float


def space_needs_hessians(space) -> bool:
    """Whether a space can ask for a gptq level (its base or a quantizer gene names gptq; a GGUF
    space, its quantizer)."""
    if getattr(space, "format", None) == "gguf":
        return space.quantizer == "gptq"
    quantizers = dict(space.unit_genes).get("quantizer", (space.base.quantizer,))
    return "gptq" in quantizers


def _pre_quantize(weight: torch.Tensor, setting: TensorSetting, act) -> CompressionState:
    """The pipeline's state just before the quantizer runs (the prune mask, for gptq)."""
    state = CompressionState(weight=weight, setting=setting, act_stats=act)
    for name in pipeline_names():
        if name == "quantize":
            break
        state = get_operator(name)(state)
    return state


def _encode(pair_quantized: tuple[QuantizedTensor, bool]) -> SizeEntry:
    quantized, fast = pair_quantized
    return SizeEntry.from_encoded(encode_tensor(quantized, prefer_decode_speed=fast))


def _worker_init() -> None:
    torch.set_num_threads(1)


class LevelStore:
    """Every level of a size table's space (SizeTable.pairs()), built once by build().

    device, dtype: where and in what the evaluator runs. hessians: the run's HessianSet (needed when
    the space has gptq). device_bytes / host_bytes: tier capacities (None: from free memory).
    """

    def __init__(self, size_table, *, device: torch.device | str, dtype: torch.dtype, hessians=None,
                 device_bytes: int | None = None, host_bytes: int | None = None, reserve_bytes: int = 0) -> None:
        from evo.evaluate.resident import cache_budget

        self.table = size_table
        self.size_model = size_table.size_model
        self.device = torch.device(device)
        self.dtype = dtype
        self.hessians = hessians
        if device_bytes is None:
            device_bytes = cache_budget(self.device, reserve_bytes=reserve_bytes)
        if host_bytes is None:
            host_bytes = cache_budget("cpu") if self.device.type != "cpu" else 0
        self.capacity = {"device": int(device_bytes), "host": int(host_bytes)}
        self.used = {tier: 0 for tier in TIERS}
        self._levels: dict[tuple[str, TensorSetting], tuple[str, object]] = {}
        self.summary: LevelSummary | None = None

    # --- building ------------------------------------------------------------------------------------

    def build(self, *, workers: int | None = None, progress: LevelProgress | None = None,
              share: tuple[int, int] = (0, 1)) -> LevelSummary:
        """Quantize every level once (batched gptq per layer input), code the sizes the size cache lacks
        (in `workers` CPU processes, all cores by default) and place each level in its tier.

        share (i, n): code only the sizes of the pairs at positions i, i+n, i+2n… of the table (the
        Ray actors of `--workers` split the coding so, each writing its share into the run's size cache;
        every level is still quantized and placed here)."""
        from evo.search.size_table import default_workers

        tic = time.perf_counter()
        pairs = self.table.pairs()
        index, count = share
        if not 0 <= index < count:
            raise EvoError(f"share {share} is not (i, n) with 0 <= i < n")
        missing_sizes = {pair for position, pair in enumerate(pairs)
                         if position % count == index and not self.table.is_coded(*pair)}
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise EvoError("--size-workers must be 1 or more")
        total = len(pairs)
        done = 0
        if progress is not None:
            progress(0, total)
        pool = None
        if workers > 1 and len(missing_sizes) > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_worker_init)
        pending: list[tuple[tuple[str, TensorSetting], Future | SizeEntry]] = []
        fast = self.size_model.prefer_decode_speed
        coded = 0

        def drain(keep: int = 0) -> None:
            nonlocal coded
            while len(pending) > keep:
                pair, result = pending.pop(0)
                entry = result.result() if isinstance(result, Future) else result
                self.table._store(pair, entry)
                coded += 1

        try:
            for group in self._batches(pairs):
                for pair, quantized in self._quantize(group):
                    if pair in missing_sizes:
                        cpu = _to_cpu(quantized)
                        # the pool's queue pickles in a feeder thread, and torch's pickler moves a tensor's
                        # storage into shared memory while this thread goes on reading it (the level is
                        # dequantized next): the workers get copies, never the tensors this process uses
                        result = (pool.submit(_encode, (_copy(cpu), fast)) if pool is not None
                                  else _encode((cpu, fast)))
                        pending.append((pair, result))
                    self._place(pair, quantized)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                drain(keep=4 * workers)  # the coders keep working while the next batch quantizes
            drain()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.size_model.sizes_computed += coded
        counts = {tier: 0 for tier in TIERS}
        for tier, _ in self._levels.values():
            counts[tier] += 1
        self.summary = LevelSummary(len(self._levels), counts, dict(self.used), coded, time.perf_counter() - tic)
        return self.summary

    def _batches(self, pairs):
        """Pairs grouped so that one group is one unit of work: the gptq pairs of one layer (its
        Hessians loaded once), every other pair alone, in table order."""
        layer_of = {}
        for layer in self.table.info.layers:
            for lin in layer.linears:
                layer_of[lin.name] = layer.index
        batch: list = []
        current = None
        for pair in pairs:
            source, setting = pair
            if needs_hessian_for(setting) and source in layer_of:
                if current != layer_of[source] and batch:
                    yield batch
                    batch = []
                current = layer_of[source]
                batch.append(pair)
                continue
            if batch:
                yield batch
                batch, current = [], None
            yield [pair]
        if batch:
            yield batch

    def _quantize(self, group):
        weights, stats = self.size_model.weights, self.size_model.stats
        gptq_pairs = [pair for pair in group if needs_hessian_for(pair[1])]
        for pair in group:
            if not needs_hessian_for(pair[1]):
                source, setting = pair
                act = stats_for(stats, source, setting)
                weight = weights[source].to(self.device)
                yield pair, compress_tensor(weight, setting, act).quantized
        if not gptq_pairs:
            return
        if self.hessians is None:
            raise EvoError("this space has gptq levels, which need the run's Hessians: pass hessians=")
        by_input: dict[str, list] = {}
        for pair in gptq_pairs:
            by_input.setdefault(self.hessians.inputs[pair[0]]["input"], []).append(pair)
        for members in by_input.values():
            hessian = hessian_for(self.hessians, members[0][0], members[0][1]).to(self.device)
            jobs = []
            for source, setting in members:
                act = stats_for(stats, source, setting)
                state = _pre_quantize(weights[source].to(self.device), setting, act)
                jobs.append(GptqJob(state.weight, setting, state.prune_mask))
            yield from zip(members, gptq_quantize_many(jobs, hessian))

    def _place(self, pair, quantized: QuantizedTensor) -> None:
        numel = quantized.num_weights
        nbytes = numel * torch.empty((), dtype=self.dtype).element_size()
        if self.used["device"] + nbytes <= self.capacity["device"]:
            tier, value = "device", _dequantized(quantized, self.device, self.dtype)
        elif self.used["host"] + nbytes <= self.capacity["host"]:
            tier, value = "host", _dequantized(quantized, torch.device("cpu"), self.dtype)
            if torch.cuda.is_available():
                value = value.pin_memory()
        else:
            tier, value = "codes", _to_cpu(quantized)
            nbytes = _stored_bytes(quantized)
        self.used[tier] += nbytes
        self._levels[pair] = (tier, value)

    # --- reading -------------------------------------------------------------------------------------

    def __contains__(self, pair) -> bool:
        return pair in self._levels

    def __len__(self) -> int:
        return len(self._levels)

    def tier(self, source: str, setting: TensorSetting) -> str:
        return self._levels[(source, setting)][0]

    def weight(self, source: str, setting: TensorSetting) -> tuple[torch.Tensor, bool]:
        """(the level's dequantized weight on the device in the dtype, shared): shared is True when it
        is the stored level itself (device tier: point the parameter at it, never write into it)."""
        tier, value = self._levels[(source, setting)]
        if tier == "device":
            return value, True
        if tier == "host":
            return value.to(self.device, non_blocking=True), False
        return _dequantized(value, self.device, self.dtype), False


def _dequantized(quantized: QuantizedTensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """What the evaluator ran before: CompressedTensor.dequantized() (float32) in the model's dtype."""
    q = quantized if quantized.codes.device == device else _to_device(quantized, device)
    return dequantize(q).to(device=device, dtype=dtype)


def _to_device(q: QuantizedTensor, device) -> QuantizedTensor:
    move = (lambda t: None if t is None else t.to(device))
    return QuantizedTensor(move(q.codes), move(q.scales), move(q.zeros), q.shape, q.setting)


def _copy(q: QuantizedTensor) -> QuantizedTensor:
    clone = (lambda t: None if t is None else t.clone())
    return QuantizedTensor(clone(q.codes), clone(q.scales), clone(q.zeros), q.shape, q.setting)


def _to_cpu(q: QuantizedTensor) -> QuantizedTensor:
    return q if q.codes.device.type == "cpu" else _to_device(q, torch.device("cpu"))


def _stored_bytes(q: QuantizedTensor) -> int:
    return sum(t.numel() * t.element_size() for t in (q.codes, q.scales, q.zeros) if t is not None)


# --- the run's Hessians ------------------------------------------------------------------------------

HESSIANS_DIR = "hessians"  # in the run directory: evo.evaluate.hessian's meta.json + one file per layer
HESSIANS_STEP = "Hessians"
LEVELS_STEP = "levels"
SPEC_KEY = "hessians"  # spec.json's record of them: {"digest": ..., "device": "cuda" | "cpu"}


def run_hessians(store, loaded, token_ids, *, say=None, progress=None):
    """The run's Hessians of the decoder linears' inputs, from the dense model on the run's calibration
    tokens, on the model's device: read back from RUN/hessians when spec.json records the same digest
    (a resumed run: the files are not touched), collected there otherwise. Another digest is refused."""
    from evo.constants import SPEC_FILE
    from evo.evaluate.hessian import META, HessianSet, calibration_tokens, collect_hessians, hessian_digest
    from evo.progress import counter

    info = loaded.info
    device = next(loaded.model.parameters()).device
    digest = hessian_digest(info.model_id, calibration_tokens(info, token_ids, 4))
    spec = store.spec()
    recorded = spec.get(SPEC_KEY) if isinstance(spec, dict) else None
    if recorded is not None and recorded.get("digest") != digest:
        raise EvoError(f"run {store.directory} recorded Hessians {recorded.get('digest')} but its model and "
                       f"calibration tokens give {digest}: the run's files were changed; start a new run")
    directory = store.path(HESSIANS_DIR)
    if (directory / META).is_file():
        hessians = HessianSet.open(directory, expected_digest=digest)
    else:
        if say is not None:
            say("collecting the Hessians of the linear inputs (for gptq)")
        hessians = collect_hessians(loaded.model, info, token_ids, directory,
                                    progress=counter(progress, HESSIANS_STEP, "batches"))
    if recorded is None:
        store.write_json(SPEC_FILE, {**spec, SPEC_KEY: {"digest": digest, "device": device.type}})
        recorded = {"digest": digest, "device": device.type}
    hessians.levels_device = recorded.get("device", device.type)
    return hessians
