"""Bit-packed integer codes as torch tensors: exactly `bits` bits per code for 1..8 bits, CPU or CUDA.

In-memory layout (never written to disk), chosen so that unpacking is a few contiguous, vectorised
uint8 operations: a row of C codes is padded to 8·W (W = ceil(C/8)) and cut into 8 slices of W
columns; code i of every slice's column w goes into "word" w at bit bits·i, little-endian as
evo.compress.coding.pack_bits packs (eight codes fill `bits` bytes); the row then stores the words'
byte k for every w contiguously (plane k, W bytes), k = 0..bits-1. Unpacking slice i reads one
or two whole planes and writes W contiguous codes. Rows are packed alone, so any rows unpack alone.
"""

from __future__ import annotations

import torch

from evo.errors import EvoError

CODES_PER_WORD = 8  # eight codes of b bits fill b bytes exactly, for every b


def packed_row_bytes(columns: int, bits: int) -> int:
    """Bytes of one packed row of `columns` codes: ceil(columns / 8) · bits."""
    return -(-columns // CODES_PER_WORD) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, columns] in [0, 2^bits) → uint8 [rows, ceil(columns/8)·bits] on codes' device.
    The inverse of unpack_codes's shifts, a few contiguous uint8 operations per code slot."""
    if not 1 <= bits <= 8:
        raise EvoError(f"packed codes take 1..8 bits per code, got bits={bits}")
    if codes.dim() != 2 or codes.dtype != torch.uint8:
        raise EvoError(f"codes to pack must be uint8 [rows, columns], got {codes.dtype} {tuple(codes.shape)}")
    rows, columns = codes.shape
    if codes.numel() and int(codes.max()) >> bits:
        raise EvoError(f"code {int(codes.max())} does not fit in {bits} bits")
    words = -(-columns // CODES_PER_WORD)
    if words * CODES_PER_WORD != columns:
        padded = torch.zeros((rows, words * CODES_PER_WORD), dtype=torch.uint8, device=codes.device)
        padded[:, :columns] = codes
        codes = padded
    if bits == 8:  # eight planes of W codes are the row itself
        return codes.contiguous()
    # Word w holds column i·W + w as its code i, at bits bits·i (little-endian across its bytes).
    slots = codes.view(rows, CODES_PER_WORD, words)
    planes = torch.zeros((rows, bits, words), dtype=torch.uint8, device=codes.device)
    for i in range(CODES_PER_WORD):
        byte, shift = divmod(bits * i, 8)
        planes[:, byte] |= slots[:, i] << shift  # uint8: the bits pushed past the byte drop out
        if shift + bits > 8:
            planes[:, byte + 1] |= slots[:, i] >> (8 - shift)
    return planes.view(rows, packed_row_bytes(columns, bits))


def unpack_codes(packed: torch.Tensor, bits: int, columns: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of pack_codes for any slice of rows: uint8 [rows, columns] on packed's device.
    `out` (uint8, rows · ceil(columns/8) · 8 elements, contiguous) receives the codes instead of a
    new tensor; the result is then a view of it."""
    if packed.dim() != 2 or packed.dtype != torch.uint8 or packed.shape[1] != packed_row_bytes(columns, bits):
        raise EvoError(
            f"packed codes must be uint8 [rows, {packed_row_bytes(columns, bits)}], "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    rows = packed.shape[0]
    words = packed.shape[1] // bits
    if bits == 8:  # eight planes of W codes are the row itself, in order: nothing to unpack
        return packed[:, :columns]
    if out is None:
        out = torch.empty((rows, CODES_PER_WORD * words), dtype=torch.uint8, device=packed.device)
    codes = out.view(rows, CODES_PER_WORD, words)
    planes = packed.view(rows, bits, words)
    mask = (1 << bits) - 1
    # Code i of a word starts at bit bits·i: in byte (bits·i) // 8, possibly running into the next.
    # uint8 shifts drop the bits pushed past the byte, which are exactly the ones not wanted.
    for i in range(CODES_PER_WORD):
        byte, shift = divmod(bits * i, 8)
        code = codes[:, i]
        torch.bitwise_right_shift(planes[:, byte], shift, out=code)
        if shift + bits > 8:
            code |= planes[:, byte + 1] << (8 - shift)
        if shift + bits != 8:  # bits above the code: from the byte itself or the next one's shift
            code &= mask
    return codes.reshape(rows, -1)[:, :columns]
