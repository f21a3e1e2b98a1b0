"""The compressed model on disk: write it from a CompressionResult, and load() it back into a
working transformers model whose logits equal the in-memory compressed model's exactly.

Layout of an artifact directory (every byte counts toward the budget, so JSON is compact):
  manifest.json   format, base model, evo version, the CompressionConfig, and per tensor its
                  name, shape, setting and frames (coder, offset, length, sha256); total_bytes is
                  the size of the whole directory, this file included
  tensors.bin     every frame of every tensor, concatenated in manifest order, no padding
  config.json     the transformers config of the compressed architecture (dropped layers gone,
                  no GGUF quantization_config), so AutoModelForCausalLM.from_config rebuilds it
  tokenizer files and generation_config.json, as transformers saves them, the large ones (tokenizer.json)
                  zstd-compressed as NAME.zst (evo.compress.packed_files); the manifest's file_sha256
                  gives every file but tensors.bin its sha256 (format 2; format 1 artifacts, all files
                  plain and without file digests, still load)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evo import __version__
from evo.compress import QuantizedTensor, TensorSetting, dequantize
from evo.compress import integrity, packed_files
from evo.compress.coding import EncodedTensor, check_encoded, decode_tensor, encode_tensor
from evo.compress.config import CompressionConfig
from evo.compress.structure import apply_block_drop, shrink_config
from evo.constants import (
    DTYPES,
    GENERATION_CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_CONFIG_FILE,
    TENSORS_FILE,
    TOKENIZER_CONFIG_FILE,
)
from evo.fileio import replace_directory
from evo.errors import EvoError
from evo.types import ModelInfo

# write_artifact takes evo.compress.model's CompressionResult, named and not imported: that module
# imports this one to write the artifacts of the models it compresses.

ARTIFACT_FORMAT = "evo-artifact"
ARTIFACT_VERSION = 2  # 2: large metadata files packed as NAME.zst, file_sha256 for every file
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class StoredFrame:
    """One frame of one tensor inside tensors.bin."""

    kind: str  # "codes", "scales" or "zeros"
    coder: str
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of the artifact: name in the compressed model, name in the base model, frames."""

    name: str
    source: str
    shape: tuple[int, ...]
    setting: TensorSetting
    frames: tuple[StoredFrame, ...]

    @property
    def compressed_bytes(self) -> int:
        return sum(frame.length for frame in self.frames)


