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
from evo.runtime.modules import (dequantize_to, LazyEmbedding, LazyLinear, packed_nbytes, PackedEmbedding, PackedLinear,
                                 PackedWeight)
from evo.runtime.store import CodedWeight, DecodedWeights
from evo.runtime.timing import measure_pass


@dataclass(frozen=True)
class ResidentOptions:
    """mode: one of RESIDENT_MODES. max_resident_mb bounds ("compressed") the decoded weights held
    in its cache (bit-packed codes, or dense tensors for bf16 matrices), default 0 = only the layer
    running and those prefetched; ("auto") everything the
    weights it takes over hold: coded frames, bit-packed codes, decoded weights and the cache.
    target_tokens_per_s ("auto"): move weights to faster forms until the predicted speed reaches it.
    prefetch: layers decoded ahead, each by its own background thread ("compressed", "auto")."""

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


# The forms a weight taken over by "auto" can be held in, smallest first.
TIERS = ("frames", "codes", "decoded")


@dataclass(frozen=True)
class LayerCost:
    """One weight "auto" takes over: bytes held and seconds per forward pass in each form: coded
    frames decoded on use into bit-packed codes that are then dequantized (decode_seconds +
    codes_seconds), bit-packed codes dequantized on use ("codes" mode's kernel, codes_seconds), or
    decoded (decoded_bytes: the dense matrix). codes_bytes/codes_seconds are None for a matrix
    without codes (kept in bf16): its frames decode to the dense matrix directly."""

    key: str
    decoded_bytes: int
    frame_bytes: int
    decode_seconds: float
    codes_bytes: int | None = None
    codes_seconds: float | None = None

    def option(self, tier: str) -> tuple[int, float] | None:
        """(bytes held, seconds per pass) in `tier`, or None where the tier does not exist."""
        if tier == "frames":
            return self.frame_bytes, self.decode_seconds + (self.codes_seconds or 0.0)
        if tier == "codes":
            return None if self.codes_bytes is None else (self.codes_bytes, self.codes_seconds or 0.0)
        return self.decoded_bytes, 0.0


def plan_tiers(
    costs: tuple[LayerCost, ...], capacity_bytes: int | None, target_tokens_per_s: float | None, compute_seconds: float
) -> tuple[tuple[str, str], ...]:
    """Greedy multiple-choice knapsack: every weight starts as frames; the move to a larger form
    that saves the most seconds per byte added (and still fits the cap on everything held) is
    taken, again and again, until nothing fits or the predicted speed reaches the target.
    Returns the moves in the order taken, (key, tier); the last move of a key is its tier."""
    tier = {c.key: "frames" for c in costs}
    used = sum(c.frame_bytes for c in costs)
    seconds = sum(c.decode_seconds for c in costs)
    moves: list[tuple[str, str]] = []
    while True:
        if target_tokens_per_s is not None and 1.0 / max(compute_seconds + seconds, 1e-12) >= target_tokens_per_s:
            break
        best = None
        for cost in costs:
            held, spent = cost.option(tier[cost.key])
            for upper in TIERS[TIERS.index(tier[cost.key]) + 1 :]:
                option = cost.option(upper)
                if option is None:
                    continue
                added, saved = option[0] - held, spent - option[1]
                if saved <= 0 or (capacity_bytes is not None and used + added > capacity_bytes):
                    continue
                rank = (saved / added if added > 0 else math.inf, saved, cost.key, upper)
                if best is None or rank[:2] > best[0][:2] or (rank[:2] == best[0][:2] and rank[2:] < best[0][2:]):
                    best = (rank, cost, upper, added, saved)
        if best is None:
            break
        _, cost, upper, added, saved = best
        tier[cost.key] = upper
        used += added
        seconds -= saved
        moves.append((cost.key, upper))
    return tuple(moves)


