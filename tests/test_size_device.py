"""Size entries name the device kind their codes were computed on (a GPU kernel may round a
quantization step otherwise than a CPU's), and a size table over a GPU size model computes its codes
on that GPU: the sizes a search reads are those its export on the same device encodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evo.compress.artifact import write_artifact
from evo.compress.model import compress_model
from evo.compress.settings import TensorSetting
from evo.compress.size import SizeCache, SizeModel
from evo.modelio import load_model
from evo.search import size_table
from evo.search.size_table import SizeTable
from evo.search.space import SearchSpace


def _space():
    return SearchSpace.from_dict({
        "granularity": "group",
        "quantization": {"group_size": 32, "symmetric": False, "zero_point": "int"},
        "genes": {"bits": [2, 4, 8], "rescale": [1.0], "sparsity": [0.0]},
        "structure": {"drop": ["none"]},
        "embedding": {"bits": [4, 8]},
        "head": {"bits": [4, 8]},
    })


def _genomes(table, n, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(len(g.choices))) for g in table.genes) for _ in range(n)]


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    directory = tiny_model_dir("llama")
    return directory, load_model(str(directory))


def test_codes_coded_on_a_cpu_are_not_served_to_a_gpu_size_model(llama, tmp_path):
    directory, loaded = llama
    cache = SizeCache(tmp_path / "sizes")
    on_cpu = SizeModel.for_model(loaded, cache)
    on_gpu = SizeModel(loaded.info, on_cpu.weights, cache, on_cpu.metadata, device="cuda")  # nothing runs on it
    source = loaded.info.layers[0].linears[0].name
    setting = TensorSetting(bits=4, group_size=32, symmetric=False, zero_point="int")
    on_cpu._entry(source, setting)  # coded on the CPU, into the shared cache
    assert on_gpu.size_key(source, setting) != on_cpu.size_key(source, setting)
    assert cache.get(on_gpu.size_key(source, setting)) is None
    assert on_gpu.model_id.endswith("|cuda") and not on_cpu.model_id.endswith("|cuda")
    # an export on the CPU reads what the CPU coded: compress_model's keys are the CPU size model's
    result = compress_model(load_model(str(directory)), None, _space().decode(_genomes(SizeTable(
        _space(), loaded.info, on_cpu), 1)[0], loaded.info), size_cache=cache)
    assert result.size_model_id == on_cpu.model_id


def test_a_gpu_size_models_table_quantizes_on_its_device_and_encodes_in_workers(llama, tmp_path, monkeypatch):
    """Without a GPU: the pairs' codes are asked of the size model's device (computed here on the CPU
    instead), stored under its keys, in order, the same whatever the workers; the Ray pool is unused."""
    _, loaded = llama
    asked = []
    quantize = size_table._quantize_pair

    def on_cpu_instead(source, setting, device="cpu"):
        asked.append(torch.device(device).type)
        return quantize(source, setting, "cpu")

    monkeypatch.setattr(size_table, "_quantize_pair", on_cpu_instead)

    class NoPool:
        def encode_pairs(self, pairs):
            raise AssertionError("a GPU size model's pairs are not coded on the CPU actors")

    reference = SizeTable(_space(), loaded.info, SizeModel.for_model(loaded, SizeCache(tmp_path / "cpu")))
    reference.fill(workers=1)
    assert set(asked) == {"cpu"}
    for workers in (1, 3):
        asked.clear()
        base = SizeModel.for_model(loaded, SizeCache(tmp_path / f"gpu{workers}"))
        model = SizeModel(loaded.info, base.weights, base.size_cache, base.metadata, device="cuda")
        table = SizeTable(_space(), loaded.info, model)
        seen = []
        coded = table.fill(workers=workers, pool=NoPool(), progress=lambda done, total: seen.append(done))
        assert coded == len(table.pairs()) == len(asked) and set(asked) == {"cuda"}
        assert seen == sorted(seen) and seen[-1] == coded
        assert all(table.is_coded(*pair) for pair in table.pairs())
        assert np.array_equal(table.table, reference.table)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_on_a_gpu_the_table_sizes_are_the_bytes_its_export_writes(llama, tmp_path, dtype):
    """The H200 failure: a table coded on the CPU for a search on the GPU, whose export (on the GPU)
    encoded other bytes than the cache said."""
    directory, _ = llama
    loaded = load_model(str(directory), dtype=dtype, device="cuda")
    cache = SizeCache(tmp_path / "sizes")
    table = SizeTable(_space(), loaded.info, SizeModel.for_model(loaded, cache))
    table.fill(workers=2)
    for i, genome in enumerate(_genomes(table, 4, seed=1)):
        fresh = load_model(str(directory), dtype=dtype, device="cuda")
        result = compress_model(fresh, None, table.space.decode(genome, loaded.info), size_cache=cache)
        assert all(t.encoded is None for t in result.tensors)  # every size came from the table's coding
        summary = write_artifact(tmp_path / f"art{i}", fresh.model, fresh.tokenizer, result)  # checks each
        assert summary.total_bytes == table.artifact_bytes(genome)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_a_step_one_bit_off_rounds_to_another_fp16_scale():
    """Why a GPU coded other bytes: CUDA computes x / 15 as x * (1 / 15), and where the quotient is an
    fp16 value the product can land a bit above it: fp16_up then takes the next fp16 (another step,
    other codes). bf16 weights make such ranges common: their differences have few significant bits."""
    from evo.compress.grid import fp16_up

    ranges = torch.arange(1, 4096, dtype=torch.float32) * 15 * 2.0 ** -14  # 15 × an fp16 value each
    divided = ranges / 15
    by_reciprocal = ranges * torch.tensor(1 / 15, dtype=torch.float32)
    off = divided != by_reciprocal
    assert off.any()
    assert (fp16_up(divided)[off] != fp16_up(by_reciprocal)[off]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_grid_steps_are_divided_once_on_every_device(device):
    from evo.compress.grid import _divide

    x = torch.arange(1, 1 << 16, dtype=torch.float32, device=device) * 2.0 ** -14 * 1.37
    for divisor in (1, 3, 7, 15, 31, 127, 255):
        exact = (x.double() / divisor).float()  # float64 then float32: the correctly rounded quotient
        assert torch.equal(_divide(x, divisor), exact)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("symmetric,zero_point", [(False, "int"), (False, "float"), (True, "int")])
def test_rtn_codes_are_the_same_on_a_gpu_and_a_cpu(symmetric, zero_point):
    from evo.compress.apply import compress_tensor

    torch.manual_seed(0)
    for bits in (2, 3, 4, 5, 6, 8):
        setting = TensorSetting(bits=bits, group_size=128, symmetric=symmetric, zero_point=zero_point)
        weight = (torch.randn(576, 1536) * 0.02).to(torch.bfloat16)
        on_cpu = compress_tensor(weight, setting).quantized
        on_gpu = compress_tensor(weight.cuda(), setting).quantized
        for part in ("codes", "scales", "zeros"):
            a, b = getattr(on_cpu, part), getattr(on_gpu, part)
            assert (a is None and b is None) or torch.equal(a, b.cpu()), (bits, part)
