"""Compress a whole model with a CompressionConfig: plan what it stores, compress every tensor in
place (replaced by the weight it decodes to), drop blocks and layers, measure exact sizes, and
write the artifact: the one path shared by `evo compress`, `evo export` and the baselines, so all
of them produce identical bytes.

The model that comes out is the one an artifact of the same config loads back, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evo.compress.apply import CompressedTensor, compress_tensor
from evo.compress.coding import EncodedTensor, encode_tensor
from evo.compress.config import CompressionConfig
from evo.compress.plan import (
    DECODE_SPEED_TAG,
    TensorPlan,
    hessian_for,
    needs_hessian_for,
    plan_model,
    size_model_id,
    stats_for,
)
from evo.compress.prune import ActivationStats
from evo.compress.settings import TensorSetting
from evo.compress.size import SizeCache, SizeEntry, SizeKey, cached_size
from evo.compress.structure import apply_drops
from evo.errors import EvoError
from evo.types import ModelInfo


@dataclass(frozen=True)
class TensorResult:
    """One compressed tensor: its plan, its stored form and its exact size.

    compressed is None when compress_model ran with keep_tensors=False; encoded holds the frames
    only when they were produced in this call (a size-cache hit skips encoding).
    """

    plan: TensorPlan
    compressed: CompressedTensor | None
    size: SizeEntry | None
    encoded: EncodedTensor | None = None


@dataclass(frozen=True)
class CompressionResult:
    """What compress_model did to a model."""

    config: CompressionConfig
    info: ModelInfo  # the base model's description; layer indices in config refer to it
    size_model_id: str  # the model id used in size keys
    dtype: torch.dtype  # the model's weights' dtype, which the artifact loads back into
    kept_layers: tuple[int, ...]
    tensors: tuple[TensorResult, ...]
    prefer_decode_speed: bool = False  # frames use fast-decoding coders only (evo.compress.coding.encode_tensor)

    @property
    def measured(self) -> bool:
        return all(t.size is not None for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        """Exact bytes of all frames the artifact stores (sum of the per-tensor size entries)."""
        if not self.measured:
            raise EvoError("sizes were not measured: run compress_model with measure=True or a size_cache")
        return sum(t.size.compressed_bytes for t in self.tensors)  # type: ignore[union-attr]


def size_inputs_digest(act: ActivationStats | None, hessians, setting: TensorSetting) -> str:
    """What besides the weight and setting determines a tensor's codes, for its size key: the
    statistics' digest, and for gptq the Hessian set's ("" for rtn without statistics, as ever)."""
    parts = [act.digest()] if act is not None else []
    if needs_hessian_for(setting):
        parts.append(hessians.digest)
    return "|".join(parts)


def _unwrap(model) -> tuple[nn.Module, ModelInfo | None]:
    # A LoadedModel (evo.modelio) carries its own description.
    if hasattr(model, "model") and hasattr(model, "info") and isinstance(getattr(model, "model"), nn.Module):
        return model.model, model.info
    if not isinstance(model, nn.Module):
        raise EvoError(f"compress_model takes a torch model or a LoadedModel, got {type(model).__name__}")
    return model, None


@torch.no_grad()
def compress_model(
    model,
    info: ModelInfo | None,
    config: CompressionConfig,
    *,
    stats: dict[str, ActivationStats] | None = None,
    hessians=None,
    size_cache: SizeCache | None = None,
    model_id: str | None = None,
    measure: bool = True,
    keep_tensors: bool = True,
    prefer_decode_speed: bool = False,
) -> CompressionResult:
    """Compress `model` (a torch model or a LoadedModel) in place as `config` says.

    Each stored tensor goes through compress_tensor and is replaced by its dequantized weight
    in the model's dtype (kept tensors become their bf16 values); then blocks and layers are
    dropped. Sizes come from `size_cache` (keys use `model_id`, default size_model_id) or, with
    measure=True and no cache, from encoding every tensor. `stats` is needed by wanda/linf
    pruning and the mse quantizer, `hessians` (evo.evaluate.hessian.HessianSet) by gptq. `info`
    must describe the model as loaded, before any compression.
    prefer_decode_speed encodes with fast-decoding coders only (see evo.compress.coding.encode_tensor); its
    size keys' model id then ends in DECODE_SPEED_TAG.
    """
    module, carried = _unwrap(model)
    info = info or carried
    if info is None:
        raise EvoError("compress_model needs the model's ModelInfo (evo.modelio.describe_model)")
    if not isinstance(config, CompressionConfig):
        raise EvoError(f"config must be a CompressionConfig, got {type(config).__name__}")
    plan = plan_model(info, config)
    check_matches(module, info)
    params = dict(module.named_parameters())
    dtype = params[plan.tensors[0].source].dtype
    device = params[plan.tensors[0].source].device  # where compress_tensor computes the codes
    key_model_id = (model_id or size_model_id(info, dtype, device)) + (DECODE_SPEED_TAG if prefer_decode_speed else "")

    results = []
    for tensor in plan.tensors:
        setting = tensor.setting
        act = stats_for(stats, tensor.source, setting)
        hessian = hessian_for(hessians, tensor.source, setting)
        param = params[tensor.source]
        compressed = compress_tensor(param.detach(), setting, act, hessian)
        param.copy_(compressed.dequantized().to(device=param.device, dtype=param.dtype))
        inputs_digest = size_inputs_digest(act, hessians, setting)
        size, encoded = _measure(compressed, tensor, key_model_id, inputs_digest, size_cache, measure,
                                 prefer_decode_speed)
        results.append(
            TensorResult(
                plan=tensor,
                compressed=compressed if keep_tensors else None,
                size=size,
                encoded=encoded if keep_tensors else None,
            )
        )

    kept = apply_drops(module, info, config.drops)
    if kept != plan.kept_layers:
        raise RuntimeError(f"layers kept {kept} differ from the plan {plan.kept_layers}")
    stored = {name for name, _ in module.named_parameters()}
    planned = {tensor.name for tensor in plan.tensors}
    if stored != planned:
        missing = sorted(stored - planned)[:3]
        raise EvoError(
            f"the model has parameters its description does not cover ({missing}); "
            "evo cannot store this architecture completely"
        )
    return CompressionResult(
        config=config,
        info=info,
        size_model_id=key_model_id,
        dtype=dtype,
        kept_layers=kept,
        tensors=tuple(results),
        prefer_decode_speed=prefer_decode_speed,
    )


def check_matches(module: nn.Module, info: ModelInfo) -> None:
    """Refuse a model that no longer looks as described: compressing twice would re-quantize
    decoded weights and drop blocks by indices that have shifted."""
    params = dict(module.named_parameters())
    expected = [(lin.name, lin.shape) for lin in info.linears()]
    expected += [(name, shape) for layer in info.layers for name, shape in layer.other_tensors]
    expected += [(tensor.name, tensor.shape) for tensor in info.non_decoder]
    for name, shape in expected:
        param = params.get(name)
        if param is None or tuple(param.shape) != tuple(shape):
            raise EvoError(
                f"the model does not match its description at tensor {name} "
                "(already compressed, or described from another model?): reload the model"
            )


def _measure(
    compressed: CompressedTensor,
    tensor: TensorPlan,
    model_id: str,
    inputs_digest: str,
    size_cache: SizeCache | None,
    measure: bool,
    prefer_decode_speed: bool = False,
) -> tuple[SizeEntry | None, EncodedTensor | None]:
    if size_cache is None:
        if not measure:
            return None, None
        encoded = encode_tensor(compressed.quantized, prefer_decode_speed=prefer_decode_speed)
        return SizeEntry.from_encoded(encoded), encoded
    fresh: list[EncodedTensor] = []

    def encode() -> EncodedTensor:
        fresh.append(encode_tensor(compressed.quantized, prefer_decode_speed=prefer_decode_speed))
        return fresh[-1]

    key = SizeKey(model_id, tensor.source, tensor.setting.key(), inputs_digest)
    entry = cached_size(size_cache, key, encode)
    return entry, (fresh[0] if fresh else None)


# --- the artifact of a config ------------------------------------------------------------------------


def compress_and_write(loaded, config: CompressionConfig, out_dir: str | Path, *, stats=None, hessians=None,
                       size_cache=None, overwrite: bool = False, prefer_decode_speed: bool = False):
    """Compress `loaded.model` in place with `config` and write the artifact; returns its summary.
    The model is modified: reload it before compressing it with another config.
    prefer_decode_speed: fast-decoding coders only (evo.compress.coding.encode_tensor), for evo.runtime."""
    from evo.compress.artifact import write_artifact

    result = compress_model(loaded, None, config, stats=stats, hessians=hessians, size_cache=size_cache,
                            prefer_decode_speed=prefer_decode_speed)
    return write_artifact(out_dir, loaded.model, loaded.tokenizer, result, base_model=loaded.info.model_id,
                          overwrite=overwrite)
