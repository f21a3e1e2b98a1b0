"""CompressionConfig: lossless TOML/JSON round trips, precedence, and errors that name the key."""

from __future__ import annotations

import pytest

from evo.compress import TensorSetting
from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.modelio import describe_model


def _rich_config() -> CompressionConfig:
    return CompressionConfig(
        default=TensorSetting(bits=4, group_size=128),
        embedding=TensorSetting(bits=8, group_size=64, symmetric=True),
        layers={
            0: LayerConfig(attention=TensorSetting(bits=8), mlp=TensorSetting(bits=3, group_size=None, rescale=1.25)),
            2: LayerConfig(mlp=TensorSetting(bits=2, sparsity=0.1 + 0.2, prune_criterion="wanda"), drop="attention"),
            3: LayerConfig(drop="layer"),
        },
        tensors={
            "model.layers.1.self_attn.v_proj.weight": TensorSetting(bits=6, zero_point="float", rescale=0.7),
            'odd "name"\\with\ttabs': TensorSetting(bits=5, group_size=32),
        },
    )


def test_toml_round_trip_is_lossless(tmp_path):
    config = _rich_config()
    path = tmp_path / "config.toml"
    text = config.to_toml(path)
    assert path.read_text() == text
    again = CompressionConfig.from_toml(path)
    assert again == config
    assert hash(again) == hash(config)
    assert CompressionConfig.load(config.save(tmp_path / "again.toml")) == config


def test_json_round_trip_is_lossless(tmp_path):
    config = _rich_config()
    assert CompressionConfig.from_json_text(config.to_json()) == config
    assert CompressionConfig.load(config.save(tmp_path / "config.json")) == config
    assert CompressionConfig.from_dict(config.to_dict()) == config


def test_default_layers_are_not_stored():
    config = CompressionConfig(layers={1: LayerConfig(), 2: LayerConfig(drop="mlp")})
    assert config.layers == ((2, LayerConfig(drop="mlp")),)
    assert config.layer(1) == LayerConfig()
    assert config.drops == {2: "mlp"}


def test_hand_written_toml_takes_defaults_for_missing_fields():
    config = CompressionConfig.from_toml_text(
        """
        [default]
        bits = 3
        group_size = "channel"

        [layers.5]
        mlp = { bits = 8 }
        drop = "attention"
        """
    )
    assert config.default == TensorSetting(bits=3, group_size=None)
    assert config.embedding == KEPT
    assert config.layer(5) == LayerConfig(mlp=TensorSetting(bits=8), drop="attention")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 3", "colour"),
        ("[default]\nbits = 7", "default"),
        ("[layers.x]\ndrop = 'mlp'", "layers.x"),
        ("[layers.-1]\ndrop = 'mlp'", "layers.-1"),
        ("[layers.2]\ndrop = 'half'", "layers.2.drop"),
        ("[layers.2]\nattention = { bits = 4, groups = 3 }", "layers.2.attention"),
        ("[layers.2]\nheads = 3", "layers.2.heads"),
        ("[layers.2.attention]\nbits = 'four'", "layers.2.attention"),
        ("[tensors.'a.weight']\nsparsity = 2.0", "tensors.'a.weight'"),
        ("format = 2", "format"),
        ("layers = 3", "layers"),
    ],
)
def test_malformed_config_names_the_key(text, key, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EvoError) as excinfo:
        CompressionConfig.from_toml(path)
    assert key in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_invalid_syntax_and_missing_file_are_evo_errors(tmp_path):
    with pytest.raises(EvoError, match="not valid TOML"):
        CompressionConfig.from_toml_text("[default\nbits = 4")
    with pytest.raises(EvoError, match="not valid JSON"):
        CompressionConfig.from_json_text("{")
    with pytest.raises(EvoError, match="does not exist"):
        CompressionConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(EvoError, match=".toml or .json"):
        CompressionConfig().save(tmp_path / "config.yaml")


def test_setting_for_follows_precedence(tiny_llama):
    info = describe_model(tiny_llama)
    v_name = "model.layers.1.self_attn.v_proj.weight"
    config = CompressionConfig(
        default=TensorSetting(bits=4),
        embedding=TensorSetting(bits=8),
        layers={1: LayerConfig(attention=TensorSetting(bits=6), mlp=TensorSetting(bits=3))},
        tensors={v_name: TensorSetting(bits=5)},
    )
    assert config.setting_for(v_name, info).bits == 5
    assert config.setting_for("model.layers.1.self_attn.q_proj.weight", info).bits == 6
    assert config.setting_for("model.layers.1.mlp.down_proj.weight", info).bits == 3
    assert config.setting_for("model.layers.0.mlp.down_proj.weight", info).bits == 4
    assert config.setting_for("model.layers.0.input_layernorm.weight", info) == KEPT
    assert config.setting_for("model.embed_tokens.weight", info).bits == 8
    assert config.setting_for("model.norm.weight", info) == KEPT
    with pytest.raises(EvoError, match="no tensor"):
        config.setting_for("model.layers.9.mlp.up_proj.weight", info)


def test_validate_against_names_what_the_model_lacks(tiny_llama):
    info = describe_model(tiny_llama)
    _rich_config_without_odd = CompressionConfig(layers={3: LayerConfig(drop="layer")})
    _rich_config_without_odd.validate_against(info)
    cases = [
        (CompressionConfig(layers={4: LayerConfig(drop="mlp")}), "layer 4"),
        (CompressionConfig(tensors={"model.layers.0.mlp.fc9.weight": TensorSetting(bits=4)}), "fc9"),
        (CompressionConfig(tensors={"model.norm.weight": TensorSetting(bits=4)}), "model.norm.weight"),
        (CompressionConfig(head=TensorSetting(bits=8)), "ties"),
        (CompressionConfig(layers={i: LayerConfig(drop="layer") for i in range(4)}), "all 4"),
    ]
    for config, fragment in cases:
        with pytest.raises(EvoError, match=fragment):
            config.validate_against(info)


def test_invalid_objects_are_refused():
    with pytest.raises(EvoError, match="drop"):
        LayerConfig(drop="block")
    with pytest.raises(EvoError, match="TensorSetting"):
        CompressionConfig(default={"bits": 4})  # type: ignore[arg-type]
    with pytest.raises(EvoError, match="layer index"):
        CompressionConfig(layers={-1: LayerConfig(drop="mlp")})
