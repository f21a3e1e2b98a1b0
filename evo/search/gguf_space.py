"""The GGUF search space (evo/search/spaces/gguf.toml): genes are llama.cpp tensor types per decoder
layer and group (attention / MLP) or per tensor role, the token embedding (and an untied output) apart,
and optional whole-layer drops; size is the exact GGUF file's bytes; quality is evo's KL with the
dequantized GGUF weights (what llama.cpp computes with) swapped into the resident model.

It plugs into the search where a SearchSpace does (SearchSpace.load returns a GGUFSpace for a file
with `format = "gguf"`; loop.py asks `space.format`):

- genome layout: one gene per unit (kind "bits": its choices are type names ordered by the unit's
  bytes, so repair / fill / level moves work as for bit-widths), "embedding_bits"/"head_bits" genes
  of type names, "drop" genes of ("none", "layer"). A type a tensor's rows do not allow takes
  llama.cpp's fallback (Q3_K on 576-wide rows → Q4_0); choices that give a unit the same types are
  merged, so every choice of a gene is a distinct assignment.
- GGUFConfig: the genome decoded, type per parameter name and the dropped layers.
- GGUFSearchSize: the file's bytes without writing it: header, metadata and tensor infos once per
  set of kept layers (names are renumbered after drops), then one memoised lookup per tensor.
- GGUFEvaluator: the search's Evaluator with GGUF levels (evo.gguf.levels.gguf_level, a pure
  (weight, type, importance, Hessian) → dequantized weight) in place of compress_tensor's.
- quantizer: "imatrix" (evo's encoders, fits weighted by the run's imatrix) or "gptq" (the same
  encoders with GPTQ's error feedback, evo.gguf.gptq, on the run's Hessians of the decoder linears'
  inputs, collected once per run into RUN/hessians as for evo's gptq spaces; embedding and output
  stay imatrix). Sizes do not depend on it; export encodes with the same function and inputs.
- recipe seeds: llama.cpp's Q3_K_S / Q3_K_M / Q4_K_M ... (with and without
  --token-embedding-type) as genomes, in the first population when they fit the budget.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from evo.errors import EvoError
from evo.gguf import quants
from evo.types import ATTENTION_ROLES, MLP_ROLES, Gene, ModelInfo

FORMAT = "gguf"
GRANULARITIES = ("group", "tensor")
IMATRIX_FILE = "imatrix.safetensors"
SEEDS_FILE = "gguf_seeds.json"
_TOP_KEYS = ("format", "name", "description", "granularity", "quantizer", "genes", "embedding", "head", "structure",
             "seeds")
QUANTIZERS = ("imatrix", "gptq")  # evo's encoders as they are, or with GPTQ's error feedback (evo.gguf.gptq)
_OTHER_LINEAR_TYPE = "Q8_0"  # a decoder linear of neither group (none in Llama): llama.cpp's largest 8-bit type


def _types(values: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not values:
        raise EvoError(f"{source}: key {key} must be a non-empty list of GGUF types")
    names = tuple(quants.quant_type(v).name for v in values)
    if len(set(names)) != len(names):
        raise EvoError(f"{source}: key {key} lists a type twice")
    return names


@lru_cache(maxsize=None)
def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    return quants.tensor_nbytes(shape, qtype)


def effective_type(shape: tuple[int, ...], qtype: str) -> str:
    """The type a 2-D tensor of `shape` gets when `qtype` is asked: llama.cpp's fallback when its rows
    do not divide the block (evo.gguf.recipes.fallback_type)."""
    from evo.gguf.recipes import fallback_type

    return fallback_type(shape, qtype)


@dataclass(frozen=True)
class GGUFConfig:
    """A GGUF candidate: the type of every 2-D weight (by model parameter name) and the dropped layers."""

    types: tuple[tuple[str, str], ...]
    dropped: tuple[int, ...] = ()

    @property
    def drops(self) -> dict[int, str]:
        return {i: "layer" for i in self.dropped}

    @property
    def type_of(self) -> dict[str, str]:
        return dict(self.types)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "drop_layers": list(self.dropped), "types": dict(self.types)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GGUFConfig":
        if data.get("format") != FORMAT:
            raise EvoError("not a GGUF config (format = \"gguf\" missing)")
        return cls(types=tuple((str(k), quants.quant_type(v).name) for k, v in dict(data["types"]).items()),
                   dropped=tuple(sorted(int(i) for i in data.get("drop_layers", []))))

    def to_toml(self) -> str:
        lines = ['# a GGUF configuration found by evo search: llama.cpp type per weight (model parameter names)',
                 f'format = "{FORMAT}"', f"drop_layers = {list(self.dropped)}", "", "[types]"]
        lines += [f'"{name}" = "{qtype}"' for name, qtype in self.types]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Unit:
    name: str  # "attention", "mlp" or a role
    layer: int
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (parameter name, shape)


@dataclass(frozen=True)
class GGUFSpace:
    """A search space of llama.cpp types; see evo/search/spaces/gguf.toml for the file format."""

    name: str
    description: str
    granularity: str
    types: tuple[str, ...]  # decoder linears
    embedding_types: tuple[str, ...]
    head_types: tuple[str, ...]
    drops: tuple[str, ...]  # ("none",) or ("none", "layer")
    seed_recipes: tuple[str, ...] = ()
    seed_token_embedding_types: tuple[str, ...] = ("",)  # "" = the recipe's own embedding type
    fixed_drops: int | None = None
    quantizer: str = "imatrix"
    format: str = FORMAT

    def __post_init__(self) -> None:
        from evo.gguf.recipes import RECIPES

        if self.quantizer not in QUANTIZERS:
            raise EvoError(f"search space key quantizer = {self.quantizer!r}: use one of {list(QUANTIZERS)} "
                           "for a GGUF space")
        if self.granularity not in GRANULARITIES:
            raise EvoError(f"search space key granularity = {self.granularity!r}: use one of {list(GRANULARITIES)} "
                           "for a GGUF space")
        if "none" not in self.drops or not set(self.drops) <= {"none", "layer"}:
            raise EvoError('a GGUF space\'s structure.drop is ["none"] or ["none", "layer"] (a GGUF block cannot '
                           "lose only its attention or MLP)")
        for recipe in self.seed_recipes:
            if recipe not in RECIPES:
                raise EvoError(f"search space key seeds.recipes has {recipe!r}: use llama.cpp recipes ({', '.join(RECIPES)})")

    # SearchSpace's attributes the loop reads: no bit-widths (no uniform points), no size-table genes
    bits: tuple = ()

    # --- genome layout ---------------------------------------------------------------------------

    def units(self, info: ModelInfo) -> list[_Unit]:
        units = []
        for layer in info.layers:
            if self.granularity == "group":
                groups = (("attention", ATTENTION_ROLES), ("mlp", MLP_ROLES))
            else:
                groups = tuple((lin.role, (lin.role,)) for lin in layer.linears
                               if lin.role in ATTENTION_ROLES + MLP_ROLES)
            for name, roles in groups:
                tensors = tuple((lin.name, tuple(lin.shape)) for lin in layer.linears if lin.role in roles)
                if tensors:
                    units.append(_Unit(name, layer.index, tensors))
        return units

    @staticmethod
    def _choices(tensors: Sequence[tuple[str, tuple[int, ...]]], types: Sequence[str]) -> tuple[str, ...]:
        """Distinct type assignments of these tensors, by bytes ascending; each named by the type asked
        (the type itself when no tensor needs a fallback for it)."""
        by_assignment: dict[tuple[str, ...], str] = {}
        for qtype in types:
            assignment = tuple(effective_type(shape, qtype) for _, shape in tensors)
            exact = all(t == qtype for t in assignment)
            if assignment not in by_assignment or exact:
                by_assignment.setdefault(assignment, qtype)
                if exact:
                    by_assignment[assignment] = qtype
        order = list(by_assignment.items())
        order.sort(key=lambda item: sum(_nbytes(shape, t) for (_, shape), t in zip(tensors, item[0])))
        return tuple(name for _, name in order)

    def genes(self, info: ModelInfo) -> tuple[Gene, ...]:
        return _layout(self, info)[0]

    def _build_genes(self, info: ModelInfo) -> tuple[tuple[Gene, ...], tuple]:
        """The genes, and per gene the tensors it types with each choice's per-tensor types (None for drops)."""
        genes: list[Gene] = []
        typed: list = []
        units = self.units(info)

        def add(gene: Gene, tensors) -> None:
            genes.append(gene)
            typed.append(None if tensors is None else (
                tensors, tuple(tuple(effective_type(shape, c) for _, shape in tensors) for c in gene.choices)))

        for index, unit in enumerate(units):
            add(Gene(f"layer{unit.layer}.{unit.name}.type", "bits", self._choices(unit.tensors, self.types),
                     index, unit.layer), unit.tensors)
            if index + 1 == len(units) or units[index + 1].layer != unit.layer:
                add(Gene(f"layer{unit.layer}.drop", "drop", self.drops, None, unit.layer), None)
        for tensor in info.non_decoder:
            tensors = ((tensor.name, tuple(tensor.shape)),)
            if tensor.role == "embedding":
                add(Gene("embedding.type", "embedding_bits", self._choices(tensors, self.embedding_types)), tensors)
            elif tensor.role == "head" and not info.tied_embeddings:
                add(Gene("head.type", "head_bits", self._choices(tensors, self.head_types)), tensors)
        return tuple(genes), tuple(typed)

    def decode(self, genome: Sequence[int], info: ModelInfo) -> GGUFConfig:
        genes, typed, fixed, order = _layout(self, info)
        if len(genome) != len(genes):
            raise EvoError(f"genome has {len(genome)} genes but space {self.name!r} lays out {len(genes)} for this model")
        types: dict[str, str] = dict(fixed)
        dropped = []
        for gene, index, entry in zip(genes, genome, typed):
            if entry is None:
                if gene.choices[index] == "layer":
                    dropped.append(gene.layer)
                continue
            tensors, assignments = entry
            for (name, _), qtype in zip(tensors, assignments[index]):
                types[name] = qtype
        return GGUFConfig(types=tuple((name, types[name]) for name in order if name in types),
                          dropped=tuple(sorted(dropped)))

    def encode(self, config: GGUFConfig, info: ModelInfo, *, nearest: bool = False) -> tuple[int, ...] | None:
        """The genome of a config, or None when a unit's types are no choice of its gene. With
        `nearest`, such a unit takes the choice whose bytes are nearest the config's (recipe seeds in
        a group space, whose groups mix types)."""
        genes, typed, _, _ = _layout(self, info)
        wanted = config.type_of
        genome = []
        for gene, entry in zip(genes, typed):
            if entry is None:
                genome.append(gene.choices.index("layer") if gene.layer in config.dropped else 0)
                continue
            tensors, assignments = entry
            target = tuple(wanted.get(name) for name, _ in tensors)
            if target in assignments:
                genome.append(assignments.index(target))
            elif nearest and None not in target:
                size = sum(_nbytes(shape, t) for (_, shape), t in zip(tensors, target))
                sizes = [sum(_nbytes(shape, t) for (_, shape), t in zip(tensors, a)) for a in assignments]
                genome.append(min(range(len(sizes)), key=lambda i: (abs(sizes[i] - size), i)))
            else:
                return None
        return tuple(genome)

    def uniform_genome(self, info: ModelInfo, bits: int, **_) -> tuple[int, ...]:
        raise EvoError("a GGUF space has no uniform bit-widths")

    # --- files -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "name": self.name, "description": self.description, "granularity": self.granularity,
            **({"quantizer": self.quantizer} if self.quantizer != "imatrix" else {}),
            "genes": {"types": list(self.types)}, "embedding": {"types": list(self.embedding_types)},
            "head": {"types": list(self.head_types)}, "structure": {"drop": list(self.drops)},
            "seeds": {"recipes": list(self.seed_recipes),
                      "token_embedding_types": list(self.seed_token_embedding_types)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "search space") -> "GGUFSpace":
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise EvoError(f"{source}: key {unknown[0]} is unknown in a GGUF space; known keys are {list(_TOP_KEYS)}")
        tables = {}
        for key, allowed in (("genes", ("types",)), ("embedding", ("types",)), ("head", ("types",)),
                             ("structure", ("drop",)), ("seeds", ("recipes", "token_embedding_types"))):
            table = data.get(key, {})
            if not isinstance(table, Mapping):
                raise EvoError(f"{source}: key {key} must be a table")
            bad = sorted(set(table) - set(allowed))
            if bad:
                raise EvoError(f"{source}: key {key}.{bad[0]} is unknown; known keys are {[key + '.' + a for a in allowed]}")
            tables[key] = table
        if "types" not in tables["genes"]:
            raise EvoError(f"{source}: key genes.types is missing: list the llama.cpp types of the decoder weights")
        types = _types(tables["genes"]["types"], "genes.types", source)
        embedding = _types(tables["embedding"].get("types", list(types)), "embedding.types", source)
        head = _types(tables["head"].get("types", list(embedding)), "head.types", source)
        seeds = tables["seeds"]
        recipes = seeds.get("recipes", [])
        emb_seeds = seeds.get("token_embedding_types", [""])
        if not isinstance(recipes, list) or not isinstance(emb_seeds, list):
            raise EvoError(f"{source}: keys seeds.recipes and seeds.token_embedding_types are lists")
        drops = tables["structure"].get("drop", ["none"])
        try:
            return cls(name=str(data.get("name", Path(source).stem)), description=str(data.get("description", "")),
                       granularity=str(data.get("granularity", "tensor")), quantizer=str(data.get("quantizer", "imatrix")),
                       types=types, embedding_types=embedding,
                       head_types=head, drops=tuple(str(d) for d in (drops if isinstance(drops, list) else [drops])),
                       seed_recipes=tuple(str(r).upper() for r in recipes),
                       seed_token_embedding_types=tuple(quants.quant_type(e).name if e else "" for e in emb_seeds))
        except EvoError as exc:
            message = str(exc)
            raise EvoError(message if message.startswith(source) else f"{source}: {message}") from None

    # --- the loop's hooks --------------------------------------------------------------------------

    def seed_genomes(self, session) -> list[tuple[int, ...]]:
        """The space's llama.cpp recipes as genomes, those that fit the run's budget; written with
        their names and bytes to RUN/gguf_seeds.json."""
        seeds, records = [], []
        for recipe, emb, config in recipe_configs(self, session.loaded):
            genome = self.encode(config, session.loaded.info, nearest=True)
            size = session.size_of(genome)
            exact = self.decode(genome, session.loaded.info) == config
            fits = size <= session.spec.budget_bytes
            records.append({"recipe": recipe, "token_embedding_type": emb or None, "size_bytes": int(size),
                            "exact": exact, "fits": fits, "genome": list(genome)})
            if fits and genome not in seeds:
                seeds.append(genome)
        path = session.store.path(SEEDS_FILE)
        if not path.exists():
            session.store.write_json(SEEDS_FILE, {"seeds": records})
        return seeds


