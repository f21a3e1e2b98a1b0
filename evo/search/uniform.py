"""The uniform configurations of a run's space (every unit at one bit-width, no rescale, sparsity or
drop, the embedding at its widest): their exact sizes from the run's size model, written once to
RUN/uniform.json, so `evo report` can draw them beside the front without loading the model. Their
quality is the run's own final-stage evaluation of that genome when the search made one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from evo.constants import FINAL_STAGE, UNIFORM_FILE
from evo.search.store import RunStore, evaluation_key


@dataclass(frozen=True)
class UniformPoint:
    bits: int
    size_bytes: int
    genome: tuple[int, ...]
    quality: float | None = None  # the run's final-stage evaluation of this genome, if any


def write_uniform_points(session) -> Path:
    """Size every uniform bit-width of the session's space and write RUN/uniform.json (once)."""
    store = session.store
    path = store.path(UNIFORM_FILE)
    if path.exists():
        return path
    points = []
    for bits in session.space.bits:
        genome = session.space.uniform_genome(session.loaded.info, bits)
        points.append({"bits": int(bits), "size_bytes": int(session.size_of(genome)), "genome": list(genome)})
    return store.write_json(UNIFORM_FILE, {"points": points})


def read_uniform_points(run_dir: str | Path, store: RunStore | None = None) -> list[UniformPoint]:
    """The run's uniform points with the qualities its journal holds; [] for a run without the file."""
    path = Path(run_dir) / UNIFORM_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    store = store or RunStore.open(run_dir)
    points = []
    for item in data.get("points", []):
        genome = tuple(int(g) for g in item["genome"])
        entry = store.lookup(evaluation_key(genome, FINAL_STAGE))
        points.append(UniformPoint(int(item["bits"]), int(item["size_bytes"]), genome,
                                   entry.quality if entry is not None else None))
    return points


def as_dicts(points: list[UniformPoint]) -> list[dict]:
    return [{**asdict(p), "genome": list(p.genome)} for p in points]