@dataclass(frozen=True)
class ArtifactManifest:
    """Everything manifest.json says."""

    base_model: str
    evo_version: str
    architecture: str
    model_type: str
    dtype: str
    tied_embeddings: bool
    base_num_layers: int
    kept_layers: tuple[int, ...]
    config: CompressionConfig
    tensors: tuple[StoredTensor, ...]
    files: dict[str, int]  # every file but the manifest → its size in bytes
    file_sha256: dict[str, str]  # every file but the manifest and tensors.bin → its sha256 ({} in format 1)
    tensor_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        settings = {t.setting.key(): t.setting.to_dict() for t in self.tensors}
        return {
            "format": ARTIFACT_FORMAT,
            "format_version": ARTIFACT_VERSION,
            "evo_version": self.evo_version,
            "base_model": self.base_model,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "dtype": self.dtype,
            "tied_embeddings": self.tied_embeddings,
            "base_num_layers": self.base_num_layers,
            "kept_layers": list(self.kept_layers),
            "config": self.config.to_dict(),
            # Settings are stored once and referenced by key: most tensors share a few settings.
            "settings": settings,
            "tensors": [
                {
                    "name": t.name,
                    "source": t.source,
                    "shape": list(t.shape),
                    "setting": t.setting.key(),
                    "frames": [
                        {"kind": f.kind, "coder": f.coder, "offset": f.offset, "length": f.length, "sha256": f.sha256}
                        for f in t.frames
                    ],
                }
                for t in self.tensors
            ],
            "files": dict(sorted(self.files.items())),
            "file_sha256": dict(sorted(self.file_sha256.items())),
            "tensor_bytes": self.tensor_bytes,
            "total_bytes": self.total_bytes,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ArtifactManifest:
        """Parse manifest.json; a missing or mistyped key is an EvoError naming it."""
        reader = _Reader(data, where)
        if reader.get("format", str) != ARTIFACT_FORMAT:
            raise EvoError(f"{where} is not an evo artifact manifest")
        version = reader.get("format_version", int)
        if version not in READABLE_VERSIONS:
            raise EvoError(
                f"{where} has artifact format {version}; this evo reads formats "
                f"{', '.join(map(str, READABLE_VERSIONS))}: re-export the model with this evo version"
            )
        settings_data = reader.get("settings", dict)
        settings = {}
        for key, value in settings_data.items():
            try:
                settings[key] = TensorSetting.from_dict(value)
            except (EvoError, TypeError) as exc:
                raise EvoError(f"{where}: key settings.{key} is malformed ({exc}); re-export the model") from None
        tensors = []
        for i, item in enumerate(reader.get("tensors", list)):
            entry = _Reader(item, f"{where}: tensors[{i}]")
            setting_key = entry.get("setting", str)
            if setting_key not in settings:
                raise EvoError(f"{where}: tensors[{i}].setting {setting_key!r} is not in settings; re-export the model")
            frames = []
            for j, frame in enumerate(entry.get("frames", list)):
                f = _Reader(frame, f"{where}: tensors[{i}].frames[{j}]")
                frames.append(
                    StoredFrame(
                        kind=f.get("kind", str),
                        coder=f.get("coder", str),
                        offset=f.get("offset", int),
                        length=f.get("length", int),
                        sha256=f.get("sha256", str),
                    )
                )
            tensors.append(
                StoredTensor(
                    name=entry.get("name", str),
                    source=entry.get("source", str),
                    shape=tuple(entry.get("shape", list)),
                    setting=settings[setting_key],
                    frames=tuple(frames),
                )
            )
        try:
            config = CompressionConfig.from_dict(reader.get("config", dict))
        except EvoError as exc:
            raise EvoError(f"{where}: key config is malformed ({exc}); re-export the model") from None
        return cls(
            base_model=reader.get("base_model", str),
            evo_version=reader.get("evo_version", str),
            architecture=reader.get("architecture", str),
            model_type=reader.get("model_type", str),
            dtype=reader.get("dtype", str),
            tied_embeddings=reader.get("tied_embeddings", bool),
            base_num_layers=reader.get("base_num_layers", int),
            kept_layers=tuple(reader.get("kept_layers", list)),
            config=config,
            tensors=tuple(tensors),
            files=dict(reader.get("files", dict)),
            file_sha256=dict(reader.get("file_sha256", dict)) if version >= 2 else {},
            tensor_bytes=reader.get("tensor_bytes", int),
            total_bytes=reader.get("total_bytes", int),
        )


class _Reader:
    """Typed access to one JSON object, with errors that name the missing or mistyped key."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise EvoError(f"{where} is not a JSON object; the artifact is corrupt: re-export it")
        self.data = data
        self.where = where

    def get(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise EvoError(f"{self.where} lacks key {key!r}; the artifact is corrupt or incomplete: re-export it")
        value = self.data[key]
        # bool is an int subclass: a boolean where a number belongs is corruption, not 0/1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise EvoError(f"{self.where}: key {key!r} should be {kind.__name__}, got {value!r}; re-export it")
        return value


@dataclass(frozen=True)
class ArtifactSummary:
    """What write_artifact wrote. total_bytes = tensor_bytes + metadata_bytes = bytes on disk."""

    path: Path
    total_bytes: int
    tensor_bytes: int
    metadata_bytes: int  # manifest, model config, tokenizer and generation config files
    files: dict[str, int]  # every file (manifest included) → its size in bytes
    predicted_tensor_bytes: int | None  # the size entries' sum, equal to tensor_bytes when known


# --- writing ---------------------------------------------------------------------------------------


def write_artifact(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    tokenizer,
    result: CompressionResult,
    *,
    base_model: str | None = None,
    overwrite: bool = False,
) -> ArtifactSummary:
    """Write the compressed model that compress_model(model, ...) produced as `result`.

    `model` is the compressed model itself (its config carries the dropped layers; its weights
    are not read, the frames come from `result`). `base_model` is the id recorded for
    load(expected_base_model=...), by default the ModelInfo's model id. The directory is built
    beside `out_dir` and renamed into place, so a crash never leaves a half artifact there.
    """
    out_dir = Path(out_dir)
    if any(t.compressed is None for t in result.tensors):
        raise EvoError("this CompressionResult kept no tensors: run compress_model(..., keep_tensors=True) to export")
    if out_dir.exists() and not overwrite:
        raise EvoError(f"{out_dir} already exists: choose another directory or pass overwrite")
    if out_dir.exists() and not (out_dir / MANIFEST_FILE).is_file() and any(out_dir.iterdir()):
        raise EvoError(f"{out_dir} is a non-empty directory that is not an evo artifact: refusing to replace it")
    layers = model.get_submodule(result.info.layers_path)
    if len(layers) != len(result.kept_layers):
        raise EvoError(
            f"the model has {len(layers)} decoder layers but the compression kept {len(result.kept_layers)}: "
            "pass the model that compress_model changed"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an exported model is meant to be shared
        tensors = _write_tensors(tmp / TENSORS_FILE, result)
        write_model_config(tmp / MODEL_CONFIG_FILE, model)
        write_metadata_files(tmp, model, tokenizer)
        files = {
            path.relative_to(tmp).as_posix(): path.stat().st_size for path in sorted(tmp.rglob("*")) if path.is_file()
        }
        tensor_bytes = sum(t.compressed_bytes for t in tensors)
        manifest = build_manifest(
            result.info, result.config, result.kept_layers, result.dtype, tensors, files, base_model=base_model,
            file_sha256=packed_files.file_digests(tmp, files),
        )
        manifest_bytes = ManifestWriter().encode(manifest, sum(files.values()))
        _write_bytes(tmp / MANIFEST_FILE, manifest_bytes)  # written last: its presence marks a whole artifact
        replace_directory(tmp, out_dir, trash_prefix=f".{out_dir.name}.old-")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    all_files = {**files, MANIFEST_FILE: len(manifest_bytes)}
    total = sum(all_files.values())
    predicted = result.tensor_bytes if result.measured else None
    return ArtifactSummary(
        path=out_dir,
        total_bytes=total,
        tensor_bytes=tensor_bytes,
        metadata_bytes=total - tensor_bytes,
        files=all_files,
        predicted_tensor_bytes=predicted,
    )


def build_manifest(
    info: ModelInfo,
    config: CompressionConfig,
    kept_layers: tuple[int, ...],
    dtype: torch.dtype,
    tensors: tuple[StoredTensor, ...],
    files: dict[str, int],
    *,
    base_model: str | None = None,
    file_sha256: dict[str, str] | None = None,
) -> ArtifactManifest:
    """The manifest write_artifact records, total_bytes still 0 (ManifestWriter.encode fills it).

    One constructor for the writer and for evo.compress.size, which measures the manifest's length
    (file_sha256 defaults to placeholders of the real digests' length).
    """
    return ArtifactManifest(
        base_model=base_model or info.model_id,
        evo_version=__version__,
        architecture=info.architecture,
        model_type=info.model_type,
        dtype=str(dtype).removeprefix("torch."),
        tied_embeddings=info.tied_embeddings,
        base_num_layers=info.num_layers,
        kept_layers=tuple(kept_layers),
        config=config,
        tensors=tuple(tensors),
        files=dict(files),
        file_sha256=dict(file_sha256) if file_sha256 is not None else packed_files.digest_placeholders(files),
        tensor_bytes=sum(t.compressed_bytes for t in tensors),
        total_bytes=0,
    )


def _write_tensors(path: Path, result: CompressionResult) -> tuple[StoredTensor, ...]:
    stored = []
    offset = 0
    with open(path, "wb") as f:
        for item in result.tensors:
            encoded = item.encoded or encode_tensor(
                item.compressed.quantized, prefer_decode_speed=result.prefer_decode_speed  # type: ignore[union-attr]
            )
            if item.size is not None and item.size.compressed_bytes != encoded.compressed_bytes:
                raise EvoError(
                    f"the size cache says tensor {item.plan.source} takes {item.size.compressed_bytes} bytes under "
                    f"{item.plan.setting.key()}, but it encodes to {encoded.compressed_bytes}: the cache is stale "
                    "(another evo version, or other weights under the same model id, dtype and device kind); "
                    "delete it and rerun"
                )
            frames = []
            for kind, frame in encoded.frames.items():
                f.write(frame)
                frames.append(
                    StoredFrame(kind, encoded.coders[kind], offset, len(frame), hashlib.sha256(frame).hexdigest())
                )
                offset += len(frame)
            plan = item.plan
            stored.append(StoredTensor(plan.name, plan.source, plan.shape, plan.setting, tuple(frames)))
        f.flush()
        os.fsync(f.fileno())
    return tuple(stored)


def write_model_config(path: Path, model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise EvoError(f"{type(model).__name__} has no transformers config; evo artifacts need a transformers model")
    config = copy.deepcopy(config)
    # A GGUF-loaded model keeps its source's quantization_config; the artifact holds plain weights.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.architectures = [type(model).__name__]
    _write_bytes(path, config.to_json_string(use_diff=True).encode())


# What transformers records of how a tokenizer was loaded (HF_HUB_OFFLINE sets local_files_only):
# not part of the tokenizer, so left out of artifacts, whose bytes depend on the config and model only.
LOADING_KWARGS = ("local_files_only", "is_local", "cache_dir", "force_download", "proxies", "token",
                  "use_auth_token", "revision", "subfolder", "trust_remote_code", "_commit_hash", "_from_auto")


def write_metadata_files(directory: Path, model: nn.Module, tokenizer) -> None:
    """The tokenizer files and generation_config.json, the large ones packed: what write_artifact
    writes beside tensors.bin and config.json, and what ArtifactMetadata measures."""
    save_tokenizer(directory, tokenizer)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(directory)
    packed_files.pack_files(directory)


def save_tokenizer(directory: Path, tokenizer) -> None:
    if tokenizer is None:
        raise EvoError("an artifact needs the tokenizer: pass the tokenizer the model was loaded with")
    saved = dict(tokenizer.init_kwargs)
    try:
        for key in LOADING_KWARGS:
            tokenizer.init_kwargs.pop(key, None)
        tokenizer.save_pretrained(str(directory))
    finally:
        tokenizer.init_kwargs.clear()
        tokenizer.init_kwargs.update(saved)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))  # compact: every byte counts toward the budget


_OFFSET = "\x00"  # stands for a frame's offset while an entry's template is made
Entry = tuple[tuple[str, ...], Sequence[int]]  # (an entry's text around its frame offsets, the offsets)


class ManifestWriter:
    """manifest.json's bytes, for write_artifact and for the size model: one code path.

    The file is the compact JSON of ArtifactManifest.to_dict(), joined here from the JSON of its
    parts, and its total_bytes counts the file itself. Parts that repeat across the configs of a
    search (settings, configs, tensor entries without their offsets) are memoised, so the size
    model measures a config's manifest by writing it, thousands of times per search, cheaply.
    """

    def __init__(self) -> None:
        self._settings: dict[TensorSetting, str] = {}
        self._configs: dict[CompressionConfig, str] = {}
        self._config_pieces: dict[tuple, int] = {}  # characters of config_json's pieces (config_json_length)

    def setting_json(self, setting: TensorSetting) -> str:
        text = self._settings.get(setting)
        if text is None:
            text = self._settings[setting] = _json(setting.to_dict())
        return text

    def config_json(self, config: CompressionConfig) -> str:
        text = self._configs.get(config)
        if text is None:
            if len(self._configs) >= 1 << 12:
                self._configs.clear()
            text = self._configs[config] = _json(config.to_dict())
        return text

    def config_json_length(self, config: CompressionConfig) -> int:
        """len(config_json(config)) from memoised pieces: the config without its layers, and each
        (index, layer) item of the layers table (a search's configs share most of them)."""
        length = self.config_frame_length(config) + max(len(config.layers) - 1, 0)  # the commas between layer items
        for index, layer in config.layers:
            length += self.layer_item_length(index, layer)
        return length

    def config_frame_length(self, config: CompressionConfig) -> int:
        """Characters of config_json(config) without its layers' items (and their commas)."""
        pieces = self._config_pieces
        frame_key = ("frame", config.default, config.embedding, config.head, config.tensors)
        length = pieces.get(frame_key)
        if length is None:
            frame = config.to_dict()
            frame["layers"] = {}
            length = pieces[frame_key] = len(_json(frame))
            if len(pieces) >= 1 << 14:
                pieces.clear()
                pieces[frame_key] = length
        return length

    def layer_item_length(self, index: int, layer) -> int:
        """Characters of one "index":{layer} item of the config's layers table: LayerConfig.to_dict's
        fields counted from the memoised settings' JSON (a search meets thousands of layer entries)."""
        item = self._config_pieces.get((index, layer))
        if item is None:
            fields = [len('"attention":') + len(self.setting_json(layer.attention))] if layer.attention is not None else []
            if layer.mlp is not None:
                fields.append(len('"mlp":') + len(self.setting_json(layer.mlp)))
            if layer.drop != "none":
                fields.append(len('"drop":') + len(_json(layer.drop)))
            body = 2 + sum(fields) + max(len(fields) - 1, 0)  # {a,b,c}
            item = self._config_pieces[(index, layer)] = len(_json(str(index))) + 1 + body
        return item

    @staticmethod
    def entry_template(tensor: StoredTensor) -> tuple[str, ...]:
        """A tensor's manifest entry, cut at its frames' offsets (the only part that depends on the
        tensors before it): the entry is the pieces joined by the offsets' digits."""
        data = {
            "name": tensor.name,
            "source": tensor.source,
            "shape": list(tensor.shape),
            "setting": tensor.setting.key(),
            "frames": [{"kind": f.kind, "coder": f.coder, "offset": _OFFSET, "length": f.length, "sha256": f.sha256}
                       for f in tensor.frames],
        }
        return tuple(_json(data).split(_json(_OFFSET)))

    def encode(
        self,
        manifest: ArtifactManifest,
        other_bytes: int,
        *,
        entries: Iterable[Entry] | None = None,
        settings: dict[str, TensorSetting] | None = None,
    ) -> bytes:
        """manifest.json for `manifest`, total_bytes = other_bytes + the file's own length.

        entries and settings default to those of manifest.tensors; the size model passes its
        memoised templates and the settings table (key → setting, by first use, the last setting
        of a key winning, as to_dict builds it) instead of building StoredTensors."""
        if entries is None:
            entries = [(self.entry_template(t), [f.offset for f in t.frames]) for t in manifest.tensors]
        if settings is None:
            settings = {}
            for tensor in manifest.tensors:
                settings[tensor.setting.key()] = tensor.setting
        setting_items = ",".join(f"{_json(key)}:{self.setting_json(s)}" for key, s in settings.items())
        entry_items = ",".join(_fill(template, offsets) for template, offsets in entries)
        if sorted(manifest.file_sha256) != packed_files.digested_names(manifest.files):
            raise RuntimeError("the manifest's file_sha256 does not name every file but tensors.bin")
        body = (f'{_head(manifest)},"config":{self.config_json(manifest.config)},"settings":{{{setting_items}}},'
                f'"tensors":[{entry_items}],"files":{_json(dict(sorted(manifest.files.items())))},'
                f'"file_sha256":{_json(dict(sorted(manifest.file_sha256.items())))},'
                f'"tensor_bytes":{manifest.tensor_bytes},"total_bytes":')
        total = _settled_total(len(body), other_bytes)
        return f"{body}{total}{_TAIL}".encode()

    def encoded_length(self, manifest: ArtifactManifest, other_bytes: int, *, entries_length: int,
                       settings_length: int, config_length: int | None = None) -> int:
        """len(encode(manifest, other_bytes, entries=..., settings=...)) from the lengths of the joined
        entries and settings (the size model's path: the same pieces, counted, never joined);
        config_length: len(config_json(manifest.config)) when the caller has counted it."""
        if config_length is None:
            config_length = self.config_json_length(manifest.config)
        body = self.body_length(manifest) + config_length + settings_length + entries_length
        return self.length_of(body, other_bytes)

    @staticmethod
    def length_of(body_length: int, other_bytes: int) -> int:
        """len(manifest.json) when its body (up to total_bytes' value) has body_length characters."""
        return _settled_total(body_length, other_bytes) - other_bytes

    @staticmethod
    def body_length(manifest: ArtifactManifest) -> int:
        """Characters of encode's body (the file up to its total_bytes value) less the config's JSON, the
        settings' items and the tensors' entries: the fields that depend on the kept layers, the files'
        sizes and the tensors' bytes only."""
        return (len(_head(manifest)) + len(',"config":') + len(',"settings":{') + len('},"tensors":[')
                + len('],"files":') + len(_json(dict(sorted(manifest.files.items()))))
                + len(',"file_sha256":') + len(_json(packed_files.digest_placeholders(manifest.files)))
                + len(',"tensor_bytes":') + len(str(manifest.tensor_bytes)) + len(',"total_bytes":'))

    def setting_item_length(self, key: str, setting: TensorSetting) -> int:
        """Characters of one "key":{setting} item of the manifest's settings table."""
        return len(_json(key)) + 1 + len(self.setting_json(setting))


_TAIL = "}\n"


def _head(manifest: ArtifactManifest) -> str:
    """The manifest's opening fields, without the closing brace."""
    return _json({
        "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_VERSION, "evo_version": manifest.evo_version,
        "base_model": manifest.base_model, "architecture": manifest.architecture,
        "model_type": manifest.model_type, "dtype": manifest.dtype, "tied_embeddings": manifest.tied_embeddings,
        "base_num_layers": manifest.base_num_layers, "kept_layers": list(manifest.kept_layers),
    })[:-1]


def _settled_total(body_length: int, other_bytes: int) -> int:
    """The artifact's total_bytes when the manifest's body (up to the total) has body_length
    characters: the total's digit count can change the file's length, so iterate to the fixed point
    (ASCII JSON, so characters are bytes)."""
    total = other_bytes
    for _ in range(10):
        length = body_length + len(str(total)) + len(_TAIL)
        if other_bytes + length == total:
            return total
        total = other_bytes + length
    raise RuntimeError("the manifest's recorded total did not settle")


def _fill(template: tuple[str, ...], offsets: Sequence[int]) -> str:
    if len(template) != len(offsets) + 1:
        raise RuntimeError("a manifest entry's template does not match its frames")
    parts = [template[0]]
    for offset, piece in zip(offsets, template[1:]):
        parts += [str(offset), piece]
    return "".join(parts)


class ArtifactMetadata:
    """The files write_artifact writes beside tensors.bin and the manifest, measured by writing them
    once with the artifact's own writers: tokenizer files, generation_config.json, and config.json,
    whose size depends on the layers kept (measured once per distinct layer count / layer types)."""

    def __init__(self, model: nn.Module, tokenizer, info: ModelInfo) -> None:
        self.num_layers = info.num_layers
        # A shallow copy shares the modules but not the attribute dict, so config.json can be written
        # for a shrunk config without touching the model (which an Evaluator may be using).
        self._shell = copy.copy(model)
        self._config = copy.deepcopy(getattr(model, "config", None))
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            write_metadata_files(directory, model, tokenizer)
            self.fixed_files: dict[str, int] = {
                path.relative_to(directory).as_posix(): path.stat().st_size
                for path in sorted(directory.rglob("*"))
                if path.is_file()
            }
        clash = {MANIFEST_FILE, TENSORS_FILE, MODEL_CONFIG_FILE} & set(self.fixed_files)
        if clash:
            raise RuntimeError(f"the tokenizer writes {sorted(clash)}, which the artifact writes itself")
        self._model_config_bytes: dict[tuple, int] = {}

    def model_config_bytes(self, kept_layers: tuple[int, ...]) -> int:
        """Bytes of config.json when these base-model layers are kept."""
        layer_types = getattr(self._config, "layer_types", None)
        # drop_layers changes only num_hidden_layers and layer_types (structure._shrink_config),
        # so those name the file's content; the kept indices themselves would be a far larger key.
        types_kept = (
            tuple(layer_types[i] for i in kept_layers)
            if isinstance(layer_types, (list, tuple)) and len(layer_types) == self.num_layers
            else None
        )
        key = (len(kept_layers), types_kept)
        size = self._model_config_bytes.get(key)
        if size is None:
            shell = copy.copy(self._shell)
            shell.config = copy.deepcopy(self._config)
            if len(kept_layers) != self.num_layers:  # apply_drops leaves the config alone otherwise
                shrink_config(shell.config, tuple(kept_layers), self.num_layers)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / MODEL_CONFIG_FILE
                write_model_config(path, shell)
                size = path.stat().st_size
            self._model_config_bytes[key] = size
        return size

    def files(self, kept_layers: tuple[int, ...], tensor_bytes: int) -> dict[str, int]:
        """The manifest's `files` table: every file but the manifest → its size."""
        return {
            **self.fixed_files,
            MODEL_CONFIG_FILE: self.model_config_bytes(kept_layers),
            TENSORS_FILE: tensor_bytes,
        }




def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- reading ---------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> ArtifactManifest:
    """The artifact's manifest, or an EvoError saying what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise EvoError(f"artifact {path} does not exist or is not a directory: check the path, or export one first")
    size = integrity.regular_file_size(path, MANIFEST_FILE, f"artifact {path}")  # no link to /dev/zero
    if size > integrity.MAX_MANIFEST_BYTES:
        raise EvoError(f"artifact {path}: {MANIFEST_FILE} holds {size} bytes, more than any evo manifest; re-export it")
    text = integrity.read_regular_file(path, MANIFEST_FILE, size, f"artifact {path}")
    try:
        data = json.loads(text)
    except RecursionError:
        raise EvoError(f"artifact {path}: {MANIFEST_FILE} is nested too deeply to be an evo manifest; re-export it") from None
    except ValueError:  # bad JSON, non-UTF-8, an integer of thousands of digits
        raise EvoError(f"artifact {path}: {MANIFEST_FILE} is truncated or corrupt; re-export it") from None
    manifest = ArtifactManifest.from_dict(data, f"artifact {path}: {MANIFEST_FILE}")
    integrity.validate_manifest(manifest, f"artifact {path}: {MANIFEST_FILE}")
    return manifest


def check_base_model(manifest: ArtifactManifest, expected_base_model: str, path: str | os.PathLike[str] = "") -> None:
    """Raise when the artifact was made from another base model than the one expected."""
    if manifest.base_model != expected_base_model:
        raise EvoError(
            f"artifact {path} was made from base model {manifest.base_model!r}, not {expected_base_model!r}: "
            "use the artifact of this model, or re-export it"
        )


def _read_tensors_bin(path: Path, manifest: ArtifactManifest) -> bytes:
    # validate_manifest has checked that the frames tile exactly tensor_bytes bytes.
    return integrity.read_regular_file(path, TENSORS_FILE, manifest.tensor_bytes, f"artifact {path}")


def read_frames(path: Path, manifest: ArtifactManifest, blob: bytes) -> dict[str, EncodedTensor]:
    """Tensor name → its frames, each checked (check_stored_tensor) before anything is decompressed
    or allocated."""
    return {tensor.name: check_stored_tensor(path, tensor, stored_frames(tensor, blob)) for tensor in manifest.tensors}


def read_artifact(
    path: str | os.PathLike[str], *, expected_base_model: str | None = None
) -> tuple[ArtifactManifest, dict[str, EncodedTensor]]:
    """The manifest and every tensor's frames, after every check that needs no model: manifest
    integers, regular files of the recorded sizes (no links), no auto_map, sha256 and each
    frame's declared sizes against its tensor's shape. Eager and resident loading both start here.
    """
    from evo.remote_code import read_json_bounded, refuse_remote_code

    path = Path(path)
    where = f"artifact {path}"
    manifest = read_manifest(path)  # every manifest integer validated
    if expected_base_model is not None:
        check_base_model(manifest, expected_base_model, path)
    drops = manifest.config.drops
    if manifest.kept_layers != tuple(i for i in range(manifest.base_num_layers) if drops.get(i) != "layer"):
        raise EvoError(f"artifact {path}: the manifest's kept layers disagree with its config's drops; re-export it")
    integrity.check_directory(path, manifest, where)  # regular files of the recorded sizes, no links
    packed_files.check_files(path, manifest, where)  # their sha256; packed ones declare bounded sizes
    configs = {name: read_json_bounded(path / name, where) for name in (MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE)}
    refuse_remote_code(where, configs, trust_remote_code=False,
                       hint="evo artifacts never run code; re-export it from a model transformers supports natively")
    blob = _read_tensors_bin(path, manifest)
    return manifest, read_frames(path, manifest, blob)  # before any model exists: a bomb costs nothing


def build_model(path: str | os.PathLike[str], manifest: ArtifactManifest, torch_dtype: torch.dtype) -> nn.Module:
    """The artifact's architecture with uninitialised weights, once config.json has been checked
    against the manifest's shapes on the meta device (integrity.check_model_config)."""
    from transformers import AutoConfig

    path = Path(path)
    where = f"artifact {path}"
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        integrity.check_model_config(config, manifest, where, lambda: _build_model(config, manifest, torch_dtype, path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EvoError(f"artifact {path}: cannot rebuild the model from {MODEL_CONFIG_FILE} ({exc}); re-export it") from None
    declared = integrity.dense_bytes(manifest, torch.empty(0, dtype=torch_dtype).element_size())
    try:
        return _build_model(config, manifest, torch_dtype, path)
    except (MemoryError, RuntimeError) as exc:
        raise EvoError(
            f"artifact {path}: its weights take {declared / 1e9:.2f} GB and building the model failed "
            f"({(str(exc).splitlines() or [type(exc).__name__])[0]}); free memory or use a larger machine"
        ) from None


def _build_model(config, manifest: ArtifactManifest, torch_dtype: torch.dtype, path: Path):
    """The compressed architecture (dropped layers and blocks gone, embeddings tied) and its
    description; run once on the meta device to check config.json, then for real."""
    from transformers import AutoModelForCausalLM

    from evo.modelio import describe_model

    # Every parameter is overwritten from the frames (checked below), so random
    # initialisation would only cost time: seconds for a 135M model.
    with _no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=False)
    info = describe_model(model, model_id=manifest.base_model)
    if info.num_layers != len(manifest.kept_layers):
        raise EvoError(
            f"artifact {path}: {MODEL_CONFIG_FILE} builds {info.num_layers} layers but the manifest keeps "
            f"{len(manifest.kept_layers)}; re-export it"
        )
    for new_index, base_index in enumerate(manifest.kept_layers):
        drop = manifest.config.drop_for(base_index)
        if drop in ("attention", "mlp"):
            apply_block_drop(model, info.layers[new_index], drop)
    if manifest.tied_embeddings:
        model.tie_weights()  # skipped along with initialisation; the head then shares the embedding
    return model


def stored_frames(tensor: StoredTensor, blob: bytes) -> dict[str, bytes]:
    """The frames of one tensor (kind → bytes), cut from tensors.bin's contents."""
    return {frame.kind: blob[frame.offset : frame.offset + frame.length] for frame in tensor.frames}


def check_stored_tensor(path: str | os.PathLike[str], tensor: StoredTensor, frames: dict[str, bytes]) -> EncodedTensor:
    """The EncodedTensor of one stored tensor's frames, each checked against its sha256 and then every
    size it declares against the tensor's shape and setting (check_encoded); nothing is decompressed."""
    for frame in tensor.frames:
        data = frames.get(frame.kind)
        if data is None or hashlib.sha256(data).hexdigest() != frame.sha256:
            raise EvoError(f"artifact {path} is corrupt: tensor {tensor.name} failed its checksum; re-export it")
    coders = {frame.kind: frame.coder for frame in tensor.frames}
    item = EncodedTensor(dict(frames), coders, 0.0)
    try:
        check_encoded(item, tensor.shape, tensor.setting)
    except EvoError as exc:
        raise EvoError(f"artifact {path}: tensor {tensor.name}: {exc}; re-export it") from None
    return item


def decode_stored_tensor(
    path: str | os.PathLike[str], tensor: StoredTensor, frames: dict[str, bytes]
) -> QuantizedTensor:
    """The QuantizedTensor stored in `frames`, checked first (check_stored_tensor): the lazy decoding
    of evo.runtime and read_artifact refuse a corrupt or hostile frame the same way, before decoding."""
    return decode_tensor(check_stored_tensor(path, tensor, frames), tensor.shape, tensor.setting)


def load_tokenizer(path: str | os.PathLike[str], manifest: ArtifactManifest):
    """The artifact's tokenizer, as transformers loads it from the files it saved (packed ones
    unpacked into a temporary directory, each checked against its sha256 first)."""
    from transformers import AutoTokenizer

    path = Path(path)
    where = f"artifact {path}"
    with packed_files.readable_directory(path, manifest, where) as directory:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise EvoError(f"{where}: cannot load its tokenizer ({exc}); re-export it") from None
    if directory != path:  # the artifact is where it came from, not the temporary directory
        tokenizer.name_or_path = str(path)
        tokenizer.init_kwargs["name_or_path"] = str(path)
    return tokenizer


def _resolve_load_dtype(dtype, manifest: ArtifactManifest, device: torch.device) -> torch.dtype:
    if dtype is None:
        if manifest.dtype not in DTYPES:
            raise EvoError(f"artifact dtype {manifest.dtype!r} is unknown; pass dtype= explicitly")
        return getattr(torch, DTYPES[manifest.dtype])
    if isinstance(dtype, torch.dtype):
        return dtype
    from evo.modelio import resolve_dtype

    return resolve_dtype(str(dtype), device)


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


@torch.no_grad()
def load(
    path: str | os.PathLike[str],
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    expected_base_model: str | None = None,
    resident: str = "dense",
    max_resident_mb: float | None = None,
    target_tokens_per_s: float | None = None,
    prefetch: int = 1,
):
    """(model, tokenizer) from an artifact directory: a plain transformers model, in eval mode.

    dtype defaults to the dtype the model was compressed in, which reproduces its logits
    exactly. Every frame's sha256 and every size the manifest, the frames and config.json declare
    are checked (read_artifact, build_model) before anything is decompressed or allocated, so a
    tampered artifact costs no more memory than its declared weights. No code from the artifact
    runs (no trust_remote_code, no auto_map, no pickle). resident="dense" (default) holds
    dequantized weights; "codes", "compressed" and "auto" keep them smaller (see evo.runtime.resident:
    same logits, `model.evo_runtime` says what is held), from the same checked frames.
    """
    from transformers import GenerationConfig

    from evo.modelio import resolve_device
    from evo.runtime.resident import ResidentOptions, attach

    options = ResidentOptions(resident, max_resident_mb, target_tokens_per_s, prefetch)
    path = Path(path)
    manifest, encoded = read_artifact(path, expected_base_model=expected_base_model)
    torch_device = resolve_device(device)
    torch_dtype = _resolve_load_dtype(dtype, manifest, torch_device)
    model = build_model(path, manifest, torch_dtype)
    runtime = None
    if options.mode != "dense":
        runtime = attach(model, manifest, encoded, path=path, options=options, dtype=torch_dtype, device=torch_device)
    params = dict(model.named_parameters())
    held = runtime.tensor_names if runtime is not None else frozenset()
    for tensor in manifest.tensors:
        frames = encoded.pop(tensor.name)  # each tensor's frames are freed once decoded
        if tensor.name in held:
            continue  # held packed or coded by evo.runtime
        param = params[tensor.name]  # check_model_config matched every name and shape
        quantized = decode_tensor(frames, tensor.shape, tensor.setting)
        param.copy_(dequantize(quantized).to(dtype=param.dtype))
    tokenizer = load_tokenizer(path, manifest)
    if (path / GENERATION_CONFIG_FILE).is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise EvoError(f"artifact {path}: generation_config.json is not a valid generation config "
                           f"({type(exc).__name__}); re-export it") from None
    model.to(torch_device)
    model.eval()
    if runtime is not None:
        runtime.start(model)
    return model, tokenizer
