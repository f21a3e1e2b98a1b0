"""CompressionConfig: how every tensor of a model is compressed and which blocks are dropped.

The object a search evolves and exports; it round-trips losslessly through TOML and JSON.

Precedence for a decoder linear: `tensors[name]` > `layers[i].attention` / `layers[i].mlp` >
`default`. The token embedding takes `embedding` (shared with the head when tied), an untied
head takes `head`; everything else (norms, biases, position embeddings) is kept in bf16 unless
`tensors` names it. 1-D tensors are always kept: quantization groups need a matrix.

TOML shape (every section optional; a setting table may give only some fields, the rest take
TensorSetting's defaults, which keep the matrix in bf16):

    format = 1

    [default]                      # every decoder linear not overridden below
    bits = 4
    group_size = 128

    [embedding]                    # token embedding (and the head when tied)
    bits = 8

    [head]                         # an untied output head; an error on a tied model
    bits = 6

    [layers.0]                     # per decoder layer, by index in the base model
    attention = { bits = 8, group_size = 64 }
    mlp = { bits = 3, group_size = "channel", symmetric = true }

    [layers.11]
    drop = "mlp"                   # "none" | "attention" | "mlp" | "layer"

    [tensors."model.layers.3.self_attn.v_proj.weight"]
    bits = 6
    quantizer = "gptq"             # "rtn" (default) | "mse" | "gptq"
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from evo.compress.settings import ALLOWED_BITS, ALLOWED_GROUP_SIZES, TensorSetting
from evo.constants import DROPS
from evo.errors import EvoError
from evo.fileio import atomic_write_text
from evo.types import ATTENTION_ROLES, MLP_ROLES, ModelInfo

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser ships as the tomli package
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

CONFIG_FORMAT = 1
# Norms, biases and other small tensors: kept in bf16 (bits=16) unless `tensors` names them.
KEPT = TensorSetting()
DEFAULT_LINEAR = TensorSetting(bits=4, group_size=128)

_TOP_KEYS = ("format", "default", "embedding", "head", "layers", "tensors")
_LAYER_KEYS = ("attention", "mlp", "drop")


def _setting(value: Any, key: str) -> TensorSetting:
    """A TensorSetting from a table, with errors that name the config key."""
    if isinstance(value, TensorSetting):
        return value
    if not isinstance(value, Mapping):
        raise EvoError(f"config key {key}: expected a table of TensorSetting fields, got {value!r}")
    try:
        return TensorSetting.from_dict(value)
    except EvoError as exc:
        raise EvoError(f"config key {key}: {exc}") from None
    except TypeError as exc:
        raise EvoError(f"config key {key}: {exc}") from None


@dataclass(frozen=True)
class LayerConfig:
    """One decoder layer: a setting for its attention linears, one for its MLP linears, a drop.

    None means "use the config's default". Settings of a dropped block are kept but unused, so a
    genome with both a bits gene and a drop gene maps here without repair.
    """

    attention: TensorSetting | None = None
    mlp: TensorSetting | None = None
    drop: str = "none"

    def __post_init__(self) -> None:
        for name in ("attention", "mlp"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, TensorSetting):
                raise EvoError(f"LayerConfig.{name} must be a TensorSetting or None, got {type(value).__name__}")
        if self.drop not in DROPS:
            raise EvoError(f"LayerConfig.drop={self.drop!r} is not allowed; use one of {list(DROPS)}")

    @property
    def is_default(self) -> bool:
        """Equal to LayerConfig() (its three fields at their defaults; asked per layer of every config made)."""
        return self.attention is None and self.mlp is None and self.drop == "none"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.attention is not None:
            data["attention"] = self.attention.to_dict()
        if self.mlp is not None:
            data["mlp"] = self.mlp.to_dict()
        if self.drop != "none":
            data["drop"] = self.drop
        return data

    @classmethod
    def from_dict(cls, data: Any, key: str) -> LayerConfig:
        if not isinstance(data, Mapping):
            raise EvoError(f"config key {key}: expected a table with {list(_LAYER_KEYS)}, got {data!r}")
        unknown = sorted(set(data) - set(_LAYER_KEYS))
        if unknown:
            raise EvoError(f"config key {key}.{unknown[0]} is unknown; a layer table takes {list(_LAYER_KEYS)}")
        drop = data.get("drop", "none")
        if drop not in DROPS:
            raise EvoError(f"config key {key}.drop = {drop!r} is not allowed; use one of {list(DROPS)}")
        return cls(
            attention=_setting(data["attention"], f"{key}.attention") if "attention" in data else None,
            mlp=_setting(data["mlp"], f"{key}.mlp") if "mlp" in data else None,
            drop=drop,
        )


def _layer_index(key: Any, where: str) -> int:
    if isinstance(key, bool):
        raise EvoError(f"config key {where}.{key}: a layer index must be a non-negative integer")
    if isinstance(key, int):
        index = key
    elif isinstance(key, str) and key.isdigit() and key.isascii():
        index = int(key)
    else:
        raise EvoError(f"config key {where}.{key}: a layer index must be a non-negative integer")
    if index < 0:
        raise EvoError(f"config key {where}.{key}: a layer index must be a non-negative integer")
    return index


@dataclass(frozen=True)
class CompressionConfig:
    """How a whole model is compressed. Layer indices always refer to the base model.

    layers and tensors may be given as mappings; they are stored as tuples of (key, value) pairs
    sorted by key, so equal configs compare and hash equal. Layers equal to LayerConfig() are
    dropped from the table: they say nothing the default does not.
    """

    default: TensorSetting = DEFAULT_LINEAR
    embedding: TensorSetting = KEPT
    head: TensorSetting = KEPT
    layers: tuple[tuple[int, LayerConfig], ...] = ()
    tensors: tuple[tuple[str, TensorSetting], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("default", "embedding", "head"):
            if not isinstance(getattr(self, name), TensorSetting):
                raise EvoError(f"CompressionConfig.{name} must be a TensorSetting, got {getattr(self, name)!r}")
        layers = dict(self.layers.items() if isinstance(self.layers, Mapping) else self.layers)
        checked_layers = {}
        for key, layer in layers.items():
            index = _layer_index(key, "layers")
            if not isinstance(layer, LayerConfig):
                raise EvoError(f"CompressionConfig.layers[{index}] must be a LayerConfig, got {type(layer).__name__}")
            if index in checked_layers:
                raise EvoError(f"CompressionConfig.layers names layer {index} twice")
            if not layer.is_default:
                checked_layers[index] = layer
        object.__setattr__(self, "layers", tuple(sorted(checked_layers.items())))
        tensors = dict(self.tensors.items() if isinstance(self.tensors, Mapping) else self.tensors)
        for name, setting in tensors.items():
            if not isinstance(name, str) or not name:
                raise EvoError(f"CompressionConfig.tensors keys must be tensor names, got {name!r}")
            if not isinstance(setting, TensorSetting):
                raise EvoError(f"CompressionConfig.tensors[{name!r}] must be a TensorSetting")
        object.__setattr__(self, "tensors", tuple(sorted(tensors.items())))

    # --- lookups -------------------------------------------------------------------------------

    def layer(self, index: int) -> LayerConfig:
        """The layer's entry, or LayerConfig() when the config does not name it."""
        for key, layer in self.layers:
            if key == index:
                return layer
        return LayerConfig()

    def drop_for(self, index: int) -> str:
        return self.layer(index).drop

    @property
    def drops(self) -> dict[int, str]:
        """Layer index → drop, for the layers that drop something."""
        return {index: layer.drop for index, layer in self.layers if layer.drop != "none"}

    def setting_for(self, tensor_name: str, info: ModelInfo) -> TensorSetting:
        """The setting of any tensor of the model (decoder linear, norm, embedding, head ...)."""
        for name, setting in self.tensors:
            if name == tensor_name:
                return setting
        found = _tensor_index(info).get(tensor_name)
        if found is None:
            raise EvoError(f"model {info.model_id} has no tensor {tensor_name!r}")
        kind, index, role = found
        if kind == "linear":
            entry = self.layer(index)
            if role in ATTENTION_ROLES and entry.attention is not None:
                return entry.attention
            if role in MLP_ROLES and entry.mlp is not None:
                return entry.mlp
            return self.default
        if kind == "other":
            return KEPT
        if role == "embedding":
            return self.embedding
        if role == "head":
            return self.head
        return KEPT

    def validate_against(self, info: ModelInfo) -> None:
        """Raise EvoError naming the layer or tensor when this config does not fit the model."""
        for index, layer in self.layers:
            if index >= info.num_layers:
                raise EvoError(
                    f"config names layer {index} but model {info.model_id} has {info.num_layers} decoder layers "
                    f"(0..{info.num_layers - 1}): fix [layers.{index}]"
                )
            described = info.layers[index]
            if layer.drop == "attention" and described.attention_module is None:
                raise EvoError(
                    f"config drops the attention of layer {index}, but model {info.model_id} has no separate "
                    "attention block there: drop the whole layer instead"
                )
            if layer.drop == "mlp" and not any(lin.role in MLP_ROLES for lin in described.linears):
                raise EvoError(
                    f"config drops the MLP of layer {index}, but model {info.model_id} has no MLP linears there"
                )
        if sum(1 for _, layer in self.layers if layer.drop == "layer") >= info.num_layers:
            raise EvoError(f"config drops all {info.num_layers} decoder layers: keep at least one")
        shapes = tensor_shapes(info) if self.tensors else {}  # every evaluation validates: skip it when unused
        for name, setting in self.tensors:
            if name not in shapes:
                raise EvoError(
                    f"config names tensor {name!r}, which model {info.model_id} lacks: "
                    "check the name against `evo inspect` or remove it from [tensors]"
                )
            if setting.quantized and len(shapes[name]) != 2:
                raise EvoError(
                    f"config quantizes tensor {name!r} of shape {shapes[name]}; only matrices can be "
                    "quantized: use bits = 16 for it"
                )
        if info.tied_embeddings and self.head != KEPT:
            raise EvoError(
                f"model {info.model_id} ties its output head to the token embedding: set [embedding] "
                "only and leave [head] out"
            )

    # --- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML values; layer indices become string keys (TOML and JSON need them)."""
        return {
            "format": CONFIG_FORMAT,
            "default": self.default.to_dict(),
            "embedding": self.embedding.to_dict(),
            "head": self.head.to_dict(),
            "layers": {str(index): layer.to_dict() for index, layer in self.layers},
            "tensors": {name: setting.to_dict() for name, setting in self.tensors},
        }

    @classmethod
    def from_dict(cls, data: Any) -> CompressionConfig:
        """Inverse of to_dict; missing sections take their defaults, unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise EvoError(f"a compression config must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise EvoError(f"config key {unknown[0]} is unknown; known keys are {list(_TOP_KEYS)}")
        version = data.get("format", CONFIG_FORMAT)
        if version != CONFIG_FORMAT:
            raise EvoError(
                f"config key format = {version!r}: this evo reads format {CONFIG_FORMAT}; "
                "re-export the config with this version"
            )
        layers_data = data.get("layers", {})
        if not isinstance(layers_data, Mapping):
            raise EvoError("config key layers: expected a table of layer tables keyed by layer index")
        layers: dict[int, LayerConfig] = {}
        for key, value in layers_data.items():
            index = _layer_index(key, "layers")
            if index in layers:
                raise EvoError(f"config key layers.{key}: layer {index} is given twice")
            layers[index] = LayerConfig.from_dict(value, f"layers.{key}")
        tensors_data = data.get("tensors", {})
        if not isinstance(tensors_data, Mapping):
            raise EvoError("config key tensors: expected a table of settings keyed by tensor name")
        tensors = {name: _setting(value, f"tensors.{name!r}") for name, value in tensors_data.items()}
        return cls(
            default=_setting(data["default"], "default") if "default" in data else DEFAULT_LINEAR,
            embedding=_setting(data["embedding"], "embedding") if "embedding" in data else KEPT,
            head=_setting(data["head"], "head") if "head" in data else KEPT,
            layers=layers,
            tensors=tensors,
        )

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as JSON text; also written atomically to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CompressionConfig:
        """Read a JSON config file."""
        return cls.from_json_text(_read_text(Path(path)), source=str(path))

    @classmethod
    def from_json_text(cls, text: str, source: str = "compression config") -> CompressionConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvoError(f"{source} is not valid JSON: {exc}") from None
        return _with_source(data, source)

    def to_toml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as TOML text; also written atomically to `path` when given."""
        text = _write_toml(self.to_dict())
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> CompressionConfig:
        """Read a TOML config file."""
        return cls.from_toml_text(_read_text(Path(path)), source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "compression config") -> CompressionConfig:
        if tomllib is None:
            raise EvoError("reading TOML on Python 3.10 needs the tomli package: pip install tomli")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise EvoError(f"{source} is not valid TOML: {exc}") from None
        return _with_source(data, source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as TOML (.toml) or JSON (.json) by the file's suffix, atomically."""
        path = Path(path)
        if path.suffix not in (".toml", ".json"):
            raise EvoError(f"config file {path} must end in .toml or .json")
        if path.suffix == ".toml":
            self.to_toml(path)
        else:
            self.to_json(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompressionConfig:
        """Read a .toml or .json config file by its suffix."""
        path = Path(path)
        if path.suffix not in (".toml", ".json"):
            raise EvoError(f"config file {path} must end in .toml or .json")
        return cls.from_toml(path) if path.suffix == ".toml" else cls.from_json(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvoError(f"config file {path} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvoError(f"cannot read config file {path}: {exc}") from None


def _with_source(data: Any, source: str) -> CompressionConfig:
    try:
        return CompressionConfig.from_dict(data)
    except EvoError as exc:
        raise EvoError(f"{source}: {exc}") from None


def tensor_shapes(info: ModelInfo) -> dict[str, tuple[int, ...]]:
    """Every tensor name the model stores once (a tied head is the embedding) → its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in info.layers:
        for lin in layer.linears:
            shapes[lin.name] = tuple(lin.shape)
        for name, shape in layer.other_tensors:
            shapes[name] = tuple(shape)
    for tensor in info.non_decoder:
        shapes[tensor.name] = tuple(tensor.shape)
    return shapes


@dataclass(frozen=True)
class TensorEntry:
    """One stored tensor of a model as a config sees it (what `evo inspect` lists)."""

    name: str
    shape: tuple[int, ...]
    role: str  # attn_q, mlp_down, ..., embedding, head, norm, bias, other
    section: str  # the config key that sets it unless [tensors] names it
    quantizable: bool  # a matrix: any TensorSetting; otherwise bits = 16 only

    def allowed(self) -> str:
        if not self.quantizable:
            return "bits = 16 only (1-D)"
        groups = "/".join("channel" if g is None else str(g) for g in ALLOWED_GROUP_SIZES)
        return f"bits {'/'.join(map(str, ALLOWED_BITS))}, group_size {groups}, rescale, sparsity"


def tensor_entries(info: ModelInfo) -> tuple[TensorEntry, ...]:
    """Every tensor the model stores once, in plan order, with the config section that governs it."""
    entries = []
    for layer in info.layers:
        for lin in layer.linears:
            group = "attention" if lin.role in ATTENTION_ROLES else "mlp" if lin.role in MLP_ROLES else None
            section = f"layers.{layer.index}.{group} (else default)" if group else "default"
            entries.append(TensorEntry(lin.name, tuple(lin.shape), lin.role, section, True))
        for name, shape in layer.other_tensors:
            role = "bias" if name.endswith(".bias") else "norm"
            entries.append(TensorEntry(name, tuple(shape), role, "tensors (kept in bf16)", len(shape) == 2))
    for tensor in info.non_decoder:
        section = {"embedding": "embedding", "head": "head"}.get(tensor.role, "tensors (kept in bf16)")
        entries.append(TensorEntry(tensor.name, tuple(tensor.shape), tensor.role, section, len(tensor.shape) == 2))
    return tuple(entries)


# --- a TOML writer for the fixed shape of to_dict() ----------------------------------------------
# tomli_w is not a dependency and the shape is small: scalars, settings tables, and two tables
# of tables (layers, tensors) whose settings are written as inline tables.

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    bare = key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML config values must be finite, got {value!r}")
        text = repr(value)  # shortest exact form; always has "." or "e", as TOML floats need
        return text
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to the config TOML")


def _toml_table(lines: list[str], header: str, table: Mapping[str, Any]) -> None:
    lines.append("")
    lines.append(f"[{header}]")
    lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())


def _write_toml(data: Mapping[str, Any]) -> str:
    lines = [
        "# evo compression config: see evo/compress/config.py for the meaning of each section",
        f"format = {data['format']}",
    ]
    for section in ("default", "embedding", "head"):
        _toml_table(lines, section, data[section])
    for index, layer in data["layers"].items():
        _toml_table(lines, f"layers.{_toml_key(index)}", layer)
    for name, setting in data["tensors"].items():
        _toml_table(lines, f"tensors.{_toml_key(name)}", setting)
    return "\n".join(lines) + "\n"


_TENSOR_INDEXES: dict[int, tuple[ModelInfo, dict[str, tuple[str, int | None, str | None]]]] = {}


def _tensor_index(info: ModelInfo) -> dict[str, tuple[str, int | None, str | None]]:
    """Tensor name → (kind: linear | other | non_decoder, layer index, role), the first match in the
    model's order (decoder layers' linears then their other tensors, then the rest); memoised per
    info object: setting_for is asked for every tensor of every config a search sizes."""
    found = _TENSOR_INDEXES.get(id(info))
    if found is not None and found[0] is info:
        return found[1]
    index: dict[str, tuple[str, int | None, str | None]] = {}
    for layer in info.layers:
        for lin in layer.linears:
            index.setdefault(lin.name, ("linear", layer.index, lin.role))
        for name, _ in layer.other_tensors:
            index.setdefault(name, ("other", layer.index, None))
    for tensor in info.non_decoder:
        index.setdefault(tensor.name, ("non_decoder", None, tensor.role))
    if len(_TENSOR_INDEXES) >= 64:
        _TENSOR_INDEXES.clear()
    _TENSOR_INDEXES[id(info)] = (info, index)
    return index
