"""Baselines: uniform configs, ShortGPT block influence and layer removal."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evo.baselines import block_influence, shortgpt_config, uniform_config
from evo.compress.settings import TensorSetting
from evo.compress.config import KEPT, CompressionConfig
from evo.errors import EvoError
from evo.modelio import describe_model, load_model

IDS = np.random.default_rng(0).integers(3, 250, size=(3, 24))


def _make_identity(model, info, index: int) -> None:
    """Zero the two projections that write into the residual stream: the layer then returns its input."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for lin in info.layers[index].linears:
            if lin.role in ("attn_o", "mlp_down"):
                params[lin.name].zero_()


def test_uniform_config_settings():
    config = uniform_config(3)
    assert config.default == TensorSetting(bits=3, group_size=128)
    assert config.embedding == TensorSetting(bits=8, group_size=128)
    assert config.layers == () and config.head == KEPT
    assert uniform_config(4, group_size=64, embedding_bits=6).embedding == TensorSetting(bits=6, group_size=64)
    assert uniform_config(16, embedding_bits=16) == CompressionConfig(default=KEPT, embedding=KEPT)
    assert CompressionConfig.from_toml_text(config.to_toml()) == config


def test_block_influence_one_value_per_layer_in_range(tiny_llama):
    info = describe_model(tiny_llama)
    influence = block_influence(tiny_llama, info, IDS, batch_size=2)
    assert influence.shape == (info.num_layers,)
    assert np.all(np.isfinite(influence))
    assert np.all(influence > 0) and np.all(influence <= 2)
    # batching does not change it
    np.testing.assert_allclose(block_influence(tiny_llama, info, IDS, batch_size=3), influence, atol=1e-6)


def test_identity_layer_has_zero_influence_and_is_dropped_first(tiny_llama):
    info = describe_model(tiny_llama)
    _make_identity(tiny_llama, info, 2)
    influence = block_influence(tiny_llama, info, IDS)
    assert influence[2] == pytest.approx(0.0, abs=1e-6)
    assert np.argmin(influence) == 2
    assert shortgpt_config(influence, 1).drops == {2: "layer"}


def test_shortgpt_drops_exactly_the_k_lowest():
    influence = np.array([0.30, 0.05, 0.20, 0.01, 0.50, 0.07])
    for k in range(len(influence)):
        config = shortgpt_config(influence, k)
        assert len(config.drops) == k
        assert set(config.drops) == set(np.argsort(influence)[:k].tolist())
        assert set(config.drops.values()) <= {"layer"}
        assert config.default == KEPT and config.embedding == KEPT
    assert set(shortgpt_config(influence, 3).drops) == {1, 3, 5}


def test_shortgpt_rejects_bad_arguments():
    with pytest.raises(EvoError):
        shortgpt_config([0.1, 0.2], 2)  # would drop every layer
    with pytest.raises(EvoError):
        shortgpt_config([0.1, float("nan")], 1)
    with pytest.raises(EvoError):
        shortgpt_config(np.zeros((2, 2)), 1)


def test_shortgpt_on_a_loaded_model_validates_and_runs(tiny_model_dir):
    from evo.compress.model import compress_model

    loaded = load_model(str(tiny_model_dir("llama")))
    info = loaded.info
    _make_identity(loaded.model, info, 1)
    ids = np.random.default_rng(1).integers(3, info.vocab_size, size=(2, 16))
    influence = block_influence(loaded.model, info, ids)
    config = shortgpt_config(influence, 2)
    assert 1 in config.drops and len(config.drops) == 2
    config.validate_against(info)
    kept_all = copy.deepcopy(loaded.model)  # every tensor in bf16, no drop: what removing an identity layer equals
    compress_model(kept_all, info, shortgpt_config(influence, 0), measure=False)
    result = compress_model(loaded, None, shortgpt_config(influence, 1), measure=False)
    assert result.kept_layers == tuple(i for i in range(info.num_layers) if i != 1)
    with torch.no_grad():
        before = kept_all(input_ids=torch.as_tensor(ids)).logits
        after = loaded.model(input_ids=torch.as_tensor(ids)).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    with pytest.raises(EvoError):
        block_influence(loaded.model, info, ids)  # the model no longer has the layers it was described with


def test_uniform_cli_group_size_channel_is_per_output_channel():
    import argparse

    from evo.cli.baseline import _uniform_baseline

    args = argparse.Namespace(bits=8, group_size="channel", embedding_bits=8, quantizer="rtn")
    config = _uniform_baseline(args)(None)
    assert config.default == TensorSetting(bits=8, group_size=None)
    assert config.embedding == TensorSetting(bits=8, group_size=None)
