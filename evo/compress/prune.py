"""Unstructured pruning: in every output row, remove the round(sparsity * in) lowest-scoring weights.

Scores are |W| (magnitude), |W|·‖X_j‖₂ (wanda) or |W|·max|X_j| (linf) from per-input-channel stats.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from evo.compress.registry import CompressionState, register_operator
from evo.compress.settings import PRUNE_CRITERIA
from evo.errors import EvoError

if TYPE_CHECKING:
    from evo.compress.settings import TensorSetting

# Which ActivationStats field each criterion multiplies |W| by; None needs no statistics.
CRITERION_STATISTIC: dict[str, str | None] = {"magnitude": None, "wanda": "l2", "linf": "absmax"}
assert set(CRITERION_STATISTIC) == set(PRUNE_CRITERIA)


def needs_stats(setting: TensorSetting) -> bool:
    """Whether compressing with this setting needs activation statistics (wanda, linf pruning)."""
    return setting.quantized and setting.sparsity > 0.0 and CRITERION_STATISTIC[setting.prune_criterion] is not None


@dataclass(frozen=True)
class ActivationStats:
    """Per-input-channel statistics of a linear layer's inputs over the calibration tokens.

    l2: ‖X_j‖₂ over all tokens, shape [in]; absmax: max_t |X_tj|, shape [in].
    """

    l2: torch.Tensor
    absmax: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("l2", "absmax"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.ndim != 1:
                raise EvoError(f"ActivationStats.{name} must be a 1-D tensor [in_features]")
            if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
                raise EvoError(f"ActivationStats.{name} must be finite and non-negative")
        if self.l2.shape != self.absmax.shape:
            raise EvoError(
                f"ActivationStats.l2 {tuple(self.l2.shape)} and absmax {tuple(self.absmax.shape)} differ in shape"
            )

    def digest(self) -> str:
        """A short hash of the statistics, for cache keys of activation-aware settings."""
        h = hashlib.sha256()
        for value in (self.l2, self.absmax):
            h.update(value.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def pruned_per_row(in_features: int, sparsity: float) -> int:
    """Weights removed from each row: round(sparsity * in), Python rounding (half to even)."""
    return int(round(sparsity * in_features))


def criterion_act_norm(criterion: str, act_stats: ActivationStats | None) -> torch.Tensor | None:
    """The statistic `criterion` multiplies |W| by, or None for magnitude."""
    if criterion not in CRITERION_STATISTIC:
        raise EvoError(f"prune criterion {criterion!r} is unknown; use one of {list(CRITERION_STATISTIC)}")
    statistic = CRITERION_STATISTIC[criterion]
    if statistic is None:
        return None
    if act_stats is None:
        raise EvoError(
            f"prune criterion {criterion!r} needs activation statistics (calibration); "
            "pass act_stats or use prune_criterion='magnitude'"
        )
    return getattr(act_stats, statistic)


def prune_mask(
    weight: torch.Tensor,
    sparsity: float,
    criterion: str = "magnitude",
    act_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask [out, in], True = pruned; exactly round(sparsity * in) True per row.

    act_norm is the per-input-channel statistic for activation-aware criteria ([in]): the L2
    norm for wanda, the max |x| for linf. Ties go to the lower column index (stable sort), so the
    mask is deterministic.
    """
    if weight.ndim != 2:
        raise EvoError(f"pruning needs a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if not 0.0 <= sparsity < 1.0:
        raise EvoError(f"sparsity={sparsity!r} must be in [0, 1)")
    if criterion not in CRITERION_STATISTIC:
        raise EvoError(f"prune criterion {criterion!r} is unknown; use one of {list(CRITERION_STATISTIC)}")
    out_features, in_features = weight.shape
    score = weight.detach().abs().to(torch.float32)
    if CRITERION_STATISTIC[criterion] is not None:
        if act_norm is None:
            raise EvoError(
                f"prune criterion {criterion!r} needs activation statistics (calibration); "
                "pass act_norm or use 'magnitude'"
            )
        if act_norm.shape != (in_features,):
            raise EvoError(
                f"act_norm has shape {tuple(act_norm.shape)}, expected ({in_features},) for weight "
                f"{tuple(weight.shape)}"
            )
        score = score * act_norm.detach().to(device=score.device, dtype=torch.float32)[None, :]
    if not bool(torch.isfinite(score).all()):
        raise EvoError("pruning scores contain NaN or inf; check the weight and activation statistics")
    k = pruned_per_row(in_features, sparsity)
    if k == 0:
        return torch.zeros(out_features, in_features, dtype=torch.bool, device=weight.device)
    return _lowest_k(score, k).to(weight.device)


def _lowest_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k lowest scores per row, ties to the lower column: what a stable argsort
    gives, from a partition (several times faster than sorting every row)."""
    s = score.cpu().numpy()
    kth = np.partition(s, k - 1, axis=1)[:, k - 1 : k]
    below = s < kth
    tied = s == kth
    # Among scores equal to the k-th, take the leftmost ones until the row has exactly k.
    missing = k - below.sum(axis=1, keepdims=True)
    mask = below | (tied & (np.cumsum(tied, axis=1) <= missing))
    return torch.from_numpy(mask)


@register_operator("prune", order=10)
def _prune_operator(state: CompressionState) -> CompressionState:
    setting = state.setting
    if not setting.quantized or setting.sparsity == 0.0:
        return state
    act_norm = criterion_act_norm(setting.prune_criterion, state.act_stats)
    mask = prune_mask(state.weight, setting.sparsity, setting.prune_criterion, act_norm)
    return replace(state, prune_mask=mask)
