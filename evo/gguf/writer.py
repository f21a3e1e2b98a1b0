"""Write a transformers causal LM (Llama family) as a GGUF file with a llama.cpp type per tensor.

The plan (names, shapes, types, metadata) is built first and is all `evo.gguf.size` needs, so the
file's size is known before a byte is encoded. Metadata and tokenizer come from the source GGUF
when the model was loaded from one (block count and file type rewritten); otherwise they are built
from the transformers config and tokenizer as llama.cpp's convert_hf_to_gguf.py does for Llama
(BPE tokenizers only). Tensor names follow gguf's TensorNameMap; q/k rows are permuted as the
converter does (llama.cpp's rope is interleaved), which transformers undoes when it loads a GGUF.

Drops: a dropped layer leaves the file and later blocks are renumbered (as llama-quantize
--prune-layers). llama.cpp's Llama graph has no way to say "no attention" or "no MLP" in one
block, so a dropped attention or MLP block is written with zero weights (attn_output or ffn_down
zero makes the block add exactly zero to the residual stream): same outputs, but its bytes stay.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, LlamaFileType, TokenType

from evo.constants import DROPS
from evo.errors import EvoError
from evo.fileio import atomic_path
from evo.gguf import quants
from evo.gguf.size import KV, GGUFSize, GGUFSizeModel, TensorEntry, gguf_size

# model_type → GGUF architecture, for the families whose tensors map one to one and whose q/k
# need llama.cpp's row permutation.
ARCHITECTURES = {"llama": "llama", "mistral": "llama"}
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
# keys rewritten (or left out) when metadata is copied from a source GGUF
_REWRITTEN = ("general.architecture", "general.alignment", "general.file_type", "general.quantization_version")
_ROLE_OF_SUFFIX = {
    "attn_q": "attention", "attn_k": "attention", "attn_v": "attention", "attn_output": "attention",
    "ffn_gate": "mlp", "ffn_up": "mlp", "ffn_down": "mlp",
}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the file: where it comes from, its name and type there."""

    name: str  # GGUF name, blocks numbered as in the file (after drops)
    source: str  # model parameter name
    shape: tuple[int, ...]  # torch shape: (rows, cols) or (n,)
    qtype: str
    layer: int | None = None  # original decoder layer index
    permute_heads: tuple[int, int] | None = None  # (heads, kv heads) of llama.cpp's q/k row order
    zero: bool = False  # a dropped attention/MLP block, emulated with zero weights

    @property
    def quantizable(self) -> bool:
        """2-D weights take a quantized type; norms and biases stay F32 (as llama.cpp keeps them)."""
        return len(self.shape) == 2


@dataclass(frozen=True)
class GGUFPlan:
    """Everything that decides the file's bytes except the weights' values."""

    arch: str
    metadata: tuple[KV, ...]  # general.architecture first, as GGUFWriter writes it
    tensors: tuple[TensorPlan, ...]
    alignment: int = GGUF_DEFAULT_ALIGNMENT

    def size(self) -> GGUFSize:
        return gguf_size(self.metadata, [TensorEntry(t.name, t.shape, t.qtype) for t in self.tensors], self.alignment)

    def size_model(self) -> GGUFSizeModel:
        """Sizes of this file's tensor set under any types: fixed bytes + Σ per-(tensor, type) bytes."""
        return GGUFSizeModel(self.metadata, [(t.name, t.shape) for t in self.tensors], self.alignment)

    @property
    def types(self) -> dict[str, str]:
        return {t.name: t.qtype for t in self.tensors}

    def with_types(self, types: Mapping[str, str]) -> GGUFPlan:
        """The same plan with other tensor types (checked against the shapes); file type updated."""
        tensors = []
        for t in self.tensors:
            qtype = quants.quant_type(types.get(t.name, t.qtype)).name
            if qtype != t.qtype:
                if not t.quantizable and qtype not in quants.FLOAT_TYPES:
                    raise EvoError(f"tensor {t.name} is 1-D: it stays a float type (F32, F16, BF16), not {qtype}")
                quants.check_allowed(t.name, t.shape, qtype)
            tensors.append(_replace(t, qtype=qtype))
        metadata = tuple(_file_type_kv(tensors) if kv.key == "general.file_type" else kv for kv in self.metadata)
        return GGUFPlan(arch=self.arch, metadata=metadata, tensors=tuple(tensors), alignment=self.alignment)


