"""`evo report` on a real (tiny) run: CSV of every evaluation, Pareto and convergence PNGs, the same
chosen point as `evo export`; and the baseline commands write artifacts `evo eval` reads."""

from __future__ import annotations

import csv
import json

import pytest

from evo.compress.artifact import load, read_manifest
from evo.cli import main
from evo.report import CSV_COLUMNS, Baseline, build_report
from evo.search.store import RunStore
from test_search import _corpus, budget_mb, spec_args  # noqa: F401  (budget_mb is a fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory, budget_mb):  # noqa: F811
    tmp = tmp_path_factory.mktemp("report")
    args = spec_args(tiny_model_dir("llama"), _corpus(tmp), budget_mb[0])
    args[args.index("--generations") + 1] = "1"
    run_dir = tmp / "run"
    assert main(["search", *args, "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_report_writes_csv_pngs_and_the_export_choice(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(tiny_run), "--out", str(out), "--baseline", "uniform 3-bit=0.05:9.5"]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "evaluations.csv" in printed
    journal = (tiny_run / "journal.jsonl").read_text().splitlines()
    with open(out / "evaluations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(journal)
    assert {r["stage"] for r in rows} == {"1", "2"}
    assert all(float(r["quality"]) > 0 and int(r["size_bytes"]) > 0 for r in rows)
    for name in ("pareto.png", "convergence.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    summary = json.loads((out / "report.json").read_text())
    chosen, _ = RunStore.open(tiny_run).choose()
    assert tuple(summary["best"]["genome"]) == chosen.genome and summary["best"]["quality"] == chosen.quality
    assert summary["evaluations"] == len(journal) and summary["baselines"][0]["size_bytes"] == 50_000
    on_front = [r for r in rows if r["on_front"] == "1"]
    assert len(on_front) == summary["front_size"] and all(r["under_budget"] == "1" for r in on_front)


def test_convergence_never_gets_worse(tiny_run):
    points = build_report(tiny_run).convergence()
    assert points and all(b[1] < a[1] and b[0] > a[0] for a, b in zip(points, points[1:]))


def test_report_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an evo run directory" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_baseline_spec():
    with pytest.raises(Exception, match="NAME=MB:QUALITY"):
        Baseline.parse("no-equals-sign")
    with pytest.raises(Exception, match="neither a size in MB nor an artifact directory"):
        Baseline.parse("x=/no/such/dir:1.0")


def test_baseline_commands_write_artifacts_evo_eval_reads(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir("llama"))
    dense, uniform, shortgpt = tmp_path / "dense", tmp_path / "u4", tmp_path / "sg"
    assert main(["baseline", "uniform", "--bits", "16", "--embedding-bits", "16", "--model", model,
                 "--out", str(dense)]) == 0
    assert main(["baseline", "uniform", "--bits", "4", "--group-size", "32", "--model", model, "--out", str(uniform)]) == 0
    assert main(["baseline", "shortgpt", "--drop", "1", "--model", model, "--out", str(shortgpt)]) == 0
    capsys.readouterr()
    dense_bytes = read_manifest(dense).total_bytes
    assert read_manifest(uniform).total_bytes < dense_bytes
    assert read_manifest(shortgpt).total_bytes < dense_bytes
    assert (tmp_path / "u4.toml").read_text().count("bits = 4") >= 1
    model_sg, _ = load(shortgpt)
    assert model_sg.config.num_hidden_layers == model_sg.config.num_hidden_layers  # loads
    assert len(model_sg.model.layers) == load(dense)[0].config.num_hidden_layers - 1
    assert main(["eval", str(uniform), "--dataset", str(_corpus(tmp_path) / "prose.txt"), "--seq-len", "32",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 1


@pytest.mark.parametrize("argv, message", [
    (["shortgpt", "--drop", "9"], "--drop 9: the model has"),
    (["uniform", "--bits", "7"], "bits"),
    (["uniform", "--bits", "4", "--group-size", "zero"], "--group-size 'zero'"),
])
def test_baseline_bad_input(tiny_model_dir, tmp_path, capsys, argv, message):
    code = main(["baseline", *argv, "--model", str(tiny_model_dir("llama")), "--out", str(tmp_path / "a")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and err.count("error:") == 1
    assert not (tmp_path / "a").exists()
