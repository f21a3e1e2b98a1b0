"""Engines and genome operators on a synthetic problem: repair, determinism, checkpoint round trip."""

import json
import random

import pytest

from evo.search.engines import Problem, Score, make_engine
from evo.search.space import extreme_genome, level_move, random_genome, repair
from evo.errors import EvoError
from evo.types import Gene

BITS = (2, 3, 4, 8)
NUMEL = [100, 200, 300, 400, 500, 600]


def make_problem(budget=5000, fixed_drops=None, drops=("none", "layer")):
    genes = []
    for unit, numel in enumerate(NUMEL):
        genes.append(Gene(f"u{unit}.bits", "bits", BITS, unit, unit))
        genes.append(Gene(f"u{unit}.sparsity", "sparsity", (0.0, 0.5), unit, unit))
        genes.append(Gene(f"layer{unit}.drop", "drop", drops, None, unit))
    genes.append(Gene("embedding.bits", "embedding_bits", (4, 8)))

    def size_of(genome):
        total = 0
        for unit, numel in enumerate(NUMEL):
            bits, sparsity, drop = genome[3 * unit : 3 * unit + 3]
            if genes[3 * unit + 2].choices[drop] == "layer":
                continue
            total += numel * BITS[bits] * (1 - 0.3 * sparsity)
        return int(total + 100 * (4, 8)[genome[-1]])

    return Problem(genes=tuple(genes), size_of=size_of, budget_bytes=budget, fixed_drops=fixed_drops)


def fake_quality(genome, stage):
    # more bits on later units matter more; sparsity hurts; stage 1 is a noisy view
    q = sum((6 - u) * 0.0 + (u + 1) / BITS[genome[3 * u]] + 0.2 * genome[3 * u + 1] for u in range(len(NUMEL)))
    return q + (0.01 * (sum(genome) % 7) if stage == 1 else 0.0)


def drive(engine, problem, generations, stop_after=None):
    evaluations = 0
    while engine.generation < generations or not engine.at_generation_boundary():
        requests = engine.ask()
        results = [(r, Score(fake_quality(r.genome, r.stage), problem.size_of(r.genome))) for r in requests]
        evaluations += len(results)
        engine.tell(results)
        if stop_after is not None and engine.at_generation_boundary() and engine.generation >= stop_after:
            break
    return evaluations


@pytest.mark.parametrize("seed", range(5))
def test_repair_always_fits_the_budget(seed):
    problem = make_problem(budget=4500)
    rng = random.Random(seed)
    for _ in range(50):
        genome = tuple(rng.randrange(len(g.choices)) for g in problem.genes)
        assert problem.size_of(repair(genome, problem, rng)) <= problem.budget_bytes


def test_repair_refuses_an_unreachable_budget():
    problem = make_problem(budget=10)
    with pytest.raises(EvoError, match="raise --budget-mb"):
        repair(extreme_genome(problem, smallest=False), problem, random.Random(0))


def test_fixed_drops_are_kept_exactly():
    problem = make_problem(budget=20000, fixed_drops=2)
    rng = random.Random(1)
    for _ in range(20):
        genome = random_genome(problem, rng)
        drops = sum(1 for g, v in zip(problem.genes, genome) if g.kind == "drop" and g.choices[v] == "layer")
        assert drops == 2


def test_level_move_keeps_the_number_of_levels():
    problem = make_problem()
    genome = tuple(1 if g.kind == "bits" else 0 for g in problem.genes)
    moved = level_move(genome, problem, random.Random(3))
    bits = [i for i, g in enumerate(problem.genes) if g.kind == "bits"]
    assert sum(moved[i] for i in bits) == sum(genome[i] for i in bits) and moved != genome


@pytest.mark.parametrize("engine_name", ["deap", "random", "optuna"])
def test_same_seed_same_front(engine_name):
    problem = make_problem()
    fronts = []
    for _ in range(2):
        engine = make_engine(engine_name, problem, population=6, seed=11)
        drive(engine, problem, generations=3)
        fronts.append(engine.front())
    assert fronts[0] == fronts[1] and fronts[0]
    assert all(score.size_bytes <= problem.budget_bytes for _, score in fronts[0])


@pytest.mark.parametrize("engine_name", ["deap", "random", "optuna"])
def test_checkpoint_round_trip_continues_identically(engine_name):
    problem = make_problem()
    straight = make_engine(engine_name, problem, population=6, seed=5)
    drive(straight, problem, generations=4)

    first = make_engine(engine_name, problem, population=6, seed=5)
    drive(first, problem, generations=4, stop_after=2)
    state = json.loads(json.dumps(first.state_dict()))  # what the checkpoint file holds
    resumed = make_engine(engine_name, problem, population=6, seed=5)
    resumed.load_state_dict(state)
    drive(resumed, problem, generations=4)
    assert resumed.front() == straight.front()


def test_deap_beats_random_at_equal_evaluations():
    problem = make_problem(budget=5500)
    deap = make_engine("deap", problem, population=8, seed=0)
    evaluations = drive(deap, problem, generations=6)
    rand = make_engine("random", problem, population=8, seed=0)
    spent = 0
    while spent < evaluations:
        requests = rand.ask()
        rand.tell([(r, Score(fake_quality(r.genome, r.stage), problem.size_of(r.genome))) for r in requests])
        spent += len(requests)
    best = lambda engine: min(s.quality for _, s in engine.front())  # noqa: E731
    assert best(deap) < best(rand)


def test_wrong_engine_checkpoint_is_refused():
    problem = make_problem()
    deap = make_engine("deap", problem, population=4, seed=0)
    rand = make_engine("random", problem, population=4, seed=0)
    with pytest.raises(EvoError, match="--engine deap"):
        rand.load_state_dict(deap.state_dict())


