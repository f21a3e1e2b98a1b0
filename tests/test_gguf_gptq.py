"""GPTQ error feedback for the GGUF encoders (evo/gguf/gptq.py) and the gguf_gptq search space: valid
GGUF bytes for every type (bit for bit through gguf's decoder), lower layer-output error than the plain
encoder on correlated inputs, the plain bytes when there is nothing to feed back, and a searched run
exported with the evaluator's logits. Small random tensors and tiny Llamas, seconds each."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from evo.errors import EvoError
from evo.gguf import quants
from evo.gguf.gptq import gptq_encode, gptq_quantize
from test_gguf import IDS, _hf_logits, _load, _tiny_llama_dir
from test_gguf_search import _corpus, _plan_of

TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL")


def _problem(qtype: str, seed: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [rows, 4 blocks] and the Hessian E[x xᵀ] of correlated inputs with uneven scales."""
    block = quants.quant_type(qtype).block_size
    cols = 4 * block if block == quants.QK_K else 8 * block
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + 0.5 * torch.eye(cols)
    x = (torch.randn(4 * cols, cols, generator=g) @ mix) * (0.2 + 2 * torch.rand(cols, generator=g))
    weight = torch.randn(rows, cols, generator=g) * (0.5 + torch.rand(rows, 1, generator=g))
    return weight, x.T @ x / x.shape[0]


def _output_error(weight: torch.Tensor, data: np.ndarray, qtype: str, hessian: torch.Tensor) -> float:
    """tr(E H Eᵀ): the layer output's squared error per input, E = W − dequantized."""
    error = (weight - quants.dequantize(data, qtype, tuple(weight.shape))).double()
    return float(torch.einsum("ij,jk,ik->", error, hessian.double(), error))