@lru_cache(maxsize=8)
def _layout(space: GGUFSpace, info: ModelInfo):
    """(genes, per gene its tensors and choices' types, fixed types of linears of neither group,
    the config's tensor order), once per (space, model)."""
    genes, typed = space._build_genes(info)
    fixed = {lin.name: effective_type(tuple(lin.shape), _OTHER_LINEAR_TYPE) for layer in info.layers
             for lin in layer.linears if lin.role not in ATTENTION_ROLES + MLP_ROLES}
    order = tuple([lin.name for layer in info.layers for lin in layer.linears] + [t.name for t in info.non_decoder])
    return genes, typed, tuple(fixed.items()), order


def recipe_configs(space: GGUFSpace, loaded) -> list[tuple[str, str, GGUFConfig]]:
    """(recipe, token embedding type or "", config) for each seed the space names, with imatrix
    (llama.cpp's rules change with it for IQ4_NL/Q4_0/Q5_0)."""
    from evo.gguf.recipes import recipe_types
    from evo.gguf.writer import plan_tensors

    config = loaded.model.config
    heads = int(config.num_attention_heads)
    tensors = plan_tensors(loaded)
    source_of = {t.name: t.source for t in tensors}
    out = []
    for recipe in space.seed_recipes:
        for emb in space.seed_token_embedding_types:
            types = recipe_types(recipe, [(t.name, t.shape) for t in tensors], n_head=heads,
                                 n_head_kv=int(getattr(config, "num_key_value_heads", None) or heads),
                                 has_imatrix=True, token_embedding_type=emb or None)
            by_source = {source_of[name]: qtype for name, qtype in types.items()}
            order = [lin.name for layer in loaded.info.layers for lin in layer.linears] + [
                t.name for t in loaded.info.non_decoder if t.name in by_source]
            out.append((recipe, emb, GGUFConfig(types=tuple((n, by_source[n]) for n in order))))
    return out