def _replace(t: TensorPlan, **changes) -> TensorPlan:
    from dataclasses import replace

    return replace(t, **changes)


@dataclass(frozen=True)
class GGUFSummary:
    path: str
    predicted_bytes: int
    written_bytes: int
    types: dict[str, int] = field(default_factory=dict)  # type → number of tensors


# --------------------------------------------------------------------------------------------
# layout: names, shapes and sources


def gguf_arch(loaded) -> str:
    model_type = loaded.info.model_type
    if model_type not in ARCHITECTURES:
        raise EvoError(
            f"GGUF export supports the Llama family ({', '.join(ARCHITECTURES)}), not model type {model_type!r}"
        )
    return ARCHITECTURES[model_type]


def _check_drops(info, drops: Mapping[int, str]) -> dict[int, str]:
    out = {}
    for index, drop in (drops or {}).items():
        if drop not in DROPS:
            raise EvoError(f"drop {drop!r} of layer {index} is not one of {', '.join(DROPS)}")
        if not 0 <= int(index) < info.num_layers:
            raise EvoError(f"cannot drop in layer {index}: the model has layers 0..{info.num_layers - 1}")
        if drop != "none":
            out[int(index)] = drop
    if sum(1 for d in out.values() if d == "layer") >= info.num_layers:
        raise EvoError(f"the drops remove all {info.num_layers} decoder layers: keep at least one")
    return out


def plan_tensors(loaded, drops: Mapping[int, str] | None = None) -> tuple[TensorPlan, ...]:
    """The file's tensors in writing order, typed F32 (types come from `resolve_types`)."""
    import gguf

    arch = gguf_arch(loaded)
    info = loaded.info
    drops = _check_drops(info, drops or {})
    config = loaded.model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], info.num_layers)
    params = dict(loaded.model.named_parameters())
    kept = [layer.index for layer in info.layers if drops.get(layer.index) != "layer"]
    new_index = {old: new for new, old in enumerate(kept)}

    def mapped(source: str) -> str:
        name = name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise EvoError(f"parameter {source} of {info.model_id} has no GGUF tensor name for {arch}: it cannot be exported")
        return name

    def entry(source: str, layer: int | None = None) -> TensorPlan:
        name = mapped(source)
        zero = False
        permute = None
        if layer is not None:
            match = re.match(r"blk\.(\d+)\.(.*)$", name)
            if not match or int(match.group(1)) != layer:
                raise EvoError(f"parameter {source} maps to GGUF tensor {name}, outside its layer {layer}")
            suffix = match.group(2).split(".")[0]
            name = f"blk.{new_index[layer]}.{match.group(2)}"
            zero = layer in drops and _ROLE_OF_SUFFIX.get(suffix) == drops[layer]
            if suffix == "attn_q":
                permute = (heads, heads)
            elif suffix == "attn_k":
                permute = (heads, kv_heads)
        return TensorPlan(name=name, source=source, shape=tuple(params[source].shape), qtype="F32", layer=layer,
                          permute_heads=permute, zero=zero)

    embedding = [t for t in info.non_decoder if t.role == "embedding"]
    head = [t for t in info.non_decoder if t.role == "head"]
    others = [t for t in info.non_decoder if t.role not in ("embedding", "head")]
    tensors = [entry(t.name) for t in embedding]
    for index in kept:
        layer = info.layers[index]
        prefix = layer.module + "."
        for name, _ in loaded.model.get_submodule(layer.module).named_parameters():
            tensors.append(entry(prefix + name, index))
    tensors += [entry(t.name) for t in others]
    if not info.tied_embeddings:
        tensors += [entry(t.name) for t in head]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise EvoError(f"two parameters of {info.model_id} map to the same GGUF tensor name: it cannot be exported")
    return tuple(tensors)


