"""`evo compress --format gguf`: resolve the per-tensor types, plan the file, encode and write it.

One function for the CLI (and later `evo export --format gguf`): the model in, a GGUF file out whose
size equals the plan's prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from evo.gguf.recipes import DEFAULT_TYPES, resolve_types
from evo.gguf.writer import GGUFPlan, GGUFSummary, encode_tensors, plan_gguf, plan_tensors, write_gguf


def plan_from_spec(loaded, types_spec: str, *, drops: Mapping[int, str] | None = None, has_imatrix: bool = False,
                   token_embedding_type: str | None = None, output_tensor_type: str | None = None) -> GGUFPlan:
    """The GGUF plan of `loaded` for a recipe name or a types file (see evo.gguf.recipes.resolve_types)."""
    config = loaded.model.config
    heads = int(config.num_attention_heads)
    tensors = [(t.name, t.shape) for t in plan_tensors(loaded, drops)]
    types = resolve_types(types_spec, tensors, n_head=heads,
                          n_head_kv=int(getattr(config, "num_key_value_heads", None) or heads),
                          has_imatrix=has_imatrix, token_embedding_type=token_embedding_type,
                          output_tensor_type=output_tensor_type)
    recipe = types_spec.strip().upper() if types_spec.strip().upper() in DEFAULT_TYPES and not Path(types_spec).is_file() else None
    return plan_gguf(loaded, types, drops, recipe=recipe)


def compress_to_gguf(loaded, types_spec: str, out: str | Path, *, drops: Mapping[int, str] | None = None,
                     importance: Mapping[str, torch.Tensor] | None = None, token_embedding_type: str | None = None,
                     output_tensor_type: str | None = None, overwrite: bool = False, progress=None) -> GGUFSummary:
    """Write `loaded` as a GGUF file with the types of `types_spec`; importance (imatrix, by
    parameter name) weights the fits. The model is not modified."""
    plan = plan_from_spec(loaded, types_spec, drops=drops, has_imatrix=bool(importance),
                          token_embedding_type=token_embedding_type, output_tensor_type=output_tensor_type)
    encoded = encode_tensors(loaded, plan, importance, progress=progress)
    return write_gguf(plan, encoded, out, overwrite=overwrite)
