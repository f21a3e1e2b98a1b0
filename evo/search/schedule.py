"""EvoPress's selection schedule: stages of growing token counts, each re-scoring the best
survivors of the previous one, the last on the whole calibration set.

A schedule is written `TOKENS[,TOKENS:SURVIVORS]...`, e.g. `2048,16384:16,131072:4`: every offspring
is scored on 2,048 tokens, the best 16 on 16,384, the best 4 on 131,072 (the whole calibration set,
whose size must be exactly that: --samples × --seq-len). A stage of T tokens scores the first
T / seq_len calibration sequences in full (or, below one sequence, the first sequence's first T
tokens): prefixes, so the dense reference is sliced, never recomputed.

Stage numbers: the first stage is SCREEN_STAGE, the last FINAL_STAGE, those between 3, 4, ...
(the run journal keys evaluations by them).
"""

from __future__ import annotations

from dataclasses import dataclass

from evo.constants import FINAL_STAGE, SCREEN_STAGE
from evo.errors import EvoError

FIRST_MIDDLE_STAGE = 3


@dataclass(frozen=True)
class Stage:
    number: int  # the journal's stage number
    tokens: int
    survivors: int | None  # genomes re-scored here; None for the first stage (every offspring)


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """`2048,16384:16,131072:4` → ((2048, 0), (16384, 16), (131072, 4)); 0 = every offspring."""
    stages = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        tokens, _, survivors = part.partition(":")
        try:
            stage = (int(tokens), int(survivors) if survivors else 0)
        except ValueError:
            raise EvoError(f"--stages {text!r}: write TOKENS[:SURVIVORS] per stage, e.g. 2048,16384:16,131072:4") from None
        if (i == 0) != (stage[1] == 0):
            raise EvoError(f"--stages {text!r}: the first stage takes every offspring (no :SURVIVORS), every later "
                           "stage names its survivors")
        stages.append(stage)
    return tuple(stages)


def build_schedule(stages: tuple[tuple[int, int], ...], *, samples: int, seq_len: int) -> tuple[Stage, ...]:
    """Check a schedule against the calibration set and number its stages."""
    if len(stages) < 2:
        raise EvoError("--stages needs at least two stages (a screen and the final one)")
    tokens = [t for t, _ in stages]
    survivors = [s for _, s in stages[1:]]
    if any(t < 2 for t in tokens) or tokens != sorted(set(tokens)):
        raise EvoError(f"--stages token counts {tokens} must grow strictly from at least 2")
    if any(s < 1 for s in survivors) or survivors != sorted(survivors, reverse=True):
        raise EvoError(f"--stages survivor counts {survivors} must be positive and must not grow")
    if tokens[-1] != samples * seq_len:
        raise EvoError(f"the last stage of --stages scores the whole calibration set: {tokens[-1]} tokens asked, the "
                       f"set holds --samples {samples} × --seq-len {seq_len} = {samples * seq_len}; "
                       f"draw --samples {max(1, -(-tokens[-1] // seq_len))} sequences or change the last stage")
    for t in tokens[:-1]:
        if t > seq_len and t % seq_len:
            raise EvoError(f"--stages: {t} tokens is more than one sequence but not a whole number of "
                           f"--seq-len {seq_len} sequences")
    numbers = [SCREEN_STAGE, *range(FIRST_MIDDLE_STAGE, FIRST_MIDDLE_STAGE + len(stages) - 2), FINAL_STAGE]
    return tuple(Stage(n, t, s or None) for n, (t, s) in zip(numbers, stages))


def stage_shape(stage: Stage, seq_len: int) -> tuple[int, int]:
    """(sequences, tokens per sequence) a stage scores."""
    if stage.tokens <= seq_len:
        return 1, stage.tokens
    return stage.tokens // seq_len, seq_len
