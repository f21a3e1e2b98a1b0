"""The level database: batched GPTQ equals per-tensor GPTQ bit for bit; every level of a space is
computed once per run (Hessians once, reused on resume), sized exactly and kept resident, and the
evaluator swaps levels in without recomputing or overwriting them."""

from __future__ import annotations

import pytest
import torch

from evo.compress.gptq import gptq_quantize
from evo.compress.gptq_batch import GptqJob, gptq_quantize_many
from evo.compress.settings import TensorSetting


def _hessian(features: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(400, features, generator=g) @ (torch.randn(features, features, generator=g) * 0.3
                                                    + torch.eye(features))) * (torch.rand(features, generator=g) + 0.1)
    return x.T @ x / x.shape[0]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act_order,grid", [(True, "mse"), (False, "rtn"), (False, "mse")])
def test_batched_gptq_equals_per_tensor_gptq_bit_for_bit(act_order, grid, device):
    features = 96
    h = _hessian(features, 0).to(device)
    g = torch.Generator().manual_seed(1)
    weights = [(torch.randn(rows, features, generator=g) * 0.05).to(device)
               for rows in (48, 24, 70)]  # q, k, a ragged one
    settings = [TensorSetting(bits=b, group_size=32, rescale=r) for b in (2, 3, 4) for r in (0.9, 1.25)]
    settings += [TensorSetting(bits=3, group_size=32, symmetric=True), TensorSetting(bits=4, group_size=None),
                 TensorSetting(bits=3, group_size=32, zero_point="float"), TensorSetting(bits=8, group_size=64)]
    jobs = [GptqJob(w, s) for w in weights for s in settings]
    masked = weights[0].abs() < 0.02
    jobs += [GptqJob(weights[0], TensorSetting(bits=3, group_size=32, sparsity=0.25), masked)]
    batched = gptq_quantize_many(jobs, h, act_order=act_order, grid=grid)
    for job, got in zip(jobs, batched):
        alone = gptq_quantize(job.weight, job.setting, h, job.prune_mask, act_order=act_order, grid=grid)
        assert torch.equal(got.codes, alone.codes), job.setting.key()
        assert torch.equal(got.scales, alone.scales)
        assert (got.zeros is None) == (alone.zeros is None)
        if got.zeros is not None:
            assert torch.equal(got.zeros, alone.zeros)
    pruned = batched[-1]
    assert bool((pruned.codes[masked] == pruned.zeros.float().repeat_interleave(32, 1)[masked]).all())


# --- a gptq search on a tiny model ------------------------------------------------------------------

import json
import random
from pathlib import Path

from evo.errors import EvoError

GPTQ_SPACE = """
name = "tiny-gptq"
granularity = "group"
[quantization]
group_size = 32
prune_criterion = "wanda"
[genes]
bits = [2, 3, 4]
rescale = [1.0, 1.25]
sparsity = [0.0, 0.25]
quantizer = ["rtn", "gptq"]
[structure]
drop = ["none", "mlp"]
[embedding]
bits = [4, 8]
"""


def _corpus(directory: Path) -> Path:
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


