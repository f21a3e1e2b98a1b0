"""The compressibility study behind `evo analyze`: for each linear role and each (bits, rescale,
sparsity) point, code entropy and real on-disk bits per weight against weight and layer-output error.

Errors are measured layer by layer on the dense model's own inputs to each linear (captured with
forward pre-hooks in one forward pass over a few calibration sequences), so the study needs no
evaluation of compressed models and runs in minutes on a CPU.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evo.compress import ActivationStats, TensorSetting, compress_tensor
from evo.compress.settings import KEPT_BITS
from evo.errors import EvoError
from evo.evaluate.forward import Hook, run_forward, token_batch
from evo.compress.coding import encode_tensor
from evo.types import ATTENTION_ROLES, MLP_ROLES

if TYPE_CHECKING:
    from evo.modelio import LoadedModel

ProgressCallback = Callable[[int, int], None]  # (done, total), the convention of evo.data.ccds

# Where each role is plotted and summed: attention and MLP projections differ in shape and input
# statistics (MLP matrices hold ~3/4 of a Llama layer's weights), so they are shown apart.
ROLE_GROUPS: dict[str, tuple[str, ...]] = {"attention": ATTENTION_ROLES, "mlp": MLP_ROLES}
ANALYZED_ROLES = ATTENTION_ROLES + MLP_ROLES  # "other" linears have no family to compare with


def _tuple_of(name: str, values: Any, kind: type) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise EvoError(f"AnalysisGrid.{name} must be a non-empty list, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else kind):
            raise EvoError(f"AnalysisGrid.{name} holds {v!r}; use {kind.__name__} values")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise EvoError(f"AnalysisGrid.{name}={list(values)!r} repeats a value; list each once")
    return tuple(sorted(out)) if kind is not str else tuple(out)


@dataclass(frozen=True)
class AnalysisGrid:
    """What the study sweeps and where.

    Every (bits, rescale, sparsity) combination is one TensorSetting with the shared group_size,
    symmetric and prune_criterion. The default criterion is wanda because the study captures each
    linear's inputs anyway, and it is the criterion built to keep layer outputs (what is measured).

    layers: decoder layer indices to aggregate over; None picks `num_layers` evenly spaced ones
        (first and last included), enough to see depth trends while staying fast.
    roles: linear roles to study; None means every attention and MLP role the model has.
    calibration_sequences × calibration_seq_len: the default calibration tokens when analyze()
        is given none (sequences spread evenly over the embedded calibration mix).
    """

    bits: tuple[int, ...] = (2, 3, 4, 8)
    rescales: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0)
    sparsities: tuple[float, ...] = (0.0, 0.25, 0.5)
    group_size: int | None = 128
    symmetric: bool = False
    prune_criterion: str = "wanda"
    layers: tuple[int, ...] | None = None
    num_layers: int = 4
    roles: tuple[str, ...] | None = None
    calibration_sequences: int = 4
    calibration_seq_len: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _tuple_of("bits", self.bits, int))
        object.__setattr__(self, "rescales", _tuple_of("rescales", self.rescales, float))
        object.__setattr__(self, "sparsities", _tuple_of("sparsities", self.sparsities, float))
        if KEPT_BITS in self.bits:
            raise EvoError(f"AnalysisGrid.bits holds {KEPT_BITS}: the study sweeps quantized settings; drop it")
        if self.layers is not None:
            object.__setattr__(self, "layers", _tuple_of("layers", self.layers, int))
            if self.layers[0] < 0:
                raise EvoError(f"AnalysisGrid.layers={list(self.layers)} holds a negative index; use 0-based indices")
        if self.roles is not None:
            roles = _tuple_of("roles", self.roles, str)
            unknown = [r for r in roles if r not in ANALYZED_ROLES]
            if unknown:
                raise EvoError(
                    f"AnalysisGrid.roles holds unknown role(s) {unknown}; use some of {list(ANALYZED_ROLES)}"
                )
            object.__setattr__(self, "roles", tuple(r for r in ANALYZED_ROLES if r in roles))
        for name in ("num_layers", "calibration_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EvoError(f"AnalysisGrid.{name}={value!r} must be a positive integer")
        if isinstance(self.calibration_seq_len, bool) or not isinstance(self.calibration_seq_len, int) \
                or self.calibration_seq_len < 2:
            raise EvoError(f"AnalysisGrid.calibration_seq_len={self.calibration_seq_len!r} must be at least 2")
        self.settings()  # every combination must be a valid TensorSetting; its error names the field

    def settings(self) -> tuple[TensorSetting, ...]:
        """The swept settings, bits-major, then rescale, then sparsity."""
        return tuple(
            TensorSetting(
                bits=b,
                group_size=self.group_size,
                symmetric=self.symmetric,
                rescale=r,
                sparsity=s,
                prune_criterion=self.prune_criterion,
            )
            for b in self.bits
            for r in self.rescales
            for s in self.sparsities
        )

    def layer_indices(self, total_layers: int) -> tuple[int, ...]:
        """The layers studied in a model of `total_layers` decoder layers."""
        if self.layers is not None:
            if self.layers[-1] >= total_layers:
                raise EvoError(
                    f"AnalysisGrid.layers holds {self.layers[-1]} but the model has {total_layers} decoder layers "
                    f"(0..{total_layers - 1})"
                )
            return self.layers
        count = min(self.num_layers, total_layers)
        return tuple(sorted({int(round(x)) for x in np.linspace(0, total_layers - 1, count)}))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisGrid:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvoError(f"unknown AnalysisGrid field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class AnalysisRow:
    """One role (or a group of roles) under one setting, summed over the studied layers.

    The sums are kept so rows combine exactly: errors are relative Frobenius norms of the
    stacked matrices, sqrt(Σ‖W−Ŵ‖² / Σ‖W‖²), and of the stacked outputs,
    sqrt(Σ‖X(W−Ŵ)ᵀ‖² / Σ‖XWᵀ‖²), so larger matrices and larger outputs weigh more.
    """

    role: str  # a linear role, a ROLE_GROUPS name, or "all"
    setting: TensorSetting
    layers: tuple[int, ...]
    num_weights: int
    compressed_bytes: int  # every frame: codes, scales, zero points
    side_bytes: int  # the scales and zero-point frames alone
    entropy_bits: float  # order-0 entropy of the codes, summed over matrices
    weight_sq_error: float
    weight_sq_norm: float
    output_sq_error: float
    output_sq_norm: float

    @property
    def disk_bits_per_weight(self) -> float:
        return 8.0 * self.compressed_bytes / self.num_weights

    @property
    def side_bits_per_weight(self) -> float:
        return 8.0 * self.side_bytes / self.num_weights

    @property
    def entropy_bits_per_weight(self) -> float:
        return self.entropy_bits / self.num_weights

    @property
    def weight_error(self) -> float:
        return math.sqrt(self.weight_sq_error / self.weight_sq_norm) if self.weight_sq_norm else 0.0

    @property
    def output_error(self) -> float:
        return math.sqrt(self.output_sq_error / self.output_sq_norm) if self.output_sq_norm else 0.0


def combine_rows(rows: Sequence[AnalysisRow], role: str) -> AnalysisRow:
    """Rows of one setting summed into one row named `role` (e.g. all MLP roles → "mlp")."""
    if not rows:
        raise EvoError("nothing to combine: no analysis rows")
    settings = {r.setting for r in rows}
    if len(settings) != 1:
        raise EvoError(f"rows of different settings cannot be combined: {sorted(s.key() for s in settings)}")
    return AnalysisRow(
        role=role,
        setting=rows[0].setting,
        layers=tuple(sorted({i for r in rows for i in r.layers})),
        num_weights=sum(r.num_weights for r in rows),
        compressed_bytes=sum(r.compressed_bytes for r in rows),
        side_bytes=sum(r.side_bytes for r in rows),
        entropy_bits=sum(r.entropy_bits for r in rows),
        weight_sq_error=sum(r.weight_sq_error for r in rows),
        weight_sq_norm=sum(r.weight_sq_norm for r in rows),
        output_sq_error=sum(r.output_sq_error for r in rows),
        output_sq_norm=sum(r.output_sq_norm for r in rows),
    )


def group_rows(rows: Sequence[AnalysisRow], by: str = "group") -> list[AnalysisRow]:
    """Rows combined per setting: by="group" gives one row per ROLE_GROUPS entry present,
    by="all" one row over every role. Order: group, then the settings' first appearance."""
    if by not in ("group", "all"):
        raise EvoError(f"group_rows(by={by!r}): use 'group' or 'all'")
    buckets: dict[tuple[str, TensorSetting], list[AnalysisRow]] = {}
    for row in rows:
        name = "all" if by == "all" else _group_of(row.role)
        buckets.setdefault((name, row.setting), []).append(row)
    order = {name: i for i, name in enumerate([*ROLE_GROUPS, "all", "other"])}
    keys = sorted(buckets, key=lambda k: order.get(k[0], len(order)))  # stable: keeps setting order
    return [combine_rows(buckets[k], k[0]) for k in keys]