@dataclass(frozen=True)
class AutoPlan:
    """The speed-adaptive plan: which weights stay decoded (pinned), which are held as bit-packed
    codes, which stay coded frames, and the speed it predicts.

    compute_seconds is one single-token forward pass without its decoding time; the prediction
    adds the decode and dequantization time of every weight left coded and the dequantization time
    of every weight held as codes (prefetch can hide part of the former).
    """

    costs: tuple[LayerCost, ...]  # in the order the forward pass uses them
    moves: tuple[tuple[str, str], ...]  # plan_tiers' moves, in the order taken
    capacity_bytes: int | None
    target_tokens_per_s: float | None
    compute_seconds: float

    @property
    def tiers(self) -> dict[str, str]:
        tiers = {c.key: "frames" for c in self.costs}
        tiers.update(dict(self.moves))
        return tiers

    def _keys(self, tier: str) -> tuple[str, ...]:
        tiers = self.tiers
        order = list(dict.fromkeys(k for k, _ in reversed(self.moves)))[::-1]  # keys in order of their last move
        return tuple(k for k in order + [c.key for c in self.costs if c.key not in order] if tiers[k] == tier)

    @property
    def pinned(self) -> tuple[str, ...]:
        return self._keys("decoded")

    @property
    def codes(self) -> tuple[str, ...]:
        return self._keys("codes")

    def _sum(self, tier: str, index: int) -> float:
        tiers = self.tiers
        return sum(c.option(tier)[index] for c in self.costs if tiers[c.key] == tier)

    @property
    def pinned_bytes(self) -> int:
        return int(self._sum("decoded", 0))

    @property
    def codes_bytes(self) -> int:
        return int(self._sum("codes", 0))

    @property
    def coded_frame_bytes(self) -> int:
        return int(self._sum("frames", 0))

    @property
    def decode_seconds(self) -> float:
        return self._sum("frames", 1) + self._sum("codes", 1)  # "frames" counts its dequantization too

    @property
    def predicted_tokens_per_s(self) -> float:
        return 1.0 / max(self.compute_seconds + self.decode_seconds, 1e-12)

    def summary(self) -> str:
        target = f", target {self.target_tokens_per_s:g} tokens/s" if self.target_tokens_per_s is not None else ""
        cap = f"cap {self.capacity_bytes / MB:.1f} MB" if self.capacity_bytes is not None else "no cap"
        n = len(self.costs)
        coded = n - len(self.pinned) - len(self.codes)
        return (
            f"auto plan ({cap}{target}): {len(self.pinned)}/{n} weights kept decoded ({self.pinned_bytes / MB:.1f} MB), "
            f"{len(self.codes)} as bit-packed codes ({self.codes_bytes / MB:.1f} MB, "
            f"{self._sum('codes', 1) * 1e3:.1f} ms of dequantization per forward pass), {coded} kept coded "
            f"({self.coded_frame_bytes / MB:.1f} MB of frames, {self._sum('frames', 1) * 1e3:.1f} ms of decoding "
            "into codes and dequantization); "
            f"compute {self.compute_seconds * 1e3:.1f} ms → predicted {self.predicted_tokens_per_s:.1f} tokens/s"
        )


@dataclass(frozen=True)
class ResidentMemory:
    """Bytes of weights resident now. tensor_bytes: unique parameters and buffers of the model
    (packed codes included); frame_bytes: coded frames kept; pinned_bytes: weights "auto" keeps
    decoded (dense); cached_bytes: the store's cache of decoded weights (bit-packed codes, dense for
    bf16 matrices). scratch_bytes (whenever codes are dequantized: "codes", "compressed", "auto"): the
    calling thread's reused dequantization buffers (the largest matrix in the compute dtype and a
    block of codes), working memory like activations: not in total_bytes."""

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
    # "codes", and "compressed"/"auto" (whose decoded codes dequantize into the same buffers)
    scratch = kernels.scratch_bytes() if packed or store is not None else 0
    if store is None:
        return ResidentMemory(tensor_bytes, packed, 0, 0, 0, scratch)
    return ResidentMemory(tensor_bytes, packed, store.frame_bytes, store.pinned_bytes, store.cached_bytes, scratch)