def test_unknown_engine():
    with pytest.raises(EvoError, match="unknown engine"):
        make_engine("cmaes", make_problem())


@pytest.mark.parametrize("engine_name", ["deap", "random", "optuna"])
@pytest.mark.parametrize("generations", [0, 1, 3])
def test_evaluation_count_matches_the_plan(engine_name, generations):
    """The progress bar's total and a benchmark's "equal evaluations" rely on this count."""
    from evo.search.loop import SearchSpec, evaluations_planned

    problem = make_problem()
    engine = make_engine(engine_name, problem, population=6, seed=2)
    spec = SearchSpec(budget_bytes=problem.budget_bytes, engine=engine_name, generations=generations, population=6)
    assert drive(engine, problem, generations) == evaluations_planned(spec)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_optuna_samplers_ask_under_budget_and_resume_exactly(sampler, tmp_path):
    problem = make_problem()
    problem = Problem(**{**problem.__dict__, "workdir": tmp_path})
    straight = make_engine("optuna", problem, population=6, seed=3, sampler=sampler)
    drive(straight, problem, generations=3)
    assert all(score.size_bytes <= problem.budget_bytes for _, score in straight.front())
    assert len(straight.told) == 6 * 4

    first = make_engine("optuna", problem, population=6, seed=3, sampler=sampler)
    drive(first, problem, generations=3, stop_after=1)
    resumed = make_engine("optuna", problem, population=6, seed=3, sampler=sampler)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    drive(resumed, problem, generations=3)
    assert [t["genome"] for t in resumed.told] == [t["genome"] for t in straight.told]


def test_optuna_journal_opens_as_a_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    problem = make_problem()
    problem = Problem(**{**problem.__dict__, "workdir": tmp_path})
    engine = make_engine("optuna", problem, population=4, seed=0, sampler="tpe")
    drive(engine, problem, generations=1)
    study = optuna.load_study(study_name="evo", storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna_journal.log"))))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(engine.told) == 8
    assert all(t.constraints["budget"] <= 0 for t in complete)
    assert study.metric_names == ["quality", "size_bytes"]


def test_unknown_sampler_and_sampler_without_optuna():
    from evo.search.loop import SearchSpec

    with pytest.raises(EvoError, match="unknown sampler 'cmaes'"):
        SearchSpec(budget_bytes=10, engine="optuna", sampler="cmaes")
    with pytest.raises(EvoError, match="--engine optuna only"):
        SearchSpec(budget_bytes=10, engine="deap", sampler="tpe")
    with pytest.raises(EvoError, match="unknown engine"):
        SearchSpec(budget_bytes=10, engine="cmaes")
    assert SearchSpec(budget_bytes=10, engine="optuna").sampler == "tpe"


def test_repair_keeps_at_least_one_layer():
    problem = make_problem()
    everything_dropped = tuple(1 if gene.kind == "drop" else 0 for gene in problem.genes)
    repaired = repair(everything_dropped, problem, random.Random(0))
    drops = [problem.genes[i].choices[v] for i, v in enumerate(repaired) if problem.genes[i].kind == "drop"]
    assert drops.count("none") == 1 and drops.count("layer") == len(drops) - 1


def test_an_engine_is_one_module_that_registers_itself(tmp_path, monkeypatch):
    """Adding an engine touches one file: a module in evo/search/engines/ is found by name."""
    import evo.search.engines as package
    from evo.search.engines.base import ENGINES, check_engine, engine_class

    (tmp_path / "toy_engine.py").write_text(
        "from evo.search.engines.random_engine import RandomEngine\n"
        "from evo.search.engines.base import register_engine\n\n"
        "@register_engine('toy')\nclass ToyEngine(RandomEngine):\n    name = 'toy'\n"
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    try:
        assert check_engine("toy") == "toy"
        assert engine_class("toy").evaluations_planned(population=3, generations=2) == 9
        engine = make_engine("toy", make_problem(), population=4, seed=0)
        assert len(engine.ask()) == 4
    finally:
        ENGINES.pop("toy", None)
        import sys

        sys.modules.pop("evo.search.engines.toy_engine", None)


def test_pareto_front_is_one_function_for_engines_and_reports():
    from evo.search.engines.base import pareto_front

    points = [((1,), Score(3.0, 100)), ((0,), Score(3.0, 100)), ((2,), Score(2.0, 150)), ((3,), Score(2.5, 160)),
              ((4,), Score(1.0, 999))]
    assert pareto_front(points, 500) == [((0,), Score(3.0, 100)), ((2,), Score(2.0, 150))]
    by_index = [(7, Score(3.0, 100)), (5, Score(3.0, 100))]  # journal indices as tags: the earlier wins
    assert pareto_front(by_index, 500) == [(5, Score(3.0, 100))]


def test_retry_limits_are_named_and_bound_a_short_batch():
    """A space with a single genome: every engine settles for what exists after its named tries."""
    from evo.search.engines import deap_engine, optuna_engine, random_engine
    from evo.search.space import RANDOM_TRIES_PER_SLOT

    assert deap_engine.TRIES_PER_CHILD == random_engine.TRIES_PER_GENOME == RANDOM_TRIES_PER_SLOT == 50
    assert optuna_engine.ASKS_PER_TRIAL == 20
    one = Problem(genes=(Gene("u0.bits", "bits", (4,), 0, 0),), size_of=lambda g: 10, budget_bytes=100)
    engine = make_engine("random", one, population=5, seed=0)
    assert [r.genome for r in engine.ask()] == [(0,)]
