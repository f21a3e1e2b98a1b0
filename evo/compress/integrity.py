"""Checks that make loading a hostile or damaged artifact end in one EvoError line, before
anything large is read, allocated, decompressed or built.

What a manifest declares is checked against itself (layer counts, shapes, offsets, lengths), the
directory against the manifest (only regular files, no links, the recorded sizes), and config.json
against the manifest's shapes (on the meta device) before the real model is built. Frames are
checked against the shapes by evo.compress.coding.check_encoded, shared with lazy decoding.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from evo.constants import MANIFEST_FILE, MODEL_CONFIG_FILE, TENSORS_FILE
from evo.errors import EvoError

if TYPE_CHECKING:
    from evo.compress.artifact import ArtifactManifest

# A manifest lists a few frames per tensor (about 150 bytes each): a 70B model's is under 1 MB.
MAX_MANIFEST_BYTES = 64 * 2**20
# Dimensions beyond 2^31 and tensors beyond 2^40 elements (4 TB in fp32) are no real model's.
MAX_DIMENSION = 2**31
MAX_TENSOR_ELEMENTS = 2**40
MAX_TENSOR_DIMS = 8
# Real weights never compress below ~0.05 bits each (2 bits, 95 % sparsity, per-group scales);
# 1024 weights per byte of frames (0.008 bits each) is beyond any, yet lets constant ANS frames
# of a few bytes declare a huge model: refused, since decoding allocates what shapes declare.
MAX_WEIGHTS_PER_FRAME_BYTE = 1024
# An artifact holds a manifest, tensors.bin, a config and a few tokenizer files; a directory
# with far more entries is not one, and walking it should not take unbounded time.
MAX_DIRECTORY_ENTRIES = 10_000
# The frame kinds and the smallest frame (coder id, bits, a one-byte count).
FRAME_KINDS = ("codes", "scales", "zeros")
MIN_FRAME_BYTES = 3
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, what: str) -> EvoError:
    return EvoError(f"{where}: {what}; the artifact is corrupt or was tampered with: re-export it")


def _link_error(where: str, name: str) -> EvoError:
    # A link could point at /dev/zero or at a file outside the artifact; copies are cheap.
    return EvoError(f"{where}: {name} is a symbolic link; an artifact holds only regular files: copy the real file in")


def _is_count(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def validate_manifest(manifest: ArtifactManifest, where: str) -> None:
    """Every integer of the manifest in range and consistent with the others."""
    from evo.compress import coding

    drops = manifest.config.drops
    layer_drops = sorted(i for i, drop in drops.items() if drop == "layer")
    kept = manifest.kept_layers
    base = manifest.base_num_layers
    if not all(_is_count(i) for i in kept) or list(kept) != sorted(set(kept)):
        raise _fail(where, "kept_layers is not an increasing list of layer indices")
    if not kept:
        raise _fail(where, "kept_layers is empty")
    # The base model's layers are the kept ones plus the dropped ones: anything else (say 10^9)
    # would make the loader count to it.
    if base != len(kept) + len(layer_drops):
        raise _fail(
            where,
            f"base_num_layers is {base} but the artifact keeps {len(kept)} layers "
            f"and its config drops {len(layer_drops)}",
        )
    if kept[-1] >= base or any(i >= base for i in drops):
        raise _fail(where, f"a kept or dropped layer index is outside the base model's {base} layers")
    names = set()
    running = 0
    for i, tensor in enumerate(manifest.tensors):
        here = f"tensors[{i}] ({tensor.name})"
        if tensor.name in names:
            raise _fail(where, f"{here} appears twice")
        names.add(tensor.name)
        shape = tensor.shape
        if not 1 <= len(shape) <= MAX_TENSOR_DIMS or not all(_is_count(d, 1) and d <= MAX_DIMENSION for d in shape):
            raise _fail(where, f"{here} has shape {list(shape)}, not a list of 1..{MAX_TENSOR_DIMS} positive sizes")
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise _fail(where, f"{here} declares {math.prod(shape)} elements")
        kinds = [frame.kind for frame in tensor.frames]
        if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(FRAME_KINDS):
            raise _fail(where, f"{here} has frames {kinds}, not distinct kinds among {list(FRAME_KINDS)}")
        for frame in tensor.frames:
            if frame.coder not in coding.CODERS:
                raise _fail(where, f"{here} names an unknown coder {frame.coder!r}")
            # Frames are concatenated in manifest order without padding: each starts where the
            # previous one ended, which rules out negative, overlapping and out-of-file offsets.
            if frame.offset != running:
                raise _fail(where, f"{here} has a {frame.kind} frame at offset {frame.offset}, expected {running}")
            if not _is_count(frame.length, MIN_FRAME_BYTES):
                raise _fail(where, f"{here} has a {frame.kind} frame of length {frame.length}")
            if not _SHA256.fullmatch(frame.sha256):
                raise _fail(where, f"{here} has a malformed sha256")
            running += frame.length
    if manifest.tensor_bytes != running:
        raise _fail(where, f"tensor_bytes is {manifest.tensor_bytes} but the frames add up to {running}")
    weights = sum(math.prod(tensor.shape) for tensor in manifest.tensors)
    if weights > MAX_WEIGHTS_PER_FRAME_BYTE * running:
        raise _fail(
            where,
            f"its shapes declare {weights} weights for {running} bytes of frames, more than "
            f"{MAX_WEIGHTS_PER_FRAME_BYTE} per byte, which no real model compresses to",
        )
    for name, size in manifest.files.items():
        if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
            raise _fail(where, f"files lists {name!r}, not a plain path inside the artifact")
        if not _is_count(size):
            raise _fail(where, f"files gives {name} the size {size!r}")
    for needed in (TENSORS_FILE, MODEL_CONFIG_FILE):
        if needed not in manifest.files:
            raise _fail(where, f"files does not list {needed}")
    if MANIFEST_FILE in manifest.files:
        raise _fail(where, f"files lists {MANIFEST_FILE} itself")
    if manifest.files[TENSORS_FILE] != manifest.tensor_bytes:
        raise _fail(
            where, f"files gives {TENSORS_FILE} {manifest.files[TENSORS_FILE]} bytes but tensor_bytes is {manifest.tensor_bytes}"
        )
    if not _is_count(manifest.total_bytes):
        raise _fail(where, f"total_bytes is {manifest.total_bytes}")
    from evo.compress.packed_files import digested_names, is_packed

    packed = [name for name in manifest.files if is_packed(name)]
    if (manifest.file_sha256 or packed) and sorted(manifest.file_sha256) != digested_names(manifest.files):
        raise _fail(where, "file_sha256 does not give a digest for exactly every file but tensors.bin")
    for name, digest in manifest.file_sha256.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(where, f"file_sha256 gives {name} a malformed sha256")


def dense_bytes(manifest: ArtifactManifest, element_size: int) -> int:
    """Bytes of the decoded weights the manifest's shapes declare, at `element_size` bytes each."""
    return sum(math.prod(tensor.shape) for tensor in manifest.tensors) * element_size


