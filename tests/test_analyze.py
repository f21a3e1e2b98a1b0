"""The compressibility study on a tiny random Llama: row count, monotone size and error along bits,
exact recombination of rows, CSV and PNG outputs, grid validation. Seconds in all.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from tiny import tiny_model

from evo.analyze import (
    CSV_COLUMNS,
    SUMMARY_COLUMNS,
    AnalysisGrid,
    analyze,
    capture_linear_inputs,
    combine_rows,
    group_rows,
    pareto_front,
    plot_analysis,
    rows_to_csv,
    summary_rows,
)
from evo.errors import EvoError

torch.set_num_threads(1)  # tiny ops: threads only add OpenMP barriers, 30x slower on a busy CPU

ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")
SMALL_GRID = AnalysisGrid(bits=(2, 4, 8), rescales=(1.0, 1.5), sparsities=(0.0, 0.5))


@pytest.fixture(scope="module")
def tiny():
    from evo.modelio import LoadedModel, ModelSource, describe_model

    model = tiny_model("llama", tied=False, layers=2)
    source = ModelSource(spec="tiny", kind="dir", location="tiny")
    return LoadedModel(model=model, tokenizer=None, info=describe_model(model, model_id="tiny-llama"), source=source)


@pytest.fixture(scope="module")
def calibration_ids():
    return np.random.default_rng(0).integers(0, 256, size=(2, 32), dtype=np.int64)


@pytest.fixture(scope="module")
def rows(tiny, calibration_ids):
    calls = []
    result = analyze(tiny, SMALL_GRID, calibration_ids, progress=lambda d, t: calls.append((d, t)))
    total = len(ROLES) * 2 * len(SMALL_GRID.settings())  # roles × layers × settings
    assert calls[-1] == (total, total) and len(calls) == total
    return result


def _row(rows, role, bits, rescale=1.0, sparsity=0.0):
    (match,) = [
        r for r in rows
        if r.role == role and r.setting.bits == bits and r.setting.rescale == rescale and r.setting.sparsity == sparsity
    ]
    return match


def test_one_row_per_role_and_setting_over_both_layers(rows):
    assert len(rows) == len(ROLES) * 3 * 2 * 2
    assert {r.role for r in rows} == set(ROLES)
    assert all(r.layers == (0, 1) for r in rows)
    q = _row(rows, "attn_q", 4)
    assert q.num_weights == 2 * 64 * 64


def test_fewer_bits_mean_fewer_bytes_and_more_error(rows):
    for role in ROLES:
        for sparsity in (0.0, 0.5):
            ladder = [_row(rows, role, b, sparsity=sparsity) for b in (2, 4, 8)]
            disk = [r.disk_bits_per_weight for r in ladder]
            assert disk[0] < disk[1] < disk[2], (role, sparsity, disk)
            for error in ("weight_error", "output_error"):
                values = [getattr(r, error) for r in ladder]
                assert values[0] > values[1] > values[2] > 0, (role, sparsity, error, values)
            assert all(0 < r.entropy_bits_per_weight <= r.setting.bits for r in ladder)


def test_errors_match_a_direct_computation(tiny, calibration_ids, rows):
    from evo.compress import compress_tensor

    weight = tiny.model.model.layers[1].self_attn.v_proj.weight.detach()
    setting = _row(rows, "attn_v", 4).setting
    w_hat = compress_tensor(weight, setting).dequantized()  # no pruning: the stats are unused
    inputs = capture_linear_inputs(tiny.model, ["model.layers.1.self_attn.v_proj"], calibration_ids)
    x = inputs["model.layers.1.self_attn.v_proj"]
    assert x.shape == (2 * 32, 64)
    direct = float((x @ (weight - w_hat).T).norm() / (x @ weight.T).norm())
    # The row pools layers 0 and 1; its layer-1 share must reproduce the direct figure.
    grid = AnalysisGrid(bits=(4,), rescales=(1.0,), sparsities=(0.0,), layers=(1,), roles=("attn_v",))
    (only,) = analyze(tiny, grid, calibration_ids)
    assert only.output_error == pytest.approx(direct, rel=1e-4)
    assert only.weight_error == pytest.approx(float((weight - w_hat).norm() / weight.norm()), rel=1e-5)


def test_rows_combine_exactly(rows):
    attention = [r for r in rows if r.role.startswith("attn") and r.setting == rows[0].setting]
    combined = combine_rows(attention, "attention")
    assert combined.num_weights == sum(r.num_weights for r in attention)
    assert combined.compressed_bytes == sum(r.compressed_bytes for r in attention)
    expected = math.sqrt(sum(r.output_sq_error for r in attention) / sum(r.output_sq_norm for r in attention))
    assert combined.output_error == pytest.approx(expected)
    grouped = group_rows(rows)
    assert [r.role for r in grouped] == ["attention"] * 12 + ["mlp"] * 12
    with pytest.raises(EvoError):
        combine_rows([rows[0], rows[1]], "mixed")


def test_summary_rows_cover_every_setting_with_the_table_columns(rows):
    table = summary_rows(rows)
    assert len(table) == len(SMALL_GRID.settings())
    assert all(list(r) == [header for header, _, _ in SUMMARY_COLUMNS] for r in table)
    disk = [float(r["disk bits/w"]) for r in table]
    assert disk == sorted(disk)


def test_csv_has_a_header_and_one_line_per_row(rows, tmp_path):
    path = rows_to_csv(rows, tmp_path / "out" / "analysis.csv")
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == list(CSV_COLUMNS)
    assert len(records) == len(rows)
    first = records[0]
    assert first["role"] == rows[0].role and int(first["bits"]) == rows[0].setting.bits
    assert float(first["output_error"]) == pytest.approx(rows[0].output_error, rel=1e-5)
    assert first["layers"] == "0 1"


def test_png_is_written(rows, tmp_path):
    path = plot_analysis(rows, tmp_path / "analysis.png", model_name="tiny-llama")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_pareto_front_keeps_only_undominated_points():
    points = [(1, 5), (2, 3), (2.5, 4), (3, 1), (4, 1)]
    assert pareto_front(points) == [(1, 5), (2, 3), (3, 1)]


def test_default_grid_and_layer_choice():
    grid = AnalysisGrid()
    assert len(grid.settings()) == 4 * 4 * 3
    assert grid.layer_indices(30) == (0, 10, 19, 29)
    assert grid.layer_indices(2) == (0, 1)
    assert AnalysisGrid.from_dict(grid.to_dict()) == grid


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": ()},
        {"bits": (4, 16)},
        {"bits": (7,)},
        {"rescales": (0.1,)},
        {"sparsities": (0.0, 0.0)},
        {"roles": ("attn_x",)},
        {"layers": (-1,)},
        {"num_layers": 0},
        {"prune_criterion": "random"},
        {"calibration_seq_len": 1},
    ],
)
def test_bad_grids_raise_evo_error(kwargs):
    with pytest.raises(EvoError):
        AnalysisGrid(**kwargs)


def test_layers_and_roles_the_model_lacks_raise_evo_error(tiny, calibration_ids):
    with pytest.raises(EvoError):
        analyze(tiny, AnalysisGrid(layers=(5,)), calibration_ids)
    with pytest.raises(EvoError):
        analyze(tiny, AnalysisGrid(roles=("attn_qkv",)), calibration_ids)
