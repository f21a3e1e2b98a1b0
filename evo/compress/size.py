"""Exact bytes on disk: of one compressed matrix (its real frames, cached per tensor and setting),
and of the whole artifact write_artifact would write for a config (SizeModel), predicted without
compressing the model: cached tensor sizes, the metadata files, and the manifest as the artifact's
own ManifestWriter writes it.

A config whose tensor sizes are cached costs dictionary lookups, sums and one join of memoised
manifest pieces (the search asks thousands of times in repair loops); a repeated config is one lookup.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from evo.compress.apply import compress_tensor
from evo.compress.artifact import ArtifactMetadata, ManifestWriter, StoredFrame, StoredTensor, build_manifest
from evo.compress.coding import EncodedTensor, encode_tensor
from evo.compress.packed_files import PLACEHOLDER_SHA256  # a frame's sha256 here: only its length matters
from evo.compress.config import CompressionConfig, LayerConfig
from evo.compress.plan import DECODE_SPEED_TAG, hessian_for, needs_hessian_for, plan_model, size_model_id, stats_for
from evo.compress.prune import ActivationStats
from evo.compress.settings import TensorSetting
from evo.compress.structure import is_replaced, replaced_modules
from evo.constants import MODEL_CONFIG_FILE
from evo.errors import EvoError
from evo.fileio import atomic_write_text
from evo.types import DecoderLayerInfo, ModelInfo

# Bump when frames or coders change: sizes cached under an older format are then recomputed.
SIZE_FORMAT = 1


@dataclass(frozen=True)
class SizeKey:
    """Identifies one tensor under one setting; stats_digest names what else decides its codes: the
    activation statistics (activation-aware pruning, mse) and for gptq the Hessians (compress_model)."""

    model_id: str
    tensor_name: str
    setting_key: str
    stats_digest: str = ""

    def digest(self) -> str:
        text = json.dumps([SIZE_FORMAT, *asdict(self).values()], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SizeEntry:
    """What the cache keeps of one encoded tensor."""

    compressed_bytes: int
    entropy_bits: float
    coders: dict[str, str] = field(default_factory=dict)
    frame_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_encoded(cls, encoded: EncodedTensor) -> SizeEntry:
        return cls(encoded.compressed_bytes, encoded.entropy_bits, dict(encoded.coders), encoded.frame_bytes)


class SizeCache:
    """Sizes on disk, one small JSON file per (model, tensor, setting, stats) written atomically.

    One file per entry lets parallel workers share a directory without locks: a reader sees
    either no file or a whole one.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[SizeKey, SizeEntry] = {}

    def _path(self, key: SizeKey) -> Path:
        digest = key.digest()
        return self.directory / digest[:2] / f"{digest}.json"

    def get(self, key: SizeKey) -> SizeEntry | None:
        if key in self._memory:
            return self._memory[key]
        try:
            record = json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return None  # unreadable entry (bad JSON, bad UTF-8, too deep): recompute and overwrite it
        if not isinstance(record, dict) or record.get("format") != SIZE_FORMAT or record.get("key") != asdict(key):
            return None
        try:
            entry = SizeEntry(**record["entry"])
            if not isinstance(entry.compressed_bytes, int) or entry.compressed_bytes < 0:
                return None
        except (KeyError, TypeError):
            return None
        self._memory[key] = entry
        return entry

    def put(self, key: SizeKey, entry: SizeEntry) -> None:
        path = self._path(key)
        record = {"format": SIZE_FORMAT, "key": asdict(key), "entry": asdict(entry)}
        atomic_write_text(path, json.dumps(record, sort_keys=True))
        self._memory[key] = entry


def cached_size(cache: SizeCache, key: SizeKey, compute: Callable[[], EncodedTensor]) -> SizeEntry:
    """The cached entry for `key`, encoding (via `compute`) and storing it on a miss."""
    entry = cache.get(key)
    if entry is None:
        entry = SizeEntry.from_encoded(compute())
        cache.put(key, entry)
    return entry


# --- the whole artifact ----------------------------------------------------------------------------

# encode_tensor's frame order, which write_artifact keeps in tensors.bin and the manifest.
FRAME_ORDER = ("codes", "scales", "zeros")
# Configs remembered with their sizes; beyond this the oldest are forgotten (a search revisits few).
MEMO_CONFIGS = 1 << 16

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


@dataclass(frozen=True)
class _Row:
    """One stored tensor of a config with what its size and its manifest entry take."""

    name: str
    source: str
    setting: TensorSetting
    setting_key: str  # setting.key(), which is slow to recompute for every config
    compressed_bytes: int
    frames: tuple[tuple[str, str, int], ...]  # (kind, coder, length) in tensors.bin order
    template: tuple[str, ...]  # its manifest entry around the frame offsets (ManifestWriter.entry_template)
    template_length: int = 0  # characters of the template's pieces (the entry less its offsets' digits)