# --- size ---------------------------------------------------------------------------------------------


class GGUFSearchSize:
    """Exact GGUF file bytes of any GGUFConfig of a model, without writing: the metadata (header, KV
    pairs, tensor infos: type-independent) once per set of dropped layers, then a memoised lookup of
    each tensor's padded data bytes. Equals GGUFPlan.size() of the plan export writes (tests check
    it against written files)."""

    def __init__(self, loaded) -> None:
        from evo.gguf.size import HEADER_BYTES, kv_bytes
        from evo.gguf.writer import plan_gguf

        self.loaded = loaded
        plan = plan_gguf(loaded)  # metadata bytes do not depend on types or block count (fixed-width values)
        self.alignment = plan.alignment
        self._kv_bytes = HEADER_BYTES + sum(kv_bytes(kv) for kv in plan.metadata)
        self._layouts: dict[tuple[int, ...], tuple[int, tuple[tuple[str, tuple[int, ...]], ...]]] = {}
        self._checked: set[tuple[str, str]] = set()
        self.evaluated = 0
        self.hessians = None  # the run's HessianSet in a gptq space (build_gguf_evaluator)

    def layout(self, dropped: tuple[int, ...]) -> tuple[int, tuple[tuple[str, tuple[int, ...]], ...]]:
        """(fixed bytes, (source, shape) of every tensor in the file) for these dropped layers."""
        if dropped not in self._layouts:
            from evo.gguf.size import pad, tensor_info_bytes
            from evo.gguf.writer import plan_tensors

            tensors = plan_tensors(self.loaded, {i: "layer" for i in dropped})
            meta = self._kv_bytes + sum(tensor_info_bytes(t.name, len(t.shape)) for t in tensors)
            self._layouts[dropped] = (pad(meta, self.alignment), tuple((t.source, t.shape) for t in tensors))
        return self._layouts[dropped]

    def artifact_bytes(self, config: GGUFConfig) -> int:
        from evo.gguf.size import pad

        if not isinstance(config, GGUFConfig):
            raise EvoError(f"a GGUF size needs a GGUFConfig, got {type(config).__name__}")
        fixed, tensors = self.layout(tuple(config.dropped))
        types = config.type_of
        total = fixed
        for source, shape in tensors:
            qtype = types.get(source, "F32") if len(shape) == 2 else "F32"
            if (source, qtype) not in self._checked:  # one line naming the tensor, not a size error
                quants.check_allowed(source, tuple(shape), qtype)
                self._checked.add((source, qtype))
            total += pad(_nbytes(tuple(shape), qtype), self.alignment)
        self.evaluated += 1
        return total