def regular_file_size(path: Path, name: str, where: str) -> int:
    """The size of `name`, which must be a regular file (not a link, device or pipe)."""
    try:
        info = os.lstat(path / name)
    except FileNotFoundError:
        raise EvoError(f"{where} has no {name}: it is incomplete; re-export it") from None
    if stat.S_ISLNK(info.st_mode):
        raise _link_error(where, name)
    if not stat.S_ISREG(info.st_mode):
        raise EvoError(f"{where}: {name} is not a regular file (a device, pipe or directory); re-export the artifact")
    return info.st_size


def check_directory(path: Path, manifest: ArtifactManifest, where: str) -> None:
    """Only regular files and folders under `path`, no links anywhere (transformers may open
    tokenizer files the manifest does not list), and every listed file of its recorded size."""
    seen = 0
    stack = [path]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_DIRECTORY_ENTRIES:
                    raise EvoError(f"{where} holds more than {MAX_DIRECTORY_ENTRIES} entries; it is not an evo artifact")
                name = Path(entry.path).relative_to(path).as_posix()
                if entry.is_symlink():
                    raise _link_error(where, name)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif not entry.is_file(follow_symlinks=False):
                    raise EvoError(f"{where}: {name} is not a regular file (a device, pipe or socket); remove it")
    for name, size in manifest.files.items():
        actual = regular_file_size(path, name, where)
        if actual != size:
            raise EvoError(
                f"{where}: {name} holds {actual} bytes but the manifest records {size}: it is truncated or was "
                "changed after export; re-export it"
            )


