"""How an artifact's weights stay in memory once loaded: dense, bit-packed codes, coded frames
decoded on demand, or a speed-adaptive mix (Double Compression's partial decompression).

evo.compress.artifact.load(resident=...) calls attach() while it builds the model and start() once the
model is on its device; the returned ResidentRuntime is also `model.evo_runtime`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from evo.constants import MB, RESIDENT_MODES
from evo.errors import EvoError
from evo.runtime import kernels
from evo.runtime.modules import dequantize_to, LazyEmbedding, LazyLinear, PackedEmbedding, PackedLinear, PackedWeight
from evo.runtime.store import CodedWeight, DecodedWeights


@dataclass(frozen=True)
class ResidentOptions:
    """mode: one of RESIDENT_MODES. max_resident_mb bounds the decoded weights held ("compressed":
    the LRU, default 0 = only the layer running and those prefetched; "auto": the pinned layers
    plus the LRU). target_tokens_per_s ("auto"): pin layers until the predicted speed reaches it.
    prefetch: layers decoded ahead by a background thread ("compressed", "auto")."""

    mode: str = "dense"
    max_resident_mb: float | None = None
    target_tokens_per_s: float | None = None
    prefetch: int = 1

    def __post_init__(self) -> None:
        if self.mode not in RESIDENT_MODES:
            raise EvoError(f"resident={self.mode!r} is unknown; use one of {list(RESIDENT_MODES)}")
        for name in ("max_resident_mb", "target_tokens_per_s"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise EvoError(f"{name}={value!r} must be a non-negative number")
            if self.mode not in ("compressed", "auto"):
                raise EvoError(f"{name} applies to resident='compressed' or 'auto', not {self.mode!r}")
        if self.target_tokens_per_s is not None and self.mode != "auto":
            raise EvoError("target_tokens_per_s applies to resident='auto' only")
        if self.mode == "auto" and self.max_resident_mb is None and self.target_tokens_per_s is None:
            raise EvoError("resident='auto' needs max_resident_mb or target_tokens_per_s (or both)")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise EvoError(f"prefetch={self.prefetch!r} must be a non-negative integer")

    @property
    def capacity_bytes(self) -> int | None:
        return None if self.max_resident_mb is None else int(self.max_resident_mb * MB)


@dataclass(frozen=True)
class LayerCost:
    """One lazily decoded weight: what keeping it coded saves and what decoding it costs."""

    key: str
    decoded_bytes: int
    frame_bytes: int
    decode_seconds: float

    @property
    def saved_bytes(self) -> int:
        return self.decoded_bytes - self.frame_bytes

    @property
    def seconds_per_saved_byte(self) -> float:
        return math.inf if self.saved_bytes <= 0 else self.decode_seconds / self.saved_bytes


@dataclass(frozen=True)
class AutoPlan:
    """The speed-adaptive plan: which weights stay decoded (pinned), and the speed it predicts.

    compute_seconds is one single-token forward pass without its decoding time; the prediction
    adds the decode time of every weight left coded (prefetch can hide part of it).
    """

    costs: tuple[LayerCost, ...]  # in the order the forward pass uses them
    pinned: tuple[str, ...]  # most decode time per byte saved first
    capacity_bytes: int | None
    target_tokens_per_s: float | None
    compute_seconds: float

    @property
    def pinned_bytes(self) -> int:
        pinned = set(self.pinned)
        return sum(c.decoded_bytes for c in self.costs if c.key in pinned)

    @property
    def coded_frame_bytes(self) -> int:
        pinned = set(self.pinned)
        return sum(c.frame_bytes for c in self.costs if c.key not in pinned)

    @property
    def decode_seconds(self) -> float:
        pinned = set(self.pinned)
        return sum(c.decode_seconds for c in self.costs if c.key not in pinned)

    @property
    def predicted_tokens_per_s(self) -> float:
        return 1.0 / max(self.compute_seconds + self.decode_seconds, 1e-12)

    def summary(self) -> str:
        target = f", target {self.target_tokens_per_s:g} tokens/s" if self.target_tokens_per_s is not None else ""
        cap = f"cap {self.capacity_bytes / MB:.1f} MB" if self.capacity_bytes is not None else "no cap"
        return (
            f"auto plan ({cap}{target}): {len(self.pinned)}/{len(self.costs)} weights kept decoded "
            f"({self.pinned_bytes / MB:.1f} MB), {len(self.costs) - len(self.pinned)} kept coded "
            f"({self.coded_frame_bytes / MB:.1f} MB of frames, {self.decode_seconds * 1e3:.1f} ms of decoding per "
            f"forward pass); compute {self.compute_seconds * 1e3:.1f} ms → predicted "
            f"{self.predicted_tokens_per_s:.1f} tokens/s"
        )


def plan_pinned(
    costs: tuple[LayerCost, ...], capacity_bytes: int | None, target_tokens_per_s: float | None, compute_seconds: float
) -> tuple[str, ...]:
    """Greedy: the weights whose decoding costs most per byte saved are pinned first, each one
    that still fits the cap, until the predicted speed reaches the target (when one is given)."""
    order = sorted(costs, key=lambda c: (-c.seconds_per_saved_byte, c.key))
    pinned: list[str] = []
    used = 0
    remaining = sum(c.decode_seconds for c in costs)
    for cost in order:
        if target_tokens_per_s is not None and 1.0 / max(compute_seconds + remaining, 1e-12) >= target_tokens_per_s:
            break
        if capacity_bytes is not None and used + cost.decoded_bytes > capacity_bytes:
            continue
        pinned.append(cost.key)
        used += cost.decoded_bytes
        remaining -= cost.decode_seconds
    return tuple(pinned)


@dataclass(frozen=True)
class ResidentMemory:
    """Bytes of weights resident now. tensor_bytes: unique parameters and buffers of the model
    (packed codes included); frame_bytes: coded frames kept; pinned/cached_bytes: decoded weights.
    scratch_bytes ("codes"): the calling thread's reused dequantization buffers (the largest matrix
    in the compute dtype and a block of codes), working memory like activations: not in total_bytes."""

    tensor_bytes: int
    packed_bytes: int
    frame_bytes: int
    pinned_bytes: int
    cached_bytes: int
    scratch_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.tensor_bytes + self.frame_bytes + self.pinned_bytes + self.cached_bytes


def model_tensor_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the model's parameters and buffers, of which bit-packed) counting shared storage once."""
    seen: set[tuple[torch.device, int]] = set()
    total = packed = 0
    packed_ids = {
        id(t)
        for m in model.modules()
        if isinstance(m, PackedWeight)
        for t in (m.codes, m.scales, m.zeros)
        if t is not None
    }
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        size = tensor.untyped_storage().nbytes()
        total += size
        if id(tensor) in packed_ids:
            packed += size
    return total, packed


