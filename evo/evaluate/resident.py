"""How many bytes of dequantized weights an evaluator may keep resident: sized from the memory the
device has free now (torch.cuda.mem_get_info on CUDA, MemAvailable on the CPU), not a constant,
so that on a large GPU every level of the space stays resident and none is recomputed in a run.

A share is left for the forward pass (activations and the batch's logits), which the caller can
state; the rest of what is free goes to the cache. Several processes started together on one GPU
each see it empty: EVO_CUDA_MEMORY_SHARE (process_share, set by worker_environment) bounds what
each one plans for.
"""

from __future__ import annotations

import os

import torch

from evo.errors import EvoError

CUDA_SHARE = 0.85  # of the free device memory, after the forward's reserve
MEMORY_SHARE_ENV = "EVO_CUDA_MEMORY_SHARE"  # several processes on one GPU: each plans within this share of it
CPU_SHARE = 0.5  # of the available RAM: the CPU is shared with everything else on the machine
FALLBACK_BYTES = 2 << 30  # when the free memory cannot be read


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory of the device in bytes (on CUDA, within this process's share of it: process_share),
    or None when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = process_share()
        if share < 1.0:  # this process's part of the GPU, less what it already holds
            free = min(free, max(0, int(share * total) - torch.cuda.memory_reserved(device)))
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


def process_share() -> float:
    """The share of the GPU's memory this process may plan for: EVO_CUDA_MEMORY_SHARE (0 < share <= 1,
    set by the benchmarks that run several searches on one GPU, each sizing its caches and micro-batches
    from free memory at its start, when all of them see the whole device free), else 1."""
    text = os.environ.get(MEMORY_SHARE_ENV, "").strip()
    if not text:
        return 1.0
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise EvoError(f"{MEMORY_SHARE_ENV}={text!r}: give a fraction of the GPU's memory in (0, 1], e.g. 0.25")
    return share


def worker_environment(parallel: int, environ=None) -> dict[str, str]:
    """The environment of one of `parallel` processes started together on one GPU: each plans within
    0.9 / parallel of its memory (EVO_CUDA_MEMORY_SHARE, unless the caller's environment sets it)."""
    environ = dict(os.environ if environ is None else environ)
    if parallel > 1:
        environ.setdefault(MEMORY_SHARE_ENV, f"{0.9 / parallel:.4f}")
    return environ


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