# --- quality ------------------------------------------------------------------------------------------


def _evaluator_class():
    from evo.evaluate.evaluator import Evaluator

    class GGUFEvaluator(Evaluator):
        """The search's Evaluator with GGUF levels: a tensor's weight is gguf_level(original, type,
        imatrix, Hessian), cached by (tensor, type) like compress_tensor's levels; dropped layers are
        zeroed blocks (the identity of a pre-norm residual block, as the file without them).
        `hessians` (a HessianSet, gptq spaces): the decoder linears it holds are GPTQ-encoded."""

        def __init__(self, *args, importance: Mapping[str, torch.Tensor] | None = None, hessians=None,
                     **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.importance = dict(importance or {})
            self.hessians = hessians
            self._layer_of = {lin.name: layer.index for layer in self.info.layers for lin in layer.linears}

        @torch.no_grad()
        def materialise(self, config) -> tuple[int, int]:
            from evo.gguf.levels import gguf_level

            if not isinstance(config, GGUFConfig):
                raise EvoError(f"the GGUF evaluator needs a GGUFConfig, got {type(config).__name__}")
            self._set_drops(config.drops)
            dropped = set(config.dropped)
            swapped = compressed = 0
            for source, qtype in config.types:
                if self._layer_of.get(source) in dropped:
                    continue  # its blocks are zero modules: the weight is never read
                gptq = self.hessians is not None and source in self.hessians
                key = f"gguf-{'gptq-' if gptq else ''}{qtype}"
                if self._resident[source] == key:
                    continue
                param = self._params[source]
                weight = self._cache.get((source, key))
                if weight is None:
                    original = self._originals[source].to(param.device)
                    hessian = self.hessians.hessian(source) if gptq else None  # read on a miss only: a file per layer
                    weight = gguf_level(original, qtype, self.importance.get(source), hessian).to(dtype=param.dtype)
                    self._cache.put((source, key), weight)
                    compressed += 1
                    if (source, key) in self._seen:
                        self._recomputed += 1
                    self._seen.add((source, key))
                self._write_own(source, weight)  # restore() puts back what it marks written
                self._resident[source] = key
                swapped += 1
            return swapped, compressed

    return GGUFEvaluator


def load_or_collect_importance(store, loaded, token_ids, say=lambda m: None) -> dict[str, torch.Tensor]:
    """llama.cpp's imatrix (Σx² per input column of every matmul weight) on the calibration tokens,
    computed once per run and kept in RUN/imatrix.safetensors."""
    from safetensors.torch import load_file, save_file

    from evo.gguf.imatrix import collect_importance

    path = store.path(IMATRIX_FILE)
    if path.exists():
        return load_file(str(path))
    say("collecting the importance matrix (imatrix) on the calibration set")
    importance = collect_importance(loaded, token_ids)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in importance.items()}, str(tmp))
    os.replace(tmp, path)
    return importance