_NO_LAYER = LayerConfig()  # a layer the config does not name


@dataclass(frozen=True)
class _Segment:
    """A run of consecutive rows (one layer's, or the non-decoder tensors) with what the manifest's
    length needs of them, summed once: a config's manifest is counted per segment, not per frame."""

    rows: tuple[_Row, ...]
    compressed_bytes: int
    template_length: int
    frame_offsets: tuple[int, ...]  # each frame's offset from the segment's first byte, ascending
    span: int  # Σ frame lengths: the next segment starts this much later
    settings: tuple[tuple[str, TensorSetting], ...]  # (key, its last setting), in first-use order

    @classmethod
    def of(cls, rows: tuple[_Row, ...]) -> "_Segment":
        offsets, span, settings = [], 0, {}
        for row in rows:
            for _, _, length in row.frames:
                offsets.append(span)
                span += length
            settings[row.setting_key] = row.setting
        return cls(rows, sum(r.compressed_bytes for r in rows), sum(r.template_length for r in rows),
                   tuple(offsets), span, tuple(settings.items()))

    def offset_digits(self, start: int) -> int:
        """Σ len(str(start + offset)) over the frames: one product unless a power of ten falls inside."""
        if not self.frame_offsets:
            return 0
        first = len(str(start))
        if len(str(start + self.frame_offsets[-1])) == first:
            return first * len(self.frame_offsets)
        return sum(len(str(start + offset)) for offset in self.frame_offsets)


