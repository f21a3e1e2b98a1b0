"""The memory plan of a search: where the base weights, the levels, the forward pass, the dense
reference and the per-layer statistics live, computed from the model's shapes alone (before any
weight is read), printed at the start of `evo search` and enforced.

The plan keeps the base weights resident on the evaluation device (bf16 on CUDA), the levels — every
(tensor, setting) the space allows — in tiers filled layer by layer: dequantized on the device up to
a cap, then dequantized in host RAM, then as codes in host RAM, then as codes in the run directory
(safetensors, memory-mapped, fetched a layer at a time); the dense reference as its top-k on the host
(its rows copied to the device); activation statistics and Hessians one safetensors file per layer
on disk. A model whose working set for ONE layer (the resident embedding and head, one layer's
weights and its candidate's, one sequence's forward) does not fit the device is refused before
anything loads, with the numbers; so is one whose base weights do not fit (evo keeps them resident).

`plan_memory` is a pure function of a `MemoryInputs`; `plan_for_run` reads the shapes from the
model's config (built on the meta device: no weights; a GGUF or hub model is planned right after it
loads, before any other work) and the free memory of device, host and disk.
A level store takes its tier capacities from `MemoryPlan.cap(tier)` (bytes) and the tier of a layer's
levels from `MemoryPlan.tier_of(layer)`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from evo.errors import EvoError
from evo.types import ATTENTION_ROLES, MLP_ROLES, ModelInfo

TIERS = ("device", "host", "codes", "disk")  # where a layer's levels live, fastest first
DEVICE_SHARE = 0.85  # of the device memory left after the base weights and the forward (evaluate/resident.py)
HOST_SHARE = 0.5  # of the available host RAM: the machine runs other things
DISK_SHARE = 0.9  # of the free disk under the run directory
FORWARD_SHARE = 0.25  # of the free device memory one micro-batch's logits may take (the evaluator's rule)
GROUP_OVERHEAD_BYTES = 4  # per group of a quantized level: an fp16 scale and an fp16 zero point
ACTIVATION_WIDTHS = (6, 3)  # hidden-size and intermediate-size vectors per token alive in one layer's forward
GB = 10**9


@dataclass(frozen=True)
class MemoryInputs:
    """What the plan depends on.

    info: the model's shapes (ModelInfo, e.g. from a meta-device model). dtype_bytes: bytes per
    weight of the evaluation dtype. levels: (bits, group_size) of each setting a decoder linear may
    take (the space's unit settings); embedding_levels: the embedding's (and an untied head's).
    sequences, tokens: the calibration batch. top_k, tail_samples: the dense reference's width.
    device: "cuda" or "cpu"; *_free_bytes: memory free now (disk None: unknown, not planned).
    """

    info: ModelInfo
    dtype_bytes: int
    levels: tuple[tuple[int, int | None], ...]
    embedding_levels: tuple[tuple[int, int | None], ...]
    sequences: int
    tokens: int
    top_k: int
    tail_samples: int
    device: str
    device_free_bytes: int
    host_free_bytes: int
    disk_free_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise EvoError(f"memory plan device {self.device!r}: use cuda or cpu")
        for name in ("dtype_bytes", "sequences", "tokens", "top_k"):
            if getattr(self, name) < 1:
                raise EvoError(f"MemoryInputs.{name} must be at least 1")


@dataclass(frozen=True)
class LevelTier:
    """One tier of the level database: its capacity, the bytes planned there, the layers it holds."""

    name: str
    cap_bytes: int | None  # None: unbounded (the disk when its free space is unknown)
    planned_bytes: int
    layers: tuple[int, ...]
    embedding: bool = False  # the embedding's (and head's) levels are here


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    dtype_bytes: int
    base_bytes: int  # every weight, resident on the device
    non_decoder_bytes: int  # embedding, head, final norm
    layer_bytes: int  # the largest decoder layer's weights
    layer_working_set_bytes: int  # the least the device must hold to evaluate layer by layer
    micro_batch: int  # sequences per forward
    forward_bytes: int  # one micro-batch's logits and a layer's activations
    reference_bytes: int  # the dense top-k reference, on the host (and a copy of its rows on the device)
    level_bytes: int  # every level, dequantized
    level_code_bytes: int  # every level, as codes (approximate: fp16 scale and zero per group)
    levels_per_linear: int
    hessian_bytes_per_layer: int  # E[x xᵀ] per distinct linear input, float32, on disk
    stats_bytes_per_layer: int
    layers: int
    device_free_bytes: int
    host_free_bytes: int
    disk_free_bytes: int | None
    host_bytes: int  # what the host holds besides levels: the CPU copy of the weights, the reference
    tiers: tuple[LevelTier, ...] = field(default=())
    refusal: str | None = None

    def cap(self, tier: str) -> int:
        """The byte capacity of a level tier (0 for a tier the plan does not use)."""
        for t in self.tiers:
            if t.name == tier:
                return t.cap_bytes if t.cap_bytes is not None else 2**63 - 1
        if tier not in TIERS:
            raise EvoError(f"unknown level tier {tier!r}: use one of {', '.join(TIERS)}")
        return 0

    def tier_of(self, layer: int) -> str:
        for t in self.tiers:
            if layer in t.layers:
                return t.name
        raise EvoError(f"layer {layer} is not in the memory plan ({self.layers} layers)")

    def check(self) -> None:
        """Raise the plan's refusal (one line with the numbers), if it has one."""
        if self.refusal is not None:
            raise EvoError(self.refusal)

    def table(self) -> str:
        """The plan as a few aligned lines, for the start of a run."""
        where = "GPU" if self.device == "cuda" else "host"
        rows = [
            ("base weights (resident)", self.base_bytes, where),
            ("one layer's working set", self.layer_working_set_bytes, where),
            (f"forward ({self.micro_batch} seq/micro-batch)", self.forward_bytes, where),
            ("dense reference (top-k)", self.reference_bytes, f"host, rows on {where}"),
            ("host copy of the weights", self.base_bytes, "host"),
            (f"levels ({self.levels_per_linear}/linear, dequantized)", self.level_bytes, "tiers below"),
            ("levels as codes", self.level_code_bytes, ""),
            ("Hessians, all layers", self.hessian_bytes_per_layer * self.layers, "disk, per layer"),
            ("activation statistics", self.stats_bytes_per_layer * self.layers, "disk"),
        ]
        lines = [f"memory plan ({self.device}, {self.dtype_bytes} bytes/weight; free: {where} "
                 f"{_gb(self.device_free_bytes)}" + (f", host {_gb(self.host_free_bytes)}" if self.device == "cuda"
                                                     else "") +
                 (f", disk {_gb(self.disk_free_bytes)}" if self.disk_free_bytes is not None else "") + ")"]
        lines += [f"  {name:<38} {_gb(size):>10}  {place}" for name, size, place in rows]
        for tier in self.tiers if self.refusal is None else ():  # a refused plan's tiers mean nothing
            cap = "unbounded" if tier.cap_bytes is None else f"cap {_gb(tier.cap_bytes)}"
            held = ", ".join(part for part in (_ranges(tier.layers), "embedding" if tier.embedding else "") if part)
            lines.append(f"  levels in {tier.name:<28} {_gb(tier.planned_bytes):>10}  {cap}; layers {held or '-'}")
        return "\n".join(lines)


def _gb(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / GB:.2f} GB" if size >= GB // 10 else f"{size / 10**6:.2f} MB"


def _ranges(layers: tuple[int, ...]) -> str:
    if not layers:
        return ""
    parts, start = [], layers[0]
    for previous, current in zip(layers, layers[1:] + (None,)):
        if current != previous + 1:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ",".join(parts)


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _level_bytes(numel: int, levels, dtype_bytes: int, rows: int) -> tuple[int, int]:
    """(dequantized, codes) bytes of a tensor's levels."""
    dequantized = numel * dtype_bytes * len(levels)
    codes = 0
    for bits, group in levels:
        if bits >= 16:
            codes += numel * 2
        else:
            groups = rows * math.ceil((numel // max(rows, 1)) / group) if group else rows
            codes += math.ceil(numel * bits / 8) + groups * GROUP_OVERHEAD_BYTES
    return dequantized, codes


def _input_group(role: str) -> str:
    if role in ("attn_q", "attn_k", "attn_v", "attn_qkv"):
        return "attn_in"
    if role in ("mlp_gate", "mlp_up", "mlp_gate_up"):
        return "mlp_in"
    return role


def plan_memory(inputs: MemoryInputs) -> MemoryPlan:
    """The memory plan of `inputs` (pure: the same inputs give the same plan)."""
    info, b = inputs.info, inputs.dtype_bytes
    layer_sizes = []
    layer_levels = []  # (dequantized, codes) per layer
    hessians = stats = 0
    widest = max((lin.shape[0] for layer in info.layers for lin in layer.linears), default=info.hidden_size)
    for layer in info.layers:
        size = sum(_numel(lin.shape) for lin in layer.linears) + sum(_numel(s) for _, s in layer.other_tensors)
        layer_sizes.append(size * b)
        dq = cq = 0
        inputs_seen: dict[str, int] = {}
        for lin in layer.linears:
            d, c = _level_bytes(_numel(lin.shape), inputs.levels, b, lin.shape[0])
            dq, cq = dq + d, cq + c
            if lin.role in ATTENTION_ROLES or lin.role in MLP_ROLES:
                inputs_seen.setdefault(_input_group(lin.role), lin.shape[1])
        layer_levels.append((dq, cq))
        hessians = max(hessians, sum(4 * n * n for n in inputs_seen.values()))
        stats = max(stats, sum(2 * 4 * n for n in inputs_seen.values()))
    non_decoder = sum(_numel(t.shape) for t in info.non_decoder) * b
    embedding_levels = (0, 0)
    for tensor in info.non_decoder:
        if tensor.role in ("embedding", "head"):
            d, c = _level_bytes(_numel(tensor.shape), inputs.embedding_levels, b, tensor.shape[0])
            embedding_levels = (embedding_levels[0] + d, embedding_levels[1] + c)
    base = non_decoder + sum(layer_sizes)
    largest_layer = max(layer_sizes, default=0)
    vocab, tokens = info.vocab_size, inputs.tokens
    per_position = inputs.top_k * 12 + 4 + inputs.tail_samples * 12 + 4  # long ids + float32 log-probs
    reference = inputs.sequences * tokens * per_position

    def forward(sequences: int) -> int:
        logits = sequences * tokens * vocab * (b + 8)  # the logits and two float32 copies (evaluate/resident.py)
        activations = sequences * tokens * (ACTIVATION_WIDTHS[0] * info.hidden_size + ACTIVATION_WIDTHS[1] * widest) * b
        return logits + activations

    free = inputs.device_free_bytes
    per_sequence = max(inputs.tokens * vocab * (b + 8), 1)
    micro = max(1, min(inputs.sequences, int(max(free - base, 0) * FORWARD_SHARE) // per_sequence))
    working_set = non_decoder + 2 * largest_layer + forward(1) + reference // max(inputs.sequences, 1)
    level_total = sum(d for d, _ in layer_levels) + embedding_levels[0]
    code_total = sum(c for _, c in layer_levels) + embedding_levels[1]
    host_fixed = base + reference  # the CPU copy of the weights the evaluator restores from, the reference
    if inputs.device == "cpu":
        host_fixed += base + forward(micro)  # the resident model itself lives in host RAM too

    refusal = None
    name = info.model_id or info.architecture
    resident = base * (2 if inputs.device == "cpu" else 1)  # on the CPU the restore copy shares the same RAM
    if working_set > free:
        refusal = (f"model {name} cannot be evaluated on {inputs.device}: one layer's working set needs "
                   f"{_gb(working_set)} (embedding and head {_gb(non_decoder)}, a layer and its candidate "
                   f"{_gb(2 * largest_layer)}, one sequence's forward {_gb(forward(1))}) but {_gb(free)} is free: "
                   f"use a device with more memory, a shorter --seq-len or a smaller model")
    elif resident + forward(1) + reference > free:
        refusal = (f"model {name} does not fit on {inputs.device}: its base weights ({_gb(resident)}"
                   f"{' with the copy evo restores from' if inputs.device == 'cpu' else ''}) plus one sequence's "
                   f"forward ({_gb(forward(1))}) need {_gb(resident + forward(1) + reference)} resident but "
                   f"{_gb(free)} is free (evo keeps the base weights resident): use a device with more memory "
                   f"or a smaller --dtype")
    elif inputs.device == "cuda" and base + reference > inputs.host_free_bytes:
        refusal = (f"model {name} needs {_gb(base + reference)} of host RAM (a copy of its weights and the dense "
                   f"reference) but {_gb(inputs.host_free_bytes)} is available: free memory or use a larger machine")

    # level tiers: dequantized on the device, dequantized on the host, codes on the host, codes on disk
    device_cap = 0
    if inputs.device == "cuda":
        device_cap = max(0, int((free - base - forward(micro) - reference) * DEVICE_SHARE))
    host_room = max(0, int((inputs.host_free_bytes - host_fixed) * HOST_SHARE))
    caps = {"device": device_cap, "host": host_room if inputs.device == "cuda" else 0,
            "codes": host_room, "disk": None if inputs.disk_free_bytes is None
            else int(inputs.disk_free_bytes * DISK_SHARE)}
    if inputs.device == "cpu":  # the device is the host: dequantized levels there, codes in what is left
        caps["device"], caps["host"] = host_room, 0
    used = dict.fromkeys(TIERS, 0)
    placed: dict[str, list[int]] = {t: [] for t in TIERS}
    embedding_tier = None
    units = [(-1, embedding_levels)] + list(enumerate(layer_levels))  # the embedding first: every forward reads it
    for index, (dq, cq) in units:
        if dq + cq == 0:
            continue
        for tier in TIERS:
            need = dq if tier in ("device", "host") else cq
            cap = caps[tier]
            if tier == "codes" and used["host"]:  # codes share the host RAM with the dequantized host tier
                cap = max(0, caps["codes"] - used["host"])
            if cap is None or used[tier] + need <= cap:
                used[tier] += need
                if index < 0:
                    embedding_tier = tier
                else:
                    placed[tier].append(index)
                break
        else:
            if refusal is None:
                refusal = (f"model {name}'s levels ({_gb(code_total)} as codes) do not fit the host RAM and the "
                           f"disk of the run directory ({_gb(inputs.disk_free_bytes)} free): free disk space or "
                           "use a space with fewer settings")
            break
    tiers = tuple(LevelTier(t, caps[t], used[t], tuple(placed[t]), embedding_tier == t) for t in TIERS
                  if caps[t] != 0 or used[t])
    return MemoryPlan(device=inputs.device, dtype_bytes=b, base_bytes=base, non_decoder_bytes=non_decoder,
                      layer_bytes=largest_layer, layer_working_set_bytes=working_set, micro_batch=micro,
                      forward_bytes=forward(micro), reference_bytes=reference, level_bytes=level_total,
                      level_code_bytes=code_total, levels_per_linear=len(inputs.levels),
                      hessian_bytes_per_layer=hessians, stats_bytes_per_layer=stats, layers=len(info.layers),
                      device_free_bytes=free, host_free_bytes=inputs.host_free_bytes,
                      disk_free_bytes=inputs.disk_free_bytes, host_bytes=host_fixed, tiers=tiers, refusal=refusal)


def space_levels(space) -> tuple[tuple[tuple[int, int | None], ...], tuple[tuple[int, int | None], ...]]:
    """(bits, group_size) of a space's unit settings, and of its embedding/head settings. A GGUF
    space's llama.cpp types count as their bits per weight rounded up (block scales included), with
    no separate group overhead: an upper bound of their codes, close enough for a plan."""
    import itertools

    if getattr(space, "format", None) == "gguf":
        from evo.gguf.quants import quant_type

        def as_levels(types):
            return tuple((math.ceil(quant_type(t).bits_per_weight), None) for t in types)

        return as_levels(space.types), as_levels(space.embedding_types + space.head_types)

    names = [name for name, _ in space.unit_genes]
    units = tuple((s.bits, s.group_size) for s in (
        space.setting(dict(zip(names, values))) for values in itertools.product(*(v for _, v in space.unit_genes))))
    embedding = tuple((s.bits, s.group_size) for s in (space.setting({"bits": bits}, key="embedding.bits")
                                                        for bits in space.embedding_bits))
    return units, embedding


def inputs_for(info: ModelInfo, space, *, dtype_bytes: int, sequences: int, tokens: int, top_k: int,
               tail_samples: int, device: str, run_dir: Path | None = None,
               device_free_bytes: int | None = None, host_free_bytes: int | None = None) -> MemoryInputs:
    """MemoryInputs of a model and space, with the free memory read now where not given."""
    from evo.evaluate.resident import available_bytes

    units, embedding = space_levels(space)
    host = host_free_bytes if host_free_bytes is not None else (available_bytes("cpu") or 0)
    if device_free_bytes is None:
        device_free_bytes = (available_bytes("cuda") or 0) if device == "cuda" else host
    disk = None
    if run_dir is not None:
        probe = Path(run_dir).resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        disk = shutil.disk_usage(probe).free
    return MemoryInputs(info=info, dtype_bytes=dtype_bytes, levels=units, embedding_levels=embedding,
                        sequences=sequences, tokens=tokens, top_k=min(top_k, info.vocab_size),
                        tail_samples=tail_samples, device=device, device_free_bytes=int(device_free_bytes),
                        host_free_bytes=int(host), disk_free_bytes=disk)


def plan_for_run(spec, space, *, device: str, run_dir: Path | None = None, trust_remote_code: bool = False,
                 info: ModelInfo | None = None) -> MemoryPlan | None:
    """The plan of a search spec, from `info` or else its model's config (a local directory's, no
    weights read). None when neither is at hand (a GGUF or hub model before it loads)."""
    import torch

    from evo.evaluate.reference import DEFAULT_TAIL_SAMPLES
    from evo.modelio import describe_config, resolve_device

    if info is None:
        info = describe_config(spec.model, trust_remote_code=trust_remote_code)
    if info is None:
        return None
    kind = resolve_device(device).type
    dtype_bytes = torch.empty((), dtype=getattr(torch, spec.dtype)).element_size()
    return plan_memory(inputs_for(info, space, dtype_bytes=dtype_bytes, sequences=spec.samples, tokens=spec.seq_len,
                                  top_k=spec.top_k, tail_samples=DEFAULT_TAIL_SAMPLES, device=kind, run_dir=run_dir))
