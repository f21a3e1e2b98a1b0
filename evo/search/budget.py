"""The budget's reachable range: the smallest and largest artifact a space can produce for a model.

It needs only the weights and the space, so `evo search` checks a budget right after loading the
model, before CCDS, statistics or the dense reference, and before it creates a run directory.
Activation-aware pruning (wanda, linf) needs statistics that come from the calibration set; before
they exist, uniform statistics stand in (wanda becomes magnitude pruning, same zero count), so that
bound is approximate and only a budget clearly beyond it is refused early; the exact check follows
once the statistics exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from evo.errors import EvoError

MB = 1_000_000
# How far a stand-in bound may be from the exact one (measured: <0.5 % on SmolLM2 and the tiny
# test models); a budget within it of an approximate bound waits for the exact check.
STAND_IN_TOLERANCE = 0.05


@dataclass(frozen=True)
class BudgetRange:
    smallest: int  # bytes of the smallest artifact the space can reach
    largest: int  # bytes of the largest one
    exact: bool  # False when a bound was measured with stand-in activation statistics


def extreme_configs(space, info):
    """The smallest and the largest config of a space (as the engines' repair reaches them)."""
    from evo.search.engines import Problem
    from evo.search.engines.operators import extreme_genome

    genes = space.genes(info)
    problem = Problem(genes=genes, size_of=lambda genome: 0, budget_bytes=0, fixed_drops=space.fixed_drops)
    return tuple(space.decode(extreme_genome(problem, smallest=smallest), info) for smallest in (True, False))


def stand_in_stats(info):
    """Uniform activation statistics for every decoder linear: activation-aware pruning under them
    prunes by magnitude, which zeroes as many weights as it would with the real statistics."""
    import torch

    from evo.compress.prune import ActivationStats

    return {linear.name: ActivationStats(torch.ones(linear.shape[1]), torch.ones(linear.shape[1]))
            for layer in info.layers for linear in layer.linears}


def budget_range(space, loaded, size_model) -> BudgetRange:
    """Sizes of the space's extreme configs under `size_model` (exact when its stats are real)."""
    smallest, largest = extreme_configs(space, loaded.info)
    return BudgetRange(size_model.artifact_bytes(smallest), size_model.artifact_bytes(largest), exact=True)


def early_budget_range(space, loaded, size_cache) -> BudgetRange:
    """The range before calibration: exact where the extreme configs need no statistics."""
    from evo.compress.export import needs_stats
    from evo.compress.sizemodel import SizeModel

    smallest, largest = extreme_configs(space, loaded.info)
    stand_in = needs_stats(smallest, loaded) or needs_stats(largest, loaded)
    stats = stand_in_stats(loaded.info) if stand_in else None
    size_model = SizeModel.for_model(loaded, size_cache, stats=stats)
    return BudgetRange(size_model.artifact_bytes(smallest), size_model.artifact_bytes(largest), exact=not stand_in)


def check_budget(budget_bytes: int, reach: BudgetRange, *, fixed_drops: int | None = None) -> None:
    """Refuse a budget outside the space's reach, saying the reachable sizes. With an approximate
    range, only a budget beyond the tolerance is refused (the exact check comes later)."""
    slack = 0.0 if reach.exact else STAND_IN_TOLERANCE
    about = "" if reach.exact else "about "
    if budget_bytes < reach.smallest * (1 - slack):
        raise EvoError(
            f"budget {budget_bytes / MB:.3f} MB is below the smallest artifact this space can reach, "
            f"{about}{reach.smallest / MB:.3f} MB: raise --budget-mb or use a space with lower bit-widths"
        )
    if fixed_drops is None and budget_bytes >= reach.largest * (1 + slack):
        raise EvoError(
            f"budget {budget_bytes / MB:.3f} MB is at or above the largest artifact of this space, "
            f"{about}{reach.largest / MB:.3f} MB: everything fits, nothing to search; lower --budget-mb"
        )
