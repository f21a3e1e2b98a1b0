"""What a running search reports about itself: the evaluations planned per stage, a time-remaining
estimate from each stage's measured rate, and the size of the space's size table. (Its best point is
evo.search.store.best_under_budget, the one `evo export` picks.)
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import deque
from collections.abc import Callable

from evo.constants import FINAL_STAGE, SCREEN_STAGE

RATE_WINDOW = 32  # evaluations per stage whose wall times give its rate (median: robust to a slow first one)


def planned_by_stage(engine: str, population: int, generations: int, multi_stage: bool) -> dict[int, int]:
    """Evaluations an uninterrupted run makes at each stage: the initial population (final stage),
    then per generation DEAP's screened offspring (stage 1) and survivors re-scored (final stage),
    or one batch at the final stage (random, optuna)."""
    if engine != "deap":
        return {FINAL_STAGE: population * (generations + 1)}
    offspring = 2 * population
    if not multi_stage:
        return {FINAL_STAGE: population + generations * offspring}
    survivors = max(1, population // 2)
    return {SCREEN_STAGE: generations * offspring, FINAL_STAGE: population + generations * survivors}


class StageClock:
    """Seconds per evaluation at each stage, measured as the wall time between consecutive
    evaluations of this process (so the engine's own work between them counts), and the time the
    planned evaluations still need at those rates.

    A stage not yet measured borrows the other stage's rate scaled by its share of tokens
    (a screen reads screen_sequences × screen_tokens of samples × seq_len).
    """

    def __init__(self, tokens_per_stage: dict[int, int], clock: Callable[[], float] = time.perf_counter) -> None:
        self.tokens = dict(tokens_per_stage)
        self.clock = clock
        self.intervals: dict[int, deque[float]] = {stage: deque(maxlen=RATE_WINDOW) for stage in self.tokens}
        self._last = clock()

    def restart(self) -> None:
        """Measure the next interval from now (after work that is no evaluation's, like setup)."""
        self._last = self.clock()

    def tick(self, stage: int) -> None:
        """One evaluation of `stage` finished in this process."""
        now = self.clock()
        self.intervals.setdefault(stage, deque(maxlen=RATE_WINDOW)).append(now - self._last)
        self._last = now

    def seconds_per_evaluation(self, stage: int) -> float | None:
        measured = self.intervals.get(stage)
        if measured:
            return statistics.median(measured)
        for other, values in self.intervals.items():
            if values and self.tokens.get(other) and self.tokens.get(stage):
                return statistics.median(values) * self.tokens[stage] / self.tokens[other]
        return None

    def eta_seconds(self, remaining: dict[int, int]) -> float | None:
        total = 0.0
        for stage, count in remaining.items():
            if count <= 0:
                continue
            seconds = self.seconds_per_evaluation(stage)
            if seconds is None:
                return None
            total += count * seconds
        return total


def size_table_entries(space, info) -> int:
    """How many (tensor, setting) sizes the space can ask for on this model: every decoder linear at
    every combination of its unit genes (bits × rescale × sparsity × ...), the embedding (and an untied head) at each of their widths,
    and every other tensor kept as it is. The search fills this table on demand, never all of it."""
    names = [name for name, _ in space.unit_genes]
    unit_settings = len({space.setting(dict(zip(names, combination)))
                         for combination in itertools.product(*(values for _, values in space.unit_genes))})
    entries = 0
    for layer in info.layers:
        entries += len(layer.linears) * unit_settings + len(layer.other_tensors)
    for tensor in info.non_decoder:
        if tensor.role == "embedding":
            entries += len(space.embedding_bits)
        elif tensor.role == "head" and not info.tied_embeddings:
            entries += len(space.head_bits)
        else:
            entries += 1
    return entries