# --------------------------------------------------------------------------------------------
# metadata


def _kv(key: str, value, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> KV:
    return KV(key=key, value=value, type=vtype, sub_type=sub_type)


_MAJORITY_FILE_TYPE = {
    "F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "IQ4_NL": "MOSTLY_IQ4_NL",
    "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
    "Q6_K": "MOSTLY_Q6_K",
}


def _file_type_kv(tensors, recipe: str | None = None) -> KV:
    """general.file_type: informational in llama.cpp; the recipe's, else the type holding most weights."""
    if recipe is not None:
        return _kv("general.file_type", int(LlamaFileType[f"MOSTLY_{recipe.upper()}"]), GGUFValueType.UINT32)
    weights = Counter()
    for t in tensors:
        if t.quantizable:
            weights[t.qtype] += int(np.prod(t.shape))
    top = weights.most_common(1)[0][0] if weights else "F32"
    return _kv("general.file_type", int(LlamaFileType[_MAJORITY_FILE_TYPE[top]]), GGUFValueType.UINT32)


def _metadata_from_gguf(path: str, arch: str, block_count: int) -> list[KV]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    source_arch = reader.fields["general.architecture"].contents()
    if source_arch != arch:
        raise EvoError(f"source GGUF {path} is a {source_arch!r} model, not {arch!r}: it cannot be rewritten as {arch}")
    out = []
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key in _REWRITTEN:
            continue
        vtype = fld.types[0]
        if vtype == GGUFValueType.ARRAY:
            if len(fld.types) != 2:
                raise EvoError(f"source GGUF key {key} holds nested arrays: evo cannot copy it")
            value = fld.contents()
            if not value:
                continue
            out.append(_kv(key, value, vtype, fld.types[1]))
        else:
            out.append(_kv(key, fld.contents(), vtype))
    return [kv if kv.key != f"{arch}.block_count" else _kv(kv.key, block_count, GGUFValueType.UINT32) for kv in out]


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(config, "rope_scaling", None)
    if rope_type != "default" or (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in (None, "default")):
        raise EvoError(f"rope type {rope_type!r} (rope scaling) is not supported by evo's GGUF writer yet: "
                       "export a model with default rope, or start from its GGUF file")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _metadata_from_config(loaded, arch: str, block_count: int) -> list[KV]:
    config = loaded.model.config
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    u32, f32, s = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    name = Path(str(getattr(config, "_name_or_path", "") or loaded.info.model_id)).name or "model"
    out = [
        _kv("general.type", "model", s),
        _kv("general.name", name, s),
        _kv(f"{arch}.block_count", block_count, u32),
        _kv(f"{arch}.context_length", int(config.max_position_embeddings), u32),
        _kv(f"{arch}.embedding_length", hidden, u32),
        _kv(f"{arch}.feed_forward_length", int(config.intermediate_size), u32),
        _kv(f"{arch}.attention.head_count", heads, u32),
        _kv(f"{arch}.attention.head_count_kv", int(getattr(config, "num_key_value_heads", None) or heads), u32),
        _kv(f"{arch}.rope.freq_base", _rope_theta(config), f32),
        _kv(f"{arch}.attention.layer_norm_rms_epsilon", float(config.rms_norm_eps), f32),
    ]
    if head_dim != hidden // heads:
        out += [_kv(f"{arch}.attention.key_length", head_dim, u32), _kv(f"{arch}.attention.value_length", head_dim, u32)]
    out += [
        _kv(f"{arch}.vocab_size", int(loaded.info.vocab_size), u32),
        _kv(f"{arch}.rope.dimension_count", head_dim, u32),
    ]
    return out + _tokenizer_metadata(loaded.tokenizer, int(loaded.info.vocab_size))


def _tokenizer_metadata(tokenizer, vocab_size: int) -> list[KV]:
    """tokenizer.ggml.* for a byte-level BPE tokenizer, as convert_hf_to_gguf's _set_vocab_gpt2."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EvoError("the model's tokenizer is not a fast (tokenizers) tokenizer: evo builds GGUF vocabularies "
                       "from BPE tokenizers only; start from the model's GGUF file instead")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise EvoError(f"the model's tokenizer is {model.get('type')}, not BPE: evo builds GGUF vocabularies from BPE "
                       "tokenizers only; start from the model's GGUF file instead")
    vocab = tokenizer.get_vocab()
    by_id = {int(i): t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise EvoError(f"the tokenizer has ids up to {max(by_id)} but the embedding only {vocab_size} rows")
    added = {int(i): tok for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(TokenType.CONTROL if getattr(added[i], "special", False) else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    s, u32, arr, b = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.ARRAY, GGUFValueType.BOOL
    out = [
        _kv("tokenizer.ggml.model", "gpt2", s),
        _kv("tokenizer.ggml.pre", "default", s),
        _kv("tokenizer.ggml.tokens", tokens, arr, s),
        _kv("tokenizer.ggml.token_type", types, arr, GGUFValueType.INT32),
    ]
    if merges:
        out.append(_kv("tokenizer.ggml.merges", merges, arr, s))
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            out.append(_kv(f"tokenizer.ggml.{key}_token_id", int(value), u32))
    out.append(_kv("tokenizer.ggml.add_bos_token", bool(getattr(tokenizer, "add_bos_token", False)), b))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        out.append(_kv("tokenizer.chat_template", template, s))
    return out


def plan_gguf(loaded, types: Mapping[str, str] | None = None, drops: Mapping[int, str] | None = None,
              *, default_type: str = "Q8_0", recipe: str | None = None) -> GGUFPlan:
    """The plan of the GGUF file of `loaded`: tensors (with `types`, by GGUF name; 2-D tensors not
    named take `default_type`, which falls back as llama.cpp does when their rows do not fit its
    blocks; 1-D tensors F32) and metadata. A type named explicitly that a shape does not allow
    is an EvoError naming the tensor. `recipe` (e.g. Q3_K_M) names the file type in the metadata."""
    from evo.gguf.recipes import fallback_type

    arch = gguf_arch(loaded)
    tensors = plan_tensors(loaded, drops)
    types = dict(types or {})
    unknown = set(types) - {t.name for t in tensors}
    if unknown:
        raise EvoError(f"type given for {sorted(unknown)[0]}, which is not a tensor of this GGUF file "
                       f"(names like blk.0.attn_q.weight, token_embd.weight)")
    default = quants.quant_type(default_type).name
    typed = []
    for t in tensors:
        if t.name in types:
            qtype = quants.quant_type(types[t.name]).name
            if not t.quantizable and qtype not in quants.FLOAT_TYPES:
                raise EvoError(f"tensor {t.name} is 1-D: it stays a float type (F32, F16, BF16), not {qtype}")
            quants.check_allowed(t.name, t.shape, qtype)
        elif t.quantizable:
            qtype = fallback_type(t.shape, default)
        else:
            qtype = "F32"
        typed.append(_replace(t, qtype=qtype))
    block_count = len({t.layer for t in typed if t.layer is not None})
    source = loaded.source
    if source is not None and source.gguf_file:
        body = _metadata_from_gguf(str(Path(source.location) / source.gguf_file), arch, block_count)
    else:
        body = _metadata_from_config(loaded, arch, block_count)
    metadata = [_kv("general.architecture", arch, GGUFValueType.STRING), *body, _file_type_kv(typed, recipe),
                _kv("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32)]
    return GGUFPlan(arch=arch, metadata=tuple(metadata), tensors=tuple(typed))


# --------------------------------------------------------------------------------------------
# encoding and writing


def importance_from_stats(stats) -> dict[str, torch.Tensor]:
    """llama.cpp's imatrix from evo's activation statistics: Σx² per input column, by parameter name."""
    return {name: value.l2.float() ** 2 for name, value in (stats or {}).items()}


def _row_permutation(rows: int, heads: int) -> torch.Tensor:
    """Rows in llama.cpp's order: convert_hf_to_gguf's permute(w, n_head, n_head_kv) as an index."""
    if rows % (2 * heads):
        raise EvoError(f"{rows} rows cannot be split into {heads} heads of rotary pairs")
    return torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)


def encode_tensors(loaded, plan: GGUFPlan, importance: Mapping[str, torch.Tensor] | None = None,
                   progress=None, hessians=None) -> dict[str, np.ndarray]:
    """Each tensor's bytes as stored in the model's own row order (before the q/k permutation).
    `hessians` (an evo.evaluate.hessian.HessianSet, or None): the decoder linears it holds are
    GPTQ-encoded (evo.gguf.levels.encode, as the GGUF search's evaluator does with them)."""
    from evo.gguf.levels import encode

    params = dict(loaded.model.named_parameters())
    importance = importance or {}
    encoded = {}
    for t in plan.tensors:
        weight = params[t.source].detach()
        hessian = None
        if t.zero:
            weight = torch.zeros_like(weight)
        elif hessians is not None and t.source in hessians and t.quantizable:
            hessian = hessians.hessian(t.source)
        encoded[t.name] = encode(weight, t.qtype, importance.get(t.source), hessian, name=t.name)
        if progress is not None:
            progress(t.name)
    return encoded


def write_gguf(plan: GGUFPlan, encoded: Mapping[str, np.ndarray], path: str | os.PathLike,
               *, overwrite: bool = False) -> GGUFSummary:
    """Write the file (atomically, evo.fileio) and check its size equals the plan's."""
    from gguf import GGUFWriter

    path = Path(path)
    if path.exists() and not overwrite:
        raise EvoError(f"{path} exists: pass --overwrite to replace it, or choose another --out")
    if path.suffix.lower() != ".gguf":
        raise EvoError(f"--out {path} must end in .gguf")
    with atomic_path(path) as tmp:  # a killed write leaves no half file at --out
        writer = GGUFWriter(str(tmp), plan.arch)
        for kv in plan.metadata:
            if kv.key == "general.architecture":
                continue
            writer.add_key_value(kv.key, kv.value, kv.type, kv.sub_type)
        for t in plan.tensors:
            data = encoded[t.name]
            if t.permute_heads is not None:
                data = data[_row_permutation(t.shape[0], t.permute_heads[1]).numpy()]
            data = np.ascontiguousarray(data)
            if t.qtype in ("F32", "F16"):
                writer.add_tensor(t.name, data)
            else:
                writer.add_tensor(t.name, data, raw_dtype=GGMLQuantizationType[t.qtype])
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    predicted = plan.size().total_bytes
    written = path.stat().st_size
    if written != predicted:  # a bug in evo, not a user error
        raise RuntimeError(f"GGUF size mismatch: predicted {predicted} bytes, wrote {written}")
    return GGUFSummary(path=str(path), predicted_bytes=predicted, written_bytes=written,
                       types=dict(Counter(t.qtype for t in plan.tensors)))


@torch.no_grad()
def load_dequantized(loaded, plan: GGUFPlan, encoded: Mapping[str, np.ndarray],
                     drops: Mapping[int, str] | None = None) -> None:
    """Turn `loaded.model` (in place) into the model the GGUF file holds: every exported weight
    replaced by evo's decoding of its bytes, then the drops applied (evo's own block drops)."""
    from evo.compress.structure import apply_drops

    params = dict(loaded.model.named_parameters())
    for t in plan.tensors:
        target = params[t.source]
        value = quants.dequantize(encoded[t.name], t.qtype, t.shape, device=target.device)
        target.copy_(value.to(target.dtype))
    drops = _check_drops(loaded.info, drops or {})
    if drops:
        apply_drops(loaded.model, loaded.info, drops)