def read_regular_file(path: Path, name: str, size: int, where: str) -> bytes:
    """Exactly `size` bytes of a regular file, opened without following links."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path / name, flags)
    except FileNotFoundError:
        raise EvoError(f"{where} has no {name}: it is incomplete; re-export it") from None
    except OSError as exc:  # ELOOP: a link
        raise EvoError(f"{where}: cannot open {name} as a regular file ({exc.strerror}); re-export it") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise EvoError(f"{where}: {name} is not a regular file; re-export it")
        if info.st_size != size:
            raise EvoError(
                f"{where}: {name} holds {info.st_size} bytes but the manifest expects {size}; "
                "it is truncated or corrupt: re-export it"
            )
        data = handle.read(size + 1)
    if len(data) != size:
        raise EvoError(f"{where}: {name} changed while it was read; it is truncated or corrupt: re-export it")
    return data


class _TooManyModules(Exception):
    pass


def check_model_config(config, manifest: ArtifactManifest, where: str, build) -> None:
    """Refuse a config.json that disagrees with the manifest's shapes before the real model exists.

    The layer count is compared first (a config with 20,000 layers is refused without building
    any); then `build()` runs on the meta device, which allocates no weights, under a cap on the
    modules it may create (a config with a million experts per layer is refused as it builds),
    and every parameter it creates must be one of the manifest's tensors with the same shape.
    """
    import torch
    from torch.nn.modules.module import register_module_module_registration_hook

    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers != len(manifest.kept_layers):
        raise EvoError(
            f"{where}: {MODEL_CONFIG_FILE} declares {layers} decoder layers but the manifest keeps "
            f"{len(manifest.kept_layers)}; re-export it"
        )
    # A module per parameter and a few without any (norms, activations, rotary) per layer.
    limit = 16 * (len(manifest.tensors) + len(manifest.kept_layers)) + 1024
    created = [0]

    def count(module, name, submodule):
        created[0] += 1
        if created[0] > limit:
            raise _TooManyModules

    handle = register_module_module_registration_hook(count)
    try:
        with torch.device("meta"):
            model = build()
    except _TooManyModules:
        raise EvoError(
            f"{where}: {MODEL_CONFIG_FILE} builds more than {limit} modules for the manifest's "
            f"{len(manifest.tensors)} tensors; re-export it"
        ) from None
    finally:
        handle.remove()
    built = {name: tuple(p.shape) for name, p in model.named_parameters()}
    stored = {tensor.name: tuple(tensor.shape) for tensor in manifest.tensors}
    for name, shape in stored.items():
        if name not in built or built[name] != shape:
            got = f"shape {built[name]}" if name in built else "no such tensor"
            raise EvoError(
                f"{where}: tensor {name} {shape} does not fit the model its {MODEL_CONFIG_FILE} builds ({got}); re-export it"
            )
    missing = sorted(set(built) - set(stored))
    if missing:
        raise EvoError(f"{where} lacks tensor(s) {missing[:3]} that its model needs; re-export it")
