"""`evo export RUN --format gguf --out model.gguf`: the best GGUF configuration of a run under a
budget written as a llama.cpp GGUF file (metadata and tokenizer from the source GGUF, or built from
the config; dropped layers removed and the blocks renumbered), each tensor encoded with the run's
imatrix (and, in a gptq space, GPTQ on the run's Hessians) exactly as the search evaluated it. Its bytes on disk are the bytes the run recorded: checked,
and a mismatch leaves no file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evo.constants import MB
from evo.errors import EvoError
from evo.types import FrontPoint


@dataclass(frozen=True)
class GGUFExportResult:
    path: Path
    point: FrontPoint
    budget_bytes: int
    metric: str
    predicted_bytes: int  # the run's recorded size of this point
    written_bytes: int  # os.stat of the file
    types: dict


def export_gguf_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, budget_mb: float | None = None,
                    device: str = "cpu", dtype: str = "auto", overwrite: bool = False,
                    trust_remote_code: bool = False, status=None) -> GGUFExportResult:
    from evo.search.lifecycle import check_budget_mb, normalize_run_dir
    from evo.search.loop import open_session, run_spec

    say = status or (lambda message: None)
    check_budget_mb(budget_mb)
    run_dir = normalize_run_dir(run_dir)
    out = Path(out)
    if out.suffix.lower() != ".gguf":
        raise EvoError(f"--out {out} must be a file ending in .gguf with --format gguf")
    if out.exists() and not overwrite:
        raise EvoError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    budget = int(round(budget_mb * MB)) if budget_mb is not None else None
    store, spec = run_spec(run_dir, dtype=dtype)
    point, budget = store.choose(budget)
    if point.config.get("format") != "gguf":
        raise EvoError(f"run {run_dir} searched evo's own format (space {spec.space!r}), not GGUF types: export it "
                       "without --format gguf, or search with --space gguf")
    session = open_session(spec, run_dir, resume=True, device=device, trust_remote_code=trust_remote_code,
                           status=say)
    summary = write_point(session, point, out, overwrite=overwrite, status=say)
    return GGUFExportResult(path=out, point=point, budget_bytes=budget, metric=spec.fitness,
                            predicted_bytes=point.size_bytes, written_bytes=summary.written_bytes, types=summary.types)


def write_point(session, point: FrontPoint, out: str | os.PathLike, *, overwrite: bool = False, status=None):
    """Write one front point of an open GGUF session as a GGUF file whose os.stat size is the size the
    run recorded (checked before and after writing). Returns the writer's GGUFSummary."""
    from evo.gguf.writer import encode_tensors, plan_gguf, plan_tensors, write_gguf
    from evo.search.gguf_space import GGUFConfig

    say = status or (lambda message: None)
    out = Path(out)
    run_dir = session.store.directory
    config = session.config_of(point.genome)
    recorded = GGUFConfig.from_dict(point.config)  # JSON sorts its keys: compare as mappings
    if config.type_of != recorded.type_of or config.dropped != recorded.dropped:
        raise EvoError(f"run {run_dir}'s front records another config for its genome than this evo decodes: "
                       "export it with the evo that searched it")
    loaded = session.loaded
    hessians = session.hessians  # a gptq space's: the decoder linears are GPTQ-encoded as the evaluator did
    device = session.evaluator.device.type
    if hessians is not None and getattr(hessians, "levels_device", None) not in (None, device):
        raise EvoError(f"run {run_dir} computed its GPTQ-encoded GGUF levels on {hessians.levels_device}; their "
                       f"bytes are exact for that device only: export with --device {hessians.levels_device}")
    session.evaluator.restore()  # the original weights: a search in this process swapped levels in
    type_of = config.type_of
    drops = config.drops
    types = {t.name: type_of[t.source] for t in plan_tensors(loaded, drops) if t.source in type_of}
    plan = plan_gguf(loaded, types, drops)
    predicted = plan.size().total_bytes
    if predicted != point.size_bytes:
        raise EvoError(f"the GGUF file would have {predicted} bytes but the run recorded {point.size_bytes}: the "
                       "run's sizes were measured for another source GGUF or evo version; nothing was written")
    say(f"encoding {len(plan.tensors)} tensors with the run's imatrix" + (" and GPTQ" if hessians is not None else ""))
    encoded = encode_tensors(loaded, plan, session.evaluator.importance, hessians=hessians)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = write_gguf(plan, encoded, out, overwrite=overwrite)
    written = out.stat().st_size
    if written != point.size_bytes:  # write_gguf already checked the plan's size: a bug, not a user error
        out.unlink()
        raise RuntimeError(f"GGUF size mismatch: the run recorded {point.size_bytes} bytes, the file has {written}")
    return summary
