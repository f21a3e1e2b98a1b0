"""Compress a loaded model with a config and write its artifact: the one path shared by
`evo compress`, `evo export` and the baselines, so all of them produce identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evo.config import CompressionConfig

DEFAULT_STATS_SEQUENCES = 16
DEFAULT_STATS_SEQ_LEN = 256


def needs_stats(config: CompressionConfig, loaded) -> bool:
    """Whether any stored tensor is pruned by an activation-aware criterion (wanda, linf)."""
    from evo.compress_model import plan_model

    return any(t.setting.quantized and t.setting.sparsity > 0 and t.setting.prune_criterion != "magnitude"
               for t in plan_model(loaded.info, config).tensors)


def default_stats_tokens(tokenizer) -> np.ndarray:
    """Token ids for activation statistics when no calibration set is given: the first sequences
    of every source of the embedded corpus, round-robin (deterministic, no model pass needed)."""
    from evo.data import read_corpus, tokenize_corpus

    pool = tokenize_corpus(read_corpus(), tokenizer, DEFAULT_STATS_SEQ_LEN)
    by_source: dict[str, list[int]] = {}
    for index, source in enumerate(pool.sources):
        by_source.setdefault(source, []).append(index)
    order = [rows[i] for i in range(max(map(len, by_source.values()))) for rows in by_source.values() if i < len(rows)]
    return pool.token_ids[order[:DEFAULT_STATS_SEQUENCES]]


def compress_and_write(loaded, config: CompressionConfig, out_dir: str | Path, *, stats=None, size_cache=None,
                       overwrite: bool = False, prefer_decode_speed: bool = False):
    """Compress `loaded.model` in place with `config` and write the artifact; returns its summary.
    The model is modified: reload it before compressing it with another config.
    prefer_decode_speed: fast-decoding coders only (evo.size.encode_tensor), for evo.runtime."""
    from evo.artifact import write_artifact
    from evo.compress_model import compress_model

    result = compress_model(loaded, None, config, stats=stats, size_cache=size_cache,
                            prefer_decode_speed=prefer_decode_speed)
    return write_artifact(out_dir, loaded.model, loaded.tokenizer, result, base_model=loaded.info.model_id,
                          overwrite=overwrite)