def _group_of(role: str) -> str:
    for name, roles in ROLE_GROUPS.items():
        if role in roles or role == name:
            return name
    return "other"


# Columns of the summary table: (header, AnalysisRow attribute, format spec). The CLI renders
# summary_rows() with these, so the library decides what a row says and the CLI only draws it.
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("bits", "bits", "d"),
    ("rescale", "rescale", "g"),
    ("sparsity", "sparsity", "g"),
    ("disk bits/w", "disk_bits_per_weight", ".3f"),
    ("entropy bits/w", "entropy_bits_per_weight", ".3f"),
    ("side bits/w", "side_bits_per_weight", ".3f"),
    ("weight err", "weight_error", ".4f"),
    ("output err", "output_error", ".4f"),
)


def summary_rows(rows: Sequence[AnalysisRow]) -> list[dict[str, str]]:
    """One row per setting over all roles, formatted with SUMMARY_COLUMNS, smallest on disk first."""
    combined = sorted(group_rows(rows, by="all"), key=lambda r: r.disk_bits_per_weight)
    return [{header: format(_value(row, attr), spec) for header, attr, spec in SUMMARY_COLUMNS} for row in combined]


def _value(row: AnalysisRow, name: str) -> Any:
    return getattr(row.setting, name) if name in ("bits", "rescale", "sparsity") else getattr(row, name)


