"""Greedy generation with the KV cache, timed (prefill, tokens/s) and measured (peak RSS, resident
weight bytes): what `evo run` prints and benchmarks/resident_memory.py tabulates."""

from __future__ import annotations

import inspect
import os
import resource
import time
from dataclasses import dataclass

import torch

from evo.constants import MB
from evo.errors import EvoError
from evo.runtime.resident import ResidentMemory, resident_memory


@dataclass(frozen=True)
class GenerationResult:
    """One greedy generation. tokens_per_s counts the new tokens after the first over the time
    after prefill (the decode phase); peak_rss_bytes is the process's high-water mark since the
    generation started where Linux lets it be reset, else since the process started."""

    text: str
    token_ids: tuple[int, ...]  # the new tokens
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    peak_rss_bytes: int
    rss_bytes: int  # resident set after the generation
    weight_memory: ResidentMemory  # after the generation
    peak_weight_bytes: int  # with the cache of decoded weights at its fullest during the generation
    peak_cuda_bytes: int | None

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        steps = self.new_tokens - 1  # the first new token comes from the prefill
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else float("nan")


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak, which is all getrusage gives)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM), which reset_peak_rss() may have reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cache_kwarg(model) -> str:
    """The keyword the model's forward takes the KV cache by: `cache` from transformers 5.24 on."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(output):
    # transformers 5.24 names the output's cache `cache` and warns on the old `past_key_values`.
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def limit_heap_fragmentation(threshold_bytes: int = 1 << 16) -> bool:
    """Have glibc's malloc serve every block of at least `threshold_bytes` by mmap, so a freed
    decoded weight goes back to the system at once. By default glibc raises that threshold
    after the first large free (up to 32 MB), and the weights decoded and dropped layer after
    layer then stay in the heap: ~350 MB more peak RSS for SmolLM2 in "compressed" mode.
    For processes that run one model (evo run, the benchmarks); False where not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3  # from malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes))
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompt: str | torch.Tensor,
    max_new_tokens: int = 64,
    *,
    stop_at_eos: bool = True,
    max_decode_seconds: float | None = None,
) -> GenerationResult:
    """Greedy decoding with the KV cache: one prefill pass over the prompt, then one token per pass.
    max_decode_seconds stops the decode phase early once that much time has passed (benchmarks of
    slow modes: tokens/s stays an honest rate over the tokens made)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise EvoError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    device = next(model.parameters()).device
    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:
        ids = torch.as_tensor(prompt).reshape(1, -1)
    if ids.numel() == 0:
        raise EvoError("the prompt is empty after tokenization: give some text")
    ids = ids.to(device)
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    runtime = getattr(model, "evo_runtime", None)
    store = runtime.store if runtime is not None else None
    if store is not None:
        store.reset_stats()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    new = [int(token)]
    _sync(device)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    past = _output_cache(out)
    cache_kwarg = _cache_kwarg(model)
    while len(new) < max_new_tokens and new[-1] != eos:
        if max_decode_seconds is not None and len(new) > 1 and time.perf_counter() - start > max_decode_seconds:
            break
        out = model(input_ids=token, use_cache=True, **{cache_kwarg: past})
        past = _output_cache(out)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        new.append(int(token))
    _sync(device)
    decode = time.perf_counter() - start
    if store is not None:
        store.drain()
    memory = resident_memory(model)
    peak_cached = store.stats().peak_cached_bytes if store is not None else memory.cached_bytes
    return GenerationResult(
        text=tokenizer.decode(new, skip_special_tokens=True),
        token_ids=tuple(new),
        prompt_tokens=int(ids.shape[1]),
        prefill_seconds=prefill,
        decode_seconds=decode,
        peak_rss_bytes=peak_rss_bytes(),
        rss_bytes=current_rss_bytes(),
        weight_memory=memory,
        peak_weight_bytes=memory.total_bytes - memory.cached_bytes + max(peak_cached, memory.cached_bytes),
        peak_cuda_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    )


def report_lines(model, result: GenerationResult) -> list[str]:
    """What `evo run` prints after the text: speed, memory and, for "auto", the plan."""
    memory = result.weight_memory
    runtime = getattr(model, "evo_runtime", None)
    mode = runtime.options.mode if runtime is not None else "dense"
    lines = [
        f"{result.new_tokens} new tokens after a {result.prompt_tokens}-token prompt: prefill "
        f"{result.prefill_seconds * 1e3:.0f} ms, {result.tokens_per_s:.2f} tokens/s",
        f"resident weights ({mode}): {result.peak_weight_bytes / MB:.1f} MB at peak = "
        f"{memory.tensor_bytes / MB:.1f} MB of tensors ({memory.packed_bytes / MB:.1f} MB bit-packed) + "
        f"{memory.frame_bytes / MB:.1f} MB of coded frames + {memory.pinned_bytes / MB:.1f} MB kept decoded + "
        f"{(result.peak_weight_bytes - memory.total_bytes + memory.cached_bytes) / MB:.1f} MB in the cache"
        + (f" (+ {memory.scratch_bytes / MB:.1f} MB of dequantization buffers)" if memory.scratch_bytes else ""),
        f"peak RSS {result.peak_rss_bytes / MB:.1f} MB during generation (RSS now {result.rss_bytes / MB:.1f} MB)",
    ]
    if result.peak_cuda_bytes is not None:
        lines.append(f"peak CUDA memory {result.peak_cuda_bytes / MB:.1f} MB")
    if runtime is not None and runtime.plan is not None:
        lines.append(runtime.plan.summary())
    return lines
