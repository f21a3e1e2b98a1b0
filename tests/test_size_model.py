"""SizeModel: the predicted artifact size is the size write_artifact puts on disk, to the byte, for
configs with mixed settings, drops and activation-aware pruning; the fast plan equals plan_model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from evo.compress.artifact import read_manifest, write_artifact
from evo.constants import MANIFEST_FILE as MANIFEST
from evo.compress import TensorSetting
from evo.compress.model import compress_model
from evo.compress.plan import plan_model
from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.modelio import load_model
from evo.compress.size import SizeCache, SizeModel
from evo.evaluate.stats import collect_activation_stats

TOKENS = np.random.default_rng(0).integers(3, 259, size=(4, 32))


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _frames_without_checksums(manifest: bytes) -> list:
    return [[frame | {"sha256": ""} for frame in t["frames"]] for t in json.loads(manifest)["tensors"]]


def _configs() -> dict[str, CompressionConfig]:
    return {
        "uniform4": CompressionConfig(default=TensorSetting(bits=4, group_size=32)),
        "mixed_drops": CompressionConfig(
            default=TensorSetting(bits=3, group_size=64),
            embedding=TensorSetting(bits=8, group_size=128),
            layers={
                0: LayerConfig(attention=TensorSetting(bits=5, group_size=None, symmetric=True, rescale=1.25)),
                1: LayerConfig(drop="layer"),
                2: LayerConfig(drop="attention", mlp=TensorSetting(bits=6, zero_point="float")),
                3: LayerConfig(drop="mlp"),
            },
            tensors={"model.layers.3.self_attn.v_proj.weight": TensorSetting(bits=16)},
        ),
        "wanda": CompressionConfig(
            default=TensorSetting(bits=4, group_size=32, sparsity=0.5, prune_criterion="wanda"),
            layers={2: LayerConfig(mlp=TensorSetting(bits=2, sparsity=0.25, prune_criterion="linf"))},
        ),
        "kept": CompressionConfig(default=KEPT),
    }


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    directory = tiny_model_dir("llama")
    loaded = load_model(str(directory))
    stats = collect_activation_stats(loaded.model, loaded.info, TOKENS)
    return directory, loaded, stats


@pytest.mark.parametrize("name", list(_configs()))
def test_predicted_bytes_are_the_bytes_on_disk(llama, tmp_path, name):
    directory, loaded, stats = llama
    config = _configs()[name]
    cache = SizeCache(tmp_path / "sizes")
    size_model = SizeModel.for_model(loaded, cache, stats=stats)
    predicted = size_model.artifact_bytes(config)

    fresh = load_model(str(directory))
    result = compress_model(fresh, None, config, stats=stats, size_cache=cache)
    assert all(t.encoded is None for t in result.tensors)  # compress_model found the SizeModel's entries
    summary = write_artifact(tmp_path / "art", fresh.model, fresh.tokenizer, result)
    disk = _disk_bytes(tmp_path / "art")
    assert predicted == disk == summary.total_bytes == read_manifest(tmp_path / "art").total_bytes
    assert size_model.tensor_bytes(config) == result.tensor_bytes
    # The slow manifest (placeholder checksums) has the written one's length and, checksums aside,
    # its content.
    written = (tmp_path / "art" / MANIFEST).read_bytes()
    built = size_model.manifest(config)
    assert len(built) == len(written) == size_model.size(config).manifest_bytes
    assert _frames_without_checksums(built) == _frames_without_checksums(written)


def test_a_fresh_cache_gives_the_same_sizes_as_compress_model(llama, tmp_path):
    directory, loaded, stats = llama
    config = _configs()["mixed_drops"]
    predicted = SizeModel.for_model(loaded, SizeCache(tmp_path / "a"), stats=stats).artifact_bytes(config)
    fresh = load_model(str(directory))
    result = compress_model(fresh, None, config, stats=stats, size_cache=SizeCache(tmp_path / "b"))
    summary = write_artifact(tmp_path / "art", fresh.model, fresh.tokenizer, result)
    assert predicted == summary.total_bytes


def test_sizes_come_from_the_cache_and_the_memo(llama, tmp_path):
    _, loaded, stats = llama
    config = _configs()["uniform4"]
    first = SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"), stats=stats)
    size = first.artifact_bytes(config)
    assert first.sizes_computed == len(plan_model(loaded.info, config).tensors)
    second = SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"), stats=stats)
    assert second.artifact_bytes(config) == size and second.sizes_computed == 0
    assert second.size(config) is second.size(config)


def test_wanda_without_statistics_is_an_error(llama, tmp_path):
    _, loaded, _ = llama
    size_model = SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"))
    with pytest.raises(EvoError, match="activation"):
        size_model.artifact_bytes(_configs()["wanda"])
    with pytest.raises(EvoError, match="layer 7"):
        size_model.artifact_bytes(CompressionConfig(layers={7: LayerConfig(drop="mlp")}))


def _random_config(rng: random.Random, info) -> CompressionConfig:
    def setting() -> TensorSetting:
        bits = rng.choice([2, 3, 4, 8, 16])
        if bits == 16:
            return TensorSetting(bits=16, group_size=rng.choice([128, None]))  # same key, other dict
        return TensorSetting(bits=bits, group_size=rng.choice([32, 64, None]), sparsity=rng.choice([0.0, 0.5]))

    layers = {}
    for layer in info.layers:
        layers[layer.index] = LayerConfig(
            attention=setting() if rng.random() < 0.7 else None,
            mlp=setting() if rng.random() < 0.7 else None,
            drop=rng.choice(["none", "none", "attention", "mlp", "layer"]),
        )
    if all(layer.drop == "layer" for layer in layers.values()):
        layers[0] = LayerConfig()
    linears = [lin.name for lin in info.linears()]
    tensors = {name: setting() for name in rng.sample(linears, 2)}
    return CompressionConfig(default=setting(), embedding=setting(), layers=layers, tensors=tensors)


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt"])
def test_fast_prediction_equals_the_slow_manifest(tiny_model_dir, tmp_path, family):
    loaded = load_model(str(tiny_model_dir(family)))
    size_model = SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"))
    rng = random.Random(0)
    for _ in range(12):
        config = _random_config(rng, loaded.info)
        plan = plan_model(loaded.info, config)
        kept, rows = size_model._plan_rows(config)
        assert kept == plan.kept_layers
        assert [(r.name, r.source, r.setting) for r in rows] == [(t.name, t.source, t.setting) for t in plan.tensors]
        assert size_model.size(config).manifest_bytes == len(size_model.manifest(config))


def test_dropped_layers_shrink_config_json(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir("qwen2")))  # has per-layer layer_types
    size_model = SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"))
    config = CompressionConfig(layers={0: LayerConfig(drop="layer"), 2: LayerConfig(drop="layer")})
    predicted = size_model.artifact_bytes(config)
    fresh = load_model(str(tiny_model_dir("qwen2")))
    result = compress_model(fresh, None, config, size_cache=size_model.size_cache)
    write_artifact(tmp_path / "art", fresh.model, fresh.tokenizer, result)
    assert predicted == _disk_bytes(tmp_path / "art")
    assert size_model.size(config).model_config_bytes == (tmp_path / "art" / "config.json").stat().st_size


def test_segment_offset_digits_equal_the_written_offsets_across_powers_of_ten():
    from evo.compress.config import KEPT
    from evo.compress.size import _Row, _Segment

    rows = tuple(_Row(f"t{i}", f"t{i}", KEPT, "k", 0, (("codes", "raw", 7 + 13 * i), ("scales", "raw", 5)), ("",), 0)
                 for i in range(6))
    segment = _Segment.of(rows)
    for start in (0, 3, 95, 990, 9_960, 99_999, 123_456):
        written, offset = 0, start
        for row in rows:
            for _, _, length in row.frames:
                written += len(str(offset))
                offset += length
        assert segment.offset_digits(start) == written


def test_layer_item_length_counts_the_layer_tables_json():
    """ManifestWriter.layer_item_length (counted from memoised settings' JSON) equals the length of the
    "index":{layer} item json writes, for layers with and without each field."""
    from evo.compress.artifact import ManifestWriter

    writer = ManifestWriter()
    settings = [None, KEPT, TensorSetting(bits=3, group_size=32), TensorSetting(bits=2, group_size=None, sparsity=0.5)]
    for index in (0, 7, 12, 123):
        for attention in settings:
            for mlp in settings:
                for drop in ("none", "attention", "mlp", "layer"):
                    layer = LayerConfig(attention=attention, mlp=mlp, drop=drop)
                    text = json.dumps({str(index): layer.to_dict()}, separators=(",", ":"))
                    assert writer.layer_item_length(index, layer) == len(text) - 2, (index, layer)
