"""The evaluator's forward and KL at GPU speed: a stage's whole batch in one forward, the KL of the
whole batch reduced on the device (one host sync per evaluation, in the caller's float()), and
optionally both through torch.compile with static shapes (one graph per stage shape) — "default"
(Inductor's fused kernels), "max-autotune-no-cudagraphs", or "reduce-overhead" (the same plus
CUDA graphs, which replay the whole forward as one launch).

Compilation is an optimisation, never a requirement: on the CPU it is not attempted (Inductor's
CPU compile costs minutes of a 2-core machine for little), and when it fails on the GPU (no
Triton, an unsupported op, a graph break storm) the eager forward runs instead and the reason is
kept in `fallback`. The numbers are the eager ones up to the fused kernels' rounding.

CUDA graphs replay the parameters' storage addresses recorded at capture: materialise must copy
weights into the parameters in place (as Evaluator.materialise does), not swap tensors. A genome
that drops blocks swaps modules in the model, which would recompile the graph for every new drop
pattern: the evaluator runs those genomes eagerly (the KL stays compiled).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from evo.errors import EvoError
from evo.evaluate.metrics import topk_kl_sum

COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
RECOMPILE_LIMIT = 16  # graphs per compiled function: the stage shapes (and the drop patterns) of a run


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise EvoError(f"compile mode {mode!r} is unknown: use one of {list(COMPILE_MODES)}")
    return mode


class FastForward:
    """logits(ids) and kl_sum(ids, reference rows) for one resident model, compiled or eager.

    model: the resident model (changed in place by the evaluator; the compiled graph reads its
    parameters at every call). mode: one of COMPILE_MODES; "off" and any mode on a non-CUDA device
    run eagerly (`fallback` says why when a mode was asked for).
    """

    def __init__(self, model: nn.Module, mode: str = "off", device: torch.device | None = None) -> None:
        self.model = model
        self.mode = check_compile_mode(mode)
        self.device = device if device is not None else next(model.parameters()).device
        self.fallback: str | None = None
        self._forward: Callable = self._eager_forward
        self._kl: Callable = topk_kl_sum
        if self.mode == "off":
            return
        if self.device.type != "cuda":
            self.fallback = f"torch.compile runs on CUDA only here: eager forward on {self.device.type}"
            return
        try:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
            self._forward = torch.compile(self._eager_forward, mode=self.mode, dynamic=False)
            # the KL without CUDA graphs: its inputs are slices of the reference, new each stage
            kl_mode = "default" if self.mode == "reduce-overhead" else self.mode
            self._kl = torch.compile(topk_kl_sum, mode=kl_mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 — any failure to compile means: run eagerly
            self._fall_back(exc)

    @property
    def compiled(self) -> bool:
        return self._forward != self._eager_forward  # bound methods: equal, never identical

    def _eager_forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    def _fall_back(self, exc: BaseException) -> None:
        self.fallback = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}): eager forward"
        warnings.warn(self.fallback, RuntimeWarning, stacklevel=3)
        self._forward = self._eager_forward
        self._kl = topk_kl_sum

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, *, eager: bool = False) -> torch.Tensor:
        """The model's logits for ids [n, L] on the model's device. eager=True bypasses the
        compiled graph (a model whose modules were swapped, e.g. dropped blocks, would otherwise
        recompile for every new pattern)."""
        if eager or not self.compiled:
            return self._eager_forward(ids)
        try:
            logits = self._forward(ids)
            if self.mode == "reduce-overhead":
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
            if self._kl is topk_kl_sum:
                raise
            self._fall_back(exc)
            return topk_kl_sum(logits, *reference)
