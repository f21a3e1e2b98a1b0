"""Load a local directory of safetensors shards with one copy of the model in host RAM.

The model is built with its parameters on the meta device (buffers such as rotary frequencies are
computed as usual), then every tensor's bytes are read from its shard straight into the storage it
keeps (on the CPU in the file's dtype) or into a transient one (cast to another dtype, or sent to a
GPU), shard by shard. Plain reads, not a memory map: the page cache is not counted in the process's
RSS, and nothing of a shard stays mapped after its tensors are read. transformers' own from_pretrained
maps the files and, when it casts (a float32 checkpoint loaded in bfloat16), holds up to ~1.9x the
file's bytes at its peak.

`load_streamed` returns None whenever the checkpoint is not a plain one-to-one match of the model's
state dict (renamed or fused keys, missing or unexpected tensors, quantized checkpoints, modules kept
in float32): the caller then uses transformers' loader, which knows those cases.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_HEADER_LIMIT = 100 * 2**20  # a safetensors header larger than this is not one (the format's own limit)
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are: its shard, its absolute byte range, its dtype and shape."""

    path: Path
    start: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def shard_files(directory: Path) -> list[Path] | None:
    """The checkpoint's shards in index order, or None when the directory has no safetensors checkpoint."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        names = list(dict.fromkeys(weight_map.values()))
        files = [directory / name for name in names]
        return files if files and all(f.is_file() and f.parent == directory for f in files) else None
    single = directory / SINGLE_FILE
    return [single] if single.is_file() else None


def read_header(path: Path) -> dict[str, StoredTensor] | None:
    """The tensors of one safetensors file, or None if its header is not one evo can read."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _HEADER_LIMIT:
                return None
            header = json.loads(handle.read(length))
        size = path.stat().st_size
    except (OSError, struct.error, ValueError):
        return None
    base = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(n) for n in entry["shape"])
            start, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            return None
        numel = 1
        for n in shape:
            numel *= n
        if start < 0 or end - start != numel * dtype.itemsize or base + end > size:
            return None
        tensors[name] = StoredTensor(path, base + start, base + end, dtype, shape)
    return tensors


def read_tensor(handle, stored: StoredTensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor read from an open shard, in its stored dtype: into a fresh CPU tensor, or into the
    first bytes of `scratch` (a uint8 buffer the caller reuses, so that a tensor cast or sent to a GPU
    leaves no freed block behind: the allocator kept those, ~1x the weights over a load)."""
    size = stored.end - stored.start
    raw = torch.empty(size, dtype=torch.uint8) if scratch is None else scratch[:size]
    if size:
        handle.seek(stored.start)
        view = memoryview(raw.numpy())
        got = 0
        while got < size:  # readinto may return less than asked (large reads, signals)
            n = handle.readinto(view[got:])
            if not n:
                raise OSError(f"{stored.path} ends inside a tensor")
            got += n
    return raw.view(stored.dtype).reshape(stored.shape)


def empty_model(config, *, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model of `config` with every parameter on the meta device (no weight allocated) and its
    buffers computed on the CPU, as transformers' from_config builds them in `dtype`."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    # accelerate re-creates every parameter it registers on the meta device, which undoes the ties the
    # model made while it was built: tie again, outside the context
    model.tie_weights()
    return model


def _stored_names(model: nn.Module) -> list[list[str]]:
    """The state dict's names grouped by the tensor they name (tied weights share one group)."""
    persistent = set(model.state_dict(keep_vars=True))
    groups: dict[int, list[str]] = {}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        if name in persistent:
            groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def _plan(model: nn.Module, stored: dict[str, StoredTensor]) -> list[tuple[str, list[str]]] | None:
    """(checkpoint name, the model's names it fills) for every tensor of the state dict, or None when the
    checkpoint does not match the model one to one."""
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    plan, used = [], set()
    for names in _stored_names(model):
        found = [n for n in names if n in stored]
        if not found:
            return None  # missing: transformers would initialise it (or a renaming maps it)
        source = found[0]
        target = model.get_parameter(names[0]) if _is_parameter(model, names[0]) else model.get_buffer(names[0])
        if tuple(target.shape) != stored[source].shape:
            return None
        if target.is_floating_point() != stored[source].dtype.is_floating_point:
            return None
        plan.append((source, names))
        used.update(found)
    unexpected = [n for n in stored if n not in used and not any(p.search(n) for p in ignored)]
    return None if unexpected else plan


def _is_parameter(model: nn.Module, name: str) -> bool:
    module_name, _, leaf = name.rpartition(".")
    return leaf in model.get_submodule(module_name)._parameters


def _assign(model: nn.Module, names: list[str], tensor: torch.Tensor) -> None:
    """Put `tensor` under every name of a group, as one Parameter (ties stay tied) or one buffer."""
    parameter = None
    for name in names:
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        if leaf in module._parameters:
            if parameter is None:
                parameter = nn.Parameter(tensor, requires_grad=module._parameters[leaf].requires_grad)
            module._parameters[leaf] = parameter
        else:
            module._buffers[leaf] = tensor


def load_streamed(directory: str | Path, config, *, dtype: torch.dtype, device: torch.device,
                  trust_remote_code: bool = False) -> nn.Module | None:
    """The model of a local safetensors checkpoint, loaded tensor by tensor onto `device` in `dtype`
    (floating tensors; others keep their type), in eval mode; None when the checkpoint is not one this
    path loads exactly (see the module docstring)."""
    directory = Path(directory)
    files = shard_files(directory)
    if files is None or sys.byteorder != "little" or getattr(config, "quantization_config", None):
        return None
    stored: dict[str, StoredTensor] = {}
    for path in files:
        tensors = read_header(path)
        if tensors is None:
            return None
        stored.update(tensors)
    model = empty_model(config, dtype=dtype, trust_remote_code=trust_remote_code)
    keep_fp32 = getattr(model, "_keep_in_fp32_modules_strict", None) or (
        getattr(model, "_keep_in_fp32_modules", None) if dtype == torch.float16 else None)
    if keep_fp32 and dtype != torch.float32:
        return None  # modules kept in float32 in a 16-bit model: transformers' dtype plan decides which
    plan = _plan(model, stored)
    if plan is None:
        return None
    by_file: dict[Path, list[tuple[str, list[str]]]] = {}
    for source, names in plan:
        by_file.setdefault(stored[source].path, []).append((source, names))
    def target(entry: StoredTensor) -> torch.dtype:  # floating tensors in `dtype`, others as stored
        return dtype if entry.dtype.is_floating_point else entry.dtype

    kept = {name for name, _ in plan if device.type == "cpu" and target(stored[name]) == stored[name].dtype}
    largest = max((stored[name].end - stored[name].start for name, _ in plan if name not in kept), default=0)
    scratch = torch.empty(largest, dtype=torch.uint8) if largest else None
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            for source, names in sorted(by_file.get(path, []), key=lambda item: stored[item[0]].start):
                entry = stored[source]
                if source in kept:  # read straight into the storage the model keeps
                    tensor = read_tensor(handle, entry)
                else:
                    tensor = read_tensor(handle, entry, scratch).to(device=device, dtype=target(entry), copy=True)
                _assign(model, names, tensor)
    del scratch
    model.to(device)  # the buffers not in the checkpoint (computed at build time)
    model.config.name_or_path = str(directory)
    _load_generation_config(model, directory)
    return model.eval()


def _load_generation_config(model: nn.Module, directory: Path) -> None:
    """generation_config.json beside the weights, as from_pretrained reads it."""
    if not (directory / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError):
        pass  # from_pretrained ignores an unreadable one too
