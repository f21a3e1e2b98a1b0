"""What a run found, for people: the Pareto front (table + PNG), the convergence curve, and every
evaluation as CSV. Reads the run directory only (journal, spec); never loads the model.

The front is recomputed from the journal's final-stage evaluations (the engines' archive), so a
report of a run still in progress is up to date; the chosen point is the one `evo export` takes:
the best quality under the budget, the smaller artifact on a tie.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from evo.constants import FINAL_STAGE, MB
from evo.errors import EvoError
from evo.fileio import atomic_write_text
from evo.search.engines.base import fits_budget, pareto_front
from evo.search.store import JournalEntry, RunStore, best_under_budget
from evo.search.uniform import UniformPoint, as_dicts, read_uniform_points
from evo.types import Score

# The plots name the metric in words.
METRIC_LABELS = {"kl": "KL divergence to the dense model (nats/token)", "ppl": "perplexity on the calibration set"}
LOG_SCALE_SPAN = 10  # values spanning at least a decade get a log axis
CSV_COLUMNS = ("index", "stage", "quality", "size_bytes", "size_mb", "seconds", "under_budget", "on_front", "genome")


@dataclass(frozen=True)
class Baseline:
    """A reference point drawn on the Pareto plot: `NAME=MB:QUALITY` or `NAME=ARTIFACT_DIR:QUALITY`."""

    name: str
    size_bytes: int
    quality: float

    @classmethod
    def parse(cls, text: str) -> "Baseline":
        name, sep, rest = text.partition("=")
        where, colon, quality = rest.rpartition(":")
        if not sep or not colon or not name.strip():
            raise EvoError(f"--baseline {text!r}: write NAME=MB:QUALITY or NAME=ARTIFACT_DIR:QUALITY")
        try:
            value = float(quality)
        except ValueError:
            raise EvoError(f"--baseline {text!r}: quality {quality!r} is not a number") from None
        return cls(name.strip(), _baseline_bytes(where, text), value)


def _baseline_bytes(where: str, text: str) -> int:
    path = Path(where)
    if path.is_dir():
        from evo.compress.artifact import read_manifest

        return int(read_manifest(path).total_bytes)
    try:
        return int(round(float(where) * MB))
    except ValueError:
        raise EvoError(f"--baseline {text!r}: {where!r} is neither a size in MB nor an artifact directory") from None


@dataclass(frozen=True)
class RunReport:
    run_dir: Path
    metric: str
    budget_bytes: int
    engine: str
    entries: tuple[JournalEntry, ...]
    front: tuple[JournalEntry, ...]  # final-stage, under budget, non-dominated, by size
    chosen: JournalEntry | None
    uniform: tuple[UniformPoint, ...] = ()  # the space's uniform widths (RUN/uniform.json), for reference

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    @property
    def final(self) -> list[JournalEntry]:
        return [e for e in self.entries if e.stage == FINAL_STAGE]

    def convergence(self) -> list[tuple[int, float]]:
        """(evaluations so far, best final-stage quality under budget) at each improvement."""
        best, points = float("inf"), []
        for count, entry in enumerate(self.entries, start=1):
            if entry.stage == FINAL_STAGE and fits_budget(_score(entry), self.budget_bytes) and entry.quality < best:
                best = entry.quality
                points.append((count, best))
        return points

    def summary(self) -> dict:
        chosen = self.chosen
        return {
            "run_dir": str(self.run_dir), "engine": self.engine, "metric": self.metric,
            "budget_bytes": self.budget_bytes, "evaluations": len(self.entries),
            "final_stage_evaluations": len(self.final), "front_size": len(self.front),
            "evaluation_seconds": round(sum(e.seconds for e in self.entries), 3),
            "best": None if chosen is None else {"index": chosen.index, "quality": chosen.quality,
                                                 "size_bytes": chosen.size_bytes, "genome": list(chosen.genome)},
        }


def build_report(run_dir: str | Path) -> RunReport:
    store = RunStore.open(run_dir)  # a directory that is not a run fails here, on one line
    search = store.spec()["search"]
    budget = int(search["budget_bytes"])
    entries = tuple(store.entries())
    if not entries:
        raise EvoError(f"run {run_dir} has no finished evaluation yet: nothing to report")
    final = [e for e in entries if e.stage == FINAL_STAGE]
    by_index = {e.index: e for e in final}
    front = [by_index[index] for index, _ in pareto_front(((e.index, _score(e)) for e in final), budget)]
    chosen = best_under_budget(front, budget)
    return RunReport(Path(run_dir), str(search.get("fitness", "kl")), budget, str(search.get("engine", "deap")),
                     entries, tuple(front), chosen, tuple(read_uniform_points(run_dir, store)))


def _score(entry: JournalEntry) -> Score:
    return Score(entry.quality, entry.size_bytes)


def write_csv(report: RunReport, path: Path) -> Path:
    on_front = {e.index for e in report.front}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for e in report.entries:
            writer.writerow([e.index, e.stage, repr(e.quality), e.size_bytes, f"{e.size_bytes / MB:.6f}",
                             f"{e.seconds:.4f}", int(fits_budget(_score(e), report.budget_bytes)), int(e.index in on_front),
                             ".".join(str(g) for g in e.genome)])
    return path


def plot_pareto(report: RunReport, path: Path, baselines: tuple[Baseline, ...] = ()) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    final = report.final
    ax.scatter([e.size_bytes / MB for e in final], [e.quality for e in final], s=10, color="0.7",
               label=f"evaluations ({len(final)}, final stage)", zorder=1)
    if report.front:
        xs = [e.size_bytes / MB for e in report.front]
        ys = [e.quality for e in report.front]
        ax.step(xs, ys, where="post", color="tab:blue", zorder=2)
        ax.scatter(xs, ys, s=22, color="tab:blue", label=f"Pareto front ({len(xs)})", zorder=3)
    ax.axvline(report.budget_bytes / MB, color="tab:red", linestyle="--", label=f"budget {report.budget_bytes / MB:.3f} MB")
    if report.chosen is not None:
        c = report.chosen
        ax.scatter([c.size_bytes / MB], [c.quality], s=140, marker="*", color="tab:orange", zorder=4,
                   label=f"chosen: {report.metric} {c.quality:.4g} at {c.size_bytes / MB:.3f} MB")
    markers = "sD^vP"
    for i, b in enumerate(baselines):
        ax.scatter([b.size_bytes / MB], [b.quality], s=60, marker=markers[i % len(markers)], zorder=4,
                   label=f"{b.name}: {b.quality:.4g} at {b.size_bytes / MB:.3f} MB")
    _draw_uniform(ax, report)
    qualities = [e.quality for e in final] + [b.quality for b in baselines]
    qualities += [u.quality for u in report.uniform if u.quality is not None]
    _log_scale_if_wide(ax, qualities)
    ax.set_xlabel("artifact size on disk (MB = 10^6 bytes)")
    ax.set_ylabel(f"{report.metric_label}, lower is better")
    ax.set_title(f"{_run_name(report.run_dir)}: {report.engine}, {len(report.entries)} evaluations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_convergence(report: RunReport, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    points = report.convergence()
    if points:
        xs, ys = zip(*points)
        xs, ys = list(xs) + [len(report.entries)], list(ys) + [ys[-1]]
        ax.step(xs, ys, where="post", color="tab:blue")
    ax.set_xlabel("evaluations (journal order; stage-1 screens counted)")
    if points:
        _log_scale_if_wide(ax, [q for _, q in points])
    ax.set_ylabel(f"best {report.metric_label}\nunder budget")
    ax.set_title(f"{_run_name(report.run_dir)}: convergence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_uniform(ax, report: RunReport) -> None:
    """The space's uniform bit-widths: a dotted vertical line at each exact size, and a marker where
    the run evaluated that configuration."""
    for u in report.uniform:
        x = u.size_bytes / MB
        ax.axvline(x, color="0.45", linestyle=":", linewidth=1, zorder=0)
        ax.annotate(f"uniform {u.bits}-bit", (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7, color="0.35")
        if u.quality is not None:
            ax.scatter([x], [u.quality], s=50, marker="s", facecolors="none", edgecolors="0.2", zorder=4,
                       label=f"uniform {u.bits}-bit: {u.quality:.4g} at {x:.3f} MB")
    if report.uniform:
        ax.plot([], [], color="0.45", linestyle=":", label="uniform bit-widths of this space (size)")


def _log_scale_if_wide(ax, values) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= LOG_SCALE_SPAN:
        ax.set_yscale("log")


def write_report(report: RunReport, out_dir: Path, baselines: tuple[Baseline, ...] = ()) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_csv(report, out_dir / "evaluations.csv"),
        "pareto": plot_pareto(report, out_dir / "pareto.png", baselines),
        "convergence": plot_convergence(report, out_dir / "convergence.png"),
    }
    summary = {**report.summary(), "metric_label": report.metric_label, "uniform": as_dicts(list(report.uniform)),
               "baselines": [asdict(b) for b in baselines],
               "front": [{"index": e.index, "quality": e.quality, "size_bytes": e.size_bytes} for e in report.front]}
    paths["json"] = out_dir / "report.json"
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt




def _run_name(run_dir: Path) -> str:
    """The run directory's last two parts: `runs/NAME` or, for benchmark runs, `seed0/deap`."""
    return "/".join(run_dir.resolve().parts[-2:])
