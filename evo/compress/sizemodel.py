"""Exact bytes on disk of the artifact write_artifact would write for a CompressionConfig, predicted
without compressing the model: cached per-tensor sizes plus the manifest and metadata files.

A config whose tensor sizes are cached costs dictionary lookups and sums (the search asks thousands
of times in repair loops); a repeated config is one lookup.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from evo.compress.artifact import (
    MANIFEST,
    MODEL_CONFIG,
    TENSORS,
    StoredFrame,
    StoredTensor,
    _save_tokenizer,
    _self_sized_manifest,
    _write_model_config,
    build_manifest,
)
from evo.compress import ActivationStats, TensorSetting, compress_tensor
from evo.compress.structure import _shrink_config, is_replaced, replaced_modules
from evo.compress.model import _needs_stats, plan_model, size_model_id
from evo.compress.config import CONFIG_FORMAT, CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.compress.size import SizeCache, SizeEntry, SizeKey, cached_size, encode_tensor
from evo.types import DecoderLayerInfo, ModelInfo

# encode_tensor's frame order, which write_artifact keeps in tensors.bin and the manifest.
FRAME_ORDER = ("codes", "scales", "zeros")
# Any 64-character string stands in for a frame's sha256 hex digest: only its length matters here.
PLACEHOLDER_SHA256 = "0" * 64
# Configs remembered with their sizes; beyond this the oldest are forgotten (a search revisits few).
MEMO_CONFIGS = 1 << 16

_JSON_SEPARATORS = (",", ":")  # ArtifactManifest.to_bytes writes compact JSON


def stats_for(
    stats: Mapping[str, ActivationStats] | None, source: str, setting: TensorSetting
) -> ActivationStats | None:
    """The activation statistics compress_model would pass for this tensor and setting (None when
    the setting needs none); an EvoError when it needs them and they are missing."""
    if not _needs_stats(setting):
        return None
    act = (stats or {}).get(source)
    if act is None:
        raise EvoError(
            f"tensor {source} is pruned with {setting.prune_criterion!r}, which needs activation "
            "statistics: pass stats=collect_activation_stats(...) or use prune_criterion='magnitude'"
        )
    return act


@dataclass(frozen=True)
class ArtifactSize:
    """Where an artifact's bytes go. total_bytes is what write_artifact's manifest records."""

    tensor_bytes: int  # tensors.bin
    manifest_bytes: int
    model_config_bytes: int  # config.json
    other_bytes: int  # tokenizer files and generation_config.json

    @property
    def total_bytes(self) -> int:
        return self.tensor_bytes + self.manifest_bytes + self.model_config_bytes + self.other_bytes


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
            _save_tokenizer(directory, tokenizer)
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(directory)
            self.fixed_files: dict[str, int] = {
                path.relative_to(directory).as_posix(): path.stat().st_size
                for path in sorted(directory.rglob("*"))
                if path.is_file()
            }
        clash = {MANIFEST, TENSORS, MODEL_CONFIG} & set(self.fixed_files)
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
                _shrink_config(shell.config, tuple(kept_layers), self.num_layers)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / MODEL_CONFIG
                _write_model_config(path, shell)
                size = path.stat().st_size
            self._model_config_bytes[key] = size
        return size

    def files(self, kept_layers: tuple[int, ...], tensor_bytes: int) -> dict[str, int]:
        """The manifest's `files` table: every file but the manifest → its size."""
        return {
            **self.fixed_files,
            MODEL_CONFIG: self.model_config_bytes(kept_layers),
            TENSORS: tensor_bytes,
        }


@dataclass(frozen=True)
class _Row:
    """One stored tensor of a config with what its size and its manifest entry take."""

    name: str
    source: str
    setting: TensorSetting
    setting_key: str  # setting.key(), which is slow to recompute for every config
    compressed_bytes: int
    frames: tuple[tuple[str, str, int], ...]  # (kind, coder, length) in tensors.bin order
    entry_chars: int  # its manifest entry's JSON length with every frame offset written as 0