@pytest.fixture(scope="module")
def gptq_setup(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("gptq")
    space = base / "space.toml"
    space.write_text(GPTQ_SPACE)
    corpus = _corpus(base / "corpus" if (base / "corpus").mkdir() is None else base)
    return str(tiny_model_dir("llama")), str(space), str(corpus), base


def _spec(setup, budget_mb, generations=2):
    from evo.search.loop import SearchSpec

    model, space, corpus, _ = setup
    return SearchSpec(budget_bytes=int(budget_mb * 1e6), model=model, corpus=(corpus,), space=space,
                      generations=generations, population=4, samples=4, seq_len=32, clusters=2,
                      screen_sequences=2, screen_tokens=16, fitness="kl")


def _budget(setup) -> float:
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    reach = early_budget_range(SearchSpace.load(setup[1]), load_model(setup[0]))
    return (reach.smallest + 0.5 * (reach.largest - reach.smallest)) / 1e6


def test_gptq_search_levels_hessians_and_export(gptq_setup, tmp_path):
    from evo.search.loop import open_session, run_search

    budget = _budget(gptq_setup)
    run_dir = tmp_path / "run"
    session = open_session(_spec(gptq_setup, budget), run_dir, resume=False)
    seen = []
    result = run_search(session, size_workers=2, on_table=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(session.size_table.pairs())
    stats = session.evaluator.stats
    assert stats.recomputed == 0 and stats.compressed == 0 and stats.swapped > 0
    assert session.levels.summary.counts["device"] == len(session.levels)
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["hessians"]["digest"] == session.hessians.digest
    hessian_files = {p.name: p.stat().st_mtime_ns for p in (run_dir / "hessians").iterdir()}
    assert "meta.json" in hessian_files

    # the table's size of random genomes equals the bytes export's path writes (gptq included)
    from evo.compress.model import compress_and_write
    from evo.modelio import load_model

    rng = random.Random(0)
    table = session.size_table
    for n in range(3):
        genome = tuple(rng.randrange(len(g.choices)) for g in session.genes)
        config = session.config_of(genome)
        loaded = load_model(gptq_setup[0])
        summary = compress_and_write(loaded, config, tmp_path / f"art{n}", stats=session.activation_stats,
                                     hessians=session.hessians)
        written = sum(p.stat().st_size for p in (tmp_path / f"art{n}").iterdir())
        assert table.artifact_bytes(genome) == summary.total_bytes == written

    # evo export writes the recorded bytes (it refuses otherwise), with the run's Hessians
    from evo.search.exporting import export_run

    session.lock.release()
    exported = export_run(run_dir, tmp_path / "export")
    assert exported.summary.total_bytes == result.best.size_bytes
    assert "gptq" in json.dumps(result.best.config)  # the exported point has gptq levels

    # a resumed run reuses the Hessians (files untouched) and ends with the uninterrupted run's front
    longer = open_session(_spec(gptq_setup, budget, generations=3), run_dir, resume=True, extend=True)
    resumed = run_search(longer)
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "hessians").iterdir()} == hessian_files
    assert longer.hessians.digest == session.hessians.digest
    straight = run_search(open_session(_spec(gptq_setup, budget, generations=3), tmp_path / "straight",
                                       resume=False))
    assert [(p.genome, p.quality, p.size_bytes) for p in resumed.front] == \
        [(p.genome, p.quality, p.size_bytes) for p in straight.front]
    assert longer.evaluator.stats.recomputed == 0

    # Hessians of other tokens are refused in one line, before anything is evaluated
    longer.lock.release()
    spec = json.loads((run_dir / "spec.json").read_text())
    spec["hessians"]["digest"] = "h1-other"
    (run_dir / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(EvoError, match="Hessians"):
        open_session(_spec(gptq_setup, budget, generations=3), run_dir, resume=True)


def test_tiers_give_the_old_evaluators_quality_and_restore_leaves_levels_intact(gptq_setup, tmp_path):
    from evo.search.levels import LevelStore
    from evo.search.loop import open_session

    session = open_session(_spec(gptq_setup, _budget(gptq_setup), generations=0), tmp_path / "run", resume=False)
    session.fill_size_table(workers=1)
    evaluator, levels = session.evaluator, session.levels
    rng = random.Random(3)
    configs = [session.config_of(tuple(rng.randrange(len(g.choices)) for g in session.genes)) for _ in range(3)]
    snapshot = {pair: levels.weight(*pair)[0].clone() for pair in list(levels._levels)[:40]}
    originals = {name: p.detach().clone() for name, p in session.loaded.model.named_parameters()}

    with_levels = [evaluator.evaluate(c) for c in configs]
    assert evaluator.stats.compressed == 0 and evaluator.stats.recomputed == 0
    evaluator.restore()
    for pair, before in snapshot.items():
        assert torch.equal(levels.weight(*pair)[0], before), pair
    for name, p in session.loaded.model.named_parameters():
        assert torch.equal(p, originals[name]), name

    # the codes tier (dequantized on the fly, copied into the parameters' own storage) scores the same
    codes = LevelStore(session.size_table, device="cpu", dtype=torch.float32, hessians=session.hessians,
                       device_bytes=0, host_bytes=0)
    codes.build(workers=1)
    assert codes.summary.counts["codes"] == len(codes) and codes.summary.sizes_coded == 0
    evaluator.levels = codes
    assert [evaluator.evaluate(c) for c in configs] == with_levels
    evaluator.restore()
    for name, p in session.loaded.model.named_parameters():
        assert torch.equal(p, originals[name]), name
    evaluator.levels = levels
    assert [evaluator.evaluate(c) for c in configs] == with_levels
    session.lock.release()


def test_space_file_quantizer_fixed_or_gene_and_the_embedding_takes_rtn(tmp_path):
    from evo.search.levels import space_needs_hessians
    from evo.search.space import SearchSpace

    fixed = tmp_path / "fixed.toml"
    fixed.write_text('[quantization]\nquantizer = "gptq"\n[genes]\nbits = [3, 4]\n[embedding]\nbits = [4]\n')
    space = SearchSpace.load(str(fixed))
    assert space.base.quantizer == "gptq" and space_needs_hessians(space)
    assert space.setting({"bits": 3}).quantizer == "gptq"
    assert space.setting({"bits": 4}, key="embedding.bits").quantizer == "rtn"
    assert SearchSpace.from_dict(space.to_dict()) == space
    gene = tmp_path / "gene.toml"
    gene.write_text('[genes]\nbits = [3]\nquantizer = ["rtn", "mse"]\n')
    assert not space_needs_hessians(SearchSpace.load(str(gene)))
    assert "quantizer" not in SearchSpace.load("bits").to_dict()["quantization"]  # rtn spaces: as before
    bad = tmp_path / "bad.toml"
    bad.write_text('[quantization]\nquantizer = "awq"\n')
    with pytest.raises(EvoError, match="quantizer"):
        SearchSpace.load(str(bad))


def test_in_place_level_copies_keep_every_parameter_address_and_score_the_same(gptq_setup, tmp_path):
    """CUDA graphs replay the parameters' recorded addresses: with level_copies (what "reduce-overhead"
    switches on) materialise copies levels into the parameters' own storage in one batch, never
    re-points them, and scores every genome as the pointer swaps do, from a state with pointed params."""
    from evo.search.loop import open_session

    session = open_session(_spec(gptq_setup, _budget(gptq_setup), generations=0), tmp_path / "run", resume=False)
    session.fill_size_table(workers=1)
    evaluator, levels = session.evaluator, session.levels
    params = dict(session.loaded.model.named_parameters())
    addresses = {name: p.data_ptr() for name, p in params.items()}
    rng = random.Random(5)
    configs = [session.config_of(tuple(rng.randrange(len(g.choices)) for g in session.genes)) for _ in range(4)]
    snapshot = {pair: levels.weight(*pair)[0].clone() for pair in list(levels._levels)[:40]}
    swapped = [evaluator.evaluate(c) for c in configs]
    assert evaluator._pointed and any(p.data_ptr() != addresses[n] for n, p in params.items())  # pointer swaps

    evaluator.level_copies = True  # from the pointed state of the last genome on
    copied = [evaluator.evaluate(c) for c in configs]
    assert copied == swapped
    assert {name: p.data_ptr() for name, p in params.items()} == addresses and not evaluator._pointed
    for pair, before in snapshot.items():  # nothing was written into a level
        assert torch.equal(levels.weight(*pair)[0], before), pair
    evaluator.level_copies = False
    assert [evaluator.evaluate(c) for c in reversed(configs)] == swapped[::-1]
    session.lock.release()


def test_a_compiled_search_says_it_compiles_before_the_first_evaluation(gptq_setup, tmp_path, monkeypatch):
    """On CUDA the first evaluation of each stage shape compiles (minutes on a cold cache): the search
    says so before it starts, with the way out. (Compiling is simulated: this machine may have no GPU.)"""
    from evo.evaluate.fastforward import FastForward
    from evo.search.loop import open_session

    said = []
    monkeypatch.setattr(FastForward, "compiled", property(lambda self: True))
    session = open_session(_spec(gptq_setup, _budget(gptq_setup)), tmp_path / "compiled", resume=False,
                           status=said.append, compile="default")
    line = next(line for line in said if "torch.compile" in line)
    assert "default" in line and "--compile off" in line and "1-2 minutes" in line
    session.lock.release()
