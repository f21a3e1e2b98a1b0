"""The exact byte size of a GGUF file from its metadata, tensor names, shapes and types, without
writing it: header + KV pairs + tensor infos, padded to the alignment, then each tensor's data
padded to the alignment (GGUF v3 as gguf.GGUFWriter and llama.cpp write it).

For a search: `GGUFSizeModel` computes the type-independent part once; a candidate's size is
then `fixed_bytes + Σ data_bytes(tensor, type)`, each term a table lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from evo.errors import EvoError
from evo.gguf.quants import tensor_nbytes

HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, KV count

_SCALAR_BYTES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}


@dataclass(frozen=True)
class KV:
    """One metadata pair as it is written: key, value, its GGUF type (and item type for arrays)."""

    key: str
    value: object
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorEntry:
    """What the size of one tensor depends on: its GGUF name, shape (torch order) and type."""

    name: str
    shape: tuple[int, ...]
    qtype: str


def pad(n: int, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


def _string_bytes(text: str | bytes) -> int:
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return 8 + len(raw)


def _value_bytes(value: object, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> int:
    if vtype in _SCALAR_BYTES:
        return _SCALAR_BYTES[vtype]
    if vtype == GGUFValueType.STRING:
        return _string_bytes(value)
    if vtype == GGUFValueType.ARRAY:
        if sub_type is None:
            raise EvoError("a GGUF array value needs its item type")
        items = list(value)
        if sub_type in _SCALAR_BYTES:
            return 4 + 8 + len(items) * _SCALAR_BYTES[sub_type]
        return 4 + 8 + sum(_value_bytes(item, sub_type, None) for item in items)
    raise EvoError(f"GGUF value type {vtype!r} is not supported")


def kv_bytes(kv: KV) -> int:
    """Bytes of one KV pair: key string, u32 type, value."""
    return _string_bytes(kv.key) + 4 + _value_bytes(kv.value, kv.type, kv.sub_type)


def tensor_info_bytes(name: str, ndim: int) -> int:
    """Bytes of one tensor info: name string, u32 n_dims, u64 per dim, u32 type, u64 offset."""
    return _string_bytes(name) + 4 + 8 * ndim + 4 + 8


def data_bytes(shape: tuple[int, ...], qtype: str, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> int:
    """Bytes a tensor takes in the data section, padding included."""
    return pad(tensor_nbytes(shape, qtype), alignment)


@dataclass(frozen=True)
class GGUFSize:
    metadata_bytes: int  # header, KV pairs and tensor infos, padded to the alignment
    data_bytes: int  # every tensor's data, each padded to the alignment

    @property
    def total_bytes(self) -> int:
        return self.metadata_bytes + self.data_bytes


def gguf_size(metadata: Sequence[KV], tensors: Sequence[TensorEntry],
              alignment: int = GGUF_DEFAULT_ALIGNMENT) -> GGUFSize:
    """The exact size of the GGUF file these KV pairs (general.architecture included) and tensors make."""
    meta = HEADER_BYTES + sum(kv_bytes(kv) for kv in metadata)
    meta += sum(tensor_info_bytes(t.name, len(t.shape)) for t in tensors)
    return GGUFSize(metadata_bytes=pad(meta, alignment),
                    data_bytes=sum(data_bytes(t.shape, t.qtype, alignment) for t in tensors))


class GGUFSizeModel:
    """Size of a fixed set of tensors under any type assignment: fixed bytes computed once, then a
    sum of per-(tensor, type) data bytes. Cheap enough to call per candidate in a search."""

    def __init__(self, metadata: Sequence[KV], tensors: Iterable[tuple[str, tuple[int, ...]]],
                 alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
        self.alignment = alignment
        self.shapes: dict[str, tuple[int, ...]] = {name: tuple(shape) for name, shape in tensors}
        meta = HEADER_BYTES + sum(kv_bytes(kv) for kv in metadata)
        meta += sum(tensor_info_bytes(name, len(shape)) for name, shape in self.shapes.items())
        self.fixed_bytes = pad(meta, alignment)
        self._cache: dict[tuple[str, str], int] = {}

    def tensor_bytes(self, name: str, qtype: str) -> int:
        key = (name, qtype)
        if key not in self._cache:
            if name not in self.shapes:
                raise EvoError(f"tensor {name} is not in this GGUF layout")
            self._cache[key] = data_bytes(self.shapes[name], qtype, self.alignment)
        return self._cache[key]

    def total_bytes(self, types: Mapping[str, str]) -> int:
        missing = set(self.shapes) - set(types)
        if missing:
            raise EvoError(f"no type given for tensor {sorted(missing)[0]} (and {len(missing) - 1} more)")
        return self.fixed_bytes + sum(self.tensor_bytes(name, types[name]) for name in self.shapes)
