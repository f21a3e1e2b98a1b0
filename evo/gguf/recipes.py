"""llama.cpp's own per-tensor type choices (llama-quantize's file types Q2_K … Q8_0) as a mapping
evo can write, and llama.cpp's fallback for rows that do not fit a type's blocks.

Transcribed from llama_tensor_get_type_impl / tensor_type_fallback in src/llama-quant.cpp for the
dense (no experts), non-Falcon models evo exports; the layer counters follow llama.cpp's tensor
order (by block number), so `i_attention_wv` and `i_ffn_down` are the block index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from evo.errors import EvoError
from evo.gguf import quants

# file type → the type of every 2-D weight before the per-tensor rules
DEFAULT_TYPES = {
    "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0",
    "Q5_1": "Q5_1", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL",
}
RECIPES = tuple(DEFAULT_TYPES)

# tensor_type_fallback: a type whose block does not divide the row → a 32-block type of similar size
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def fallback_type(shape: Sequence[int], qtype: str) -> str:
    """llama.cpp's type for a tensor whose rows may not divide `qtype`'s block (F16 as a last resort)."""
    qtype = quants.quant_type(qtype).name
    if quants.allows(tuple(shape), qtype):
        return qtype
    fallback = _FALLBACK.get(qtype)
    if fallback is None and qtype == "IQ4_NL":
        fallback = "F16"
    if fallback is None:
        raise EvoError(f"no fallback is defined for type {qtype} (rows of {shape[-1]} weights)")
    return fallback if quants.allows(tuple(shape), fallback) else "F16"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _block(name: str) -> int | None:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def recipe_types(recipe: str, tensors: Sequence[tuple[str, tuple[int, ...]]], *, n_head: int, n_head_kv: int,
                 has_imatrix: bool = False, token_embedding_type: str | None = None,
                 output_tensor_type: str | None = None) -> dict[str, str]:
    """Types llama-quantize gives the 2-D tensors (name, torch shape (rows, cols)) of a file for
    `recipe` (e.g. Q3_K_M), fallbacks included; 1-D tensors are left out (they stay F32)."""
    key = recipe.strip().upper()
    if key not in DEFAULT_TYPES:
        raise EvoError(f"unknown llama.cpp recipe {recipe!r}: use one of {', '.join(RECIPES)}")
    default = DEFAULT_TYPES[key]
    names = [name for name, shape in tensors if len(shape) == 2]
    shapes = dict(tensors)
    tied = "output.weight" not in names
    n_layers = len({_block(n) for n in names if _block(n) is not None})
    n_gqa = n_head // max(1, n_head_kv)
    token_type = quants.quant_type(token_embedding_type).name if token_embedding_type else None
    output_type = quants.quant_type(output_tensor_type).name if output_tensor_type else None
    n_attention_wv = sum(1 for n in names if "attn_v.weight" in n)
    i_attention_wv = 0
    order = sorted(names, key=lambda n: (_block(n) if _block(n) is not None else -1, n))  # llama.cpp's order
    for forced, tensor in ((token_type, "token_embd.weight"), (output_type, "output.weight")):
        if forced is not None and tensor in shapes:
            quants.check_allowed(tensor, shapes[tensor], forced)
    out: dict[str, str] = {}
    for name in order:
        shape = shapes[name]
        if name == "token_embd.weight" and token_type is not None:
            out[name] = token_type  # taken as given, before any rule or fallback (llama_tensor_get_type)
            continue
        if name == "output.weight" and output_type is not None:
            out[name] = output_type
            continue
        new = default
        layer = _block(name)
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            if output_type is not None:
                new = output_type
            elif shape[-1] % quants.quant_type(new).block_size:
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif name == "token_embd.weight":
            pass
        elif "attn_v.weight" in name:
            if key == "Q2_K":
                new = "Q4_K" if n_gqa >= 4 else "Q3_K"
            elif key == "Q3_K_M":
                new = "Q5_K" if i_attention_wv < 2 else "Q4_K"
            elif key == "Q3_K_L":
                new = "Q5_K"
            elif key == "IQ4_NL" and n_gqa >= 4:
                new = "Q5_K"
            elif key in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attention_wv, n_attention_wv):
                new = "Q6_K"
            elif key == "Q4_K_S" and i_attention_wv < 4:
                new = "Q5_K"
            i_attention_wv += 1
        elif "ffn_down" in name:
            i = layer
            if key == "Q2_K":
                new = "Q3_K"
            elif key == "Q3_K_M":
                new = "Q5_K" if i < n_layers // 16 else "Q4_K"
            elif key == "Q3_K_L":
                new = "Q5_K"
            elif key == "Q4_K_M":
                if _use_more_bits(i, n_layers):
                    new = "Q6_K"
            elif i < n_layers // 8 and key == "IQ4_NL" and not has_imatrix:
                new = "Q5_K"
            elif key == "Q5_K_M" and _use_more_bits(i, n_layers):
                new = "Q6_K"
            elif key == "Q4_K_S" and i < n_layers // 8:
                new = "Q5_K"
            elif key in ("Q4_0", "Q5_0") and has_imatrix and i < n_layers // 8:
                new = "Q4_1" if key == "Q4_0" else "Q5_1"
        elif "attn_output.weight" in name:
            if key == "Q2_K":
                new = "Q3_K"
            elif key == "Q3_K_M":
                new = "Q4_K"
            elif key == "Q3_K_L":
                new = "Q5_K"
        out[name] = fallback_type(shape, new)
    return {name: out[name] for name in names}


def resolve_types(spec: str, tensors: Sequence[tuple[str, tuple[int, ...]]], *, n_head: int, n_head_kv: int,
                  has_imatrix: bool = False, token_embedding_type: str | None = None,
                  output_tensor_type: str | None = None) -> dict[str, str]:
    """`spec` is a recipe name (Q3_K_M …) or a TOML/JSON file: `recipe = "Q3_K_M"` or
    `default = "Q4_0"` (a type for every 2-D tensor, with llama.cpp's fallback), then `[tensors]`
    regex = type pairs matched against the full GGUF names (first match wins; a quantized type only
    reaches 2-D weights; a type the tensor's rows do not allow is an error naming it)."""
    from pathlib import Path

    path = Path(spec)
    if spec.strip().upper() in DEFAULT_TYPES and not path.is_file():
        return recipe_types(spec, tensors, n_head=n_head, n_head_kv=n_head_kv, has_imatrix=has_imatrix,
                            token_embedding_type=token_embedding_type, output_tensor_type=output_tensor_type)
    if not path.is_file():
        raise EvoError(f"--types {spec!r} is neither a recipe ({', '.join(RECIPES)}) nor an existing file")
    data = _read_table(path)
    unknown = set(data) - {"recipe", "default", "tensors", "token_embedding_type", "output_tensor_type"}
    if unknown:
        raise EvoError(f"{path}: unknown key {sorted(unknown)[0]!r}; use recipe, default, tensors, "
                       "token_embedding_type, output_tensor_type")
    token_embedding_type = token_embedding_type or data.get("token_embedding_type")
    output_tensor_type = output_tensor_type or data.get("output_tensor_type")
    if "recipe" in data and "default" in data:
        raise EvoError(f"{path}: give either recipe or default, not both")
    two_d = [(n, s) for n, s in tensors if len(s) == 2]
    if "recipe" in data:
        types = recipe_types(str(data["recipe"]), tensors, n_head=n_head, n_head_kv=n_head_kv,
                             has_imatrix=has_imatrix, token_embedding_type=token_embedding_type,
                             output_tensor_type=output_tensor_type)
    else:
        default = quants.quant_type(str(data.get("default", "Q8_0"))).name
        types = {n: fallback_type(s, default) for n, s in two_d}
        if token_embedding_type and "token_embd.weight" in types:
            types["token_embd.weight"] = quants.quant_type(token_embedding_type).name
        if output_tensor_type and "output.weight" in types:
            types["output.weight"] = quants.quant_type(output_tensor_type).name
    patterns = data.get("tensors", {})
    if not isinstance(patterns, Mapping):
        raise EvoError(f"{path}: [tensors] must be a table of regex = type")
    compiled = []
    for pattern, qtype in patterns.items():
        try:
            compiled.append((re.compile(pattern), quants.quant_type(str(qtype)).name))
        except re.error as exc:
            raise EvoError(f"{path}: tensors pattern {pattern!r} is not a regular expression ({exc})") from None
    shapes = dict(tensors)
    for name in list(shapes):
        for regex, qtype in compiled:
            if regex.fullmatch(name):
                if len(shapes[name]) != 2 and qtype not in quants.FLOAT_TYPES:
                    continue  # as llama-quantize --tensor-type: quantized types reach 2-D weights only
                quants.check_allowed(name, shapes[name], qtype)
                types[name] = qtype
                break
    return types


def _read_table(path) -> dict:
    import json
    import tomllib

    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EvoError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