def build_gguf_evaluator(store, spec, loaded, calibration, say, progress, space):
    """loop._build_evaluator for a GGUF space: imatrix, the run's Hessians (gptq spaces: read back or
    collected by evo.search.levels.run_hessians, as for evo's gptq spaces), exact-size model, budget
    check, dense reference, GGUF evaluator. Returns (evaluator, size model, importance)."""
    from evo.evaluate.evaluator import FitnessConfig
    from evo.search.budget import budget_range, check_budget
    from evo.search.loop import dense_reference

    tokens = calibration.calibration.token_ids
    importance = load_or_collect_importance(store, loaded, tokens, say)
    size_model = GGUFSearchSize(loaded)
    from evo.search.levels import run_hessians, space_needs_hessians

    if space_needs_hessians(space):  # the session reads them from size_model.hessians, as for gptq spaces
        size_model.hessians = run_hessians(store, loaded, tokens, say=say, progress=progress)
    check_budget(spec.budget_bytes, budget_range(space, loaded, size_model), fixed_drops=space.fixed_drops)
    fitness = FitnessConfig(metric=spec.fitness, screen_sequences=spec.screen_sequences,
                            screen_tokens=spec.screen_tokens, top_k=spec.top_k)
    reference = dense_reference(store, spec, loaded, tokens, say, progress)
    evaluator = _evaluator_class()(loaded.model, loaded.info, tokens, fitness, reference, importance=importance,
                                   hessians=size_model.hessians)
    if spec.stages:
        from evo.search.schedule import build_schedule, stage_shape

        schedule = build_schedule(spec.stages, samples=spec.samples, seq_len=spec.seq_len)
        evaluator.stage_shapes = {stage.number: stage_shape(stage, spec.seq_len) for stage in schedule}
    return evaluator, size_model, importance


def read_seeds(run_dir: str | Path) -> list[dict]:
    """RUN/gguf_seeds.json's records ([] when the run has none)."""
    path = Path(run_dir) / SEEDS_FILE
    return json.loads(path.read_text())["seeds"] if path.is_file() else []