class SizeModel:
    """Predicts write_artifact's bytes on disk for any config of one base model, exactly.

    weights: the base model's tensors by name, before any compression (kept unchanged; an
    Evaluator can share them as its originals). Sizes missing from `size_cache` are computed by
    compressing these weights on `device` and encoding them, under the SizeKey compress_model
    uses, so `evo compress` and the search share entries. `model_id` defaults to
    size_model_id(info, dtype of the weights, device): codes computed on a GPU are not served to a
    CPU export nor the reverse. `base_model` is the id the manifest records.
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
        prefer_decode_speed: bool = False,
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
        # compress_model's key model id for the same arguments: fast-decoding frames have other sizes.
        self.prefer_decode_speed = prefer_decode_speed
        tag = DECODE_SPEED_TAG if prefer_decode_speed else ""
        self.device = torch.device(device)  # where missing sizes are computed: part of the keys' model id
        self.model_id = (model_id or size_model_id(info, self.dtype, self.device)) + tag
        self.base_model = base_model
        self.sizes_computed = 0  # tensors compressed and encoded here (size-cache misses)
        self.on_entry: Callable[[int], None] | None = None  # told len(entries known) when one is added
        self.hessians = None  # the run's HessianSet (evo.evaluate.hessian) when gptq settings are sized
        self._entries: dict[tuple[str, TensorSetting], SizeEntry] = {}  # over the on-disk cache
        self._digests: dict[str, str] = {}
        self._rows: dict[tuple[str, str, TensorSetting], _Row] = {}
        self._segments: dict[tuple, _Segment] = {}
        self._layer_settings: dict[tuple, tuple[TensorSetting, ...]] = {}
        self._memo: dict[CompressionConfig, ArtifactSize] = {}
        self._shapes = {name: shape for layer in info.layers for name, shape in _layer_tensors(layer)}
        self._shapes.update({t.name: tuple(t.shape) for t in info.non_decoder})
        # The manifest's fields that no config changes; a config fills in the rest.
        self._manifest = build_manifest(info, CompressionConfig(), (), self.dtype, (), {}, base_model=base_model)
        self._writer = ManifestWriter()
        self._setting_items: dict[tuple[str, TensorSetting], int] = {}  # characters of a settings-table item
        self._bodies: dict[tuple, int] = {}  # manifest_body_length by (kept layers, digits of the tensors' bytes)

    @classmethod
    def for_model(
        cls,
        loaded,
        size_cache: SizeCache,
        *,
        stats: Mapping[str, ActivationStats] | None = None,
        model_id: str | None = None,
        base_model: str | None = None,
        prefer_decode_speed: bool = False,
    ) -> SizeModel:
        """From a LoadedModel that has not been compressed: its weights are copied to the CPU now,
        so a later Evaluator may change the model in place."""
        model = loaded.model
        weights = {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()}
        device = next(model.parameters()).device
        metadata = ArtifactMetadata(model, loaded.tokenizer, loaded.info)
        return cls(loaded.info, weights, size_cache, metadata, stats=stats, model_id=model_id,
                   base_model=base_model, device=device, prefer_decode_speed=prefer_decode_speed)

    def fresh(self) -> SizeModel:
        """A SizeModel over the same weights, size cache, metadata and statistics with empty memos, as a
        new run's would start (the cache's entries are shared: nothing is coded again). For benchmarks
        that compare runs side by side in one process."""
        twin = copy.copy(self)
        twin._entries, twin._rows, twin._segments, twin._layer_settings, twin._memo = {}, {}, {}, {}, {}
        twin._writer = ManifestWriter()
        twin._setting_items = {}
        twin._bodies = {}
        twin.on_entry = None
        return twin

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
        kept, segments = self._plan_segments(config)
        result = self.size_of_plan(kept, segments, self._writer.config_json_length(config))
        if len(self._memo) >= MEMO_CONFIGS:
            del self._memo[next(iter(self._memo))]
        self._memo[config] = result
        return result

    def size_of_plan(self, kept: tuple[int, ...], segments: list[_Segment], config_length: int) -> ArtifactSize:
        """The artifact's bytes from a config's plan as memoised segments (layer_segment, then
        non_decoder_segment) and the length of its config's JSON (the size table's genome path)."""
        tensor_bytes = sum(segment.compressed_bytes for segment in segments)
        files = self.metadata.files(kept, tensor_bytes)
        other = sum(files.values())
        manifest = self._manifest_length(kept, segments, files, tensor_bytes, other, config_length)
        model_config = files[MODEL_CONFIG_FILE]
        return ArtifactSize(
            tensor_bytes=tensor_bytes,
            manifest_bytes=manifest,
            model_config_bytes=model_config,
            other_bytes=other - tensor_bytes - model_config,
        )

    def config_frame_length(self, config: CompressionConfig) -> int:
        """Characters of the config's JSON in the manifest without its layers' items (and their commas)."""
        return self._writer.config_frame_length(config)

    def layer_item_length(self, index: int, layer: LayerConfig) -> int:
        """Characters of one item of the layers table of the config's JSON in the manifest."""
        return self._writer.layer_item_length(index, layer)

    def manifest(self, config: CompressionConfig) -> bytes:
        """The manifest write_artifact would write, every sha256 a placeholder of the same length.

        Built the slow, obvious way (plan_model, StoredTensors with their offsets, the writer's
        defaults); the tests check size()'s memoised path against it.
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
        return self._writer.encode(manifest, sum(files.values()))

    # --- sizes of single tensors --------------------------------------------------------------------

    def _digest(self, source: str, act: ActivationStats) -> str:
        digest = self._digests.get(source)
        if digest is None:
            digest = self._digests[source] = act.digest()
        return digest

    def size_key(self, source: str, setting: TensorSetting) -> SizeKey:
        """compress_model's key for a tensor's size: its statistics' digest and, for gptq, the Hessians'."""
        act = stats_for(self.stats, source, setting)
        parts = [self._digest(source, act)] if act is not None else []
        if needs_hessian_for(setting):
            if self.hessians is None:
                raise EvoError(f"tensor {source} uses quantizer 'gptq': the size model needs the run's Hessians")
            parts.append(self.hessians.digest)
        return SizeKey(self.model_id, source, setting.key(), "|".join(parts))

    def _entry(self, source: str, setting: TensorSetting) -> SizeEntry:
        entry = self._entries.get((source, setting))
        if entry is not None:
            return entry
        act = stats_for(self.stats, source, setting)
        key = self.size_key(source, setting)

        def encode():
            weight = self.weights[source].to(self.device)
            self.sizes_computed += 1
            quantized = compress_tensor(weight, setting, act, hessian_for(self.hessians, source, setting)).quantized
            return encode_tensor(quantized, prefer_decode_speed=self.prefer_decode_speed)

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
        kept, segments = self._plan_segments(config)
        return kept, [row for segment in segments for row in segment.rows]

    def _plan_segments(self, config: CompressionConfig) -> tuple[tuple[int, ...], list[_Segment]]:
        """The kept layers and plan_model's tensors as memoised per-layer segments."""
        drops = config.drops
        layer_entries = dict(config.layers)
        overrides = dict(config.tensors)
        rows: list[_Segment] = []
        kept = []
        for layer in self.info.layers:
            drop = drops.get(layer.index, "none")
            if drop == "layer":
                continue
            rows.append(self._layer_segment_of(config, layer, len(kept), drop, layer_entries, overrides))
            kept.append(layer.index)
        rows.append(self.non_decoder_segment(config, overrides))
        return tuple(kept), rows

    def layer_segment(self, config: CompressionConfig, layer: DecoderLayerInfo, new_index: int) -> _Segment:
        """The memoised segment of a kept layer of `config`, stored as decoder layer `new_index`."""
        return self._layer_segment_of(config, layer, new_index, config.drop_for(layer.index), dict(config.layers),
                                      dict(config.tensors))

    def _layer_segment_of(self, config, layer, new_index, drop, layer_entries, overrides) -> _Segment:
        settings = self._settings_of_layer(config, layer, layer_entries, overrides)
        key = (layer.index, new_index, drop, settings)
        segment = self._segments.get(key)
        if segment is None:
            segment = self._segments[key] = _Segment.of(self._layer_segment(layer, new_index, drop, settings))
        return segment

    def non_decoder_segment(self, config: CompressionConfig, overrides: dict | None = None) -> _Segment:
        """The memoised segment of the tensors outside the decoder layers (embedding, head, final norm)."""
        overrides = dict(config.tensors) if overrides is None else overrides
        named = tuple((t.name, overrides[t.name]) for t in self.info.non_decoder if t.name in overrides)
        key = ("non_decoder", config.embedding, config.head, named)
        segment = self._segments.get(key)
        if segment is None:
            segment = self._segments[key] = _Segment.of(tuple(
                self._row(t.name, t.name, config.setting_for(t.name, self.info)) for t in self.info.non_decoder
            ))
        return segment

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
        key = (layer.index, layer_entries.get(layer.index, _NO_LAYER), config.default, named)
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

    def prepare_row(self, source: str, setting: TensorSetting) -> None:
        """Make the manifest pieces of a tensor under a setting, stored under its own name (no layer
        dropped before it), so that sizing a config later finds them."""
        self._row(source, source, setting)

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
            template = self._writer.entry_template(stored)
            row = _Row(name, source, setting, setting.key(), entry.compressed_bytes, frames, template,
                       sum(len(piece) for piece in template))
            self._rows[(name, source, setting)] = row
        return row

    def _manifest_length(
        self,
        kept: tuple[int, ...],
        segments: list[_Segment],
        files: dict[str, int],
        tensor_bytes: int,
        other_bytes: int,
        config_length: int,
    ) -> int:
        """len(manifest.json) as write_artifact writes it (placeholder checksums), counted from the
        segments' memoised template lengths and settings and the writer's own pieces: only the frame
        offsets' digits are new per config, and nothing is joined (tests check it against manifest())."""
        rows = sum(len(segment.rows) for segment in segments)
        entries = max(rows - 1, 0)  # the commas between entries
        offset = 0
        settings: dict[str, TensorSetting] = {}
        for segment in segments:
            entries += segment.template_length + segment.offset_digits(offset)
            offset += segment.span
            settings.update(segment.settings)  # to_dict's {key: last setting}
        settings_length = max(len(settings) - 1, 0)
        for key, setting in settings.items():
            settings_length += self.setting_item_length(key, setting)
        body = self.manifest_body_length(kept, tensor_bytes) + config_length + settings_length + entries
        return self.manifest_length_of(body, other_bytes)

    def manifest_length_of(self, body_length: int, other_bytes: int) -> int:
        """len(manifest.json) when its body (up to total_bytes' value) has body_length characters and the
        other files other_bytes; never shorter for a longer body (its total is the least fixed point)."""
        return self._writer.length_of(body_length, other_bytes)

    def setting_item_length(self, key: str, setting: TensorSetting) -> int:
        """Characters of one "key":{setting} item of the manifest's settings table (memoised)."""
        length = self._setting_items.get((key, setting))
        if length is None:
            length = self._setting_items[(key, setting)] = self._writer.setting_item_length(key, setting)
        return length

    def manifest_body_length(self, kept: tuple[int, ...], tensor_bytes: int) -> int:
        """ManifestWriter.body_length of a config's manifest: decided by the kept layers (their list,
        config.json's size) and the digits of tensors.bin's size, so memoised by those."""
        key = (kept, len(str(tensor_bytes)))
        length = self._bodies.get(key)
        if length is None:
            if len(self._bodies) >= MEMO_CONFIGS:
                self._bodies.clear()
            files = self.metadata.files(kept, tensor_bytes)
            manifest = replace(self._manifest, kept_layers=kept, files=files, tensor_bytes=tensor_bytes)
            length = self._bodies[key] = self._writer.body_length(manifest)
        return length


def _layer_tensors(layer: DecoderLayerInfo) -> list[tuple[str, tuple[int, ...]]]:
    """A layer's tensors in plan_model's order: linears, then norms and biases."""
    return [(lin.name, tuple(lin.shape)) for lin in layer.linears] + [
        (name, tuple(shape)) for name, shape in layer.other_tensors
    ]


def _frames(entry: SizeEntry) -> tuple[tuple[str, str, int], ...]:
    unknown = set(entry.frame_bytes) - set(FRAME_ORDER)
    if unknown:
        raise RuntimeError(f"size entries have frames {sorted(unknown)} that evo.compress.size does not place")
    return tuple(
        (kind, entry.coders[kind], entry.frame_bytes[kind]) for kind in FRAME_ORDER if kind in entry.frame_bytes
    )

