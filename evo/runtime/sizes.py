"""Exact artifact sizes when frames are written with fast-decoding coders (--prefer-decode-speed)."""

from __future__ import annotations

from evo.compress.config import CompressionConfig
from evo.compress.size import SizeModel


def decode_speed_model(size_model: SizeModel) -> SizeModel:
    """A SizeModel like `size_model` (same weights, cache, metadata, statistics) that counts the
    frames evo.compress.coding.encode_tensor(prefer_decode_speed=True) writes."""
    if size_model.prefer_decode_speed:
        return size_model
    return SizeModel(
        size_model.info,
        size_model.weights,
        size_model.size_cache,
        size_model.metadata,
        stats=size_model.stats,
        model_id=size_model.model_id,
        base_model=size_model.base_model,
        device=size_model.device,
        prefer_decode_speed=True,
    )


def decode_speed_size(size_model: SizeModel, config: CompressionConfig) -> int:
    """Bytes on disk of `config`'s artifact written with fast-decoding coders, exactly."""
    return decode_speed_model(size_model).artifact_bytes(config)
