"""Hessians of the decoder linears' inputs, H = E[x xᵀ] over calibration tokens, for gptq (and E[x²],
their diagonal, for mse), collected from the dense model with forward pre-hooks and kept on disk.

Linears that read the same input tensor (q/k/v, gate/up) share one Hessian: inside a layer, a hook
that sees the very tensor object an earlier linear of the layer saw records the earlier one as its
source instead of accumulating again (found during the forward, so no architecture is named here).

On disk (a directory, e.g. inside a run directory), written atomically file by file, meta last:
    meta.json                 format, model id, digest of (model id, token ids), token count, and
                              for every linear weight name: its layer and the name whose Hessian it reads
    layer-0000.safetensors    one float32 [in, in] tensor per distinct input of that layer, keyed by name
One file per layer, so an 8B model's ~1 GB per layer is loaded one layer at a time; collection hooks
only as many layers per forward pass as fit in `max_bytes` of float64 accumulators.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from evo.constants import HESSIAN_LAYER_FILE, HESSIAN_META_FILE
from evo.errors import EvoError
from evo.evaluate.forward import Hook, check_batch_size, forward_batches, token_batch
from evo.evaluate.stats import stats_digest
from evo.fileio import atomic_path, atomic_write_text
from evo.types import ModelInfo

HESSIAN_FORMAT = 1
META = HESSIAN_META_FILE
DEFAULT_MAX_BYTES = 8 << 30  # float64 accumulators held at once; more layers take more passes


def layer_file(index: int) -> str:
    return HESSIAN_LAYER_FILE.format(index)


def calibration_tokens(info: ModelInfo, token_ids, batch_size: int) -> torch.Tensor:
    """The token ids [n, length] checked against the model's vocabulary, and the batch size."""
    check_batch_size(batch_size)
    return token_batch(token_ids, vocab_size=info.vocab_size)


def hessian_digest(model_id: str, token_ids: np.ndarray) -> str:
    """Names a Hessian set: the model and the exact calibration tokens (and this file format)."""
    return f"h{HESSIAN_FORMAT}-{stats_digest(model_id, token_ids)}"


class _LayerHooks:
    """The pre-hooks of one decoder layer's linears: accumulate Σ x xᵀ per distinct input tensor."""

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.source: dict[str, str] = {}
        self._seen: list[tuple[torch.Tensor, str]] = []  # this forward's inputs, held so ids stay unique

    def hook(self, name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0]
            for seen, owner in self._seen:
                if seen is x:
                    self._set_source(name, owner)
                    return
            self._seen.append((x, name))
            self._set_source(name, name)
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            product = (flat.T @ flat).to(torch.float64)
            if name in self.sums:
                self.sums[name] += product
            else:
                self.sums[name] = product
            self.tokens[name] = self.tokens.get(name, 0) + flat.shape[0]

        return record

    def _set_source(self, name: str, owner: str) -> None:
        previous = self.source.setdefault(name, owner)
        if previous != owner:
            raise EvoError(f"linear {name} read the input of {owner} in one batch and of {previous} in another: "
                           "this model's forward is not deterministic enough to share Hessians")

    def end_batch(self) -> None:
        self._seen.clear()


def _layer_bytes(layer) -> int:
    # Upper bound: every linear with its own input (sharing is only known once the forward runs).
    return sum(lin.shape[1] ** 2 * 8 for lin in layer.linears)


