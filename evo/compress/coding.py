"""Lossless coders for one array of small integer codes (zstd, bit-packed zstd, ANS) and of 16-bit values,
and the frames that store one compressed matrix (encode_tensor / decode_tensor).

Every frame starts with a header (coder id, bits, count) so `decode(frame)` needs nothing else.
Decoding is bounded: every size a frame declares (zstd content sizes, packed lengths, ANS symbol
ranges) is checked against the value count before anything is allocated or decompressed, and a
caller that knows the count and bits (from a manifest's shapes) passes them to `decode`.

Frame layout: byte 0 coder id, byte 1 bits per value (1..8 for codes, 16 for 16-bit values),
then the value count as a LEB128 varint, then the coder's payload:
  zstd         zstd of one code per byte
  zstd-packed  zstd of the codes bit-packed little-endian, `bits` bits each
  packed       the bit-packed codes as they are (wins for tiny or incompressible arrays)
  ans          symbol range [low, low + span) and the histogram over it as varints, then the
               32-bit words of a constriction AnsCoder using that histogram as its model
  u16-zstd     zstd of the little-endian 16-bit values
  u16-planes   high-byte plane and low-byte plane, each as its own best code frame
               (a fp16 high byte holds sign, exponent and 2 mantissa bits: few distinct values)
  u16-bf16-fields  the bf16 exponent byte and the sign|mantissa byte, each as its own best
               code frame: the byte planes of bf16 cut the exponent in two, which costs ~0.7%
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import constriction
import numpy as np
import torch
import zstandard

from evo.compress.grid import num_groups
from evo.compress.quantize import QuantizedTensor
from evo.compress.settings import TensorSetting
from evo.errors import EvoError

# Codes are near-i.i.d. symbols, so zstd's gain is mostly its Huffman literal coder: on SmolLM2
# codes level 1 matched or beat levels 3 and 9; level 19 was up to 2% smaller at 8 bits but ~60x
# slower, and ANS is the usual winner anyway.
ZSTD_LEVEL = 1

_CODER_IDS = {
    "zstd": 1,
    "zstd-packed": 2,
    "packed": 3,
    "ans": 4,
    "u16-zstd": 5,
    "u16-planes": 6,
    "u16-bf16-fields": 7,
}
_CODER_NAMES = {v: k for k, v in _CODER_IDS.items()}
CODERS = tuple(_CODER_IDS)  # every coder a frame (and a manifest) may name


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# A varint of a 64-bit count takes at most ten bytes; longer ones are corrupt (and would build
# ever larger Python ints from a hostile frame).
_MAX_VARINT_BYTES = 10


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    start = pos
    while True:
        if pos >= len(buf):
            raise EvoError("corrupt frame: truncated varint")
        if pos - start >= _MAX_VARINT_BYTES:
            raise EvoError("corrupt frame: a varint longer than 10 bytes")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _header(coder: str, bits: int, count: int) -> bytearray:
    out = bytearray((_CODER_IDS[coder], bits))
    _put_varint(out, count)
    return out


def _parse_header(frame: bytes) -> tuple[str, int, int, int]:
    if len(frame) < 3 or frame[0] not in _CODER_NAMES:
        raise EvoError("corrupt frame: unknown coder id; was it written by a newer evo?")
    count, pos = _get_varint(frame, 2)
    return _CODER_NAMES[frame[0]], frame[1], count, pos


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def _zstd_content_size(data: bytes, expected: int) -> None:
    """Refuse a zstd payload unless its header records exactly `expected` decompressed bytes.

    python-zstandard allocates the recorded content size whatever max_output_size says, so the
    recorded size is what must be checked; a frame without one could expand to anything.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise EvoError("corrupt frame: its payload is not a zstd frame") from None
    if declared < 0 or declared == zstandard.CONTENTSIZE_UNKNOWN:  # frame_content_size says -1
        raise EvoError("corrupt frame: its zstd payload does not record its decompressed size; evo writes it always")
    if declared != expected:
        raise EvoError(f"corrupt frame: its zstd payload expands to {declared} bytes, {expected} expected")


