"""The search's quality objective: KL of a candidate's next-token distributions to the dense model's
(from a compact top-k reference computed once) or its perplexity, on the calibration tokens.

Candidates are materialised in one resident model by copying cached dequantized weights into its
parameters and swapping drop modules in and out, never by reloading. Stage 1 screens on a prefix
of the tokens (causal attention: a prefix's logits are the full sequence's, so the reference is
sliced); stage 2 uses every calibration sequence at full length.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from evo.compress import ActivationStats, compress_tensor
from evo.compress.config import CompressionConfig, tensor_shapes
from evo.compress.model import check_matches
from evo.compress.plan import stats_for
from evo.compress.settings import TensorSetting
from evo.compress.structure import apply_block_drop, is_replaced, replaced_modules
from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError
from evo.evaluate.forward import Hook, forward_batches, per_batch, run_forward, token_batch
from evo.evaluate.metrics import nll_sum
from evo.evaluate.reference import DEFAULT_TAIL_SAMPLES, DEFAULT_TOP_K, DenseReference
from evo.types import ModelInfo

METRICS = ("kl", "ppl")
DEFAULT_CACHE_BYTES = None  # dequantized weights kept for reuse: sized from free memory (evaluate/resident.py)
LAYER_PLANS = 1 << 16  # materialise's memoised layer plans; beyond this they are forgotten and rebuilt
FORWARD_MEMORY_SHARE = 0.25  # of the free device memory at most one micro-batch's logits may take

ProgressCallback = Callable[[int, int], None]  # (batches done, batches total)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvoError(f"FitnessConfig.{name}={value!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class FitnessConfig:
    """How candidates are scored.

    metric: "kl" (mean KL(dense ‖ candidate) per token, nats, from the top-k reference) or "ppl"
        (perplexity of the calibration tokens). Lower is better for both.
    screen_sequences, screen_tokens: stage 1 scores the first screen_sequences calibration
        sequences truncated to screen_tokens tokens; stage 2 scores all of them in full.
    top_k: dense log-probabilities kept per position (the rest is one tail outcome).
    tail_samples: tokens drawn from the rest per position, for the unbiased tail term of the KL
        (0 keeps only the top-k lower bound; see topk_kl).
    batch_size: sequences per forward pass; None (the default) runs a stage's whole batch in one
        forward when its logits fit in a quarter of the free device memory, else the largest
        micro-batch that does.
    compile: torch.compile of the forward and the KL on CUDA ("off", "default",
        "max-autotune-no-cudagraphs", "reduce-overhead" / "max-autotune" = with CUDA graphs, or "auto" =
        reduce-overhead on CUDA and off elsewhere: evo search's default), static shapes, one
        graph per stage; eager on the CPU and whenever compiling fails (evaluate/fastforward.py).
    """

    metric: str = "kl"
    screen_sequences: int = 4
    screen_tokens: int = 128
    top_k: int = DEFAULT_TOP_K
    tail_samples: int = DEFAULT_TAIL_SAMPLES
    batch_size: int | None = None
    compile: str = "off"
    kl_chunk: int = 0  # tokens per head + KL chunk after one body forward; 0: whole-batch logits (fastforward.py)

    def __post_init__(self) -> None:
        from evo.evaluate.fastforward import check_compile_mode

        check_compile_mode(self.compile)
        if self.metric not in METRICS:
            raise EvoError(f"FitnessConfig.metric={self.metric!r} is unknown: use one of {list(METRICS)}")
        for name in ("screen_sequences", "top_k"):
            _positive_int(name, getattr(self, name))
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if isinstance(self.kl_chunk, bool) or not isinstance(self.kl_chunk, int) or self.kl_chunk < 0:
            raise EvoError(f"FitnessConfig.kl_chunk={self.kl_chunk!r} must be 0 (whole batch) or a positive integer")
        if isinstance(self.tail_samples, bool) or not isinstance(self.tail_samples, int) or self.tail_samples < 0:
            raise EvoError(f"FitnessConfig.tail_samples={self.tail_samples!r} must be a non-negative integer")
        if _positive_int("screen_tokens", self.screen_tokens) < 2:
            raise EvoError("FitnessConfig.screen_tokens must be at least 2: perplexity needs a predicted token")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitnessConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise EvoError(f"unknown FitnessConfig field(s) {unknown}")
        return cls(**data)


# --- the evaluator -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationStats:
    """What the evaluator did, for the progress display: totals and the last evaluation."""

    evaluations: int = 0
    seconds: float = 0.0  # in evaluate(), all evaluations
    swapped: int = 0  # tensors whose resident weights were replaced, all evaluations
    compressed: int = 0  # of those, compressed anew (the weight cache missed)
    recomputed: int = 0  # of those, (tensor, setting) pairs compressed before in this evaluator (evicted)
    last_seconds: float = 0.0
    last_swapped: int = 0
    last_compressed: int = 0
    last_stage: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0


@dataclass
class _WeightCache:
    """Dequantized weights by (tensor, setting key), least recently used first, bounded in bytes."""

    limit: int
    entries: OrderedDict = field(default_factory=OrderedDict)
    nbytes: int = 0

    def get(self, key) -> torch.Tensor | None:
        weight = self.entries.get(key)
        if weight is not None:
            self.entries.move_to_end(key)
        return weight

    def put(self, key, weight: torch.Tensor) -> None:
        size = weight.numel() * weight.element_size()
        if size > self.limit or key in self.entries:
            return
        self.entries[key] = weight
        self.nbytes += size
        while self.nbytes > self.limit:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


class Evaluator:
    """Scores CompressionConfigs on one resident model (see the module docstring).

    model: the loaded, uncompressed model, changed in place from the first evaluation on (restore()
        puts it back); info: its description. token_ids: the calibration tokens [n, L]; the
        reference must have been computed on them (needed for metric "kl"). stats: activation
        statistics for wanda/linf pruning. cache_bytes bounds the cache of dequantized weights
        (on the model's device). base_weights: the original tensors by name (e.g. a SizeModel's
        weights); by default they are copied to the CPU here. compile: overrides fitness.compile
        (True = "default", False = "off").
    """

    def __init__(
        self,
        model: nn.Module,
        info: ModelInfo,
        token_ids,
        fitness: FitnessConfig,
        reference: DenseReference | None = None,
        *,
        stats: Mapping[str, ActivationStats] | None = None,
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
        base_weights: Mapping[str, torch.Tensor] | None = None,
        compile: bool | str | None = None,
    ) -> None:
        if not isinstance(fitness, FitnessConfig):
            raise EvoError(f"fitness must be a FitnessConfig, got {type(fitness).__name__}")
        if compile is not None:
            mode = {True: "default", False: "off"}.get(compile, compile) if isinstance(compile, bool) else compile
            fitness = replace(fitness, compile=mode)
        check_matches(model, info)
        self.model = model.eval()
        self.info = info
        self.fitness = fitness
        self.activation_stats = stats
        self.token_ids = token_batch(token_ids, min_length=2)
        n, length = self.token_ids.shape
        if fitness.screen_sequences > n or fitness.screen_tokens > length:
            raise EvoError(
                f"the screening stage ({fitness.screen_sequences} sequences × {fitness.screen_tokens} tokens) "
                f"must fit the calibration set ({n} × {length}): lower it or draw more calibration samples"
            )
        self.device = next(model.parameters()).device
        self.reference = self._check_reference(reference)
        self._params = dict(model.named_parameters())
        shapes = tensor_shapes(info)
        if base_weights is None:
            base_weights = {name: self._params[name].detach().to("cpu", copy=True) for name in shapes}
        for name, shape in shapes.items():
            weight = base_weights.get(name)
            if weight is None or tuple(weight.shape) != tuple(shape) or weight.dtype != self._params[name].dtype:
                raise EvoError(f"base_weights[{name!r}] is missing or differs from the model's tensor: pass the "
                               "uncompressed model's named parameters")
        self._originals = base_weights
        self._resident: dict[str, str | None] = dict.fromkeys(shapes)  # tensor → setting key, None = original
        # materialise's memoised plans (_plan_parts) and the plan each part's resident tensors follow
        self._layer_plans: dict[tuple, tuple[tuple[str, TensorSetting, str], ...]] = {}
        self._resident_plans: dict[int | None, tuple] = {}
        self._part_names: dict[int | None, list[str]] = {
            layer.index: [lin.name for lin in layer.linears] + [name for name, _ in layer.other_tensors]
            for layer in info.layers}
        self._part_names[None] = [tensor.name for tensor in info.non_decoder]
        self._replaced: dict[tuple[int, str], dict[str, nn.Module]] = {}  # (layer, block) → its original modules
        self._layer_drops_checked = False
        if cache_bytes is None:
            from evo.evaluate.resident import cache_budget, logits_bytes

            dtype_bytes = self._params[next(iter(shapes))].element_size()
            reserve = logits_bytes(*self.token_ids.shape, info.vocab_size, dtype_bytes)
            cache_bytes = cache_budget(self.device, reserve_bytes=reserve)
        self._cache = _WeightCache(int(cache_bytes))
        # Precomputed levels (evo.search.levels.LevelStore): materialise points parameters at them or
        # copies them, never recomputes. Set by the search after the store is built.
        self._levels = None
        self._level_memo: dict[tuple[str, str], tuple[torch.Tensor, bool]] = {}  # device-tier levels by (tensor, key)
        # The parameters' own storage, which holds the original weights until a copy lands in it; a
        # parameter pointed at a level is pointed back here, so nothing ever writes into a level.
        self._own = {name: self._params[name].data for name in shapes}
        self._own_dirty: set[str] = set()
        self._pointed: set[str] = set()  # parameters whose data is a device-tier level (a pointer swap)
        # Levels copied into the parameters' own storage instead of pointer swaps: None = only under CUDA
        # graphs (which replay the addresses recorded at capture); True/False forces it (benchmarks, tests).
        self.level_copies: bool | None = None
        self._seen: set[tuple[str, str]] = set()
        self._recomputed = 0  # (tensor, setting key) compressed once in this evaluator
        self._stats = EvaluationStats()
        # (sequences, tokens) of the stages of a longer schedule (evo.search.schedule), over the defaults
        self.stage_shapes: dict[int, tuple[int, int]] = {}
        from evo.evaluate.fastforward import FastForward

        self.forward = FastForward(self.model, fitness.compile, self.device, kl_chunk=fitness.kl_chunk)
        self._device_ids = self.token_ids.to(self.device)  # checked once here, copied to the device once

    def _check_reference(self, reference: DenseReference | None) -> DenseReference | None:
        if reference is None:
            if self.fitness.metric == "kl":
                raise EvoError("metric 'kl' needs the dense reference: pass DenseReference.compute(model, tokens)")
            return None
        if tuple(reference.token_ids.shape) != tuple(self.token_ids.shape) or not torch.equal(
            reference.token_ids.long(), self.token_ids
        ):
            raise EvoError(
                "the dense reference was computed on other tokens than the calibration set: delete it and it is "
                "recomputed"
            )
        whole = reference.top_k >= self.info.vocab_size  # no tail: nothing to sample
        if reference.top_k != min(self.fitness.top_k, self.info.vocab_size) or (
            reference.tail_samples < self.fitness.tail_samples and not whole
        ):
            raise EvoError(
                f"the dense reference keeps the top {reference.top_k} tokens and {reference.tail_samples} tail samples, "
                f"but top_k={self.fitness.top_k} and tail_samples={self.fitness.tail_samples} are asked: delete it and "
                "it is recomputed"
            )
        # The draws are independent, so the first m of them are m draws.
        m = min(self.fitness.tail_samples, reference.tail_samples)
        # Kept on the model's device, in the dtypes the KL reads: sliced per row, never copied back.
        self._reference_rows = (
            reference.topk_ids.to(self.device, torch.long),
            reference.topk_logprobs.to(self.device, torch.float32),
            reference.tail_logprob.to(self.device, torch.float32),
            reference.tail_ids[..., :m].to(self.device, torch.long),
            reference.tail_logprobs[..., :m].to(self.device, torch.float32),
        )
        return reference

    # --- public API -----------------------------------------------------------------------------------

    @property
    def levels(self):
        """The level database materialise reads (evo.search.levels.LevelStore), or None."""
        return self._levels

    @levels.setter
    def levels(self, store) -> None:
        self._levels = store
        self._level_memo.clear()

    @property
    def stats(self) -> EvaluationStats:
        return EvaluationStats(
            **{**asdict(self._stats), "cache_entries": len(self._cache.entries), "cache_bytes": self._cache.nbytes}
        )

    def stage_shape(self, stage: int) -> tuple[int, int]:
        """(sequences, tokens) a stage scores."""
        if stage in self.stage_shapes:
            return self.stage_shapes[stage]
        if stage == SCREEN_STAGE:
            return self.fitness.screen_sequences, self.fitness.screen_tokens
        if stage == FINAL_STAGE:
            return tuple(self.token_ids.shape)  # type: ignore[return-value]
        raise EvoError(f"stage {stage!r} is unknown: use {SCREEN_STAGE} (screen) or {FINAL_STAGE} (full)")

    @torch.no_grad()
    def evaluate(self, config: CompressionConfig, stage: int = FINAL_STAGE,
                 progress: ProgressCallback | None = None) -> float:
        """The config's quality at `stage`, lower is better: mean KL in nats per token, or perplexity."""
        sequences, tokens = self.stage_shape(stage)
        tic = time.perf_counter()
        recomputed_before = self._recomputed
        swapped, compressed = self.materialise(config)
        ids = self.token_ids[:sequences, :tokens]
        if self.fitness.metric == "kl":
            quality = self._kl(ids, progress)
        else:
            quality = self._perplexity(ids, progress)
        if not math.isfinite(quality):
            raise RuntimeError(f"the evaluation of a candidate gave {quality}: the model produced non-finite logits")
        seconds = time.perf_counter() - tic
        s = self._stats
        self._stats = EvaluationStats(
            evaluations=s.evaluations + 1,
            seconds=s.seconds + seconds,
            swapped=s.swapped + swapped,
            compressed=s.compressed + compressed,
            recomputed=s.recomputed + self._recomputed - recomputed_before,
            last_seconds=seconds,
            last_swapped=swapped,
            last_compressed=compressed,
            last_stage=stage,
        )
        return quality

    def baseline(self, stage: int = FINAL_STAGE) -> float:
        """The dense model's quality at `stage`: 0 for KL, its perplexity for ppl (needs the reference)."""
        sequences, tokens = self.stage_shape(stage)
        if self.fitness.metric == "kl":
            return 0.0
        if self.reference is None:
            raise EvoError("the dense perplexity needs the dense reference")
        return self.reference.perplexity(sequences, tokens)

    @torch.no_grad()
    def materialise(self, config: CompressionConfig) -> tuple[int, int]:
        """Make the resident model the one compress_model(model, info, config) would give, but with
        dropped layers zeroed in place instead of removed. Returns (tensors swapped, of which
        compressed anew).

        Only what differs from the resident state is touched: each layer's plan (its stored tensors
        and their settings under the config) is memoised across configs, and a layer whose plan is the
        one its resident tensors already follow is skipped without looking at its tensors; in a
        changed layer only the tensors whose setting changed are swapped (a pointer swap for a level
        of the device tier: no copy, no host sync). Under CUDA graphs (or level_copies=True) every
        parameter keeps its own storage and the changed tensors are copied into it in one batched
        torch._foreach_copy_, a few launches per evaluation instead of one per tensor."""
        if not isinstance(config, CompressionConfig):
            raise EvoError(f"config must be a CompressionConfig, got {type(config).__name__}")
        config.validate_against(self.info)
        self._set_drops(config.drops)
        swapped = compressed = 0
        resident = self._resident
        copies: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        in_place = self._copy_levels()
        if in_place and self._pointed:
            self._unpoint(copies)
        resident_plans = self._resident_plans
        for part, plan in self._plan_parts(config):
            if resident_plans.get(part) is plan:
                continue
            for source, setting, key in plan:
                if resident[source] != key:
                    compressed += self._swap_in(source, setting, key, copies, in_place)
                    swapped += 1
            resident_plans[part] = plan
        if copies[0]:
            torch._foreach_copy_(*copies)
        return swapped, compressed

    def _plan_parts(self, config: CompressionConfig):
        """(part, plan) per kept decoder layer and for the non-decoder tensors, in plan_model's order:
        a plan is ((source, setting, setting key), ...) of the tensors the part stores, memoised by what
        config.setting_for reads for them (the layer's entry, the default, overrides naming them)."""
        drops = config.drops
        entries = dict(config.layers)
        overrides = dict(config.tensors)
        plans = self._layer_plans
        if len(plans) >= LAYER_PLANS:
            plans.clear()
            self._resident_plans.clear()  # identity is what marks a part unchanged: forget it with them
        for layer in self.info.layers:
            drop = drops.get(layer.index, "none")
            if drop == "layer":
                continue
            names = self._part_names[layer.index]
            named = tuple((n, overrides[n]) for n in names if n in overrides) if overrides else ()
            key = (layer.index, entries.get(layer.index), config.default, named, drop)
            plan = plans.get(key)
            if plan is None:
                removed = replaced_modules(layer, drop)
                plan = plans[key] = self._plan_of(config, [n for n in names if not is_replaced(n, removed)])
            yield layer.index, plan
        names = self._part_names[None]
        named = tuple((n, overrides[n]) for n in names if n in overrides) if overrides else ()
        key = (None, config.embedding, config.head, named)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = self._plan_of(config, names)
        yield None, plan

    def _plan_of(self, config: CompressionConfig, names) -> tuple[tuple[str, TensorSetting, str], ...]:
        settings = [config.setting_for(name, self.info) for name in names]
        return tuple((name, setting, setting.key()) for name, setting in zip(names, settings))

    def _swap_in(self, source: str, setting: TensorSetting, key: str, copies=None, in_place: bool | None = None) -> int:
        """Make `source`'s resident weight its level under `setting`; returns 1 when it was compressed
        anew (neither a precomputed level nor in the weight cache), else 0. copies: (destinations,
        sources) lists the caller copies in one batch (None: copied now); in_place: _copy_levels()."""
        level = self._level_memo.get((source, key))
        if level is None and self._levels is not None:
            level = self._level(source, setting, key)
        if level is not None:
            weight, shared = level
            if shared and not (self._copy_levels() if in_place is None else in_place):
                self._params[source].data = weight  # a pointer swap; restore() points it back at its own storage
                self._pointed.add(source)
            else:
                self._write_own(source, weight, copies)
            self._resident[source] = key
            return 0
        param = self._params[source]
        compressed = 0
        weight = self._cache.get((source, key))
        if weight is None:
            act = stats_for(self.activation_stats, source, setting)
            original = self._originals[source].to(param.device)
            # compress_model's own steps on the model's device, so the weights are bit-identical.
            weight = compress_tensor(original, setting, act).dequantized().to(device=param.device, dtype=param.dtype)
            self._cache.put((source, key), weight)
            compressed = 1
            if (source, key) in self._seen:
                self._recomputed += 1
            self._seen.add((source, key))
        self._write_own(source, weight, copies)
        self._resident[source] = key
        return compressed

    def _level(self, source: str, setting: TensorSetting, key: str) -> tuple[torch.Tensor, bool] | None:
        """(weight, shared) of the level database's entry, or None; device-tier levels (stable tensors)
        are memoised by (tensor, setting key), so the next swap to them is one dict lookup."""
        levels = self._levels
        if (source, setting) not in levels:
            return None
        level = levels.weight(source, setting)
        if level[1]:
            self._level_memo[(source, key)] = level
        return level

    def _copy_levels(self) -> bool:
        """CUDA graphs replay the parameters' addresses recorded at capture: levels are copied in place."""
        if self.level_copies is not None:
            return self.level_copies
        return self.forward.uses_cuda_graphs

    def _write_own(self, name: str, weight: torch.Tensor, copies=None) -> None:
        """Copy `weight` into the parameter's own storage (pointing it back there first); with copies
        ((destinations, sources) lists), queue the copy for the caller's batched copy instead."""
        if name in self._pointed:
            self._params[name].data = self._own[name]
            self._pointed.discard(name)
        own = self._own[name]
        if copies is None:
            own.copy_(weight)
        else:
            copies[0].append(own)
            copies[1].append(weight)
        self._own_dirty.add(name)

    def _unpoint(self, copies) -> None:
        """Point every parameter that points at a level back at its own storage, queueing the level's
        copy into it (switching to in-place copies keeps the resident model as it is)."""
        for name in list(self._pointed):
            self._write_own(name, self._params[name].data, copies)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original weights and modules back: the model is the uncompressed one again. Levels
        the parameters pointed at are left as they are."""
        self._set_drops({})
        self._resident_plans.clear()
        self._pointed.clear()
        for name, key in self._resident.items():
            if key is not None:
                param, own = self._params[name], self._own[name]
                if param.data_ptr() != own.data_ptr():
                    param.data = own
                if name in self._own_dirty:
                    own.copy_(self._originals[name])
                    self._own_dirty.discard(name)
                self._resident[name] = None

    # --- materialisation ------------------------------------------------------------------------------

    def _set_drops(self, drops: Mapping[int, str]) -> None:
        """Swap zero modules in for the dropped blocks and the originals back for the others. A
        dropped layer has both blocks zeroed: in a residual block that is the identity."""
        wanted = set()
        for index, drop in drops.items():
            if drop in ("attention", "layer"):
                wanted.add((index, "attention"))
            if drop in ("mlp", "layer"):
                wanted.add((index, "mlp"))
        for block in [b for b in self._replaced if b not in wanted]:
            for path, module in self._replaced.pop(block).items():
                self.model.set_submodule(path, module)
        for index, block in sorted(wanted - set(self._replaced)):
            layer = self.info.layers[index]
            try:
                paths = replaced_modules(layer, block)
            except EvoError as exc:
                raise EvoError(f"cannot drop layer {index} of this model by zeroing its blocks: {exc}") from None
            self._replaced[(index, block)] = {path: self.model.get_submodule(path) for path in paths}
            apply_block_drop(self.model, layer, block)

    def _check_layer_drops(self, ids: torch.Tensor) -> None:
        """Once per evaluator, on the first config that drops whole layers: each such layer must
        pass its input through unchanged, or zeroing is not removing it (post-norm blocks)."""
        dropped = sorted(i for i, block in self._replaced if block == "attention" and (i, "mlp") in self._replaced)
        if not dropped or self._layer_drops_checked:
            return
        layers = self.model.get_submodule(self.info.layers_path)
        failures: list[int] = []

        def hook(index):
            def check(module, args, kwargs, output):
                hidden = args[0] if args else kwargs.get("hidden_states")
                out = output[0] if isinstance(output, (tuple, list)) else output
                if hidden is None or not torch.equal(hidden, out):
                    failures.append(index)

            return check

        run_forward(self.model, ids[:1, : min(8, ids.shape[1])], 1,
                    hooks=[Hook(layers[i], hook(i), with_kwargs=True) for i in dropped])
        if failures:
            raise EvoError(
                f"layer {failures[0]} of {self.info.architecture} does not reduce to the identity when its attention "
                "and MLP output zero (not a pre-norm residual block), so dropped layers cannot be evaluated on the "
                "resident model: use a search space without layer drops"
            )
        self._layer_drops_checked = True

    # --- metrics ------------------------------------------------------------------------------------------

    def micro_batch(self, sequences: int, tokens: int) -> int:
        """Sequences per forward: fitness.batch_size, or the whole stage when its logits fit."""
        if self.fitness.batch_size is not None:
            return self.fitness.batch_size
        from evo.evaluate.resident import available_bytes, logits_bytes

        free = available_bytes(self.device)
        dtype_bytes = next(iter(self._params.values())).element_size()
        per_sequence = logits_bytes(1, tokens, self.info.vocab_size, dtype_bytes)
        if free is None:
            return sequences
        return max(1, min(sequences, int(free * FORWARD_MEMORY_SHARE) // max(per_sequence, 1)))

    def _batches(self, ids: torch.Tensor, progress: ProgressCallback | None):
        self._check_layer_drops(ids)
        size = self.micro_batch(*ids.shape)
        return forward_batches(self.model, ids, size, progress=per_batch(progress, size))

    def _kl(self, ids: torch.Tensor, progress: ProgressCallback | None) -> float:
        """Mean KL over ids [n, L] (the first n calibration sequences cut to L tokens): micro-batches
        of micro_batch() sequences (the whole stage when it fits), each batch's KL summed on the
        device; the host reads the total once."""
        self._check_layer_drops(ids)
        sequences, tokens = ids.shape
        size = self.micro_batch(sequences, tokens)
        batches = -(-sequences // size)
        total = None
        if progress:
            progress(0, batches)
        for number, start in enumerate(range(0, sequences, size)):
            rows = slice(start, min(start + size, sequences))
            # dropped blocks are swapped modules: compiled graphs would recompile per drop pattern
            part = self.forward.kl_sum_of(self._device_ids[rows, :tokens],
                                          *(ref[rows, :tokens] for ref in self._reference_rows),
                                          eager=bool(self._replaced))
            total = part if total is None else total + part
            if progress:
                progress(number + 1, batches)
        return float(total) / (sequences * tokens)

    def _perplexity(self, ids: torch.Tensor, progress: ProgressCallback | None) -> float:
        sequences, tokens = ids.shape
        total = 0.0
        for _, batch, logits in self._batches(ids, progress):
            for row in range(batch.shape[0]):  # evaluate.perplexity's reduction, row by row
                total += nll_sum(logits[row], batch[row])
        return math.exp(total / (sequences * (tokens - 1)))
