"""The compression setting of one weight matrix: bits, grouping, rescale, sparsity.

A frozen, validated value that round-trips through JSON/TOML and names itself for caching.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from evo.errors import EvoError

ALLOWED_BITS = (2, 3, 4, 5, 6, 8, 16)
KEPT_BITS = 16  # bits=16 keeps the matrix in bf16; no other field applies.
ALLOWED_GROUP_SIZES = (32, 64, 128, None)
RESCALE_RANGE = (0.25, 8.0)
SPARSITY_RANGE = (0.0, 0.95)
PRUNE_CRITERIA = ("magnitude", "wanda", "linf")
ZERO_POINTS = ("int", "float")
# rtn: round to nearest on the min/max grid; mse: per-group clip chosen to minimise the
# importance-weighted error (evo.compress.mse); gptq: error feedback through the Hessian
# (evo.compress.gptq). All three write integer codes on the same grid, so decoding is shared.
QUANTIZERS = ("rtn", "mse", "gptq")
DEFAULT_QUANTIZER = "rtn"

# TOML has no null, so "one group per output channel" is spelled as a word in files.
PER_CHANNEL = "channel"


def _fail(field: str, value: Any, allowed: str) -> EvoError:
    return EvoError(f"TensorSetting.{field}={value!r} is not allowed; use {allowed}")


def _as_float(field: str, value: Any, low: float, high: float) -> float:
    # bool is an int subclass; True as a rescale factor is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, value, f"a number in [{low}, {high}]")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise _fail(field, value, f"a number in [{low}, {high}]")
    return value


_TO_DICT: dict = {}  # TensorSetting → its to_dict (flat values)
_TO_DICT_LIMIT = 1 << 14


@dataclass(frozen=True)
class TensorSetting:
    """How one weight matrix [out, in] is compressed.

    bits: 2..8 quantize with round-to-nearest; 16 keeps the matrix in bf16 (then sparsity must
        be 0 and rescale 1, and the other fields are ignored).
    group_size: input columns sharing one scale (32/64/128); None = one group per output row.
    symmetric: zero maps to the middle code and no zero point is stored.
    rescale: multiplies the RTN step before rounding (see evo.compress.rescale).
    sparsity: fraction of each row's weights pruned to exactly zero.
    prune_criterion: "magnitude" (|W|), "wanda" (|W|·‖X_j‖₂) or "linf" (|W|·max|X_j|).
    zero_point: "int" (integer code, exact zero) or "float" (fp16 group minimum, like GGUF Q4_1).
    quantizer: how codes are chosen on that grid: "rtn" (round to nearest), "mse" (weighted-error
        clip search per group) or "gptq" (Hessian error feedback); see QUANTIZERS.
    """

    bits: int = KEPT_BITS
    group_size: int | None = 128
    symmetric: bool = False
    rescale: float = 1.0
    sparsity: float = 0.0
    prune_criterion: str = "magnitude"
    zero_point: str = "int"
    quantizer: str = DEFAULT_QUANTIZER

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in ALLOWED_BITS:
            raise _fail("bits", self.bits, f"one of {list(ALLOWED_BITS)}")
        if isinstance(self.group_size, bool) or self.group_size not in ALLOWED_GROUP_SIZES:
            raise _fail("group_size", self.group_size, "one of [32, 64, 128] or None (per output channel)")
        if not isinstance(self.symmetric, bool):
            raise _fail("symmetric", self.symmetric, "true or false")
        # Frozen: normalise ints from TOML (rescale = 2) to floats so equal settings compare equal.
        object.__setattr__(self, "rescale", _as_float("rescale", self.rescale, *RESCALE_RANGE))
        object.__setattr__(self, "sparsity", _as_float("sparsity", self.sparsity, *SPARSITY_RANGE))
        if self.prune_criterion not in PRUNE_CRITERIA:
            raise _fail("prune_criterion", self.prune_criterion, f"one of {list(PRUNE_CRITERIA)}")
        if self.zero_point not in ZERO_POINTS:
            raise _fail("zero_point", self.zero_point, f"one of {list(ZERO_POINTS)}")
        if self.quantizer not in QUANTIZERS:
            raise _fail("quantizer", self.quantizer, f"one of {list(QUANTIZERS)}")
        if self.bits == KEPT_BITS:
            if self.sparsity != 0.0:
                raise _fail("sparsity", self.sparsity, "0.0 with bits=16 (kept matrices are not pruned)")
            if self.rescale != 1.0:
                raise _fail("rescale", self.rescale, "1.0 with bits=16 (kept matrices are not quantized)")
            return
        # A float zero point cannot hit 0.0 exactly, so pruned weights would not stay zero.
        if self.zero_point == "float" and self.sparsity > 0.0:
            raise _fail("zero_point", self.zero_point, '"int" when sparsity > 0 (zero must be exact)')
        if self.zero_point == "float" and self.symmetric:
            raise _fail("zero_point", self.zero_point, '"int" when symmetric (zero is the middle code)')

    @property
    def quantized(self) -> bool:
        """True when the matrix is rounded to a grid (bits < 16)."""
        return self.bits != KEPT_BITS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML values; group_size None is written as "channel".

        The default quantizer (rtn) is left out, so configs and manifests written before the
        field existed are byte for byte what they were.
        """
        cached = _TO_DICT.get(self)
        if cached is None:  # a search writes the same few settings thousands of times (size model manifests)
            cached = asdict(self)
            if cached["group_size"] is None:
                cached["group_size"] = PER_CHANNEL
            if cached["quantizer"] == DEFAULT_QUANTIZER:
                del cached["quantizer"]
            if len(_TO_DICT) >= _TO_DICT_LIMIT:
                _TO_DICT.clear()
            _TO_DICT[self] = cached
        return dict(cached)  # flat: a copy the caller may change

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSetting:
        """Inverse of to_dict; missing fields take their defaults, unknown ones are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvoError(f"unknown TensorSetting field(s) {unknown}; known fields are {sorted(known)}")
        values = dict(data)
        if values.get("group_size") == PER_CHANNEL:
            values["group_size"] = None
        return cls(**values)

    def key(self) -> str:
        """Short stable name for caches, e.g. "b3-g128-asym-r1.5-s0.2-wanda-zint" (rtn) or
        "b3-g128-asym-r1.0-s0.0-zint-qgptq".

        Fields that cannot change the compressed tensor are left out (everything but bits for
        bf16; the criterion when nothing is pruned; the quantizer when it is rtn, so keys
        written before the field existed stay valid), so equivalent settings share a cache entry.
        Floats are written with repr, which is the shortest exact round-trip form.
        """
        if not self.quantized:
            return f"b{KEPT_BITS}"
        group = "ch" if self.group_size is None else str(self.group_size)
        parts = [
            f"b{self.bits}",
            f"g{group}",
            "sym" if self.symmetric else "asym",
            f"r{self.rescale!r}",
            f"s{self.sparsity!r}",
        ]
        if self.sparsity > 0.0:
            parts.append(self.prune_criterion)
        parts.append(f"z{self.zero_point}")
        if self.quantizer != DEFAULT_QUANTIZER:
            parts.append(f"q{self.quantizer}")
        return "-".join(parts)
