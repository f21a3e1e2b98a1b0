"""Genome operators shared by every engine: repair to the budget, EvoPress-style level moves,
random sampling. Pure functions of (genome, problem, rng): deterministic for a seeded rng.
"""

from __future__ import annotations

import random

from evo.search.engines.base import Genome, Problem
from evo.errors import EvoError

SHRINK_KINDS = ("bits", "embedding_bits", "head_bits")  # a lower index is fewer bytes


def count_drops(genome: Genome, problem: Problem) -> int:
    return sum(1 for gene, value in zip(problem.genes, genome) if gene.kind == "drop" and gene.choices[value] == "layer")


def fix_drops(genome: list[int], problem: Problem, rng: random.Random) -> None:
    """Make exactly `fixed_drops` layers dropped (EvoP), changing as few genes as possible."""
    if problem.fixed_drops is None:
        return
    drop_genes = [i for i, gene in enumerate(problem.genes) if gene.kind == "drop"]
    dropped = [i for i in drop_genes if problem.genes[i].choices[genome[i]] == "layer"]
    kept = [i for i in drop_genes if problem.genes[i].choices[genome[i]] != "layer"]
    while len(dropped) > problem.fixed_drops:
        i = dropped.pop(rng.randrange(len(dropped)))
        genome[i] = problem.genes[i].choices.index("none")
    while len(dropped) < problem.fixed_drops:
        i = kept.pop(rng.randrange(len(kept)))
        genome[i] = problem.genes[i].choices.index("layer")
        dropped.append(i)


def keep_a_layer(genome: list[int], problem: Problem, rng: random.Random) -> None:
    """A model needs at least one decoder layer: when every layer is dropped, keep a random one."""
    drop_genes = [i for i, gene in enumerate(problem.genes) if gene.kind == "drop"]
    if drop_genes and all(problem.genes[i].choices[genome[i]] == "layer" for i in drop_genes):
        i = rng.choice(drop_genes)
        genome[i] = problem.genes[i].choices.index("none")


def repair(genome: Genome, problem: Problem, rng: random.Random) -> Genome:
    """Bring a genome under budget by lowering bit-widths one level at a time, on a random gene
    each step; only when every width is at its lowest, raise sparsity. Drops are left to the
    search: they cost quality in jumps."""
    fixed = list(genome)
    fix_drops(fixed, problem, rng)
    keep_a_layer(fixed, problem, rng)
    size = problem.size_of(tuple(fixed))
    while size > problem.budget_bytes:
        candidates = [i for i, gene in enumerate(problem.genes) if gene.kind in SHRINK_KINDS and fixed[i] > 0]
        if not candidates:
            candidates = [i for i, gene in enumerate(problem.genes)
                          if gene.kind == "sparsity" and fixed[i] < len(gene.choices) - 1]
            if candidates:
                i = rng.choice(candidates)
                fixed[i] += 1
                size = problem.size_of(tuple(fixed))
                continue
            raise EvoError(
                f"no genome of this space fits {problem.budget_bytes / 1e6:.3f} MB "
                f"(this one is {size / 1e6:.3f} MB at the lowest bit-widths): raise --budget-mb"
            )
        i = rng.choice(candidates)
        fixed[i] -= 1
        size = problem.size_of(tuple(fixed))
    return tuple(fixed)


def fill(genome: Genome, problem: Problem, rng: random.Random, tries: int = 8) -> Genome:
    """Spend what the budget leaves: raise random bit-widths one level while the genome still
    fits, giving up after `tries` raises that would not fit. Keeps offspring near the budget."""
    filled = list(genome)
    failures = 0
    while failures < tries:
        candidates = [i for i, gene in enumerate(problem.genes)
                      if gene.kind in SHRINK_KINDS and filled[i] < len(gene.choices) - 1]
        if not candidates:
            break
        i = rng.choice(candidates)
        filled[i] += 1
        if problem.size_of(tuple(filled)) > problem.budget_bytes:
            filled[i] -= 1
            failures += 1
    return tuple(filled)


def level_move(genome: Genome, problem: Problem, rng: random.Random) -> Genome:
    """EvoPress's level switch: one bits gene up one level and another down one level, so the
    size stays near the budget while the allocation moves."""
    bits_genes = [i for i, gene in enumerate(problem.genes) if gene.kind == "bits" and len(gene.choices) > 1]
    if len(bits_genes) < 2:
        return genome
    moved = list(genome)
    up = [i for i in bits_genes if moved[i] < len(problem.genes[i].choices) - 1]
    down = [i for i in bits_genes if moved[i] > 0]
    if up and down:
        i = rng.choice(up)
        j = rng.choice([k for k in down if k != i] or down)
        if i != j:
            moved[i] += 1
            moved[j] -= 1
    return tuple(moved)