@torch.no_grad()
def collect_hessians(
    model: nn.Module,
    info: ModelInfo,
    token_ids: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> HessianSet:
    """Collect H = E[x xᵀ] of every decoder linear's input of the dense `model` over `token_ids`
    [n, length] (no padding) and write them to `out_dir`; returns the opened set.

    The model runs on its own device (CUDA when it is there); sums are float64, so the result does
    not depend on the batch size beyond float32 rounding of each batch's product. progress(done,
    total) counts batches over all passes.
    """
    token_ids = calibration_tokens(info, token_ids, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    passes: list[list] = [[]]
    used = 0
    for layer in info.layers:
        size = _layer_bytes(layer)
        if passes[-1] and used + size > max_bytes:
            passes.append([])
            used = 0
        passes[-1].append(layer)
        used += size
    batches = -(-token_ids.shape[0] // batch_size)
    total = batches * len(passes)
    inputs: dict[str, dict] = {}
    for number, layers in enumerate(passes):
        layer_hooks = {layer.index: _LayerHooks([lin.name for lin in layer.linears], device) for layer in layers}
        hooks = []
        for layer in layers:
            for lin in layer.linears:
                module = model.get_submodule(lin.module)
                if not isinstance(module, nn.Linear):
                    raise EvoError(f"{lin.module} is not a linear layer: collect Hessians from the dense model")
                hooks.append(Hook(module, layer_hooks[layer.index].hook(lin.name), pre=True))
        for done, _ in enumerate(forward_batches(model, token_ids, batch_size, hooks=hooks), start=1):
            for recorder in layer_hooks.values():
                recorder.end_batch()
            if progress is not None:
                progress(number * batches + done, total)
        for index, recorder in layer_hooks.items():
            tensors = {}
            for name, total_sum in recorder.sums.items():
                tensors[name] = (total_sum / recorder.tokens[name]).to(torch.float32).cpu().contiguous()
            _save_layer(out_dir / layer_file(index), tensors)
            for name in recorder.names:
                if name not in recorder.source:
                    raise EvoError(f"linear {name} never ran in the forward: collect Hessians from the dense model")
                inputs[name] = {"layer": index, "input": recorder.source[name]}
    meta = {
        "format": HESSIAN_FORMAT,
        "model_id": info.model_id,
        "digest": hessian_digest(info.model_id, token_ids),
        "tokens": int(token_ids.numel()),
        "inputs": inputs,
    }
    atomic_write_text(out_dir / META, json.dumps(meta, indent=1) + "\n")
    return HessianSet.open(out_dir)


def _save_layer(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


@dataclass
class HessianSet:
    """The Hessians in a directory, read one layer file at a time (the last one read is kept)."""

    directory: Path
    digest: str
    model_id: str
    tokens: int
    inputs: dict[str, dict]
    _layer: int | None = None
    _tensors: dict[str, torch.Tensor] | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike, expected_digest: str | None = None) -> HessianSet:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META).read_text())
        except FileNotFoundError:
            raise EvoError(f"{directory} holds no Hessians ({META} missing): collect them first") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise EvoError(f"{directory / META} is unreadable ({exc}): delete {directory} and collect again") from None
        if not isinstance(meta, dict) or meta.get("format") != HESSIAN_FORMAT:
            raise EvoError(f"{directory} holds Hessians of another format: delete it and collect again")
        if expected_digest is not None and meta["digest"] != expected_digest:
            raise EvoError(f"the Hessians in {directory} come from other tokens or another model "
                           f"({meta['digest']}, expected {expected_digest}): delete the directory and collect again")
        return cls(directory, meta["digest"], meta["model_id"], int(meta["tokens"]), dict(meta["inputs"]))

    def __contains__(self, name: str) -> bool:
        return name in self.inputs

    def names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        """Every distinct input's Hessian of decoder layer `index`, by the name that owns it."""
        if self._layer != index:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            path = self.directory / layer_file(index)
            try:
                self._tensors = load_file(str(path))
            except (SafetensorError, OSError) as exc:
                raise EvoError(f"{path} is missing or corrupt ({exc}): delete {self.directory} and collect again") from None
            self._layer = index
        return self._tensors  # type: ignore[return-value]

    def hessian(self, name: str) -> torch.Tensor:
        """E[x xᵀ] [in, in] float32 of the input of the linear whose weight is `name`."""
        entry = self.inputs.get(name)
        if entry is None:
            raise EvoError(f"no Hessian for {name}: gptq applies to decoder linears only; use 'rtn' or 'mse' for it")
        return self.layer(int(entry["layer"]))[entry["input"]]

    def second_moment(self, name: str) -> torch.Tensor:
        """E[x_j²] [in] of that input (llama.cpp's importance matrix): the Hessian's diagonal."""
        return torch.diagonal(self.hessian(name)).clone()


def load_or_collect(
    directory: str | os.PathLike, model: nn.Module, info: ModelInfo, token_ids: np.ndarray, **kwargs
) -> HessianSet:
    """The Hessians in `directory` when they were collected from this model on these tokens,
    else collected anew into it (what a resumed run does)."""
    digest = hessian_digest(info.model_id, calibration_tokens(info, token_ids, kwargs.get("batch_size", 4)))
    directory = Path(directory)
    if (directory / META).is_file():
        try:
            return HessianSet.open(directory, expected_digest=digest)
        except EvoError:
            pass  # stale or broken: collect again over it
    return collect_hessians(model, info, token_ids, directory, **kwargs)