def resident_memory(model: nn.Module) -> ResidentMemory:
    """The weight bytes a model holds now, whatever its resident mode (a plain model counts its tensors)."""
    tensor_bytes, packed = model_tensor_bytes(model)
    runtime = getattr(model, "evo_runtime", None)
    store = runtime.store if runtime is not None else None
    if store is None:
        scratch = kernels.scratch_bytes() if packed else 0
        return ResidentMemory(tensor_bytes, packed, 0, 0, 0, scratch)
    return ResidentMemory(tensor_bytes, packed, store.frame_bytes, store.pinned_bytes, store.cached_bytes)


@dataclass
class ResidentRuntime:
    """What a non-dense load attached to the model: its options, the tensors it took over from
    the dense loader, the store of coded weights ("compressed", "auto") and the auto plan."""

    options: ResidentOptions
    tensor_names: frozenset[str]
    store: DecodedWeights | None = None
    plan: AutoPlan | None = None
    replaced: dict[str, str] = field(default_factory=dict)  # module path → tensor name

    def memory(self, model: nn.Module) -> ResidentMemory:
        return resident_memory(model)

    @torch.no_grad()
    def start(self, model: nn.Module) -> None:
        """Called once the model is whole and on its device: plans "auto" by one measured pass."""
        if self.options.mode != "auto" or self.store is None:
            return
        store = self.store
        store.prefetch, store.capacity_bytes = 0, 0
        first_use: dict[str, float] = {}
        decode = store.decode

        def timed(key: str) -> torch.Tensor:
            start = time.perf_counter()
            weight = decode(key)
            first_use.setdefault(key, time.perf_counter() - start)
            return weight

        store.decode = timed  # type: ignore[method-assign]
        try:
            device = next(model.parameters()).device
            start = time.perf_counter()
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the pass is queued, not done, when the call returns
            wall = time.perf_counter() - start
            for key in store.coded:  # a weight the pass did not use is still timed
                if key not in first_use:
                    timed(key)
        finally:
            del store.decode
        seconds_in_pass = store.stats().decode_seconds
        compute = max(wall - seconds_in_pass, 0.0)
        order = [k for k in store.order if k in store.coded]
        order += [k for k in store.coded if k not in order]
        costs = tuple(
            LayerCost(k, store.coded[k].decoded_bytes, store.coded[k].frame_bytes, first_use[k]) for k in order
        )
        pinned = plan_pinned(costs, self.options.capacity_bytes, self.options.target_tokens_per_s, compute)
        for key in pinned:
            store.pin(key)
        cap = self.options.capacity_bytes
        store.capacity_bytes = 0 if cap is None else cap - sum(c.decoded_bytes for c in costs if c.key in pinned)
        store.prefetch = self.options.prefetch
        store.reset_stats()
        self.plan = AutoPlan(costs, pinned, cap, self.options.target_tokens_per_s, compute)


