"""EvoPress's stage schedule: parsed and checked against the calibration set, every stage journaled
with its own token count, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError
from evo.search.loop import SearchSpec, evaluations_planned, open_session, run_search
from evo.search.schedule import build_schedule, parse_stages, stage_shape

STAGES = "16,64:6,192:3"  # 6 sequences × 32 tokens = 192, the whole calibration set


def test_parse_and_check():
    assert parse_stages("2048,16384:16,131072:4") == ((2048, 0), (16384, 16), (131072, 4))
    schedule = build_schedule(parse_stages("2048,16384:16,131072:4"), samples=256, seq_len=512)
    assert [s.number for s in schedule] == [SCREEN_STAGE, 3, FINAL_STAGE]
    assert [stage_shape(s, 512) for s in schedule] == [(4, 512), (32, 512), (256, 512)]
    for bad in ("2048:4,131072:4", "2048,131072", "x,y:1"):
        with pytest.raises(EvoError):
            build_schedule(parse_stages(bad), samples=256, seq_len=512)
    with pytest.raises(EvoError, match="--samples 256"):
        build_schedule(parse_stages("2048,131072:4"), samples=64, seq_len=512)  # last stage ≠ calibration set
    with pytest.raises(EvoError):
        build_schedule(parse_stages("2048,16384:4,131072:8"), samples=256, seq_len=512)  # survivors grow


def _corpus(directory: Path) -> Path:
    (directory / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 60)
    (directory / "code.txt").write_text("def f(x):\n    return x * 2 + 1\n\n" * 80)
    return directory


def _journal(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    return [(tuple(r["genome"]), r["stage"], r["quality"], r["size_bytes"]) for r in rows]


@pytest.mark.parametrize("fitness", ["ppl", "kl"])  # kl: the whole-batch forward + on-device KL path
def test_resume_with_the_schedule_equals_an_uninterrupted_run(tiny_model_dir, tmp_path, fitness):
    corpus = _corpus(tmp_path / "corpus") if (tmp_path / "corpus").mkdir() is None else None
    from evo.modelio import load_model
    from evo.search.budget import early_budget_range
    from evo.search.space import SearchSpace

    # The probe's budget must lie within the space's reach (checked before CCDS): midway on the estimate.
    reach = early_budget_range(SearchSpace.load("bits"), load_model(str(tiny_model_dir("llama"))))
    spec = SearchSpec(budget_bytes=(reach.smallest + reach.largest) // 2, model=str(tiny_model_dir("llama")),
                      corpus=(str(corpus),), samples=6,
                      seq_len=32, clusters=3, fitness=fitness, generations=2, population=4, screen_sequences=1, screen_tokens=16,
                      stages=parse_stages(STAGES), space="bits")
    probe = open_session(spec, tmp_path / "probe", resume=False)
    from evo.search.engines import Problem
    from evo.search.space import extreme_genome

    problem = Problem(genes=probe.genes, size_of=probe.size_of, budget_bytes=spec.budget_bytes)
    low, high = (probe.size_of(extreme_genome(problem, smallest=s)) for s in (True, False))
    spec = replace(spec, budget_bytes=int(low + 0.5 * (high - low)))

    whole = run_search(open_session(spec, tmp_path / "whole", resume=False), size_workers=1)
    assert whole.evaluations == evaluations_planned(spec)
    stages = {row[1] for row in _journal(tmp_path / "whole")}
    assert stages == {SCREEN_STAGE, 3, FINAL_STAGE}
    shapes = open_session(spec, tmp_path / "whole", resume=True).evaluator.stage_shapes
    assert shapes == {SCREEN_STAGE: (1, 16), 3: (2, 32), FINAL_STAGE: (6, 32)}

    run_search(open_session(replace(spec, generations=1), tmp_path / "parts", resume=False), size_workers=2)
    resumed = run_search(open_session(spec, tmp_path / "parts", resume=True, extend=True), size_workers=2)
    assert _journal(tmp_path / "parts") == _journal(tmp_path / "whole")
    assert [(p.genome, p.quality, p.size_bytes) for p in resumed.front] == \
        [(p.genome, p.quality, p.size_bytes) for p in whole.front]