@pytest.mark.parametrize("qtype", TYPES)
def test_gptq_bytes_round_trip_through_gguf_bit_for_bit(qtype):
    weight, hessian = _problem(qtype, seed=0, rows=8)
    data = gptq_quantize(weight, qtype, hessian, torch.diagonal(hessian))
    assert data.dtype == np.uint8 and data.shape == (8, quants.tensor_nbytes(tuple(weight.shape), qtype) // 8)
    reference = gguf.quants.dequantize(data, quants.quant_type(qtype).ggml)
    mine = quants.dequantize(data, qtype, tuple(weight.shape)).numpy()
    assert reference.shape == mine.shape and np.array_equal(reference.view(np.uint32), mine.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_gptq_lowers_the_layer_output_error_of_the_plain_encoder(qtype):
    for seed in (1, 2, 3):
        weight, hessian = _problem(qtype, seed)
        importance = torch.diagonal(hessian)  # the imatrix the plain encoder is fitted with
        plain = _output_error(weight, quants.quantize(weight, qtype, importance), qtype, hessian)
        fed_back = _output_error(weight, gptq_quantize(weight, qtype, hessian, importance), qtype, hessian)
        assert fed_back < 0.9 * plain, (qtype, seed, fed_back, plain)


@pytest.mark.parametrize("qtype", ("Q4_0", "Q4_K", "IQ4_NL"))
def test_a_diagonal_hessian_feeds_nothing_back_so_the_bytes_are_the_plain_encoders(qtype):
    """Uncorrelated inputs: U is diagonal, no column is updated, and the block-by-block encoding with
    the original rows' σ² equals the whole-row encoder (the formats are block-local)."""
    weight, hessian = _problem(qtype, seed=4, rows=8)
    diagonal = torch.diag(torch.diagonal(hessian))
    importance = torch.diagonal(hessian)
    assert np.array_equal(gptq_quantize(weight, qtype, diagonal, importance),
                          quants.quantize(weight, qtype, importance))


def test_gptq_is_deterministic_and_keeps_dead_columns_finite():
    weight, hessian = _problem("Q4_1", seed=5, rows=8)
    hessian[:, 3] = 0
    hessian[3, :] = 0  # a column no calibration token activated
    first = gptq_quantize(weight, "Q4_1", hessian)
    assert np.array_equal(first, gptq_quantize(weight, "Q4_1", hessian))
    assert torch.isfinite(quants.dequantize(first, "Q4_1", tuple(weight.shape))).all()


def test_bad_input_is_one_clear_line():
    weight, hessian = _problem("Q4_0", seed=0, rows=4)
    for call, message in (
        (lambda: gptq_encode(weight, "Q4_0", hessian[:-32, :-32]), "the Hessian has shape"),
        (lambda: gptq_encode(weight, "F16", hessian), "GPTQ applies to quantized GGUF types"),
        (lambda: gptq_encode(weight[:, :48], "Q4_0", hessian[:48, :48], name="blk.0.x"), "blk.0.x has rows of 48"),
        (lambda: gptq_encode(weight * float("nan"), "Q4_0", hessian), "NaN or inf"),
    ):
        with pytest.raises(EvoError, match=message) as exc:
            call()
        assert "\n" not in str(exc.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qtype", ("Q4_K", "Q4_0", "IQ4_NL", "Q2_K"))
def test_cuda_gptq_bytes_round_trip_bit_for_bit(qtype):
    weight, hessian = _problem(qtype, seed=0)
    data = gptq_encode(weight.cuda(), qtype, hessian.cuda(), torch.diagonal(hessian).cuda())
    assert data.device.type == "cuda"
    reference = gguf.quants.dequantize(data.cpu().numpy(), quants.quant_type(qtype).ggml)
    mine = quants.dequantize(data, qtype, tuple(weight.shape), device="cuda").cpu().numpy()
    assert np.array_equal(reference.view(np.uint32), mine.view(np.uint32))


# --- the gguf_gptq search space ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("ggufgptq64"), 64, tied=True, layers=3)


def test_gguf_gptq_space_is_gguf_with_gptq():
    from evo.search.levels import space_needs_hessians
    from evo.search.space import SearchSpace

    plain, gptq = SearchSpace.load("gguf"), SearchSpace.load("gguf_gptq")
    assert gptq.quantizer == "gptq" and plain.quantizer == "imatrix"
    assert space_needs_hessians(gptq) and not space_needs_hessians(plain)
    assert type(gptq).from_dict(gptq.to_dict()) == gptq
    assert (gptq.types, gptq.embedding_types, gptq.drops) == (plain.types, plain.embedding_types, plain.drops)
    with pytest.raises(EvoError, match="quantizer = 'obq'"):
        type(gptq).from_dict({**gptq.to_dict(), "quantizer": "obq"})


def test_a_searched_gptq_run_exports_a_gguf_with_the_evaluators_logits(llama64, tmp_path, capsys):
    from evo.cli import main
    from evo.gguf.levels import gguf_level
    from evo.search.gguf_space import GGUFSearchSize
    from evo.search.loop import SearchSpec, open_session, run_search
    from evo.search.space import SearchSpace

    loaded = _load(llama64)
    space = SearchSpace.load("gguf_gptq")
    genes = space.genes(loaded.info)
    sizes = GGUFSearchSize(loaded)
    low = sizes.artifact_bytes(space.decode([0] * len(genes), loaded.info))
    high = sizes.artifact_bytes(space.decode([len(g.choices) - 1 if g.kind != "drop" else 0 for g in genes],
                                             loaded.info))
    spec = SearchSpec(budget_bytes=(low + high) // 2, model=str(llama64), corpus=(str(_corpus(tmp_path)),),
                      space="gguf_gptq", samples=4, seq_len=32, clusters=2, screen_sequences=2, screen_tokens=16,
                      generations=1, population=4)
    session = open_session(spec, tmp_path / "run", resume=False)
    result = run_search(session)
    best = result.best
    assert (session.store.directory / "hessians").is_dir() and session.hessians is not None

    config = session.config_of(best.genome)
    session.evaluator.materialise(config)  # the model the search scored
    with torch.no_grad():
        evaluated = session.loaded.model(IDS).logits
    # its decoder linears are GPTQ's levels, not the plain encoder's
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    original = session.evaluator._originals[q_proj]
    imatrix = session.evaluator.importance[q_proj]
    resident = dict(session.loaded.model.named_parameters())[q_proj]
    assert torch.equal(resident, gguf_level(original, config.type_of[q_proj], imatrix, session.hessians.hessian(q_proj)))
    assert not torch.equal(resident, gguf_level(original, config.type_of[q_proj], imatrix))
    session.evaluator.restore()

    out = tmp_path / "best.gguf"
    session.lock.release()  # as when the search's process has ended
    assert main(["export", str(session.store.directory), "--format", "gguf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"predicted {best.size_bytes:,}, on disk (os.stat) {best.size_bytes:,}" in printed.replace("\n", " ")
    assert os.stat(out).st_size == best.size_bytes <= spec.budget_bytes
    reader = gguf.GGUFReader(str(out))
    assert {t.name: t.tensor_type.name for t in reader.tensors} == _plan_of(session.loaded, config).types
    assert torch.equal(_hf_logits(out, IDS), evaluated)
