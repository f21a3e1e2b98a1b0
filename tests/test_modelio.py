import pytest

from evo.errors import EvoError
from evo.modelio import ALIASES, describe_model, load_model, resolve_model_source

ROLES_LLAMA = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "opt"])
def test_describes_each_family_generically(tiny_model_dir, family):
    loaded = load_model(str(tiny_model_dir(family)))
    info = loaded.info
    assert info.num_layers == 4
    assert info.hidden_size == 64
    roles = sorted(lin.role for lin in info.layers[0].linears)
    if family == "opt":
        assert roles == sorted(["attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"])
        assert info.layers_path == "model.decoder.layers"
        assert info.layers[0].mlp_module is None  # fc1/fc2 sit directly in the OPT layer
        assert any(t.role == "position_embedding" for t in info.non_decoder)
    else:
        assert roles == sorted(ROLES_LLAMA)
        assert info.layers[2].mlp_module == "model.layers.2.mlp"
    assert info.layers[1].attention_module.endswith("layers.1.self_attn")
    for lin in info.linears():
        module = loaded.model.get_submodule(lin.module)
        assert tuple(module.weight.shape) == lin.shape
    embedding = [t for t in info.non_decoder if t.role == "embedding"]
    assert len(embedding) == 1 and embedding[0].shape == (info.vocab_size, 64)
    expect_tied = family != "mistral"
    assert info.tied_embeddings is expect_tied
    assert any(t.role == "head" for t in info.non_decoder) is (not expect_tied)


def test_dtype_and_device_options(tiny_model_dir):
    import torch

    loaded = load_model(str(tiny_model_dir("llama")), dtype="bfloat16", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(EvoError, match="dtype"):
        load_model(str(tiny_model_dir("llama")), dtype="int3")
    with pytest.raises(EvoError, match="device"):
        load_model(str(tiny_model_dir("llama")), device="tpu")


def test_describe_model_matches_loaded_info(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir("qwen2")))
    assert describe_model(loaded.model, model_id=loaded.info.model_id) == loaded.info


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-alias", "unknown model"),
        ("./missing/model/dir", "does not exist"),
        ("/tmp/definitely/not/here.gguf", "does not exist"),
        ("", "empty model name"),
    ],
)
def test_bad_model_names_fail_clearly(spec, message):
    with pytest.raises(EvoError, match=message):
        resolve_model_source(spec)


def test_offline_hub_id_fails_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvoError, match="cannot be fetched from the Hugging Face hub"):
        load_model("evo-tests/not-a-real-model")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(EvoError, match="config.json"):
        resolve_model_source(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                      "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                                                      "num_attention_heads": 1, "intermediate_size": 8}))
    with pytest.raises(EvoError, match="unsupported"):
        load_model(str(tmp_path))



def test_a_damaged_safetensors_shard_is_one_clear_error(tiny_model_dir, tmp_path):
    import shutil

    directory = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir("llama"), directory)
    shard = sorted(directory.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:20] = b"not a header"  # the JSON header after its 8-byte length
    shard.write_bytes(bytes(data))
    with pytest.raises(EvoError, match="damaged .*save or download the model again"):
        load_model(str(directory))

def test_default_alias_resolves_to_the_packaged_gguf():
    source = resolve_model_source("smollm2-135m")
    assert source.kind == "alias"
    assert source.gguf_file == ALIASES["smollm2-135m"].filename


@pytest.mark.slow
def test_default_model_loads_with_30_llama_layers():
    loaded = load_model("smollm2-135m")
    info = loaded.info
    assert info.model_type == "llama" and info.num_layers == 30
    assert info.tied_embeddings
    assert info.layers[0].linear("attn_k").shape == (192, 576)
    assert loaded.tokenizer("hello world")["input_ids"] == [28120, 905]
