"""One evaluation's forward and KL replayed as one CUDA graph per stage (issue 19).

A search scores every candidate of a stage on the same calibration ids against the same reference
rows; only the weights change, and the evaluator writes them into the parameters in place. So the
whole evaluation, the compiled forward and the compiled KL together, can be captured once per stage
inputs and replayed as one launch. torch.compile's "reduce-overhead" graphs only the forward (the
KL's inputs are not static to it) and re-checks its inputs, guards and memory on the host at every
call: on an H200 the GPU waited ~0.9 ms before the first kernel of a 64 × 512 evaluation and the KL's
launches followed the graph's (benchmarks/attention_paths.py --profile, session 27).

A graph reads its inputs, the parameters and everything else at the addresses it was captured with:
  - a stage is keyed by its inputs' addresses, shapes, strides and dtypes (the evaluator passes views of
    tensors it keeps, so the same stage gives the same key; new tensors at the same address are read
    as they are then, which is what the caller passed);
  - the parameters' addresses are compared at every replay; if any moved (a tensor swapped, not written
    in place), every graph is dropped and the stage is captured again;
  - each replay's output is copied out of the graph's memory (the graphs share one memory pool, so one
    stage's replay may overwrite what another's left there).
At most `limit` stages are kept (the oldest dropped first): a caller that passes new tensors each
call would otherwise capture without end.

Capturing costs two warm-up calls and one captured call. A function that cannot be captured (a host
sync, an op CUDA graphs refuse) raises from `run`; FastForward then runs without graphs, saying why.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

WARMUP_CALLS = 2  # before a capture: compiles and first-call allocations happen outside the graph
LIMIT = 8  # stages kept: a search's stage shapes and their micro-batches


def stage_key(tensors: tuple[torch.Tensor, ...]) -> tuple:
    """What makes two calls the same stage: every input's address, shape, strides, dtype and device."""
    return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)


class StageGraphs:
    """run(inputs, function) → function()'s output, replayed from a CUDA graph captured for these inputs.

    model: the module whose parameters the function reads (their addresses are checked at each replay).
    limit: stages kept. `captures` counts the graphs captured so far (for tests and benchmarks)."""

    def __init__(self, model: nn.Module, limit: int = LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit}: keep at least one stage's graph")
        self.limit = limit
        self._parameters = list(model.parameters())
        self._addresses = self._parameter_addresses()
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self._pool = None
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def _parameter_addresses(self) -> list[int]:
        return list(map(torch.Tensor.data_ptr, self._parameters))

    def clear(self) -> None:
        """Drop every graph (their memory returns to the allocator once none holds the pool)."""
        self._graphs.clear()
        self._pool = None

    def run(self, inputs: tuple[torch.Tensor, ...], function: Callable[[], torch.Tensor]) -> torch.Tensor:
        """function() for these inputs (function reads them and the model's parameters, nothing else that
        changes between calls), from this stage's graph: captured on the first call, replayed after."""
        addresses = self._parameter_addresses()
        if addresses != self._addresses:  # a parameter swapped: the graphs read stale storage
            self.clear()
            self._addresses = addresses
        key = stage_key(inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(function)
            self._graphs[key] = entry
            while len(self._graphs) > self.limit:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, output = entry
        graph.replay()
        return output.clone()

    def _capture(self, function: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                function()
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local")
        try:
            with capture:
                output = function()
        except BaseException:
            close_failed_capture(capture)
            raise
        self.captures += 1
        return graph, output


def close_failed_capture(capture: torch.cuda.graph) -> None:
    """Leave nothing of a capture that raised. When the captured work fails (a host sync invalidates the
    capture), torch.cuda.graph's exit raises from capture_end and skips restoring the stream: the
    thread's current stream stays the capture stream, possibly still capturing.
    capture_end also raised before the CUDA generators' capture epilogue, so the default generator still
    believes it is capturing and refuses every draw outside a capture ("Offset increment outside graph
    capture", seen on an H200 at the next torch.randn on CUDA). This ends the capture where it is still
    open, gives the thread back the stream it had, and captures one tiny graph that ends cleanly: its
    capture_end runs the generators' epilogue, which resets them."""
    if torch.cuda.is_current_stream_capturing():
        try:
            capture.cuda_graph.capture_end()
        except Exception:  # noqa: BLE001 — an invalidated capture ends with an error: it has ended
            pass
    if torch.cuda.current_stream() == capture.capture_stream:
        capture.stream_ctx.__exit__(None, None, None)
    reset = torch.cuda.CUDAGraph()
    with torch.cuda.graph(reset, capture_error_mode="thread_local"):
        torch.zeros(1, device="cuda")
