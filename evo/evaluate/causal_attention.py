"""Mask-free causal attention for the evaluator's compiled forward.

The search scores full-length sequences with no padding, so every attention layer of a plain
decoder is the causal pattern that SDPA's `is_causal=True` gives without a mask. Eager transformers
sees that and passes no mask. Under torch.compile, torch before 2.14 makes transformers believe it
is exporting, so it builds a [batch, 1, L, L] mask for every forward. A mask costs twice: SDPA leaves
its flash kernel for the memory-efficient one, and grouped-query keys and values are copied per
query head (`repeat_kv`) instead of read in place (`enable_gqa`).

`CAUSAL_SDPA` is transformers' own SDPA attention registered under a name for which transformers
builds no mask (a name with no mask function registered: its early exit for custom attention). With
no mask, that function calls SDPA with `is_causal=True` and `enable_gqa`: the same arithmetic as the
eager forward. `causal_attention(model)` switches a model to it for the length of a `with` block,
and only for a model whose every layer is plain causal self-attention over the whole sequence
(`unsupported_reason` says why not: a sliding window shorter than the sequence, hybrid layer types,
bidirectional or non-SDPA attention). Callers must pass no attention mask inside the block: a mask
given there would be ignored, which is why only FastForward, which passes ids alone, uses it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

CAUSAL_SDPA = "evo_causal_sdpa"
FULL_ATTENTION = "full_attention"


@functools.cache
def _register() -> None:
    """Once per process: the name in transformers' attention registry (causal_attention runs per forward)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)


def unsupported_reason(model: nn.Module, tokens: int | None = None) -> str | None:
    """Why the mask-free path would change this model's attention on sequences of `tokens` tokens
    (None: any length) — None: it would not. A sliding window at least as long as the sequence
    never binds, so it is no reason for that length."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return "the model has no transformers config"
    if getattr(config, "sub_configs", None):
        return f"a composite model ({sorted(config.sub_configs)})"
    implementation = config._attn_implementation
    if implementation not in ("sdpa", CAUSAL_SDPA):
        return f"attention implementation {implementation!r}, not sdpa"
    if not getattr(config, "is_causal", True):
        return "bidirectional attention"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(kind != FULL_ATTENTION for kind in layer_types):
        return f"layer types {sorted(set(layer_types))}, not all {FULL_ATTENTION}"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and (tokens is None or tokens > window):
        return f"sliding-window attention ({window} tokens)"
    if getattr(config, "attention_chunk_size", None):
        return "chunked attention"
    return None


@contextmanager
def causal_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block the model's attention runs mask-free (SDPA with is_causal=True); its own
    implementation is back afterwards. The caller has checked `unsupported_reason(model)`."""
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = CAUSAL_SDPA
    try:
        yield
    finally:
        config._attn_implementation = before