class SizeModel:
    """Predicts write_artifact's bytes on disk for any config of one base model, exactly.

    weights: the base model's tensors by name, before any compression (kept unchanged; an
    Evaluator can share them as its originals). Sizes missing from `size_cache` are computed by
    compressing these weights on `device` and encoding them, under the SizeKey compress_model
    uses, so `evo compress` and the search share entries. `model_id` defaults to
    size_model_id(info, dtype of the weights); `base_model` is the id the manifest records.
    """

    def __init__(
        self,
        info: ModelInfo,
        weights: Mapping[str, torch.Tensor],
        size_cache: SizeCache,
        metadata: ArtifactMetadata,
        *,
        stats: Mapping[str, ActivationStats] | None = None,
        model_id: str | None = None,
        base_model: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.info = info
        self.weights = weights
        self.size_cache = size_cache
        self.metadata = metadata
        self.stats = stats
        first = info.layers[0].linears[0].name if info.layers else info.non_decoder[0].name
        if first not in weights:
            raise EvoError(f"the weights given to SizeModel lack {first}: pass the base model's named parameters")
        self.dtype = weights[first].dtype
        self.model_id = model_id or size_model_id(info, self.dtype)
        self.base_model = base_model
        self.device = torch.device(device)
        self.sizes_computed = 0  # tensors compressed and encoded here (size-cache misses)
        self.on_entry: Callable[[int], None] | None = None  # told len(entries known) when one is added
        self._entries: dict[tuple[str, TensorSetting], SizeEntry] = {}  # over the on-disk cache
        self._digests: dict[str, str] = {}
        self._rows: dict[tuple[str, str, TensorSetting], _Row] = {}
        self._segments: dict[tuple, tuple[_Row, ...]] = {}
        self._layer_settings: dict[tuple, tuple[TensorSetting, ...]] = {}
        self._memo: dict[CompressionConfig, ArtifactSize] = {}
        self._shapes = {name: shape for layer in info.layers for name, shape in _layer_tensors(layer)}
        self._shapes.update({t.name: tuple(t.shape) for t in info.non_decoder})
        # An empty manifest: the per-tensor entry lengths are measured inside it, and the manifest's
        # length is this one's plus what a config adds.
        self._template = build_manifest(info, CompressionConfig(), (), self.dtype, (), {}, base_model=base_model)
        self._empty_manifest_chars = len(self._template.to_bytes())
        self._json_memo: dict[object, int] = {}
        self._default_config_chars = _json_chars(CompressionConfig().to_dict())
        self._checked = False

    @classmethod
    def for_model(
        cls,
        loaded,
        size_cache: SizeCache,
        *,
        stats: Mapping[str, ActivationStats] | None = None,
        model_id: str | None = None,
        base_model: str | None = None,
    ) -> SizeModel:
        """From a LoadedModel that has not been compressed: its weights are copied to the CPU now,
        so a later Evaluator may change the model in place."""
        model = loaded.model
        weights = {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()}
        device = next(model.parameters()).device
        metadata = ArtifactMetadata(model, loaded.tokenizer, loaded.info)
        return cls(loaded.info, weights, size_cache, metadata, stats=stats, model_id=model_id,
                   base_model=base_model, device=device)

    # --- public API ---------------------------------------------------------------------------------

    def artifact_bytes(self, config: CompressionConfig) -> int:
        """Bytes on disk of write_artifact's directory for `config` (the manifest's total_bytes)."""
        return self.size(config).total_bytes

    def tensor_bytes(self, config: CompressionConfig) -> int:
        """Bytes of tensors.bin: the sum of the per-tensor size entries."""
        return self.size(config).tensor_bytes

    def size(self, config: CompressionConfig) -> ArtifactSize:
        """The artifact's bytes by file kind, memoised per config."""
        if not isinstance(config, CompressionConfig):
            raise EvoError(f"config must be a CompressionConfig, got {type(config).__name__}")
        found = self._memo.get(config)
        if found is not None:
            return found
        config.validate_against(self.info)
        kept, rows = self._plan_rows(config)
        tensor_bytes = sum(row.compressed_bytes for row in rows)
        files = self.metadata.files(kept, tensor_bytes)
        other = sum(files.values())
        manifest = self._manifest_length(config, kept, rows, files, tensor_bytes, other)
        self._check_arithmetic(config, manifest)
        model_config = files[MODEL_CONFIG]
        result = ArtifactSize(
            tensor_bytes=tensor_bytes,
            manifest_bytes=manifest,
            model_config_bytes=model_config,
            other_bytes=other - tensor_bytes - model_config,
        )
        if len(self._memo) >= MEMO_CONFIGS:
            del self._memo[next(iter(self._memo))]
        self._memo[config] = result
        return result

    def manifest(self, config: CompressionConfig) -> bytes:
        """The manifest write_artifact would write, every sha256 a placeholder of the same length.

        Built the slow, obvious way (plan_model, write_artifact's own manifest code); the fast
        prediction in size() is checked against it.
        """
        plan = plan_model(self.info, config)
        stored = []
        offset = 0
        for tensor in plan.tensors:
            frames = []
            for kind, coder, length in _frames(self._entry(tensor.source, tensor.setting)):
                frames.append(StoredFrame(kind, coder, offset, length, PLACEHOLDER_SHA256))
                offset += length
            stored.append(StoredTensor(tensor.name, tensor.source, tensor.shape, tensor.setting, tuple(frames)))
        files = self.metadata.files(plan.kept_layers, offset)
        manifest = build_manifest(
            self.info, config, plan.kept_layers, self.dtype, tuple(stored), files, base_model=self.base_model
        )
        return _self_sized_manifest(manifest, sum(files.values()))

    # --- sizes of single tensors --------------------------------------------------------------------

    def _digest(self, source: str, act: ActivationStats) -> str:
        digest = self._digests.get(source)
        if digest is None:
            digest = self._digests[source] = act.digest()
        return digest

    def _entry(self, source: str, setting: TensorSetting) -> SizeEntry:
        entry = self._entries.get((source, setting))
        if entry is not None:
            return entry
        act = stats_for(self.stats, source, setting)
        key = SizeKey(self.model_id, source, setting.key(), self._digest(source, act) if act is not None else "")

        def encode():
            weight = self.weights[source].to(self.device)
            self.sizes_computed += 1
            return encode_tensor(compress_tensor(weight, setting, act).quantized)

        entry = cached_size(self.size_cache, key, encode)
        if not entry.frame_bytes or set(entry.frame_bytes) != set(entry.coders):
            # An entry without its frames (written by an older evo) cannot place the manifest's
            # offsets: encode again and overwrite it.
            entry = SizeEntry.from_encoded(encode())
            self.size_cache.put(key, entry)
        self._entries[(source, setting)] = entry
        if self.on_entry is not None:
            self.on_entry(len(self._entries))
        return entry

    # --- the fast plan --------------------------------------------------------------------------------

    def _plan_rows(self, config: CompressionConfig) -> tuple[tuple[int, ...], list[_Row]]:
        """plan_model's tensors in its order, built from per-layer pieces memoised across configs
        (tests check both agree)."""
        drops = config.drops
        layer_entries = dict(config.layers)
        overrides = dict(config.tensors)
        rows: list[_Row] = []
        kept = []
        for layer in self.info.layers:
            drop = drops.get(layer.index, "none")
            if drop == "layer":
                continue
            settings = self._settings_of_layer(config, layer, layer_entries, overrides)
            key = (layer.index, len(kept), drop, settings)
            segment = self._segments.get(key)
            if segment is None:
                segment = self._segments[key] = self._layer_segment(layer, len(kept), drop, settings)
            rows.extend(segment)
            kept.append(layer.index)
        named = tuple((t.name, overrides[t.name]) for t in self.info.non_decoder if t.name in overrides)
        key = ("non_decoder", config.embedding, config.head, named)
        segment = self._segments.get(key)
        if segment is None:
            segment = self._segments[key] = tuple(
                self._row(t.name, t.name, config.setting_for(t.name, self.info)) for t in self.info.non_decoder
            )
        rows.extend(segment)
        return tuple(kept), rows

    def _settings_of_layer(
        self,
        config: CompressionConfig,
        layer: DecoderLayerInfo,
        layer_entries: dict[int, LayerConfig],
        overrides: dict[str, TensorSetting],
    ) -> tuple[TensorSetting, ...]:
        # config.setting_for decides precedence; what it reads for a layer's tensors is the layer's
        # entry, the default and the overrides naming them, so those key the memo.
        named = tuple((name, overrides[name]) for name, _ in _layer_tensors(layer) if name in overrides)
        key = (layer.index, layer_entries.get(layer.index, LayerConfig()), config.default, named)
        settings = self._layer_settings.get(key)
        if settings is None:
            settings = tuple(config.setting_for(name, self.info) for name, _ in _layer_tensors(layer))
            self._layer_settings[key] = settings
        return settings

    def _layer_segment(
        self, layer: DecoderLayerInfo, new_index: int, drop: str, settings: tuple[TensorSetting, ...]
    ) -> tuple[_Row, ...]:
        removed = replaced_modules(layer, drop)
        old_prefix = f"{layer.module}."
        new_prefix = f"{self.info.layers_path}.{new_index}."
        rows = []
        for (source, _), setting in zip(_layer_tensors(layer), settings):
            if is_replaced(source, removed):
                continue
            rows.append(self._row(new_prefix + source[len(old_prefix) :], source, setting))
        return tuple(rows)

    def _row(self, name: str, source: str, setting: TensorSetting) -> _Row:
        row = self._rows.get((name, source, setting))
        if row is None:
            entry = self._entry(source, setting)
            frames = _frames(entry)
            stored = StoredTensor(
                name,
                source,
                self._shapes[source],
                setting,
                tuple(StoredFrame(kind, coder, 0, length, PLACEHOLDER_SHA256) for kind, coder, length in frames),
            )
            data = replace(self._template, tensors=(stored,)).to_dict()["tensors"][0]
            chars = len(json.dumps(data, separators=_JSON_SEPARATORS)) - len(frames)  # each "0" offset
            row = _Row(name, source, setting, setting.key(), entry.compressed_bytes, frames, chars)
            self._rows[(name, source, setting)] = row
        return row

    def _manifest_length(
        self,
        config: CompressionConfig,
        kept: tuple[int, ...],
        rows: list[_Row],
        files: dict[str, int],
        tensor_bytes: int,
        other_bytes: int,
    ) -> int:
        """len(manifest.json) as write_artifact writes it, from the length of an empty manifest and
        the lengths of what fills it: kept layers, files, totals, the config, the settings table
        and the tensor entries (whose offsets' digits are all that depends on earlier tensors).

        Compact JSON's length adds up over a dict's items; the config's and the settings' pieces
        are memoised, since TensorSetting.to_dict is slow. Checked once per SizeModel against the
        manifest built the obvious way (manifest()), and by the tests.
        """
        chars = self._empty_manifest_chars
        chars += _json_chars(list(kept)) - 2 + _json_chars(dict(sorted(files.items()))) - 2
        chars += self._config_chars(config) - self._default_config_chars
        chars += len(str(tensor_bytes)) - 1
        last_setting = {row.setting_key: row.setting for row in rows}  # to_dict's {key: last setting}
        chars += _dict_chars((key, self._setting_chars(setting)) for key, setting in last_setting.items()) - 2
        if rows:
            offset_digits = 0
            offset = 0
            for row in rows:
                for _, _, length in row.frames:
                    offset_digits += len(str(offset))
                    offset += length
            chars += sum(row.entry_chars for row in rows) + offset_digits + len(rows) - 1
        base = chars - 1  # without the digit of total_bytes = 0
        # The fixed point _self_sized_manifest iterates to, by the same steps.
        total = other_bytes
        for _ in range(10):
            length = base + len(str(total))
            if other_bytes + length == total:
                return length
            total = other_bytes + length
        raise RuntimeError("the manifest's recorded total did not settle")

    def _setting_chars(self, setting: TensorSetting) -> int:
        chars = self._json_memo.get(setting)
        if chars is None:
            chars = self._json_memo[setting] = _json_chars(setting.to_dict())
        return chars

    def _layer_chars(self, layer: LayerConfig) -> int:
        chars = self._json_memo.get(layer)
        if chars is None:
            chars = self._json_memo[layer] = _json_chars(layer.to_dict())
        return chars

    def _config_chars(self, config: CompressionConfig) -> int:
        """len(json of config.to_dict()), following its layout."""
        return _dict_chars(
            [
                ("format", _json_chars(CONFIG_FORMAT)),
                ("default", self._setting_chars(config.default)),
                ("embedding", self._setting_chars(config.embedding)),
                ("head", self._setting_chars(config.head)),
                ("layers", _dict_chars((str(i), self._layer_chars(layer)) for i, layer in config.layers)),
                ("tensors", _dict_chars((name, self._setting_chars(setting)) for name, setting in config.tensors)),
            ]
        )

    def _check_arithmetic(self, config: CompressionConfig, predicted: int) -> None:
        """Once per SizeModel: the fast manifest length must be the built manifest's. A mismatch
        means artifact.py or config.py changed their JSON and this module was not updated."""
        if self._checked:
            return
        if self._config_chars(config) != _json_chars(config.to_dict()) or predicted != len(self.manifest(config)):
            raise RuntimeError(
                "evo.compress.sizemodel predicts another manifest length than evo.compress.artifact writes: the manifest or config "
                "JSON layout changed; update SizeModel._manifest_length"
            )
        self._checked = True


def _json_chars(value) -> int:
    return len(json.dumps(value, separators=_JSON_SEPARATORS))


def _dict_chars(items) -> int:
    """Length of a compact JSON object from its keys and the lengths of its values' JSON."""
    items = list(items)
    return 2 + sum(_json_chars(key) + 1 + chars for key, chars in items) + max(len(items) - 1, 0)


def _layer_tensors(layer: DecoderLayerInfo) -> list[tuple[str, tuple[int, ...]]]:
    """A layer's tensors in plan_model's order: linears, then norms and biases."""
    return [(lin.name, tuple(lin.shape)) for lin in layer.linears] + [
        (name, tuple(shape)) for name, shape in layer.other_tensors
    ]


def _frames(entry: SizeEntry) -> tuple[tuple[str, str, int], ...]:
    unknown = set(entry.frame_bytes) - set(FRAME_ORDER)
    if unknown:
        raise RuntimeError(f"size entries have frames {sorted(unknown)} that evo.compress.sizemodel does not place")
    return tuple(
        (kind, entry.coders[kind], entry.frame_bytes[kind]) for kind in FRAME_ORDER if kind in entry.frame_bytes
    )

