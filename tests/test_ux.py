"""A new user's first hour (issue 17): honest progress for every long step, the live best is the
point export picks, `evo eval` works offline by default, help shows defaults without importing
torch, and the report names its metric and draws the run's uniform baselines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evo.errors import EvoError
from evo.progress import EMBEDDING, KMEANS, REFERENCE, SIZE_TABLE, STATISTICS

ROOT = Path(__file__).resolve().parents[1]


def _corpus(directory: Path) -> Path:
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "digits.txt").write_text("0123456789 " * 200)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


# --- the command line -------------------------------------------------------------------------------


def test_help_does_not_import_torch_or_transformers():
    code = ("import sys; from evo.cli import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _sub_help(name: str) -> str:
    import argparse

    from evo.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(action.choices[name].format_help().split())


def test_help_states_defaults():
    search = _sub_help("search")
    for text in ("--generations GENERATIONS generations after the first population (default: 10)",
                 "(default: 12)", "(default: smollm2-135m)", "(default: auto)", "(default: deap)", "(default: 0)"):
        assert text in search
    assert "(default: None)" not in search and "(default: False)" not in search
    assert "(default: 8)" in _sub_help("calibrate")  # --batch-size had no help text at all
    assert "(default: cpu)" in _sub_help("export")


def test_run_dir_default_stated_is_the_one_used():
    from evo.cli.search import RUN_DIR_PATTERN, default_run_dir

    assert str(default_run_dir("smollm2-135m", 70, "default", 0)) == "runs/smollm2-135m-70MB-default-s0"
    assert str(default_run_dir("/models/My-Model", 55.5, "spaces/bits.toml", 3)) == "runs/My-Model-55.5MB-bits-s3"
    assert f"(default: {RUN_DIR_PATTERN}, e.g. runs/smollm2-135m-70MB-default-s0)" in _sub_help("search")


# --- evo eval's offline default -------------------------------------------------------------------


def test_heldout_slice_is_disjoint_from_the_calibration_corpus():
    from evo.data.corpus import EMBEDDED_HELDOUT, read_corpus, read_text

    calibration, heldout = read_corpus(), read_corpus([EMBEDDED_HELDOUT])
    assert calibration.sources == heldout.sources == ("c4", "code", "multilingual", "technical", "tiny", "wiki")
    assert all(f.documents >= 1 for f in heldout.files)
    key = lambda d: (d.source, d.index)  # noqa: E731
    assert not {key(d) for d in calibration.documents} & {key(d) for d in heldout.documents}
    assert not {d.text for d in heldout.documents} <= {d.text for d in calibration.documents}
    assert calibration.sha256 != heldout.sha256
    assert len(read_text(EMBEDDED_HELDOUT)) > 100_000  # enough text for a perplexity


def test_eval_without_dataset_uses_the_heldout_slice_offline(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("EVO_DATA_DIR", str(tmp_path))  # no shared data: the default must not need it
    result = subprocess.run([sys.executable, "-m", "evo.cli", "eval", str(tiny_model_dir("llama")), "--seq-len", "64",
                             "--max-tokens", "1024", "--json"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["dataset"] == "calibration_mix_heldout"
    assert "held-out slice" in record["dataset_note"] and "never" in record["dataset_note"]
    assert record["ppl"] > 1 and record["windows"] == 16


def test_missing_builtin_dataset_message_names_what_works(monkeypatch, tmp_path):
    import evo.data.corpus as corpus

    monkeypatch.setattr(corpus, "shared_data_dirs", lambda: [tmp_path])
    with pytest.raises(EvoError) as info:
        corpus.read_text("wikitext2")
    message = str(info.value)
    assert "--corpus" not in message and "--dataset PATH" in message and "calibration_mix_heldout" in message


# --- progress and the live best -------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tiny_model_dir, tmp_path_factory):
    """A small search whose budget lets uniform 4-bit in; every progress report kept."""
    from evo.search.loop import SearchSpec, open_session, run_search

    corpus = _corpus(tmp_path_factory.mktemp("corpus"))
    common = dict(model=str(tiny_model_dir("llama")), corpus=(str(corpus),), samples=6, seq_len=32, clusters=3,
                  screen_sequences=2, screen_tokens=16, generations=2, population=4, fitness="ppl")
    # The probe's budget must lie within the space's reach (checked before CCDS): midway on the estimate.
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    reach = early_budget_range(SearchSpace.load("default"), load_model(common["model"]))
    probe = open_session(SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, **common),
                         tmp_path_factory.mktemp("probe") / "run", resume=False)
    budget = probe.size_of(probe.space.uniform_genome(probe.loaded.info, 4)) + 1
    steps, reports = [], []
    run_dir = tmp_path_factory.mktemp("search") / "run"
    session = open_session(SearchSpec(budget_bytes=budget, **common), run_dir, resume=False, progress=steps.append)
    result = run_search(session, on_progress=reports.append)
    return dict(steps=steps, reports=reports, result=result, session=session, run_dir=run_dir, budget=budget)


def test_every_long_step_reports_a_count(searched):
    steps = searched["steps"]
    names = {p.step for p in steps}
    assert {EMBEDDING, KMEANS, STATISTICS, REFERENCE, SIZE_TABLE} <= names
    for name in (EMBEDDING, KMEANS, STATISTICS, REFERENCE):
        mine = [p for p in steps if p.step == name]
        assert all(p.total is not None and 0 <= p.done <= p.total for p in mine)
        assert mine[0].done == 0 and mine[-1].done == mine[-1].total  # each one says when it starts and ends
        assert [p.done for p in mine] == sorted(p.done for p in mine)
    table = [p for p in steps if p.step == SIZE_TABLE]
    assert all(p.open_ended and p.done <= p.total for p in table)
    assert [p.done for p in table] == list(range(1, len(table) + 1))  # one report per new entry


def test_search_progress_has_its_total_before_the_first_evaluation(searched):
    from evo.search.loop import evaluations_planned

    first = searched["reports"][0]
    assert first.evaluations_done == 0 and first.evaluations_total == evaluations_planned(searched["session"].spec)
    assert searched["reports"][-1].eta_seconds == 0.0
    assert any(r.eta_seconds is not None and r.eta_seconds > 0 for r in searched["reports"][1:-1])


def test_live_best_is_the_point_export_picks(searched):
    from evo.search.store import RunStore

    last = searched["reports"][-1]
    point, _ = RunStore.open(searched["run_dir"]).choose()  # what `evo export` takes
    assert (last.best_quality, last.best_bytes) == (point.quality, point.size_bytes)
    assert searched["result"].best.genome == point.genome
    # every live best is a final-stage evaluation under budget, and never worse than an earlier one
    finals = {(e.quality, e.size_bytes) for e in searched["session"].store.entries() if e.stage == 2}
    shown = [(r.best_quality, r.best_bytes) for r in searched["reports"] if r.best_quality is not None]
    assert all(s in finals and s[1] <= searched["budget"] for s in shown)
    assert [q for q, _ in shown] == sorted((q for q, _ in shown), reverse=True)


def test_size_table_total_bounds_what_the_search_sized(searched):
    from evo.search.live import size_table_entries

    session = searched["session"]
    total = size_table_entries(session.space, session.loaded.info)
    assert 0 < len(session.size_model._entries) <= total
    expected_linears = sum(len(layer.linears) for layer in session.loaded.info.layers)
    settings = len(session.space.bits) * len(session.space.rescale) * len(session.space.sparsity)
    assert total >= expected_linears * settings


def test_planned_by_stage_adds_up():
    from evo.search.live import planned_by_stage
    from evo.search.loop import SearchSpec, evaluations_planned

    for engine, multi in (("deap", True), ("deap", False), ("random", True)):
        spec = SearchSpec(budget_bytes=1, engine=engine, multi_stage=multi, population=6, generations=3)
        assert sum(planned_by_stage(engine, 6, 3, multi).values()) == evaluations_planned(spec)


def test_stage_clock_uses_each_stages_own_rate():
    from evo.search.live import StageClock

    now = [0.0]
    clock = StageClock({1: 512, 2: 4096}, clock=lambda: now[0])
    assert clock.eta_seconds({2: 3}) is None  # nothing measured yet
    for seconds in (100.0, 8.0, 8.0):  # a slow first evaluation (setup) is outvoted by the median
        now[0] += seconds
        clock.tick(2)
    assert clock.seconds_per_evaluation(2) == 8.0
    assert clock.seconds_per_evaluation(1) == 1.0  # not measured: scaled by its share of tokens
    for _ in range(3):
        now[0] += 0.5
        clock.tick(1)
    assert clock.eta_seconds({1: 10, 2: 2}) == 10 * 0.5 + 2 * 8.0


def test_calibration_progress_counts_kmeans_fits(tiny_model_dir, text_corpus):
    from evo.data.ccds import SPREAD, CalibrationConfig, build_calibration_set
    from evo.data.corpus import read_corpus
    from evo.modelio import load_model

    loaded = load_model(str(tiny_model_dir("llama")))
    steps = []
    build_calibration_set(loaded, read_corpus([str(text_corpus)]), CalibrationConfig(
        samples=6, clusters="auto", heldout=2, seq_len=32, max_candidates=None), progress=steps.append)
    fits = [p for p in steps if p.step == KMEANS]
    assert fits[0].done == 0 and fits[-1].done == fits[-1].total == len(fits) - 1 >= 2  # start, then one per k tried
    spread = [p for p in steps if p.step == SPREAD]
    assert spread and spread[-1].done == spread[-1].total


# --- the report -----------------------------------------------------------------------------------


def test_report_names_the_metric_and_draws_uniform_baselines(searched, tmp_path):
    from evo.report import build_report, write_report

    report = build_report(searched["run_dir"])
    space = searched["session"].space
    assert [u.bits for u in report.uniform] == list(space.bits)
    sizes = [u.size_bytes for u in report.uniform]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    four = next(u for u in report.uniform if u.bits == 4)
    assert four.size_bytes == searched["budget"] - 1
    assert four.quality is not None  # the warm start evaluated uniform 4-bit, the widest that fits
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["metric_label"] == "perplexity on the calibration set"
    assert [u["bits"] for u in data["uniform"]] == list(space.bits)


def test_log_scale_only_when_values_span_a_decade():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evo.report import _log_scale_if_wide

    fig, (a, b) = plt.subplots(1, 2)
    _log_scale_if_wide(a, [0.1, 0.2, 0.9])
    _log_scale_if_wide(b, [0.05, 0.9, 3.0])
    assert (a.get_yscale(), b.get_yscale()) == ("linear", "log")
    plt.close(fig)


def test_cli_progress_display_prints_steps_without_a_terminal():
    import io

    from rich.console import Console

    from evo.cli.progress import ProgressDisplay
    from evo.progress import StepProgress

    buffer = io.StringIO()
    with ProgressDisplay(Console(file=buffer, force_terminal=False, width=200)) as display:
        for done in range(1, 5):
            display.step(StepProgress(EMBEDDING, done, 4, "sequences"))
        display.step(StepProgress(SIZE_TABLE, 3, 100, "tensor settings", open_ended=True))
    text = buffer.getvalue()
    assert "embedding: 1/4 sequences" in text and "embedding: 4/4 sequences" in text
    assert "embedding: 2/4" not in text  # throttled between start and end
    assert "size table: 3/100 tensor settings" in text
