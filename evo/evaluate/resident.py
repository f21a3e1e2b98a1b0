"""How many bytes of dequantized weights an evaluator may keep resident: sized from the memory the
device has free now (torch.cuda.mem_get_info on CUDA, MemAvailable on the CPU), not a constant,
so that on a large GPU every level of the space stays resident and none is recomputed in a run.

A share is left for the forward pass (activations and the batch's logits), which the caller can
state; the rest of what is free goes to the cache.
"""

from __future__ import annotations

import os

import torch

CUDA_SHARE = 0.85  # of the free device memory, after the forward's reserve
CPU_SHARE = 0.5  # of the available RAM: the CPU is shared with everything else on the machine
FALLBACK_BYTES = 2 << 30  # when the free memory cannot be read


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory of the device in bytes, or None when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cache_budget(device: torch.device | str, *, reserve_bytes: int = 0) -> int:
    """Bytes the cache of dequantized weights may hold on `device`, leaving reserve_bytes for the
    forward pass."""
    device = torch.device(device)
    free = available_bytes(device)
    if free is None:
        return FALLBACK_BYTES
    share = CUDA_SHARE if device.type == "cuda" else CPU_SHARE
    return max(0, int((free - reserve_bytes) * share))


def logits_bytes(sequences: int, tokens: int, vocab: int, dtype_bytes: int) -> int:
    """Memory the KL of one forward of sequences × tokens takes at its peak: the logits in the
    model's dtype plus two float32 copies (log-softmax and its scatter)."""
    return sequences * tokens * vocab * (dtype_bytes + 8)
