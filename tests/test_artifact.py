"""Activation statistics, whole-model compression and the artifact: load() reproduces the
compressed model's logits exactly, and the predicted size is the size on disk to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_model

import evo
from evo.compress import TensorSetting
from evo.compress.artifact import load, read_manifest, write_artifact
from evo.compress.config import CompressionConfig, LayerConfig
from evo.compress.model import compress_model
from evo.compress.plan import plan_model
from evo.compress.size import SizeCache
from evo.constants import MANIFEST_FILE as MANIFEST
from evo.constants import TENSORS_FILE as TENSORS
from evo.errors import EvoError
from evo.evaluate.stats import collect_activation_stats, stats_digest
from evo.modelio import describe_model

IDS = torch.arange(5, 37).reshape(2, 16)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mixed_config() -> CompressionConfig:
    return CompressionConfig(
        default=TensorSetting(bits=4, group_size=32),
        embedding=TensorSetting(bits=8, group_size=64),
        layers={
            0: LayerConfig(
                attention=TensorSetting(bits=3, group_size=None, symmetric=True, rescale=1.5),
                mlp=TensorSetting(bits=4, sparsity=0.25, prune_criterion="wanda"),
            ),
            1: LayerConfig(drop="layer"),
            2: LayerConfig(drop="attention", mlp=TensorSetting(bits=6, zero_point="float")),
            3: LayerConfig(drop="mlp"),
        },
        tensors={"model.layers.3.self_attn.v_proj.weight": TensorSetting(bits=16)},
    )


# --- activation statistics -----------------------------------------------------------------------


def test_activation_stats_cover_every_linear(tiny_llama, token_ids):
    info = describe_model(tiny_llama)
    stats = collect_activation_stats(tiny_llama, info, token_ids, batch_size=3)
    head = [t.name for t in info.non_decoder if t.role in ("embedding", "head")][-1]  # tied: the embedding
    assert set(stats) == {lin.name for lin in info.linears()} | {head}
    assert stats[head].l2.shape == (info.hidden_size,)
    for lin in info.linears():
        assert stats[lin.name].l2.shape == (lin.shape[1],)
        assert bool((stats[lin.name].l2 >= stats[lin.name].absmax).all())
    # The same tokens in other batches give the same statistics.
    again = collect_activation_stats(tiny_llama, info, token_ids, batch_size=4)
    name = info.layers[2].linear("mlp_down").name
    torch.testing.assert_close(stats[name].l2, again[name].l2)
    assert torch.equal(stats[name].absmax, again[name].absmax)


def test_activation_stats_match_a_direct_computation(tiny_llama, token_ids):
    info = describe_model(tiny_llama)
    name = info.layers[0].linear("attn_q").name
    seen = []
    handle = tiny_llama.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        tiny_llama(input_ids=torch.as_tensor(token_ids))
    handle.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1]).double()
    stats = collect_activation_stats(tiny_llama, info, token_ids)[name]
    torch.testing.assert_close(stats.l2, x.pow(2).sum(0).sqrt().float())
    torch.testing.assert_close(stats.absmax, x.abs().amax(0).float())


def test_stats_digest_names_the_tokens(token_ids):
    assert stats_digest("m", token_ids) == stats_digest("m", token_ids.copy())
    assert stats_digest("m", token_ids) != stats_digest("other", token_ids)
    assert stats_digest("m", token_ids) != stats_digest("m", token_ids[::-1])
    with pytest.raises(EvoError, match="token ids"):
        stats_digest("m", token_ids[0])


# --- whole-model compression ------------------------------------------------------------------------


def test_plan_renames_layers_after_a_dropped_one(tiny_llama):
    info = describe_model(tiny_llama)
    plan = plan_model(info, _mixed_config())
    assert plan.kept_layers == (0, 2, 3)
    by_source = {t.source: t for t in plan.tensors}
    assert by_source["model.layers.2.mlp.up_proj.weight"].name == "model.layers.1.mlp.up_proj.weight"
    assert "model.layers.2.self_attn.q_proj.weight" not in by_source  # attention dropped
    assert "model.layers.3.mlp.up_proj.weight" not in by_source  # MLP dropped
    assert not any(t.source.startswith("model.layers.1.") for t in plan.tensors)  # layer dropped
    assert by_source["model.embed_tokens.weight"].setting.bits == 8


def test_wanda_without_statistics_is_an_error(tiny_llama):
    with pytest.raises(EvoError, match="activation"):
        compress_model(tiny_llama, describe_model(tiny_llama), _mixed_config())


def test_a_compressed_model_cannot_be_compressed_again(tiny_llama):
    info = describe_model(tiny_llama)
    config = CompressionConfig(layers={1: LayerConfig(drop="attention")})
    compress_model(tiny_llama, info, config, measure=False)
    with pytest.raises(EvoError, match="reload"):
        compress_model(tiny_llama, info, config, measure=False)


# --- the artifact ----------------------------------------------------------------------------------


@pytest.fixture
def exported(tiny_llama, tiny_tokenizer, token_ids, tmp_path):
    """A tiny Llama compressed with a mixed config and written with a size cache."""
    info = describe_model(tiny_llama, model_id="tiny-llama")
    stats = collect_activation_stats(tiny_llama, info, token_ids)
    cache = SizeCache(tmp_path / "sizes")
    result = compress_model(tiny_llama, info, _mixed_config(), stats=stats, size_cache=cache)
    summary = write_artifact(tmp_path / "art", tiny_llama, tiny_tokenizer, result, base_model="tiny-llama")
    return tiny_llama, result, summary, tmp_path / "art"


def test_artifact_reproduces_the_compressed_model_exactly(exported):
    model, _, _, path = exported
    loaded, tokenizer = load(path)
    assert len(loaded.model.layers) == 3
    assert torch.equal(_logits(loaded), _logits(model))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert tokenizer("t5 t6 t7")["input_ids"] == [5, 6, 7]
    assert torch.equal(_logits(evo.load(path, expected_base_model="tiny-llama")[0]), _logits(model))


def test_predicted_size_is_the_size_on_disk(exported):
    _, result, summary, path = exported
    disk = _disk_bytes(path)
    assert summary.predicted_tensor_bytes == result.tensor_bytes == summary.tensor_bytes
    assert result.tensor_bytes + summary.metadata_bytes == disk == summary.total_bytes
    assert read_manifest(path).total_bytes == disk
    assert json.loads((path / MANIFEST).read_text())["total_bytes"] == disk
    assert (path / TENSORS).stat().st_size == result.tensor_bytes


def test_size_cache_hits_predict_the_same_bytes(exported, tiny_tokenizer, token_ids, tmp_path):
    _, first, _, _ = exported
    twin = tiny_model("llama")  # the same weights as tiny_llama
    info = describe_model(twin, model_id="tiny-llama")
    stats = collect_activation_stats(twin, info, token_ids)
    cache = SizeCache(tmp_path / "sizes")
    second = compress_model(twin, info, _mixed_config(), stats=stats, size_cache=cache, keep_tensors=True)
    assert all(t.encoded is None for t in second.tensors)  # every size came from the cache
    assert second.tensor_bytes == first.tensor_bytes
    again = write_artifact(tmp_path / "art2", twin, tiny_tokenizer, second, base_model="tiny-llama")
    assert again.total_bytes == _disk_bytes(tmp_path / "art2") == second.tensor_bytes + again.metadata_bytes



def test_untied_opt_with_in_layer_mlp_round_trips(tiny_opt, tiny_tokenizer, tmp_path):
    info = describe_model(tiny_opt)
    config = CompressionConfig(
        default=TensorSetting(bits=5, group_size=64),
        embedding=TensorSetting(bits=6),
        head=TensorSetting(bits=8, group_size=None),
        layers={1: LayerConfig(drop="mlp"), 0: LayerConfig(drop="layer")},
    )
    result = compress_model(tiny_opt, info, config)
    summary = write_artifact(tmp_path / "opt", tiny_opt, tiny_tokenizer, result)
    loaded, _ = load(tmp_path / "opt")
    assert torch.equal(_logits(loaded), _logits(tiny_opt))
    assert summary.total_bytes == _disk_bytes(tmp_path / "opt") == result.tensor_bytes + summary.metadata_bytes


def test_tampered_frame_fails_its_checksum(exported):
    _, _, _, path = exported
    manifest = read_manifest(path)
    victim = manifest.tensors[3]
    data = bytearray((path / TENSORS).read_bytes())
    data[victim.frames[0].offset] ^= 0xFF
    (path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(EvoError, match=f"corrupt: tensor {victim.name} failed its checksum"):
        load(path)


def test_truncated_or_missing_files_are_clear_errors(exported, tmp_path):
    _, _, _, path = exported
    with pytest.raises(EvoError, match="does not exist"):
        load(tmp_path / "no-such-artifact")
    blob = (path / TENSORS).read_bytes()
    (path / TENSORS).write_bytes(blob[:-10])
    with pytest.raises(EvoError, match="truncated"):
        load(path)
    (path / TENSORS).unlink()
    with pytest.raises(EvoError, match=f"no {TENSORS}"):
        load(path)
    manifest = (path / MANIFEST).read_bytes()
    (path / MANIFEST).write_bytes(manifest[: len(manifest) // 2])
    with pytest.raises(EvoError, match="truncated or corrupt"):
        load(path)
    (path / MANIFEST).unlink()
    with pytest.raises(EvoError, match=f"no {MANIFEST}"):
        load(path)


def test_manifest_of_another_base_model_is_refused(exported):
    _, _, _, path = exported
    with pytest.raises(EvoError, match="'tiny-llama', not 'other/model'"):
        load(path, expected_base_model="other/model")


def test_manifest_missing_a_key_names_it(exported):
    _, _, _, path = exported
    data = json.loads((path / MANIFEST).read_text())
    del data["tensors"][0]["shape"]
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(EvoError, match="'shape'"):
        load(path)


def test_existing_directory_needs_overwrite(exported, tiny_tokenizer):
    model, result, _, path = exported
    with pytest.raises(EvoError, match="already exists"):
        write_artifact(path, model, tiny_tokenizer, result)
    summary = write_artifact(path, model, tiny_tokenizer, result, overwrite=True)
    assert summary.total_bytes == _disk_bytes(path)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".art")]  # no temp dirs left
    (path.parent / "precious").mkdir()
    (path.parent / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(EvoError, match="not an evo artifact"):
        write_artifact(path.parent / "precious", model, tiny_tokenizer, result, overwrite=True)
    assert (path.parent / "precious" / "notes.txt").read_text() == "keep me"


def test_evo_import_stays_light():
    import subprocess
    import sys

    code = "import sys, evo; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_writing_needs_the_model_that_was_compressed(exported, tiny_tokenizer, tmp_path):
    _, result, _, _ = exported
    fresh = tiny_model("llama", seed=1)
    with pytest.raises(EvoError, match="pass the model that compress_model changed"):
        write_artifact(tmp_path / "wrong", fresh, tiny_tokenizer, result)