def _unzstd(data: bytes, expected: int) -> bytes:
    _zstd_content_size(data, expected)
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise EvoError(f"corrupt frame: its zstd payload does not decode ({exc})") from None
    if len(out) != expected:
        raise EvoError(f"corrupt frame: its zstd payload decoded to {len(out)} bytes, {expected} expected")
    return out


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of `count` codes bit-packed `bits` bits each."""
    return -(-count * bits // 8)


def _check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    if not 1 <= bits <= 8:
        raise EvoError(f"code coders take 1..8 bits per code, got bits={bits}")
    codes = np.ascontiguousarray(codes).reshape(-1)
    if codes.dtype != np.uint8:
        if not np.issubdtype(codes.dtype, np.integer):
            raise EvoError(f"codes must be integers, got {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() > 255):
            raise EvoError("codes must lie in [0, 255]")
        codes = codes.astype(np.uint8)
    if codes.size and int(codes.max()) >> bits:
        raise EvoError(f"code {int(codes.max())} does not fit in {bits} bits")
    return codes


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack uint8 codes `bits` bits each, little-endian within and across bytes.

    Eight codes fill exactly `bits` bytes, so each run of eight is assembled in one uint64 and
    its low `bits` bytes kept: a handful of vector operations whatever the width.
    """
    if bits == 8:
        return codes.tobytes()
    count = codes.size
    chunks = np.zeros((-(-count // 8), 8), np.uint64)
    chunks.reshape(-1)[:count] = codes
    words = np.zeros(chunks.shape[0], np.uint64)
    for i in range(8):
        words |= chunks[:, i] << np.uint64(bits * i)
    packed = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]
    return packed.tobytes()[: -(-count * bits // 8)]


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw[:count].copy()
    chunks = -(-count // 8)
    full = np.zeros(chunks * bits, np.uint8)
    full[: raw.size] = raw[: full.size]
    padded = np.zeros((chunks, 8), np.uint8)
    padded[:, :bits] = full.reshape(chunks, bits)
    words = padded.view("<u8").reshape(-1)
    mask = np.uint64((1 << bits) - 1)
    codes = np.empty((chunks, 8), np.uint8)
    for i in range(8):
        codes[:, i] = (words >> np.uint64(bits * i)) & mask
    return codes.reshape(-1)[:count]


def _ans_model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    # perfect=False is deterministic given the same counts, so encoder and decoder agree exactly.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _encode_zstd(codes: np.ndarray, bits: int) -> bytes:
    return bytes(_header("zstd", bits, codes.size)) + _zstd(codes.tobytes())


def _encode_zstd_packed(codes: np.ndarray, bits: int) -> bytes:
    return bytes(_header("zstd-packed", bits, codes.size)) + _zstd(pack_bits(codes, bits))


def _encode_packed(codes: np.ndarray, bits: int) -> bytes:
    return bytes(_header("packed", bits, codes.size)) + pack_bits(codes, bits)


def _encode_ans(codes: np.ndarray, bits: int) -> bytes:
    out = _header("ans", bits, codes.size)
    if codes.size == 0:
        return bytes(out)
    counts = np.bincount(codes, minlength=1 << bits)
    used = np.flatnonzero(counts)
    low, span = int(used[0]), int(used[-1] - used[0] + 1)
    _put_varint(out, low)
    _put_varint(out, span)
    for c in counts[low : low + span].tolist():
        _put_varint(out, c)
    if span == 1:  # a constant array: the histogram says it all
        return bytes(out)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(codes.astype(np.int32) - low, _ans_model(counts[low : low + span]))
    return bytes(out) + coder.get_compressed().astype("<u4").tobytes()


def _parse_ans(frame: bytes, pos: int, count: int, bits: int) -> tuple[int, np.ndarray, int]:
    """(low, histogram, offset of the words) of an ANS payload, its sizes bounded by 2^bits and count."""
    if count == 0:
        if pos != len(frame):
            raise EvoError("corrupt frame: an empty ANS frame carries a payload")
        return 0, np.zeros(0, np.int64), pos
    low, pos = _get_varint(frame, pos)
    span, pos = _get_varint(frame, pos)
    if span < 1 or low + span > (1 << bits):
        raise EvoError(f"corrupt frame: ANS symbol range [{low}, {low + span}) exceeds the {1 << bits} codes of {bits} bits")
    counts = np.empty(span, np.int64)
    total = 0
    for i in range(span):
        value, pos = _get_varint(frame, pos)
        total += value
        if total > count:
            raise EvoError(f"corrupt frame: the ANS histogram counts more than the frame's {count} values")
        counts[i] = value
    if total != count:
        raise EvoError(f"corrupt frame: the ANS histogram counts {total} values, the header says {count}")
    words = len(frame) - pos
    if span == 1 and words:
        raise EvoError("corrupt frame: a constant ANS frame carries a payload")
    if span > 1 and (words == 0 or words % 4):
        raise EvoError(f"corrupt frame: the ANS payload holds {words} bytes, not a whole number of 32-bit words")
    return low, counts, pos


def _decode_ans(frame: bytes, pos: int, count: int, bits: int) -> np.ndarray:
    low, counts, pos = _parse_ans(frame, pos, count, bits)
    if count == 0:
        return np.zeros(0, np.uint8)
    if counts.size == 1:
        return np.full(count, low, np.uint8)
    words = np.frombuffer(frame, dtype="<u4", offset=pos).astype(np.uint32)
    try:
        symbols = constriction.stream.stack.AnsCoder(words).decode(_ans_model(counts), count)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise EvoError(f"corrupt frame: the ANS payload does not decode ({exc})") from None
    values = symbols.astype(np.uint8)  # exact: symbols < span and low + span <= 2^bits <= 256
    if low:
        values += np.uint8(low)  # in place: no int32 temporary of the whole tensor (4 bytes per code)
    return values


CODE_CODERS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "zstd": _encode_zstd,
    "zstd-packed": _encode_zstd_packed,
    "packed": _encode_packed,
    "ans": _encode_ans,
}


def encode_codes(codes: np.ndarray, bits: int, coder: str) -> bytes:
    """Encode uint8 codes in [0, 2^bits) with the named coder (one of CODE_CODERS)."""
    if coder not in CODE_CODERS:
        raise EvoError(f"unknown code coder {coder!r}; use one of {list(CODE_CODERS)}")
    return CODE_CODERS[coder](_check_codes(codes, bits), bits)


# Code coders that decode fast (benchmarks/decode_speed.py: on SmolLM2's 3-bit codes zstd decodes
# ~15x faster than constriction's ANS, which also keeps the GIL): what --prefer-decode-speed allows.
FAST_DECODE_CODERS = ("zstd", "zstd-packed", "packed")


def encode_all(codes: np.ndarray, bits: int, coders: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Every code coder's frame (or those named in `coders`), for reports that compare them."""
    codes = _check_codes(codes, bits)
    return {name: encode(codes, bits) for name, encode in CODE_CODERS.items() if coders is None or name in coders}


def encode_best(codes: np.ndarray, bits: int, coders: tuple[str, ...] | None = None) -> tuple[str, bytes]:
    """(coder name, frame) of the smallest frame among `coders` (default all); ties go to the
    earlier coder in CODE_CODERS."""
    frames = encode_all(codes, bits, coders)
    name = min(frames, key=lambda n: len(frames[n]))
    return name, frames[name]


def _split_planes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (values >> 8).astype(np.uint8), (values & 0xFF).astype(np.uint8)


def _join_planes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first.astype(np.uint16) << 8) | second


def _split_bf16_fields(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    exponent = (values >> 7) & 0xFF
    sign_mantissa = ((values >> 8) & 0x80) | (values & 0x7F)
    return exponent.astype(np.uint8), sign_mantissa.astype(np.uint8)


def _join_bf16_fields(exponent: np.ndarray, sign_mantissa: np.ndarray) -> np.ndarray:
    exponent = exponent.astype(np.uint16)
    sign_mantissa = sign_mantissa.astype(np.uint16)
    return ((sign_mantissa & 0x80) << 8) | (exponent << 7) | (sign_mantissa & 0x7F)


# Two-byte splits of a 16-bit value: (split, join); each byte stream gets its own best coder.
_U16_SPLITS = {
    "u16-planes": (_split_planes, _join_planes),
    "u16-bf16-fields": (_split_bf16_fields, _join_bf16_fields),
}


def encode_u16_all(values: np.ndarray, code_coders: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Every 16-bit coder's frame: plain zstd and each two-byte split in _U16_SPLITS, whose byte
    streams use the best of `code_coders` (default all)."""
    values = np.ascontiguousarray(values).reshape(-1)
    if values.dtype.itemsize != 2:
        raise EvoError(f"16-bit coders take 16-bit values, got {values.dtype}")
    values = values.view(np.uint16)
    frames = {"u16-zstd": bytes(_header("u16-zstd", 16, values.size)) + _zstd(values.astype("<u2").tobytes())}
    for name, (split, _) in _U16_SPLITS.items():
        first, second = (encode_best(part, 8, code_coders)[1] for part in split(values))
        frame = _header(name, 16, values.size)
        _put_varint(frame, len(first))
        frames[name] = bytes(frame) + first + second
    return frames


def encode_u16(values: np.ndarray, code_coders: tuple[str, ...] | None = None) -> tuple[str, bytes]:
    """(coder name, frame) of the smallest 16-bit frame (fp16 scales, bf16 weights)."""
    frames = encode_u16_all(values, code_coders)
    name = min(frames, key=lambda n: len(frames[n]))
    return name, frames[name]


def frame_info(frame: bytes) -> tuple[str, int, int]:
    """(coder name, bits per value, value count) from a frame's header."""
    coder, bits, count, _ = _parse_header(frame)
    return coder, bits, count


def frame_coder(frame: bytes) -> str:
    """The coder name recorded in a frame's header."""
    return frame_info(frame)[0]


_U16_CODERS = ("u16-zstd", *_U16_SPLITS)


def check_frame(frame: bytes, count: int | None = None, bits: int | None = None) -> tuple[str, int, int, int]:
    """(coder, bits, count, payload offset) of a frame whose every declared size is consistent,
    without decompressing anything: the header agrees with the `count` and `bits` the caller
    expects (when given), bits fit the coder, zstd payloads record exactly the bytes `count`
    values take, packed payloads have exactly their length, ANS ranges lie within 2^bits and
    their histogram sums to `count`, and the two halves of a 16-bit split check too."""
    coder, frame_bits, frame_count, pos = _parse_header(frame)
    if count is not None and frame_count != count:
        raise EvoError(f"corrupt frame: its header says {frame_count} values, {count} expected")
    if bits is not None and frame_bits != bits:
        raise EvoError(f"corrupt frame: its header says {frame_bits} bits per value, {bits} expected")
    if coder in _U16_CODERS:
        if frame_bits != 16:
            raise EvoError(f"corrupt frame: a {coder} frame holds 16-bit values, its header says {frame_bits} bits")
    elif not 1 <= frame_bits <= 8:
        raise EvoError(f"corrupt frame: a {coder} frame holds codes of 1..8 bits, its header says {frame_bits}")
    payload = frame[pos:]
    if coder == "zstd":
        _zstd_content_size(payload, frame_count)
    elif coder == "zstd-packed":
        _zstd_content_size(payload, packed_bytes(frame_count, frame_bits))
    elif coder == "packed":
        if len(payload) != packed_bytes(frame_count, frame_bits):
            raise EvoError(
                f"corrupt frame: {frame_count} packed codes of {frame_bits} bits take "
                f"{packed_bytes(frame_count, frame_bits)} bytes, the frame holds {len(payload)}"
            )
    elif coder == "ans":
        _parse_ans(frame, pos, frame_count, frame_bits)
    elif coder == "u16-zstd":
        _zstd_content_size(payload, 2 * frame_count)
    else:  # a two-byte split: each half is a code frame of the same count
        first_len, split = _get_varint(frame, pos)
        if first_len > len(frame) - split:
            raise EvoError("corrupt frame: the first half of a 16-bit split runs past the frame")
        check_frame(frame[split : split + first_len], frame_count, 8)
        check_frame(frame[split + first_len :], frame_count, 8)
    return coder, frame_bits, frame_count, pos


def decode(frame: bytes, count: int | None = None, bits: int | None = None) -> np.ndarray:
    """The exact values a frame was encoded from: uint8 for code frames, uint16 for 16-bit frames.

    `count` and `bits`, when given, are what the caller expects (from a tensor's shape and
    setting); without them the header's own count bounds every allocation. Nothing is
    allocated or decompressed before check_frame has passed.
    """
    coder, bits, count, pos = check_frame(frame, count, bits)
    if coder == "zstd":
        values = np.frombuffer(_unzstd(frame[pos:], count), dtype=np.uint8).copy()
    elif coder == "zstd-packed":
        values = unpack_bits(_unzstd(frame[pos:], packed_bytes(count, bits)), bits, count)
    elif coder == "packed":
        values = unpack_bits(frame[pos:], bits, count)
    elif coder == "ans":
        values = _decode_ans(frame, pos, count, bits)
    elif coder == "u16-zstd":
        values = np.frombuffer(_unzstd(frame[pos:], 2 * count), dtype="<u2").astype(np.uint16)
    else:  # a two-byte split
        first_len, pos = _get_varint(frame, pos)
        first = decode(frame[pos : pos + first_len], count, 8)
        second = decode(frame[pos + first_len :], count, 8)
        values = _U16_SPLITS[coder][1](first, second)
    if values.size != count:
        raise EvoError(f"corrupt frame: decoded {values.size} values, header says {count}")
    return values


def order0_entropy_bits(values: np.ndarray) -> float:
    """Total bits an ideal order-0 coder needs for these non-negative integers: n·H(histogram)."""
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        return 0.0
    if values.dtype.kind != "u":
        values = values.astype(np.int64)
    counts = np.bincount(values)
    counts = counts[counts > 0].astype(np.float64)
    n = float(values.size)
    return float(n * np.log2(n) - np.sum(counts * np.log2(counts)))


# --- the frames of one compressed matrix -------------------------------------------------------------


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


def encode_tensor(q: QuantizedTensor, *, prefer_decode_speed: bool = False) -> EncodedTensor:
    """Encode codes with the best code coder, fp16 side info as byte planes, int zeros as codes.

    prefer_decode_speed: the best of FAST_DECODE_CODERS only (no ANS), for artifacts run with
    their frames resident (evo.runtime "compressed"/"auto"), where decoding is the bottleneck.
    """
    allowed = FAST_DECODE_CODERS if prefer_decode_speed else None
    setting = q.setting
    frames: dict[str, bytes] = {}
    coders: dict[str, str] = {}
    if not setting.quantized:
        values = _u16(q.codes)
        coders["codes"], frames["codes"] = encode_u16(values, allowed)
        return EncodedTensor(frames, coders, order0_entropy_bits(values))
    codes = q.codes.detach().cpu().contiguous().numpy().reshape(-1)
    coders["codes"], frames["codes"] = encode_best(codes, setting.bits, allowed)
    coders["scales"], frames["scales"] = encode_u16(_u16(q.scales), allowed)
    if q.zeros is not None:
        if q.zeros.dtype == torch.uint8:  # integer zero points are codes of the same width
            zeros = q.zeros.detach().cpu().contiguous().numpy().reshape(-1)
            coders["zeros"], frames["zeros"] = encode_best(zeros, setting.bits, allowed)
        else:
            coders["zeros"], frames["zeros"] = encode_u16(_u16(q.zeros), allowed)
    return EncodedTensor(frames, coders, order0_entropy_bits(codes))


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
            check_frame(encoded.frames[kind], count, bits)
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
    values = decode(encoded.frames["codes"], *expected["codes"])
    if not setting.quantized:
        return QuantizedTensor(_from_u16(values, torch.bfloat16, shape), None, None, shape, setting)
    groups = (shape[0], num_groups(shape[1], setting.group_size))
    codes = torch.from_numpy(values).reshape(shape)
    scales = _from_u16(decode(encoded.frames["scales"], *expected["scales"]), torch.float16, groups)
    zeros = None
    if not setting.symmetric:
        raw = decode(encoded.frames["zeros"], *expected["zeros"])
        if setting.zero_point == "int":
            zeros = torch.from_numpy(raw.astype(np.uint8)).reshape(groups)
        else:
            zeros = _from_u16(raw, torch.float16, groups)
    return QuantizedTensor(codes, scales, zeros, shape, setting)
