"""Batched GPTQ: every (tensor, setting) that reads one input quantized in ONE column loop.

GPTQ treats the rows of W independently given H (the inverse-Hessian factor, the column order and the
error feedback are the same for every row; only the grid and the prune mask are per row), so every
setting of a tensor and every tensor reading the same input (q/k/v; gate/up) are stacked as rows of
one matrix with per-row grids, code ranges and masks, and the column loop runs once per (layer, input).

Bit for bit equal to one tensor at a time, by construction: gptq_quantize (evo.compress.gptq) is this
function with one job. Each job's rows start at a multiple of ROW_CHUNK and are padded to one (zero
rows that round to 0 and push no error), and the lazy-batch update runs one matmul per ROW_CHUNK rows,
so a job's rows meet the same kernels with the same shapes and the same neighbours, alone or batched;
every other step is elementwise or per job (the grids are computed per job as before).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evo.compress.grid import effective_group_size, num_groups, symmetric_midpoint
from evo.compress.quantize import QuantizedTensor
from evo.compress.settings import TensorSetting
from evo.errors import EvoError

ROW_CHUNK = 64  # rows per lazy-update matmul; divides the row counts of common models (576, 192, 4096, 14336)


@dataclass(frozen=True)
class GptqJob:
    """One matrix [out, in] to quantize with one setting (and its prune mask, None when unpruned)."""

    weight: torch.Tensor
    setting: TensorSetting
    prune_mask: torch.Tensor | None = None


def _kind(setting: TensorSetting) -> str:
    return "sym" if setting.symmetric else setting.zero_point


def _check(job: GptqJob, in_features: int, grid: str) -> None:
    setting, weight = job.setting, job.weight
    if not setting.quantized:
        raise EvoError("gptq needs bits < 16; bits=16 keeps the matrix in bf16")
    if weight.ndim != 2:
        raise EvoError(f"quantization needs a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if grid not in ("rtn", "mse"):
        raise EvoError(f"gptq grid {grid!r} is unknown; use 'rtn' or 'mse'")
    if weight.shape[1] != in_features:
        raise EvoError(f"a weight of shape {tuple(weight.shape)} does not read an input of {in_features} features")
    if job.prune_mask is not None and setting.zero_point == "float":
        raise EvoError('pruned weights need zero_point="int" (a float zero point cannot represent 0 exactly)')


def gptq_quantize_many(
    jobs: list[GptqJob],
    hessian: torch.Tensor,
    *,
    damp: float | None = None,
    block_size: int | None = None,
    act_order: bool | None = None,
    grid: str | None = None,
) -> list[QuantizedTensor]:
    """GPTQ codes of every job, all reading inputs whose E[x xᵀ] is `hessian` [in, in]; each equal
    bit for bit to gptq_quantize(job.weight, job.setting, hessian, job.prune_mask). Runs on the first
    weight's device; deterministic."""
    from evo.compress import gptq

    damp = gptq.GPTQ_DAMP if damp is None else damp
    block_size = gptq.GPTQ_BLOCK_SIZE if block_size is None else block_size
    act_order = gptq.GPTQ_ACT_ORDER if act_order is None else act_order
    grid = gptq.GPTQ_GRID if grid is None else grid
    if not jobs:
        return []
    in_features = hessian.shape[-1]
    if hessian.ndim != 2 or tuple(hessian.shape) != (in_features, in_features):
        raise EvoError(f"the Hessian has shape {tuple(hessian.shape)}, expected ({in_features}, {in_features})")
    for job in jobs:
        _check(job, in_features, grid)
    device = jobs[0].weight.device
    importance = torch.diagonal(hessian).detach().to(device, torch.float32).clamp(min=0)
    perm = torch.argsort(importance, descending=True, stable=True) if act_order else None
    h = hessian.to(device)
    if perm is not None:
        h = h[perm][:, perm]
    u = gptq.inverse_hessian_factor(h, damp)

    # Jobs whose codes follow one formula and one block layout share a column loop.
    loops: dict[tuple, list[int]] = {}
    for index, job in enumerate(jobs):
        g = effective_group_size(in_features, job.setting.group_size)
        static = act_order or num_groups(in_features, job.setting.group_size) == 1
        loops.setdefault((_kind(job.setting), None if static else g), []).append(index)
    results: list[QuantizedTensor | None] = [None] * len(jobs)
    for (kind, g), members in loops.items():
        quantized = _column_loop([jobs[i] for i in members], kind, g, u, perm, importance, block_size, grid, device)
        for i, q in zip(members, quantized):
            results[i] = q
    return results  # type: ignore[return-value]


