"""The size table: a genome's tensors.bin bytes from the [tensors × settings] array equal the
SizeModel's old path and the bytes write_artifact puts on disk, for random genomes; workers do not
change the table."""

from __future__ import annotations

import random

import numpy as np
import pytest

from evo.compress.artifact import write_artifact
from evo.compress.model import compress_model
from evo.compress.size import SizeCache, SizeModel
from evo.evaluate.stats import collect_activation_stats
from evo.modelio import load_model
from evo.search.size_table import SizeTable
from evo.search.space import SearchSpace

TOKENS = np.random.default_rng(0).integers(3, 259, size=(4, 32))


def _space(granularity="group"):
    return SearchSpace.from_dict({
        "granularity": granularity,
        "quantization": {"group_size": 32},
        "genes": {"bits": [2, 3, 4, 16], "sparsity": [0.0, 0.5]},
        "structure": {"drop": ["none", "attention", "mlp", "layer"]},
        "embedding": {"bits": [4, 8, 16]},
        "head": {"bits": [4, 16]},
    })


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    directory = tiny_model_dir("llama")
    loaded = load_model(str(directory))
    stats = collect_activation_stats(loaded.model, loaded.info, TOKENS)
    return directory, loaded, stats


def _random_genomes(genes, n, seed=0):
    rng = random.Random(seed)
    genomes = []
    for _ in range(n):
        genome = [rng.randrange(len(g.choices)) for g in genes]
        drops = [i for i, g in enumerate(genes) if g.kind == "drop"]
        if all(genes[i].choices[genome[i]] == "layer" for i in drops):
            genome[drops[0]] = 0
        genomes.append(tuple(genome))
    return genomes


@pytest.mark.parametrize("granularity", ["group", "layer"])
def test_table_equals_size_model_and_disk(llama, tmp_path, granularity):
    directory, loaded, stats = llama
    space = _space(granularity)
    cache = SizeCache(tmp_path / "sizes")
    table = SizeTable(space, loaded.info, SizeModel.for_model(loaded, cache, stats=stats))
    coded = table.fill(workers=2)
    assert coded == len(table.pairs()) > 0
    old = SizeModel.for_model(loaded, SizeCache(tmp_path / "old"), stats=stats)  # the old path, its own cache
    genomes = _random_genomes(table.genes, 12, seed=1)
    batch = table.tensor_bytes_many(genomes)
    for genome, tensor_bytes in zip(genomes, batch):
        config = space.decode(genome, loaded.info)
        assert tensor_bytes == old.tensor_bytes(config)
        assert table.artifact_bytes(genome) == old.artifact_bytes(config)
    for genome in genomes[:3]:  # and the bytes actually written
        config = space.decode(genome, loaded.info)
        fresh = load_model(str(directory))
        result = compress_model(fresh, None, config, stats=stats, size_cache=cache)
        assert all(t.encoded is None for t in result.tensors)  # every entry came from the table's coding
        summary = write_artifact(tmp_path / f"art{hash(genome)}", fresh.model, fresh.tokenizer, result)
        assert summary.total_bytes == table.artifact_bytes(genome)
        assert result.tensor_bytes == table.tensor_bytes(genome)


def test_workers_do_not_change_the_table_and_progress_is_reported(llama, tmp_path):
    _, loaded, stats = llama
    space = _space()
    tables = []
    for workers in (1, 2):
        table = SizeTable(space, loaded.info, SizeModel.for_model(loaded, SizeCache(tmp_path / f"w{workers}"),
                                                                  stats=stats))
        seen = []
        table.fill(workers=workers, progress=lambda done, total: seen.append((done, total)))
        assert seen[-1][0] == seen[-1][1] == len(table.pairs())
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        tables.append(table.table.copy())
    assert np.array_equal(tables[0], tables[1])
    # a second fill finds every pair in the cache
    again = SizeTable(space, loaded.info, SizeModel.for_model(loaded, SizeCache(tmp_path / "w2"), stats=stats))
    assert again.fill(workers=2) == 0 and np.array_equal(again.table, tables[0])