def default_calibration_ids(tokenizer, sequences: int = 4, seq_len: int = 128) -> np.ndarray:
    """`sequences` token sequences of `seq_len`, evenly spaced over the embedded calibration mix
    (so every domain it holds is likely represented), int64 [sequences, seq_len]."""
    from evo.data.corpus import read_corpus, tokenize_corpus

    pool = tokenize_corpus(read_corpus(), tokenizer, seq_len)
    if len(pool) < sequences:
        raise EvoError(
            f"the calibration corpus holds {len(pool)} sequences of {seq_len} tokens, fewer than {sequences}: "
            "ask for fewer or shorter calibration sequences"
        )
    picks = np.unique(np.linspace(0, len(pool) - 1, sequences).round().astype(int))
    return pool.token_ids[picks].astype(np.int64)


def capture_linear_inputs(
    model: torch.nn.Module, modules: Sequence[str], token_ids: np.ndarray, *, batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """The inputs each named linear sees while the model runs token_ids [n, L]: float32 CPU
    tensors [n·L, in_features], keyed by module path."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0]
            captured[name].append(x.detach().reshape(-1, x.shape[-1]).to(device="cpu", dtype=torch.float32))

        return hook

    run_forward(model, token_ids, batch_size,
                hooks=[Hook(model.get_submodule(name), hook_for(name), pre=True) for name in modules])
    return {name: torch.cat(parts) for name, parts in captured.items()}


def analyze(
    loaded: LoadedModel,
    grid: AnalysisGrid | None = None,
    calibration_token_ids: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> list[AnalysisRow]:
    """One AnalysisRow per (role, setting) of the grid, summed over the grid's layers.

    `loaded` is an evo.modelio.LoadedModel (model, tokenizer, info). calibration_token_ids
    [n, L] are the sequences whose activations measure the output error; None takes
    grid.calibration_sequences × grid.calibration_seq_len tokens from the embedded corpus.
    progress gets (matrices × settings done, total).
    """
    grid = grid or AnalysisGrid()
    info = loaded.info
    layer_indices = grid.layer_indices(info.num_layers)
    layers = [info.layers[i] for i in layer_indices]
    present = [role for role in ANALYZED_ROLES if any(lin.role == role for layer in layers for lin in layer.linears)]
    roles = grid.roles if grid.roles is not None else tuple(present)
    missing = [r for r in roles if r not in present]
    if missing:
        raise EvoError(
            f"{info.model_id} has no {', '.join(missing)} linears in layers {list(layer_indices)}; "
            f"its roles there are {present}: pick roles among them"
        )
    if not roles:
        raise EvoError(f"{info.model_id} has no attention or MLP linears in layers {list(layer_indices)}")

    if calibration_token_ids is None:
        calibration_token_ids = default_calibration_ids(
            loaded.tokenizer, grid.calibration_sequences, grid.calibration_seq_len
        )
    ids = token_batch(calibration_token_ids)

    targets = {role: [(layer.index, layer.linear(role)) for layer in layers if _has(layer, role)] for role in roles}
    inputs = capture_linear_inputs(loaded.model, [lin.module for lins in targets.values() for _, lin in lins], ids)

    settings = grid.settings()
    total = sum(len(lins) for lins in targets.values()) * len(settings)
    done = 0
    rows: list[AnalysisRow] = []
    for role, lins in targets.items():
        per_layer: dict[TensorSetting, list[AnalysisRow]] = {s: [] for s in settings}
        for layer_index, lin in lins:
            weight = loaded.model.get_submodule(lin.module).weight.detach().to(device="cpu", dtype=torch.float32)
            x = inputs.pop(lin.module)
            stats = ActivationStats(l2=x.norm(dim=0), absmax=x.abs().amax(dim=0))
            output_sq_norm = float((x @ weight.T).square().sum())
            weight_sq_norm = float(weight.square().sum())
            for setting in settings:
                compressed = compress_tensor(weight, setting, stats)
                encoded = encode_tensor(compressed.quantized)
                error = weight - compressed.dequantized()
                per_layer[setting].append(
                    AnalysisRow(
                        role=role,
                        setting=setting,
                        layers=(layer_index,),
                        num_weights=weight.numel(),
                        compressed_bytes=encoded.compressed_bytes,
                        side_bytes=encoded.compressed_bytes - encoded.frame_bytes["codes"],
                        entropy_bits=encoded.entropy_bits,
                        weight_sq_error=float(error.square().sum()),
                        weight_sq_norm=weight_sq_norm,
                        output_sq_error=float((x @ error.T).square().sum()),
                        output_sq_norm=output_sq_norm,
                    )
                )
                done += 1
                if progress:
                    progress(done, total)
        rows.extend(combine_rows(per_layer[s], role) for s in settings)
    return rows


def _has(layer, role: str) -> bool:
    return any(lin.role == role for lin in layer.linears)


# CSV: the setting's fields, the derived figures a person reads, then the sums that make a row
# exact to recombine.
CSV_COLUMNS = (
    "role", "bits", "group_size", "symmetric", "rescale", "sparsity", "prune_criterion", "setting",
    "layers", "num_weights", "compressed_bytes", "side_bytes",
    "disk_bits_per_weight", "entropy_bits_per_weight", "side_bits_per_weight", "weight_error", "output_error",
    "entropy_bits", "weight_sq_error", "weight_sq_norm", "output_sq_error", "output_sq_norm",
)  # fmt: skip


def rows_to_csv(rows: Sequence[AnalysisRow], path: str | os.PathLike[str]) -> Path:
    """Write the rows with a header line (CSV_COLUMNS); returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            s = row.setting
            values = {
                "role": row.role,
                "bits": s.bits,
                "group_size": "channel" if s.group_size is None else s.group_size,
                "symmetric": s.symmetric,
                "rescale": repr(s.rescale),
                "sparsity": repr(s.sparsity),
                "prune_criterion": s.prune_criterion if s.sparsity > 0 else "",
                "setting": s.key(),
                "layers": " ".join(map(str, row.layers)),
                "num_weights": row.num_weights,
                "compressed_bytes": row.compressed_bytes,
                "side_bytes": row.side_bytes,
                "disk_bits_per_weight": f"{row.disk_bits_per_weight:.5f}",
                "entropy_bits_per_weight": f"{row.entropy_bits_per_weight:.5f}",
                "side_bits_per_weight": f"{row.side_bits_per_weight:.5f}",
                "weight_error": f"{row.weight_error:.6g}",
                "output_error": f"{row.output_error:.6g}",
                "entropy_bits": repr(row.entropy_bits),
                "weight_sq_error": repr(row.weight_sq_error),
                "weight_sq_norm": repr(row.weight_sq_norm),
                "output_sq_error": repr(row.output_sq_error),
                "output_sq_norm": repr(row.output_sq_norm),
            }
            writer.writerow([values[c] for c in CSV_COLUMNS])
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (smaller is better), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot_analysis(
    rows: Sequence[AnalysisRow],
    path: str | os.PathLike[str],
    *,
    model_name: str = "",
) -> Path:
    """A PNG of layer-output error against bits per weight on disk, one panel per role group.

    Colour is the bit width and line style the sparsity; each curve runs through the rescale
    factors (larger rescale: fewer bits on disk), so one sees where a rescaled wide grid beats a
    narrower one. White dots mark plain RTN, a grey band the panel's Pareto front; both axes
    are logarithmic.
    """
    # The object API with an explicit Agg canvas: no pyplot global state, no backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    if not rows:
        raise EvoError("nothing to plot: no analysis rows")
    grouped = group_rows(rows, by="group")
    panels = [name for name in [*ROLE_GROUPS, "other"] if any(r.role == name for r in grouped)]
    rescales = sorted({r.setting.rescale for r in grouped})
    sparsities = sorted({r.setting.sparsity for r in grouped})
    bit_widths = sorted({r.setting.bits for r in grouped})
    colors = _bit_colors(bit_widths)
    styles = _sparsity_styles(sparsities)

    fig = Figure(figsize=(6.0 * len(panels) + 2.4, 6.0), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    x_all = [r.disk_bits_per_weight for r in grouped]
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16) if min(x_all) / 1.15 <= t <= max(x_all) * 1.15]
    for ax, panel in zip(axes, panels):
        panel_rows = [r for r in grouped if r.role == panel]
        front = pareto_front([(r.disk_bits_per_weight, r.output_error) for r in panel_rows])
        ax.plot(*zip(*front), color="0.85", linewidth=10, solid_capstyle="round", solid_joinstyle="round", zorder=1)
        for bits in bit_widths:
            for sparsity in sparsities:
                family = sorted(
                    (r for r in panel_rows if r.setting.bits == bits and r.setting.sparsity == sparsity),
                    key=lambda r: r.setting.rescale,
                )
                if not family:
                    continue
                ax.plot(
                    [r.disk_bits_per_weight for r in family],
                    [r.output_error for r in family],
                    color=colors[bits],
                    linestyle=styles[sparsity][0],
                    marker=styles[sparsity][1],
                    markersize=5.5 if sparsity == sparsities[0] else 4.5,
                    linewidth=2.0 if sparsity == sparsities[0] else 1.3,
                    alpha=1.0 if sparsity == sparsities[0] else 0.8,
                    zorder=3 if sparsity == sparsities[0] else 2,
                )
        plain = [r for r in panel_rows if r.setting.rescale == 1.0 and r.setting.sparsity == 0.0]
        if plain:  # plain RTN as the landmark: left of it on a curve is rescale > 1, right is < 1
            ax.scatter(
                [r.disk_bits_per_weight for r in plain], [r.output_error for r in plain],
                s=90, facecolors="white", edgecolors=[colors[r.setting.bits] for r in plain],
                linewidths=2, zorder=5,
            )
        studied = {r.role for r in rows}
        roles = [role for role in ANALYZED_ROLES if role in ROLE_GROUPS.get(panel, ()) and role in studied]
        short = ", ".join(role.split("_", 1)[1] for role in roles)
        ax.set_title(f"{panel} ({short})" if short else panel, fontsize=11)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per weight on disk (entropy-coded codes + scales + zero points)")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
    axes[0].set_ylabel("relative layer-output error  ‖X(W − Ŵ)ᵀ‖ / ‖XWᵀ‖")

    handles = [Line2D([], [], color=colors[b], linewidth=2.5, label=f"{b}-bit") for b in bit_widths]
    handles += [
        Line2D([], [], color="0.3", linestyle=styles[s][0], marker=styles[s][1], label=f"sparsity {s:g}")
        for s in sparsities
    ]
    handles.append(
        Line2D([], [], linestyle="none", marker="o", markersize=9, markerfacecolor="white",
               markeredgecolor="0.3", markeredgewidth=2, label="plain RTN\n(rescale 1, sparsity 0)")
    )
    handles.append(Line2D([], [], color="0.85", linewidth=10, label="Pareto front"))
    fig.legend(
        handles=handles,
        loc="outside right center",
        frameon=False,
        title="points along a curve:\nrescale " + ", ".join(f"{r:g}" for r in reversed(rescales))
        + "\n(left to right)",
        title_fontsize=9,
    )
    setting = grouped[0].setting
    group = "per channel" if setting.group_size is None else f"groups of {setting.group_size}"
    how = f"RTN, {group}, {'symmetric' if setting.symmetric else 'asymmetric'}"
    if any(s > 0 for s in sparsities):
        how += f", {setting.prune_criterion} pruning"
    layers = ", ".join(map(str, grouped[0].layers))
    fig.suptitle(
        f"{_short_name(model_name)}: size on disk vs layer-output error\n"
        f"{how}; decoder layers {layers} pooled",
        fontsize=12,
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _short_name(model_name: str) -> str:
    """A file path is named by its file; a hub id or alias is kept as given."""
    if not model_name:
        return "model"
    if model_name.startswith(("/", ".", "~")) or model_name.count("/") > 1:
        return Path(model_name).name
    return model_name


def _bit_colors(bit_widths: Sequence[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    n = len(bit_widths)
    return {b: cmap(0.05 + 0.75 * i / max(n - 1, 1)) for i, b in enumerate(bit_widths)}


def _sparsity_styles(sparsities: Sequence[float]) -> dict[float, tuple[Any, str]]:
    linestyles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
    markers = ["o", "s", "^", "D", "v"]
    return {s: (linestyles[i % len(linestyles)], markers[i % len(markers)]) for i, s in enumerate(sparsities)}