def _column_loop(jobs, kind, dynamic_g, u, perm, importance, block_size, grid, device) -> list[QuantizedTensor]:
    from evo.compress.gptq import group_grid

    in_features = u.shape[0]
    chunk = ROW_CHUNK
    offsets, rows = [], 0
    for job in jobs:
        offsets.append(rows)
        rows += -(-job.weight.shape[0] // chunk) * chunk
    g_common = dynamic_g if dynamic_g is not None else in_features
    n_groups_max = max(num_groups(in_features, job.setting.group_size) for job in jobs)
    w = torch.zeros(rows, in_features, dtype=torch.float32, device=device)
    mask = None
    if any(job.prune_mask is not None for job in jobs):
        mask = torch.zeros(rows, in_features, dtype=torch.bool, device=device)
    step_g = torch.ones(rows, n_groups_max, dtype=torch.float32, device=device)
    zero_g = torch.zeros(rows, n_groups_max, dtype=torch.float32, device=device)
    top = torch.ones(rows, dtype=torch.float32, device=device)
    # the group of each (permuted) column, per distinct group size, and each row's group size
    sizes = sorted({effective_group_size(in_features, job.setting.group_size) for job in jobs})
    col_groups = torch.stack([torch.arange(in_features, device=device) // g for g in sizes])
    if perm is not None:
        col_groups = col_groups[:, perm]
    row_size = torch.zeros(rows, dtype=torch.long, device=device)
    stores = []
    for job, start in zip(jobs, offsets):
        setting = job.setting
        out_features = job.weight.shape[0]
        part = slice(start, start + out_features)
        job_w = job.weight.detach().to(device, torch.float32)
        if not bool(torch.isfinite(job_w).all()):
            raise EvoError("weight contains NaN or inf; cannot quantize it")
        job_mask = job.prune_mask.to(device) if job.prune_mask is not None else None
        n_groups = num_groups(in_features, setting.group_size)
        scales = torch.empty(out_features, n_groups, dtype=torch.float16, device=device)
        zeros = None
        if not setting.symmetric:
            zeros = torch.empty(out_features, n_groups, device=device,
                                dtype=torch.uint8 if setting.zero_point == "int" else torch.float16)
        if dynamic_g is None:  # static grids, from the weights before any update (gptq_quantize's rule)
            found = group_grid(job_w, setting, job_mask, importance, grid)
            scales.copy_(found.scales)
            if zeros is not None:
                zeros.copy_(found.zeros)
            step_g[part, :n_groups] = scales.float()
            if zeros is not None:
                zero_g[part, :n_groups] = zeros.float()
        row_size[part] = sizes.index(effective_group_size(in_features, setting.group_size))
        if perm is not None:
            job_w = job_w[:, perm]
            job_mask = job_mask[:, perm] if job_mask is not None else None
        w[part] = job_w
        if job_mask is not None:
            mask[part] = job_mask
        top[part] = float(2 * symmetric_midpoint(setting.bits) if setting.symmetric else (1 << setting.bits) - 1)
        stores.append((scales, zeros))
    mid = top / 2 if kind == "sym" else None  # the symmetric zero code 2^(b-1) - 1 is half the top code
    codes = torch.zeros(rows, in_features, dtype=torch.uint8, device=device)
    row_index = torch.arange(rows, device=device)

    block = block_size if dynamic_g is None else max(block_size // g_common, 1) * g_common
    for start in range(0, in_features, block):
        stop = min(start + block, in_features)
        w1 = w[:, start:stop].clone()
        err = torch.empty_like(w1)
        u1 = u[start:stop, start:stop]
        for i in range(stop - start):
            col = start + i
            if dynamic_g is not None and col % g_common == 0:
                k = col // g_common
                cols = slice(col, min(col + g_common, in_features))
                for job, offset, (scales, zeros) in zip(jobs, offsets, stores):
                    part = slice(offset, offset + job.weight.shape[0])
                    job_mask = job.prune_mask.to(device)[:, cols] if job.prune_mask is not None else None
                    found = group_grid(w1[part, i : i + cols.stop - col], job.setting, job_mask,
                                        importance[cols], grid)
                    scales[:, k] = found.scales[:, 0]
                    step_g[part, k] = scales[:, k].float()
                    if zeros is not None:
                        zeros[:, k] = found.zeros[:, 0]
                        zero_g[part, k] = zeros[:, k].float()
            k_rows = col_groups[:, col][row_size]
            step = step_g[row_index, k_rows]
            x = w1[:, i]
            if kind == "sym":
                s = torch.round(x / step).clamp(-mid, mid)
                c, q = s + mid, s * step
                zero_code = mid
            elif kind == "int":
                zero = zero_g[row_index, k_rows]
                c = (torch.round(x / step) + zero).clamp(torch.zeros_like(top), top)
                q = (c - zero) * step
                zero_code = zero
            else:
                zero = zero_g[row_index, k_rows]
                c = torch.round((x - zero) / step).clamp(torch.zeros_like(top), top)
                q = c * step + zero
                zero_code = None
            if mask is not None:
                pruned = mask[:, col]
                c = torch.where(pruned, zero_code, c)
                q = torch.where(pruned, torch.zeros_like(q), q)
            codes[:, col] = c.to(torch.uint8)
            e = (x - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        if stop < in_features:
            rest = u[start:stop, stop:]
            for r in range(0, rows, chunk):  # fixed shapes per chunk: see the module docstring
                w[r : r + chunk, stop:] -= err[r : r + chunk] @ rest

    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    out = []
    for job, offset, (scales, zeros) in zip(jobs, offsets, stores):
        n = job.weight.shape[0]
        out.append(QuantizedTensor(codes[offset : offset + n].contiguous(), scales, zeros, tuple(job.weight.shape),
                                   job.setting))
    return out