def drop_swap(genome: Genome, problem: Problem, rng: random.Random) -> Genome:
    """EvoP's move: keep one dropped layer and drop a kept one (same count of drops)."""
    drop_genes = [i for i, gene in enumerate(problem.genes) if gene.kind == "drop" and "layer" in gene.choices]
    dropped = [i for i in drop_genes if problem.genes[i].choices[genome[i]] == "layer"]
    kept = [i for i in drop_genes if problem.genes[i].choices[genome[i]] == "none"]
    if not dropped or not kept:
        return genome
    moved = list(genome)
    i, j = rng.choice(dropped), rng.choice(kept)
    moved[i] = problem.genes[i].choices.index("none")
    moved[j] = problem.genes[j].choices.index("layer")
    return tuple(moved)


DROP_CHANGES_PER_CHILD = 0.2  # expected drop-gene flips per offspring: a drop is a large step


def resample_genes(genome: Genome, problem: Problem, rng: random.Random, rate: float) -> Genome:
    """Each gene other than bits (and drops under a fixed count) redrawn with probability `rate`;
    a drop gene flips with a probability that makes DROP_CHANGES_PER_CHILD flips per child."""
    mutated = list(genome)
    drop_genes = sum(1 for gene in problem.genes if gene.kind == "drop" and len(gene.choices) > 1)
    for i, gene in enumerate(problem.genes):
        if len(gene.choices) < 2 or gene.kind == "bits":
            continue
        if gene.kind == "drop":
            if problem.fixed_drops is not None or rng.random() >= DROP_CHANGES_PER_CHILD / drop_genes:
                continue
            mutated[i] = 0 if mutated[i] else rng.randrange(1, len(gene.choices))
        elif rng.random() < rate:
            mutated[i] = rng.randrange(len(gene.choices))
    return tuple(mutated)


def random_genome(problem: Problem, rng: random.Random) -> Genome:
    """A random genome with no drops except EvoP's fixed count, repaired, then filled to the budget."""
    genome = []
    for gene in problem.genes:
        if gene.kind == "drop":
            genome.append(0)
        else:
            genome.append(rng.randrange(len(gene.choices)))
    return fill(repair(tuple(genome), problem, rng), problem, rng)


def extreme_genome(problem: Problem, *, smallest: bool) -> Genome:
    """The smallest genome repair can reach (lowest widths, highest sparsity, EvoP's drops) or the
    largest one (highest widths, no sparsity, no drops) — the budget's sensible range."""
    genome = []
    for gene in problem.genes:
        last = len(gene.choices) - 1
        if gene.kind in SHRINK_KINDS:
            genome.append(0 if smallest else last)
        elif gene.kind == "sparsity":
            genome.append(last if smallest else 0)
        elif gene.kind == "rescale":
            genome.append(gene.choices.index(1.0) if 1.0 in gene.choices else 0)
        else:
            genome.append(0)
    fixed = list(genome)
    fix_drops(fixed, problem, random.Random(0))  # all drop genes are equal in size: any K will do
    return tuple(fixed)


def warm_start(problem: Problem, rng: random.Random, size: int) -> list[Genome]:
    """A first population: seeds from a file, then uniform genomes at every bit-width that fits and
    the next one repaired down to the budget, then random repaired genomes."""
    chosen: list[Genome] = []

    def add(genome: Genome) -> None:
        genome = repair(genome, problem, rng)
        if genome not in chosen:
            chosen.append(genome)

    for seed_genome in problem.seeds:
        add(tuple(seed_genome))
    bits_gene = next((g for g in problem.genes if g.kind == "bits"), None)
    if bits_gene is not None:
        for level in reversed(range(len(bits_gene.choices))):
            if len(chosen) >= size:
                break
            uniform = tuple(level if gene.kind == "bits" else _uniform_value(gene) for gene in problem.genes)
            add(uniform)
            if problem.size_of(uniform) <= problem.budget_bytes:
                break  # the largest uniform width that fits is in; narrower ones are dominated
    attempts = 0
    while len(chosen) < size and attempts < 50 * size:
        add(random_genome(problem, rng))
        attempts += 1
    return chosen[:size]


def _uniform_value(gene) -> int:
    """A uniform configuration's other genes: widest embedding/head, no rescale, no sparsity or drop."""
    if gene.kind in ("embedding_bits", "head_bits"):
        return len(gene.choices) - 1
    if gene.kind == "rescale" and 1.0 in gene.choices:
        return gene.choices.index(1.0)
    return 0
