"""The GGUF search space (evo/search/spaces/gguf.toml): exact GGUF bytes for any genome, a searched
run exported as a GGUF file that GGUFReader and transformers load with the evaluator's logits, clear
refusals, and llama.cpp's recipes in the first population. Tiny Llamas from a config, seconds each."""

from __future__ import annotations

import os
import random
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from evo.errors import EvoError
from evo.search.gguf_space import GGUFConfig, GGUFSearchSize, read_seeds
from evo.search.space import SearchSpace
from test_gguf import IDS, _hf_logits, _load, _tiny_llama_dir


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("gguf64"), 64, tied=True, layers=3)


@pytest.fixture(scope="module")
def llama256(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("gguf256"), 256, tied=False, layers=3)


def _corpus(directory: Path) -> Path:
    words = "the cat sat on a mat then end of story came dog ran far away".split()
    rng = random.Random(0)
    for name in ("a", "b"):  # varied text: no two calibration sequences alike
        (directory / f"{name}.txt").write_text(" ".join(rng.choice(words) for _ in range(3000)))
    return directory


def _fake_encoded(plan) -> dict[str, np.ndarray]:
    """Bytes of the right length per tensor: the size does not depend on the values."""
    from evo.gguf import quants

    out = {}
    for t in plan.tensors:
        if t.qtype == "F32":
            out[t.name] = np.zeros(t.shape, dtype=np.float32)
        else:
            rows = t.shape[0]
            out[t.name] = np.zeros((rows, quants.tensor_nbytes(t.shape, t.qtype) // rows), dtype=np.uint8)
    return out


def _plan_of(loaded, config: GGUFConfig):
    from evo.gguf.writer import plan_gguf, plan_tensors

    types = {t.name: config.type_of[t.source] for t in plan_tensors(loaded, config.drops) if t.source in config.type_of}
    return plan_gguf(loaded, types, config.drops)


@pytest.mark.parametrize("fixture", ["llama64", "llama256"])
def test_predicted_size_equals_the_written_file_for_random_genomes(fixture, request, tmp_path):
    from evo.gguf.writer import write_gguf

    loaded = _load(request.getfixturevalue(fixture))
    space = SearchSpace.load("gguf")
    genes = space.genes(loaded.info)
    sizes = GGUFSearchSize(loaded)
    rng = random.Random(0)
    for i in range(6):
        genome = [0 if g.kind == "drop" and g.layer == 0 else rng.randrange(len(g.choices)) for g in genes]
        if i == 0:  # keep every layer once, drop two of three once
            genome = [0 if g.kind == "drop" else v for g, v in zip(genes, genome)]
        if i == 1:
            genome = [(1 if g.layer != 1 else 0) if g.kind == "drop" else v for g, v in zip(genes, genome)]
        config = space.decode(genome, loaded.info)
        plan = _plan_of(loaded, config)
        path = tmp_path / f"{i}.gguf"
        write_gguf(plan, _fake_encoded(plan), path)
        assert sizes.artifact_bytes(config) == plan.size().total_bytes == os.stat(path).st_size
        assert space.encode(config, loaded.info) == tuple(genome)
    if fixture == "llama256":  # k-quants reach the 256-wide rows; the 512-wide ffn_down too
        assert "Q4_K" in genes[0].choices and "Q2_K" in genes[6].choices


def test_choices_follow_llama_cpps_fallbacks_on_rows_the_blocks_do_not_divide(llama64):
    loaded = _load(llama64)
    genes = SearchSpace.load("gguf").genes(loaded.info)
    # 64-wide rows: no k-quant; Q2_K/Q3_K fall back to Q4_0, Q4_K to Q5_0 ... merged, in bytes order
    assert genes[0].choices == ("Q4_0", "IQ4_NL", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
    by_name = {g.name: g for g in genes}
    assert by_name["layer2.drop"].choices == ("none", "layer")
    assert "head.type" not in by_name and by_name["embedding.type"].kind == "embedding_bits"


def test_a_type_the_shape_forbids_is_one_line_naming_the_tensor(llama64, tmp_path):
    loaded = _load(llama64)
    space = SearchSpace.load("gguf")
    config = space.decode([0] * len(space.genes(loaded.info)), loaded.info)
    bad = GGUFConfig(types=tuple((n, "Q4_K" if n.endswith("q_proj.weight") else t) for n, t in config.types))
    with pytest.raises(EvoError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight has rows of 64") as exc:
        GGUFSearchSize(loaded).artifact_bytes(bad)
    assert "\n" not in str(exc.value)
    text = (Path(__file__).parents[1] / "evo/search/spaces/gguf.toml").read_text().replace('"Q8_0"]', '"Q9_K"]', 1)
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(EvoError, match="unknown GGUF tensor type 'Q9_K'"):
        SearchSpace.load(str(tmp_path / "bad.toml"))


def _search(model_dir: Path, tmp_path: Path, *, budget_of, generations: int, population: int):
    from evo.search.loop import SearchSpec, open_session, run_search

    loaded = _load(model_dir)
    space = SearchSpace.load("gguf")
    sizes = GGUFSearchSize(loaded)
    budget = budget_of(loaded, space, sizes)
    spec = SearchSpec(budget_bytes=budget, model=str(model_dir), corpus=(str(_corpus(tmp_path)),), space="gguf",
                      samples=4, seq_len=32, clusters=2, screen_sequences=2, screen_tokens=16,
                      generations=generations, population=population)
    session = open_session(spec, tmp_path / "run", resume=False)
    return session, run_search(session)


def test_recipe_seeds_are_in_the_first_population(llama64, tmp_path):
    from evo.search.gguf_space import recipe_configs

    def budget_of(loaded, space, sizes):  # every recipe but Q4_K_M's fits
        recipes = {(r, e): sizes.artifact_bytes(space.decode(space.encode(c, loaded.info, nearest=True), loaded.info))
                   for r, e, c in recipe_configs(space, loaded)}
        return max(size for (r, _), size in recipes.items() if r != "Q4_K_M")

    session, _ = _search(llama64, tmp_path, budget_of=budget_of, generations=0, population=8)
    seeds = read_seeds(session.store.directory)
    assert {s["recipe"] for s in seeds} == {"Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_M"}
    evaluated = {entry.genome for entry in session.store.entries()}
    fitting = [s for s in seeds if s["fits"]]
    assert fitting and all(tuple(s["genome"]) in evaluated for s in fitting)
    assert all(s["size_bytes"] <= session.spec.budget_bytes for s in fitting)
    assert not any(s["fits"] for s in seeds if s["recipe"] == "Q4_K_M")


def test_a_searched_run_exports_a_gguf_with_the_evaluators_logits(llama64, tmp_path, capsys):
    from evo.cli import main

    def budget_of(loaded, space, sizes):
        genes = space.genes(loaded.info)
        low = sizes.artifact_bytes(space.decode([0] * len(genes), loaded.info))
        high = sizes.artifact_bytes(space.decode([len(g.choices) - 1 if g.kind != "drop" else 0 for g in genes],
                                                 loaded.info))
        return (low + high) // 2

    session, result = _search(llama64, tmp_path, budget_of=budget_of, generations=1, population=4)
    best = result.best
    out = tmp_path / "best.gguf"
    session.lock.release()  # as when the search's process has ended
    assert main(["export", str(session.store.directory), "--format", "gguf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"predicted {best.size_bytes:,}, on disk (os.stat) {best.size_bytes:,}" in printed.replace("\n", " ")
    assert os.stat(out).st_size == best.size_bytes <= session.spec.budget_bytes

    reader = gguf.GGUFReader(str(out))
    config = session.config_of(best.genome)
    kept = session.loaded.info.num_layers - len(config.dropped)
    assert int(reader.fields["llama.block_count"].contents()) == kept
    assert {t.name: t.tensor_type.name for t in reader.tensors} == _plan_of(session.loaded, config).types

    session.evaluator.materialise(config)  # the model the search scored
    with torch.no_grad():
        evaluated = session.loaded.model(IDS).logits
    assert torch.equal(_hf_logits(out, IDS), evaluated)
    session.evaluator.restore()

    # a genome with a dropped layer: the same through the size model, the writer and transformers
    genes = session.genes
    dropped = tuple(1 if g.kind == "drop" and g.layer == 1 else v for g, v in zip(genes, best.genome))
    config = session.config_of(dropped)
    from evo.gguf.writer import encode_tensors, write_gguf

    plan = _plan_of(session.loaded, config)
    path = tmp_path / "dropped.gguf"
    write_gguf(plan, encode_tensors(session.loaded, plan, session.evaluator.importance), path)
    assert os.stat(path).st_size == session.size_of(dropped)
    session.evaluator.materialise(config)
    with torch.no_grad():
        evaluated = session.loaded.model(IDS).logits
    assert torch.equal(_hf_logits(path, IDS), evaluated)


def test_evo_format_export_of_a_gguf_run_is_refused_in_one_line(llama64, tmp_path):
    from evo.search.exporting import export_run

    def budget_of(loaded, space, sizes):
        genes = space.genes(loaded.info)
        return sizes.artifact_bytes(space.decode([1 if g.kind != "drop" else 0 for g in genes], loaded.info))

    session, _ = _search(llama64, tmp_path, budget_of=budget_of, generations=0, population=2)
    session.lock.release()
    with pytest.raises(EvoError, match="--format gguf"):
        export_run(session.store.directory, tmp_path / "export")
