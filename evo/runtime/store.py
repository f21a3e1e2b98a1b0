"""Coded frames kept in memory and the weights decoded from them: pinned weights, a cache of decoded
weights bounded in bytes, and background threads that decode the next layers ahead of use.

A decoded weight is what its layer runs from: the bit-packed codes of a quantized matrix (a
PackedWeight, as "codes" mode holds it) or the dense tensor of a bf16 one. Bytes are counted
exactly: a PackedWeight costs its packed tensors, a tensor numel · element_size, a frame its length.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from evo.runtime.modules import held_bytes


@dataclass(frozen=True)
class CodedWeight:
    """What one lazily decoded weight keeps resident: its frames and how to decode them."""

    key: str  # the weight's tensor name in the artifact
    shape: tuple[int, ...]
    frames: dict[str, bytes]  # kind → frame bytes, exactly as in tensors.bin
    decoded_bytes: int  # bytes of the decoded form: packed codes (PackedWeight.nbytes) or the dense tensor

    @property
    def frame_bytes(self) -> int:
        return sum(len(frame) for frame in self.frames.values())


@dataclass(frozen=True)
class StoreStats:
    """Counters of a DecodedWeights store since it was built (or since reset_stats)."""

    hits: int
    misses: int  # decoded in the forward, on the critical path
    prefetched: int  # decoded by the background thread
    decode_seconds: float  # time spent decoding, on either thread
    peak_cached_bytes: int  # the cache's largest size
    cached_bytes: int
    pinned_bytes: int
    frame_bytes: int


class DecodedWeights:
    """Decoded weights by key. `pinned` ones stay; the others enter a cache of at most
    `capacity_bytes` (None: unbounded) when they are decoded and there is room, and then stay: a
    weight decoded when the cache is full is used once and dropped. Every forward pass uses the
    weights in the same cyclic order, where least-recently-used eviction drops each weight just
    before its next use (no hit at all below a cap holding every weight); a fixed set hits the
    cached share of the weights on every pass. With prefetch > 0, `prefetch` background threads decode the
    next `prefetch` weights at once, in the order they were last used (learned on the first pass):
    zstd and torch release the GIL, so several weights decode in parallel (constriction's ANS holds it)."""

    def __init__(
        self,
        coded: dict[str, CodedWeight],
        decode: Callable[[CodedWeight], object],
        *,
        capacity_bytes: int | None,
        prefetch: int = 1,
    ) -> None:
        self.coded = dict(coded)
        self._decode_fn = decode
        self.capacity_bytes = capacity_bytes
        self.prefetch = prefetch
        self.pinned: dict[str, object] = {}  # key → PackedWeight or tensor
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cached_bytes = 0
        self._inflight: dict[str, Future] = {}
        self._next: dict[str, str] = {}  # key → the key used after it last time
        self._last: str | None = None
        self.order: list[str] = []  # keys in the order of their first use
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.reset_stats()

    # --- bookkeeping -------------------------------------------------------------------------------

    def reset_stats(self) -> None:
        self._hits = self._misses = self._prefetched = 0
        self._decode_seconds = 0.0
        self._peak_cached = self._cached_bytes

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                hits=self._hits,
                misses=self._misses,
                prefetched=self._prefetched,
                decode_seconds=self._decode_seconds,
                peak_cached_bytes=self._peak_cached,
                cached_bytes=self._cached_bytes,
                pinned_bytes=self.pinned_bytes,
                frame_bytes=self.frame_bytes,
            )

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    @property
    def pinned_bytes(self) -> int:
        return sum(held_bytes(w) for w in self.pinned.values())

    @property
    def frame_bytes(self) -> int:
        return sum(c.frame_bytes for c in self.coded.values())

    def cached_keys(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    # --- decoding ----------------------------------------------------------------------------------

    def decode(self, key: str):
        """Decode `key` from its frames now (timed), without caching it."""
        start = time.perf_counter()
        weight = self._decode_fn(self.coded[key])
        elapsed = time.perf_counter() - start
        with self._lock:
            self._decode_seconds += elapsed
        return weight

    def pin(self, key: str, weight=None) -> None:
        """Keep `key` decoded for good; its frames are then dropped (they would never be read)."""
        self.pinned[key] = self.decode(key) if weight is None else weight
        self.coded.pop(key)

    def forget(self, keys) -> None:
        """Stop holding `keys` coded (another form holds them now): their frames go, and the learned
        order skips them, so that prefetch goes on to the next weight still coded."""
        keys = set(keys)
        with self._lock:
            original = dict(self._next)
            for key in keys:
                self.coded.pop(key, None)
                self._next.pop(key, None)
            for key, following in list(self._next.items()):
                seen = set()
                while following in keys and following not in seen:
                    seen.add(following)
                    following = original.get(following)
                if following is None or following in keys or following == key:
                    del self._next[key]
                else:
                    self._next[key] = following
            self.order = [k for k in self.order if k not in keys]
            if self._last in keys:
                self._last = None

    def acquire(self, key: str):
        """The decoded weight of `key`, from the pinned set, the cache, a prefetch, or decoded now."""
        with self._lock:
            if self._last is not None and self._last != key:
                self._next[self._last] = key
            self._last = key
            if key not in self._seen:
                self._seen.add(key)
                self.order.append(key)
            weight = self.pinned.get(key)
            if weight is None:
                weight = self._cache.get(key)
                if weight is not None:
                    self._cache.move_to_end(key)
                    self._hits += 1
            # Popped even when the weight is found: a finished prefetch may have cached it already,
            # and a future left behind would stop the key from ever being prefetched again.
            future = self._inflight.pop(key, None)
        if weight is None:
            if future is not None:
                weight = future.result()
                with self._lock:
                    self._prefetched += 1
            else:
                weight = self.decode(key)
                with self._lock:
                    self._misses += 1
                self._insert(key, weight)
        self._schedule_after(key)
        return weight

    def _insert(self, key: str, weight) -> None:
        size = held_bytes(weight)
        with self._lock:
            if key in self._cache:
                return
            if self.capacity_bytes is not None and self._cached_bytes + size > self.capacity_bytes:
                return  # full: used once and dropped (see the class doc: no eviction)
            self._cache[key] = weight
            self._cached_bytes += size
            self._peak_cached = max(self._peak_cached, self._cached_bytes)

    def _schedule_after(self, key: str) -> None:
        if self.prefetch <= 0:
            return
        with self._lock:
            upcoming = []
            current = key
            for _ in range(self.prefetch):
                current = self._next.get(current)
                if current is None or current == key:
                    break
                upcoming.append(current)
            todo = [k for k in upcoming if k in self.coded and k not in self._cache and k not in self._inflight]
            if not todo:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="evo-prefetch")
            for k in todo:
                self._inflight[k] = self._executor.submit(self._prefetch_one, k)

    def _prefetch_one(self, key: str):
        weight = self.decode(key)
        self._insert(key, weight)
        return weight

    def drain(self) -> None:
        """Wait for the background decodes and forget them (those with room stay in the cache)."""
        with self._lock:
            futures = list(self._inflight.values())
            self._inflight.clear()
        for future in futures:
            future.result()

    def close(self) -> None:
        self.drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
