"""The level database: batched GPTQ equals per-tensor GPTQ bit for bit; every level of a space is
computed once per run (Hessians once, reused on resume), sized exactly and kept resident, and the
evaluator swaps levels in without recomputing or overwriting them."""

from __future__ import annotations

import pytest
import torch

from evo.compress.gptq import gptq_quantize
from evo.compress.gptq_batch import GptqJob, gptq_quantize_many
from evo.compress.settings import TensorSetting


def _hessian(features: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(400, features, generator=g) @ (torch.randn(features, features, generator=g) * 0.3
                                                    + torch.eye(features))) * (torch.rand(features, generator=g) + 0.1)
    return x.T @ x / x.shape[0]


@pytest.mark.parametrize("act_order,grid", [(True, "mse"), (False, "rtn"), (False, "mse")])
def test_batched_gptq_equals_per_tensor_gptq_bit_for_bit(act_order, grid):
    features = 96
    h = _hessian(features, 0)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(rows, features, generator=g) * 0.05 for rows in (48, 24, 70)]  # q, k, a ragged one
    settings = [TensorSetting(bits=b, group_size=32, rescale=r) for b in (2, 3, 4) for r in (0.9, 1.25)]
    settings += [TensorSetting(bits=3, group_size=32, symmetric=True), TensorSetting(bits=4, group_size=None),
                 TensorSetting(bits=3, group_size=32, zero_point="float"), TensorSetting(bits=8, group_size=64)]
    jobs = [GptqJob(w, s) for w in weights for s in settings]
    masked = weights[0].abs() < 0.02
    jobs += [GptqJob(weights[0], TensorSetting(bits=3, group_size=32, sparsity=0.25), masked)]
    batched = gptq_quantize_many(jobs, h, act_order=act_order, grid=grid)
    for job, got in zip(jobs, batched):
        alone = gptq_quantize(job.weight, job.setting, h, job.prune_mask, act_order=act_order, grid=grid)
        assert torch.equal(got.codes, alone.codes), job.setting.key()
        assert torch.equal(got.scales, alone.scales)
        assert (got.zeros is None) == (alone.zeros is None)
        if got.zeros is not None:
            assert torch.equal(got.zeros, alone.zeros)
    pruned = batched[-1]
    assert bool((pruned.codes[masked] == pruned.zeros.float().repeat_interleave(32, 1)[masked]).all())