def test_exceeds_is_the_exact_budget_check_and_decides_clear_cases_from_bounds(llama, tmp_path):
    """Property: exceeds(genome, budget) == artifact_bytes(genome) > budget for random genomes at budgets
    around their sizes and their bounds (no shortcut flips an answer); bounds() brackets the exact size;
    genomes whose tensors and fixed files alone exceed the budget, or whose bounds lie on one side of it,
    are decided without sizing the whole artifact."""
    _, loaded, stats = llama
    space = _space()
    table = SizeTable(space, loaded.info, SizeModel.for_model(loaded, SizeCache(tmp_path / "sizes"), stats=stats))
    table.fill(workers=1)
    assert 0 < table.fixed_bytes
    genomes = _random_genomes(table.genes, 40, seed=2)
    sizes = {genome: table.artifact_bytes(genome) for genome in genomes}
    rest = {genome: size - table.tensor_bytes(genome) for genome, size in sizes.items()}
    assert all(value > table.fixed_bytes for value in rest.values())
    bounds = {genome: table.bounds(genome) for genome in genomes}
    for genome, (low, high) in bounds.items():
        assert table.tensor_bytes(genome) + table.fixed_bytes < low <= sizes[genome] <= high, genome
    assert max(high - low for low, high in bounds.values()) < 0.05 * min(sizes.values())
    budgets = sorted({size + delta for size in sizes.values() for delta in (-1, 0, 1)}
                     | {edge + d for low, high in bounds.values() for edge in (low, high) for d in (-1, 0, 1)}
                     | {table.tensor_bytes(g) + table.fixed_bytes + d for g in genomes for d in (-1, 0, 1)})
    sized = []
    whole = table.size_model.size_of_plan
    table.size_model.size_of_plan = lambda *plan: sized.append(plan) or whole(*plan)
    for budget in budgets:
        for genome in genomes:
            assert table.exceeds(genome, budget) == (sizes[genome] > budget), (genome, budget)  # the arrays
    assert not sized  # the arrays' path never sizes a plan
    for budget in budgets:
        for genome in genomes:
            assert table.exceeds_by_parts(genome, budget) == (sizes[genome] > budget), (genome, budget)
    clear = sum(1 for b in budgets for g in genomes if table.tensor_bytes(g) + table.fixed_bytes > b)
    between = sum(1 for b in budgets for g in genomes
                  if bounds[g][0] <= b < bounds[g][1] and table.tensor_bytes(g) + table.fixed_bytes <= b)
    assert clear > 0 and 0 < len(sized) == between < len(budgets) * len(genomes) - clear


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    """A tiny Llama of 12 layers: dropping one renumbers later layers across 10 → 9 (names change length)."""
    import tiny

    directory = tmp_path_factory.mktemp("deep")
    model = tiny.build(tiny.tiny_config("llama", tied=True, layers=12, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    model.save_pretrained(directory)
    tiny.tiny_tokenizer().save_pretrained(directory)
    loaded = load_model(str(directory))
    return loaded, collect_activation_stats(loaded.model, loaded.info, TOKENS)


@pytest.mark.parametrize("granularity", ["group", "layer"])
def test_genome_path_equals_the_config_path_over_mutation_sequences(deep_llama, tmp_path, granularity):
    """Property: artifact_bytes from parts memoised by each layer's genes (a new part built from its own
    genes, never by decoding) equals SizeModel.artifact_bytes of the decoded config, and bounds() bracket it,
    over sequences of one-gene mutations and jumps that drop and keep layers (kept layers renumber the
    later ones)."""
    loaded, stats = deep_llama
    space = _space(granularity)
    cache = SizeCache(tmp_path / "sizes")
    table = SizeTable(space, loaded.info, SizeModel.for_model(loaded, cache, stats=stats))
    table.fill(workers=1)
    old = SizeModel.for_model(loaded, cache, stats=stats)
    rng = random.Random(5)
    genome = list(_random_genomes(table.genes, 1, seed=3)[0])
    for step in range(150):
        if step % 10 == 0:
            genome = list(_random_genomes(table.genes, 1, seed=100 + step)[0])
        else:
            i = rng.randrange(len(genome))
            genome[i] = rng.randrange(len(table.genes[i].choices))
        config = space.decode(tuple(genome), loaded.info)
        if all(config.drop_for(layer.index) == "layer" for layer in loaded.info.layers):
            with pytest.raises(Exception):
                table.artifact_bytes(tuple(genome))
            continue
        exact = old.artifact_bytes(config)
        assert table._sizer().artifact_bytes(tuple(genome)) == exact, (step, genome)  # the arrays (GenomeSizer)
        assert table.artifact_bytes(tuple(genome)) == exact, (step, genome)
        assert table.artifact_bytes_by_parts(tuple(genome)) == exact, (step, genome)
        budget = exact + rng.choice((-1, 0))
        assert table.exceeds(tuple(genome), budget) == (exact > budget)
        low, high = table.bounds(tuple(genome))
        assert low <= exact <= high, (step, genome)