def attach(
    model: nn.Module,
    manifest,
    encoded: dict,
    *,
    path,
    options: ResidentOptions,
    dtype: torch.dtype,
    device: torch.device,
) -> ResidentRuntime:
    """Replace the model's nn.Linear / nn.Embedding modules whose weight the artifact stores by
    their packed ("codes") or lazily decoded ("compressed", "auto") stand-ins. Returns the names
    of the tensors taken over; load() fills the rest (norms, biases, bf16 tensors) as usual.
    `encoded` holds every tensor's frames as evo.compress.artifact.read_artifact checked them
    (sha256, every declared size against the shape); each decode checks them again."""
    from evo.compress.artifact import decode_stored_tensor

    stored = {t.name: t for t in manifest.tensors}
    names_of_param: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in stored:
            names_of_param.setdefault(id(param), name)
    store = None
    if options.mode in ("compressed", "auto"):

        def decode(coded: CodedWeight) -> torch.Tensor:
            # The dense loader's arithmetic, on the CPU, then moved: identical weights.
            quantized = decode_stored_tensor(path, stored[coded.key], coded.frames)
            return dequantize_to(quantized, dtype).to(device)

        capacity = options.capacity_bytes if options.capacity_bytes is not None else 0
        store = DecodedWeights({}, decode, capacity_bytes=capacity, prefetch=options.prefetch)
    packed: dict[str, PackedWeight] = {}
    replaced: dict[str, str] = {}
    for module_path, module in list(model.named_modules()):
        kind = type(module)
        if kind not in (nn.Linear, nn.Embedding):
            continue
        key = names_of_param.get(id(module.weight))
        if key is None:
            continue
        tensor = stored[key]
        if tuple(module.weight.shape) != tensor.shape:
            raise EvoError(
                f"artifact {path}: tensor {tensor.name} {tensor.shape} does not fit the model its config builds; "
                "re-export it"
            )
        if kind is nn.Embedding and (module.max_norm is not None or module.sparse):
            continue  # renormalising lookups write to the table; keep it dense
        if options.mode == "codes":
            if not tensor.setting.quantized:
                continue  # a bf16 matrix has no codes
            if key not in packed:
                packed[key] = PackedWeight(decode_stored_tensor(path, tensor, encoded[key].frames), dtype)
            new = (
                PackedLinear(packed[key], module.bias)
                if kind is nn.Linear
                else PackedEmbedding(packed[key], module.padding_idx)
            )
        else:
            if key not in store.coded:
                numel = math.prod(tensor.shape)
                store.coded[key] = CodedWeight(
                    key, tensor.shape, encoded[key].frames, numel * torch.empty((), dtype=dtype).element_size()
                )
            new = (
                LazyLinear(store, key, tensor.shape, module.bias)
                if kind is nn.Linear
                else LazyEmbedding(store, key, tensor.shape, module.padding_idx)
            )
        parent_path, _, child = module_path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, new)
        replaced[module_path] = key
    runtime = ResidentRuntime(options, frozenset(replaced.values()), store, None, replaced)
    model.evo_runtime = runtime
    return runtime
