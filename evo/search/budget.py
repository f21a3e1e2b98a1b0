"""The budget's reachable range: the smallest and largest artifact a space can produce for a model.

It needs only the weights and the space, so `evo search` checks a budget right after loading the
model, before CCDS, statistics or the dense reference, and before it creates a run directory.
The early range is an estimate from a sample of each tensor's rows; activation-aware pruning
(wanda, linf) needs statistics from the calibration set, so uniform statistics stand in (wanda
becomes magnitude pruning, same zero count). Only a budget clearly beyond the estimate is refused
early; the exact check follows once the statistics exist, before the dense reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from evo.constants import MB
from evo.errors import EvoError
# How far the early estimate may be from the exact size (row sampling, stand-in statistics,
# manifest length); a budget within it of an estimated bound waits for the exact check.
STAND_IN_TOLERANCE = 0.10
# The early estimate compresses this fraction of each tensor's rows and twice as many (3/64 of a
# full size pass), and extrapolates linearly (frame headers are a fixed cost).
SAMPLED_ROWS = 1 / 64
MIN_SAMPLED_ROWS = 16
MANIFEST_BYTES_PER_TENSOR = 600  # a manifest entry: name, shape, setting, 3 frames with sha256


@dataclass(frozen=True)
class BudgetRange:
    smallest: int  # bytes of the smallest artifact the space can reach
    largest: int  # bytes of the largest one
    exact: bool  # False when a bound was measured with stand-in activation statistics


def extreme_configs(space, info):
    """The smallest and the largest config of a space (as the engines' repair reaches them)."""
    from evo.search.engines import Problem
    from evo.search.space import extreme_genome

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


def early_budget_range(space, loaded, size_cache=None, *, row_fraction: float = SAMPLED_ROWS) -> BudgetRange:
    """The range before calibration, estimated in seconds: every stored tensor of the two extreme
    configs is compressed and encoded on an evenly spaced sample of its rows (quantization groups
    lie within a row, so a sample's codes are exactly those rows' codes) and its bytes scaled up;
    the metadata files are measured exactly. Not exact (exact=False): only a budget beyond
    STAND_IN_TOLERANCE of it is refused; `budget_range` decides the rest once statistics exist.
    `size_cache` is unused (kept for callers that pass one)."""
    from evo.compress.artifact import ArtifactMetadata

    if getattr(space, "format", None) == "gguf":  # exact and cheap: sizes come from types alone
        from evo.search.gguf_space import GGUFSearchSize

        return budget_range(space, loaded, GGUFSearchSize(loaded))
    smallest, largest = extreme_configs(space, loaded.info)
    weights = dict(loaded.model.named_parameters())
    stats = stand_in_stats(loaded.info)
    metadata = ArtifactMetadata(loaded.model, loaded.tokenizer, loaded.info)
    sizes = [_estimated_bytes(config, loaded.info, weights, stats, metadata, row_fraction)
             for config in (smallest, largest)]
    return BudgetRange(sizes[0], sizes[1], exact=False)


def _estimated_bytes(config, info, weights, stats, metadata, row_fraction: float) -> int:
    from dataclasses import replace

    import torch

    from evo.compress import compress_tensor
    from evo.compress.plan import plan_model
    from evo.compress.coding import encode_tensor

    plan = plan_model(info, config)
    tensor_bytes = 0.0
    with torch.no_grad():
        for tensor in plan.tensors:
            weight = weights[tensor.source].detach().to("cpu", torch.float32)
            setting = tensor.setting
            act = stats.get(tensor.source) if setting.quantized and setting.sparsity > 0 else None
            if setting.quantized and setting.quantizer == "gptq":  # no Hessians yet: rtn's codes stand in
                setting = replace(setting, quantizer="rtn")

            def encoded_bytes(take: int) -> int:
                index = torch.linspace(0, weight.shape[0] - 1, take).round().long().unique()
                return encode_tensor(compress_tensor(weight[index].contiguous(), setting, act).quantized
                                     ).compressed_bytes

            rows = weight.shape[0]
            take = max(MIN_SAMPLED_ROWS, round(rows * row_fraction))
            if 2 * take >= rows:
                tensor_bytes += encoded_bytes(rows)
                continue
            # bytes = frame headers (fixed) + rows x bytes per row: two samples separate the two
            small, large = encoded_bytes(take), encoded_bytes(2 * take)
            per_row = (large - small) / take
            tensor_bytes += max(small - per_row * take, 0.0) + per_row * rows
    files = metadata.files(plan.kept_layers, 0)
    return int(tensor_bytes + sum(files.values()) + MANIFEST_BYTES_PER_TENSOR * len(plan.tensors))


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
