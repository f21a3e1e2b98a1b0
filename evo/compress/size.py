"""Exact compressed bytes of one quantized matrix (real frames, not bit counts) and a per-tensor cache.

A configuration's size is the sum of cached per-tensor entries, so no tensor is compressed twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evo.compress import coding
from evo.compress.quantize import QuantizedTensor
from evo.compress.rescale import num_groups
from evo.compress.settings import TensorSetting
from evo.errors import EvoError
from evo.fileio import atomic_write_text

# Bump when frames or coders change: sizes cached under an older format are then recomputed.
SIZE_FORMAT = 1


@dataclass(frozen=True)
class EncodedTensor:
    """The frames that store one matrix: "codes" always, "scales" and "zeros" when quantized.

    entropy_bits is the order-0 entropy of the codes (of the bf16 bit patterns for bits=16),
    the bound the codes frame is measured against.
    """

    frames: dict[str, bytes]
    coders: dict[str, str]
    entropy_bits: float

    @property
    def frame_bytes(self) -> dict[str, int]:
        return {name: len(frame) for name, frame in self.frames.items()}

    @property
    def compressed_bytes(self) -> int:
        return sum(len(frame) for frame in self.frames.values())


def _u16(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bf16; the 16-bit pattern is what gets stored anyway.
    return tensor.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)


def _from_u16(values: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.uint16).view(np.int16).copy()).view(dtype).reshape(shape)


def encode_tensor(q: QuantizedTensor) -> EncodedTensor:
    """Encode codes with the best code coder, fp16 side info as byte planes, int zeros as codes."""
    setting = q.setting
    frames: dict[str, bytes] = {}
    coders: dict[str, str] = {}
    if not setting.quantized:
        values = _u16(q.codes)
        coders["codes"], frames["codes"] = coding.encode_u16(values)
        return EncodedTensor(frames, coders, coding.order0_entropy_bits(values))
    codes = q.codes.detach().cpu().contiguous().numpy().reshape(-1)
    coders["codes"], frames["codes"] = coding.encode_best(codes, setting.bits)
    coders["scales"], frames["scales"] = coding.encode_u16(_u16(q.scales))
    if q.zeros is not None:
        if q.zeros.dtype == torch.uint8:  # integer zero points are codes of the same width
            zeros = q.zeros.detach().cpu().contiguous().numpy().reshape(-1)
            coders["zeros"], frames["zeros"] = coding.encode_best(zeros, setting.bits)
        else:
            coders["zeros"], frames["zeros"] = coding.encode_u16(_u16(q.zeros))
    return EncodedTensor(frames, coders, coding.order0_entropy_bits(codes))


def expected_frames(shape: tuple[int, ...], setting: TensorSetting) -> dict[str, tuple[int, int]]:
    """Frame kind → (value count, bits per value) that a tensor of this shape and setting stores."""
    shape = tuple(shape)
    numel = int(np.prod(shape, dtype=object))  # exact even for absurd shapes (no int64 overflow)
    if not setting.quantized:
        return {"codes": (numel, 16)}
    if len(shape) != 2:
        raise EvoError(f"a quantized tensor is a matrix; shape {shape} under setting {setting.key()} is not")
    groups = shape[0] * num_groups(shape[1], setting.group_size)
    frames = {"codes": (numel, setting.bits), "scales": (groups, 16)}
    if not setting.symmetric:
        frames["zeros"] = (groups, setting.bits if setting.zero_point == "int" else 16)
    return frames


def check_encoded(encoded: EncodedTensor, shape: tuple[int, ...], setting: TensorSetting) -> dict[str, tuple[int, int]]:
    """Check, before anything is decompressed, that the frames are exactly those the shape and
    setting imply and that every size they declare agrees; returns expected_frames."""
    expected = expected_frames(shape, setting)
    if set(encoded.frames) != set(expected):
        raise EvoError(
            f"encoded frames {sorted(encoded.frames)} and shape {tuple(shape)} under setting {setting.key()} "
            f"(frames {sorted(expected)}) do not match"
        )
    for kind, (count, bits) in expected.items():
        try:
            coding.check_frame(encoded.frames[kind], count, bits)
        except EvoError as exc:
            raise EvoError(
                f"the {kind} frame and shape {tuple(shape)} under setting {setting.key()} do not match: {exc}"
            ) from None
    return expected


def decode_tensor(encoded: EncodedTensor, shape: tuple[int, ...], setting: TensorSetting) -> QuantizedTensor:
    """The exact QuantizedTensor that encode_tensor was given; every frame is checked against the
    shape and setting (check_encoded) before anything is allocated."""
    shape = tuple(shape)
    expected = check_encoded(encoded, shape, setting)
    values = coding.decode(encoded.frames["codes"], *expected["codes"])
    if not setting.quantized:
        return QuantizedTensor(_from_u16(values, torch.bfloat16, shape), None, None, shape, setting)
    groups = (shape[0], num_groups(shape[1], setting.group_size))
    codes = torch.from_numpy(values).reshape(shape)
    scales = _from_u16(coding.decode(encoded.frames["scales"], *expected["scales"]), torch.float16, groups)
    zeros = None
    if not setting.symmetric:
        raw = coding.decode(encoded.frames["zeros"], *expected["zeros"])
        if setting.zero_point == "int":
            zeros = torch.from_numpy(raw.astype(np.uint8)).reshape(groups)
        else:
            zeros = _from_u16(raw, torch.float16, groups)
    return QuantizedTensor(codes, scales, zeros, shape, setting)


@dataclass(frozen=True)
class SizeKey:
    """Identifies one tensor under one setting; stats_digest matters for activation-aware pruning."""

    model_id: str
    tensor_name: str
    setting_key: str
    stats_digest: str = ""

    def digest(self) -> str:
        text = json.dumps([SIZE_FORMAT, *asdict(self).values()], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SizeEntry:
    """What the cache keeps of one encoded tensor."""

    compressed_bytes: int
    entropy_bits: float
    coders: dict[str, str] = field(default_factory=dict)
    frame_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_encoded(cls, encoded: EncodedTensor) -> SizeEntry:
        return cls(encoded.compressed_bytes, encoded.entropy_bits, dict(encoded.coders), encoded.frame_bytes)


class SizeCache:
    """Sizes on disk, one small JSON file per (model, tensor, setting, stats) written atomically.

    One file per entry lets parallel workers share a directory without locks: a reader sees
    either no file or a whole one.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[SizeKey, SizeEntry] = {}

    def _path(self, key: SizeKey) -> Path:
        digest = key.digest()
        return self.directory / digest[:2] / f"{digest}.json"

    def get(self, key: SizeKey) -> SizeEntry | None:
        if key in self._memory:
            return self._memory[key]
        try:
            record = json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return None  # unreadable entry: recompute and overwrite it
        if not isinstance(record, dict) or record.get("format") != SIZE_FORMAT or record.get("key") != asdict(key):
            return None
        try:
            entry = SizeEntry(**record["entry"])
        except (KeyError, TypeError):
            return None
        self._memory[key] = entry
        return entry

    def put(self, key: SizeKey, entry: SizeEntry) -> None:
        path = self._path(key)
        record = {"format": SIZE_FORMAT, "key": asdict(key), "entry": asdict(entry)}
        atomic_write_text(path, json.dumps(record, sort_keys=True))
        self._memory[key] = entry


def cached_size(cache: SizeCache, key: SizeKey, compute: Callable[[], EncodedTensor]) -> SizeEntry:
    """The cached entry for `key`, encoding (via `compute`) and storing it on a miss."""
    entry = cache.get(key)
    if entry is None:
        entry = SizeEntry.from_encoded(compute())
        cache.put(key, entry)
    return entry
