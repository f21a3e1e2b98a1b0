"""The evaluator's forward and KL at GPU speed: a stage's whole batch in one forward, the KL of the
whole batch reduced on the device (one host sync per evaluation, in the caller's float()), and
optionally both through torch.compile with static shapes (one graph per stage shape) — "default"
(Inductor's fused kernels), "max-autotune-no-cudagraphs" (Inductor's tuned GEMM templates), or
"reduce-overhead" / "max-autotune" (the same plus CUDA graphs, which replay the whole forward as one
launch).

Compilation is an optimisation, never a requirement: on the CPU it is not attempted (Inductor's
CPU compile costs minutes of a 2-core machine for little), and when it fails on the GPU (no
Triton, an unsupported op, a graph break storm) the eager forward runs instead and the reason is
kept in `fallback`. The numbers are the eager ones up to the fused kernels' rounding.

kl_chunk > 0 runs the decoder body once for the whole batch and then the output head and the KL
`kl_chunk` tokens at a time (`kl_sum_of`): the full-vocabulary logits (and their float32 copies in
the KL) never exist for the whole batch at once, only for a chunk. Architectures whose logits are
not just the head applied to the body's last hidden state (softcapping, scaling) are detected on
the first call and run the whole-batch path (`fallback` says why).

Under the graph modes ("reduce-overhead", "max-autotune") kl_sum_of replays one CUDA graph per stage
(`stage_graphs`): the forward and the KL, compiled without torch's own graphs, captured together once
for the stage's ids and reference rows, one launch a call. stage_graphs=False graphs the forward alone
through torch.compile's CUDA graph trees, as before session 28 (each replay begins a new step,
torch.compiler.cudagraph_mark_step_begin; the KL consumes the replay's logits in the graph's own
buffer, and only logits() returns a copy); logits() never replays a stage graph. Either way graphs read
the parameters' storage at the addresses recorded at capture: materialise must copy weights into the
parameters in place (as Evaluator.materialise does under these modes: one batched torch._foreach_copy_),
not swap tensors (a stage graph checks the addresses and captures again if they moved). A genome
that drops blocks swaps modules in the model, which would recompile the graph for every new drop
pattern: the evaluator runs those genomes eagerly (the KL stays compiled, without graphs).

Compiled calls run the model's attention mask-free (`causal_attention`: SDPA with is_causal=True,
grouped keys read in place) when every layer is plain causal attention: under torch.compile,
torch before 2.14 would otherwise make transformers build a full mask each forward, which forces
SDPA's slower kernel and copies of the keys and values. `attention` says which path runs and why.
They also read the rotary (cos, sin) from a table computed once (`rotary_tables`) where the model's
rotary does not depend on the length: compiled, each layer would otherwise recompute them per element.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import nn

from evo.errors import EvoError, failure_reason
from evo.evaluate.causal_attention import causal_attention, unsupported_reason
from evo.evaluate.metrics import topk_kl_sum
from evo.evaluate.rotary_tables import RotaryTables
from evo.evaluate.stage_graphs import StageGraphs

COMPILE_MODES = ("auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs
# The KL's mode under each (its inputs are slices of the reference, new each stage: no graphs).
KL_MODE_OF = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
AUTO_CUDA_MODE = "reduce-overhead"  # what "auto" compiles on CUDA: the fastest search loop measured on an H200
RECOMPILE_LIMIT = 16  # graphs per compiled function: the stage shapes (and the drop patterns) of a run


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise EvoError(f"compile mode {mode!r} is unknown: use one of {list(COMPILE_MODES)}")
    return mode


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """"auto": CUDA graphs over the compiled forward on CUDA (55.7 against 45.7 evaluations/s for
    "default" in benchmarks/search_throughput.py on an H200), eager elsewhere; other modes as given."""
    if check_compile_mode(mode) != "auto":
        return mode
    return AUTO_CUDA_MODE if device.type == "cuda" else "off"


class FastForward:
    """logits(ids) and kl_sum(ids, reference rows) for one resident model, compiled or eager.

    model: the resident model (changed in place by the evaluator; the compiled graph reads its
    parameters at every call). mode: one of COMPILE_MODES ("auto": reduce-overhead on CUDA, off
    elsewhere); "off" and any mode on a non-CUDA device
    run eagerly (`fallback` says why when a mode was asked for). kl: the KL reduction (topk_kl_sum's
    signature; benchmarks pass metrics.topk_kl_sum_reference). mask_free: compiled calls run the
    attention without a mask where the model allows it (False: transformers' own masks, as before).
    rotary_tables: compiled calls read the rotary cos/sin from tables (False: computed in the graph).
    stage_graphs: under a graph mode, kl_sum_of replays one CUDA graph of forward + KL per stage (False:
    torch.compile's graphs of the forward alone).
    tune_kernels: Inductor tunes its generated kernels' block sizes by coordinate descent
    (torch._inductor.config.coordinate_descent_tuning) on the first compile of each shape: a longer first
    compile, cached on disk by Inductor.
    """

    def __init__(self, model: nn.Module, mode: str = "off", device: torch.device | None = None, *,
                 kl_chunk: int = 0, kl: Callable = topk_kl_sum, mask_free: bool = True,
                 rotary_tables: bool = True, stage_graphs: bool = True, tune_kernels: bool = False) -> None:
        self.model = model
        self.device = device if device is not None else next(model.parameters()).device
        self.mode = resolve_compile_mode(mode, self.device)
        if isinstance(kl_chunk, bool) or not isinstance(kl_chunk, int) or kl_chunk < 0:
            raise EvoError(f"kl_chunk={kl_chunk!r} must be 0 (whole batch) or a positive number of tokens")
        self.kl_chunk = kl_chunk
        self.fallback: str | None = None
        self._mask_free_allowed = mask_free
        self._mask_reason = unsupported_reason(model) if mask_free else "mask-free switched off"
        self.mask_free = self._mask_reason is None  # at any length; _mask_free_at(tokens) per call
        self._mask_free_lengths: dict[int, bool] = {}
        self.rotary_tables = RotaryTables(model) if rotary_tables else None
        self.kl_function = kl
        self._forward: Callable = self._eager_forward
        self._kl: Callable = kl
        self._body: Callable = self._eager_body
        self._head_kl: Callable = self._eager_head_kl
        self._chunk_checked = False
        self._graphs: StageGraphs | None = None
        self._trees = False  # torch.compile's CUDA graph trees replay the forward
        self.tune_kernels = tune_kernels
        if self.mode == "off":
            return
        if self.device.type != "cuda":
            self.fallback = f"torch.compile runs on CUDA only here: eager forward on {self.device.type}"
            return
        try:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
            forward_mode = self.mode
            if stage_graphs and self.mode in GRAPH_MODES:  # graphs of our own: the compiled code without torch's
                forward_mode = KL_MODE_OF[self.mode]
                self._graphs = StageGraphs(model)
            self._trees = forward_mode in GRAPH_MODES
            self._forward = self._compiled(self._eager_forward, forward_mode)
            if self.kl_chunk:
                self._body = self._compiled(self._eager_body, forward_mode)
            self._compile_kl()
        except Exception as exc:  # noqa: BLE001 — any failure to compile means: run eagerly
            self._fall_back(exc)

    def _compile_kl(self) -> None:
        # the KL without CUDA graphs: its inputs are slices of the reference, new each stage
        kl_mode = KL_MODE_OF.get(self.mode, self.mode)
        self._kl = self._compiled(self.kl_function, kl_mode)
        if self.kl_chunk:
            self._head_kl = self._compiled(self._eager_head_kl, kl_mode)

    def _compiled(self, function: Callable, mode: str) -> Callable:
        """torch.compile(function) in `mode`, static shapes; with tune_kernels, the mode's own Inductor
        options plus coordinate descent tuning (torch.compile takes a mode or options, not both)."""
        if not self.tune_kernels:
            return torch.compile(function, mode=mode, dynamic=False)
        from torch._inductor import list_mode_options

        options = {**list_mode_options(mode), "coordinate_descent_tuning": True}
        return torch.compile(function, options=options, dynamic=False)

    def with_kl(self, kl: Callable) -> FastForward:
        """This forward (its compiled graphs shared, nothing recompiled) with another KL reduction,
        compiled as this one's is: for benchmarks that compare KL reductions on one compiled model."""
        twin = copy.copy(self)
        twin.kl_function = kl
        twin._kl, twin._head_kl = kl, twin._eager_head_kl
        twin._graphs = StageGraphs(self.model) if self._graphs is not None else None  # its own KL's captures
        if not self.compiled:
            twin._forward, twin._body = twin._eager_forward, twin._eager_body
            return twin
        try:
            twin._compile_kl()
        except Exception as exc:  # noqa: BLE001
            twin._fall_back(exc)
        return twin

    @property
    def attention(self) -> str:
        """Which attention the forward runs, and why."""
        if not self.compiled:
            return "eager (transformers passes no mask for full-length sequences)"
        if self.mask_free:
            return "mask-free causal SDPA"
        free = sorted(tokens for tokens, yes in self._mask_free_lengths.items() if yes)
        where = f"; mask-free at {', '.join(map(str, free))} tokens" if free else ""
        return f"transformers' masks ({self._mask_reason}{where})"

    @property
    def rotary(self) -> str:
        """Where the compiled forward's rotary cos/sin come from."""
        if self.compiled and self.rotary_tables:
            return "tables computed once"
        return "computed in each forward"

    @property
    def uses_cuda_graphs(self) -> bool:
        """The compiled calls replay CUDA graphs: parameters must be written in place."""
        return self.mode in GRAPH_MODES and self.compiled

    @property
    def _graph_trees(self) -> bool:
        """torch.compile's own CUDA graphs replay the forward (stage graphs off)."""
        return self._trees and self.compiled

    @property
    def graphs(self) -> str:
        """Which CUDA graphs kl_sum_of replays."""
        if self._graphs is not None and self.compiled:
            return "one graph of forward + KL per stage"
        if self._graph_trees:
            return "torch.compile's graphs of the forward"
        return "none"

    @property
    def compiled(self) -> bool:
        return self._forward != self._eager_forward  # bound methods: equal, never identical

    def _eager_forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    def _eager_body(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state

    def _eager_head_kl(self, hidden: torch.Tensor, *reference: torch.Tensor) -> torch.Tensor:
        return self.kl_function(self.model.get_output_embeddings()(hidden), *reference)

    def _fall_back(self, exc: BaseException) -> None:
        self.fallback = f"torch.compile failed ({failure_reason(exc)}): eager forward"
        warnings.warn(self.fallback, RuntimeWarning, stacklevel=3)
        self._graphs = None
        self._forward = self._eager_forward
        self._kl = self.kl_function
        self._body = self._eager_body
        self._head_kl = self._eager_head_kl

    def _check_chunking(self, ids: torch.Tensor) -> None:
        """Once: the head applied to the body's output must be the model's logits, else no chunks."""
        self._chunk_checked = True
        probe = ids[:1, : min(8, ids.shape[1])]
        try:
            whole = self._eager_forward(probe)
            parts = self.model.get_output_embeddings()(self._eager_body(probe))
            same = whole.shape == parts.shape and torch.allclose(whole.float(), parts.float(), rtol=1e-3, atol=1e-3)
        except Exception as exc:  # noqa: BLE001 — no decoder/head split: the whole-batch path
            same, why = False, failure_reason(exc, 120)
        else:
            why = "the model's logits are not its head applied to the last hidden state"
        if not same:
            self.kl_chunk = 0
            self.fallback = f"kl_chunk off ({why}): whole-batch logits"

    def _compiled_call(self, function: Callable, ids: torch.Tensor) -> torch.Tensor:
        """function(ids), mask-free when this model allows it and with its rotary tables served (eager
        calls keep the model as it is: eager transformers already skips the mask for full-length
        sequences and computes the rotary once per forward)."""
        if function in (self._eager_forward, self._eager_body):
            return function(ids)
        with ExitStack() as stack:
            if self._mask_free_at(ids.shape[-1]):
                stack.enter_context(causal_attention(self.model))
            if self.rotary_tables:
                stack.enter_context(self.rotary_tables.served(ids.shape[-1]))
            return function(ids)

    def _mask_free_at(self, tokens: int) -> bool:
        """Mask-free for sequences of `tokens` tokens (a sliding window as long binds nothing)."""
        if self.mask_free:
            return True
        if not self._mask_free_allowed:
            return False
        if tokens not in self._mask_free_lengths:
            self._mask_free_lengths[tokens] = unsupported_reason(self.model, tokens) is None
        return self._mask_free_lengths[tokens]

    @torch.no_grad()
    def kl_sum_of(self, ids: torch.Tensor, *reference: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Σ topk_kl of the model on ids [n, L] against the reference rows [n, L, ...], a float64 0-d
        tensor on the device: whole-batch logits, or with kl_chunk the head and KL chunk by chunk;
        under stage graphs, the stage's graph replayed (captured on the stage's first call)."""
        if self.kl_chunk and not self._chunk_checked:
            self._check_chunking(ids)
        if self._graphs is not None and self.compiled and not eager:
            try:
                return self._graphs.run((ids, *reference), functools.partial(self._compiled_kl_sum, ids, reference))
            except Exception as exc:  # noqa: BLE001 — no graph: the same compiled calls, launched one by one
                self._graphs = None
                self.fallback = f"CUDA graphs per stage off ({failure_reason(exc)}): compiled calls without graphs"
                warnings.warn(self.fallback, RuntimeWarning, stacklevel=2)
        if not self.kl_chunk:
            return self.kl_sum(self.logits(ids, eager=eager, copy_graph_output=False), *reference)
        body = self._eager_body if eager or self._body == self._eager_body else self._body
        if self._graph_trees and body is not self._eager_body:
            torch.compiler.cudagraph_mark_step_begin()
        head_kl = self._eager_head_kl if eager else self._head_kl
        try:
            hidden = self._compiled_call(body, ids)
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)
            hidden = self._eager_body(ids)
        if self._graph_trees and body is not self._eager_body:
            hidden = hidden.clone()  # a CUDA graph's output buffer
        total = None
        for chunk in self._token_chunks(hidden, reference):
            try:
                part = head_kl(*chunk)
            except Exception as exc:  # noqa: BLE001
                if head_kl == self._eager_head_kl:
                    raise
                self._fall_back(exc)
                head_kl = self._eager_head_kl
                part = head_kl(*chunk)
            total = part if total is None else total + part
        return total

    def _token_chunks(self, hidden: torch.Tensor, reference: tuple[torch.Tensor, ...]):
        """(hidden rows, *reference rows) of each kl_chunk tokens: the batch [n, L, ...] flattened to tokens."""
        tokens = hidden.shape[0] * hidden.shape[1]
        flat = hidden.reshape(tokens, hidden.shape[-1])
        rows = [part.reshape(tokens, *part.shape[2:]) for part in reference]
        for start in range(0, tokens, self.kl_chunk):
            chunk = slice(start, min(start + self.kl_chunk, tokens))
            yield (flat[chunk], *(row[chunk] for row in rows))

    def _compiled_kl_sum(self, ids: torch.Tensor, reference: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """kl_sum_of through the compiled calls alone (what a stage graph captures: a failure raises)."""
        if not self.kl_chunk:
            return self._kl(self._compiled_call(self._forward, ids), *reference)
        hidden = self._compiled_call(self._body, ids)
        return functools.reduce(torch.add, (self._head_kl(*chunk) for chunk in self._token_chunks(hidden, reference)))

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, *, eager: bool = False, copy_graph_output: bool = True) -> torch.Tensor:
        """The model's logits for ids [n, L] on the model's device. eager=True bypasses the
        compiled graph (a model whose modules were swapped, e.g. dropped blocks, would otherwise
        recompile for every new pattern). copy_graph_output=False returns a CUDA graph's output
        buffer itself (overwritten by the next replay: for a caller that is done with it by then)."""
        if eager or not self.compiled:
            return self._eager_forward(ids)
        try:
            graphs = self._graph_trees
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            logits = self._compiled_call(self._forward, ids)
            if graphs and copy_graph_output:
                logits = logits.clone()  # a CUDA graph's output buffer is overwritten by its next replay
            return logits
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)
            return self._eager_forward(ids)

    @torch.no_grad()
    def kl_sum(self, logits: torch.Tensor, *reference: torch.Tensor) -> torch.Tensor:
        """Σ topk_kl over the batch, a float64 0-d tensor on the device (no host sync)."""
        try:
            return self._kl(logits, *reference)
        except Exception as exc:  # noqa: BLE001
            if self._kl is self.kl_function:
                raise
            self._fall_back(exc)
            return self.kl_function(logits, *reference)