@dataclass
class ResidentRuntime:
    """What a non-dense load attached to the model: its options, the tensors it took over from
    the dense loader, the store of coded weights ("compressed", "auto") and the auto plan."""

    options: ResidentOptions
    tensor_names: frozenset[str]
    store: DecodedWeights | None = None
    plan: AutoPlan | None = None
    replaced: dict[str, str] = field(default_factory=dict)  # module path → tensor name
    dtype: torch.dtype | None = None

    def memory(self, model: nn.Module) -> ResidentMemory:
        return resident_memory(model)

    @torch.no_grad()
    def start(self, model: nn.Module) -> None:
        """Called once the model is whole and on its device: plans "auto" by one measured pass."""
        if self.options.mode != "auto" or self.store is None:
            return
        store = self.store
        store.prefetch, store.capacity_bytes = 0, 0
        timing = measure_pass(model, store)
        device = next(model.parameters()).device
        order = [k for k in store.order if k in store.coded]
        order += [k for k in store.coded if k not in order]
        packed = self._packed_weights(order, device)
        # Compute is what the measured pass spent outside decoding and dequantization (both timed
        # inside that pass); the per-weight costs below are steady-state timings of each form.
        compute = timing.compute_seconds
        element = torch.empty((), dtype=self.dtype).element_size()
        costs = tuple(
            LayerCost(k, math.prod(store.coded[k].shape) * element, store.coded[k].frame_bytes, timing.first_use[k],
                      *(packed[k][1:] if k in packed else (None, None)))
            for k in order
        )
        cap = self.options.capacity_bytes
        moves = plan_tiers(costs, cap, self.options.target_tokens_per_s, compute)
        self.plan = AutoPlan(costs, moves, cap, self.options.target_tokens_per_s, compute)
        tiers = self.plan.tiers
        for key in self.plan.pinned:  # the dense matrix: its codes dequantized, or a bf16 matrix decoded
            store.pin(key, packed[key][0].dequantize() if key in packed else None)
        for module_path, key in self.replaced.items():
            if tiers[key] != "codes":
                continue
            module = model.get_submodule(module_path)
            weight = packed[key][0]
            new = (PackedLinear(weight, module.bias) if isinstance(module, LazyLinear)
                   else PackedEmbedding(weight, module.padding_idx))
            parent_path, _, child = module_path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, new)
        store.forget(self.plan.codes)  # held as codes now: their frames would never be read
        held = self.plan.pinned_bytes + self.plan.codes_bytes + self.plan.coded_frame_bytes
        store.capacity_bytes = 0 if cap is None else max(cap - held, 0)
        store.prefetch = self.options.prefetch
        store.reset_stats()

    def _packed_weights(self, keys: list[str], device: torch.device) -> dict[str, tuple[PackedWeight, int, float]]:
        """key → (its bit-packed codes on `device`, their bytes, seconds of one dequantization with
        the "codes" kernel), for the quantized weights among `keys` (decoded from their frames)."""
        out = {}
        for key in keys:
            weight = self.store.decode(key)
            if not isinstance(weight, PackedWeight):
                continue  # a bf16 matrix: no codes
            weight.dequantize_scratch()  # the buffers exist from here on: the timing is the steady state
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            weight.dequantize_scratch()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out[key] = (weight, weight.nbytes, time.perf_counter() - start)
        return out


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

        def decode(coded: CodedWeight):
            # Decoded on the CPU, then moved: a quantized matrix into its bit-packed codes (what
            # "codes" holds; its forward dequantizes them exactly as the dense loader does), a bf16
            # matrix into its dense tensor (the dense loader's arithmetic).
            tensor = stored[coded.key]
            quantized = decode_stored_tensor(path, tensor, coded.frames)
            if tensor.setting.quantized:
                return PackedWeight(quantized, dtype).to(device)
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
                decoded = (packed_nbytes(tensor.shape, tensor.setting) if tensor.setting.quantized
                           else math.prod(tensor.shape) * torch.empty((), dtype=dtype).element_size())
                store.coded[key] = CodedWeight(key, tensor.shape, encoded[key].frames, decoded)
            new = (
                LazyLinear(store, key, tensor.shape, module.bias)
                if kind is nn.Linear
                else LazyEmbedding(store, key, tensor.shape, module.padding_idx)
            )
        parent_path, _, child = module_path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, new)
        replaced[module_path] = key
    runtime = ResidentRuntime(options, frozenset(replaced.values()), store, None, replaced, dtype)
    model.evo_runtime = runtime
    return runtime
