"""Search spaces: parse evo/search/spaces/*.toml into a typed SearchSpace, lay out a model's genome
(one gene per layer or per attention/MLP group), decode a genome into a CompressionConfig, and move
through the space: sampling, repair to the budget, EvoPress level moves, mutation, warm start.

A genome is a tuple of choice indices, one per gene; choices are ordered so that a larger index
never means fewer bytes for bits (ascending) — the engines' "level" moves rely on that.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from evo.compress.settings import ALLOWED_BITS, KEPT_BITS, TensorSetting
from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.constants import DROPS
from evo.errors import EvoError
from evo.types import Gene, Genome, ModelInfo

if TYPE_CHECKING:
    from evo.search.engines.base import Problem

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SPACES_DIR = Path(__file__).resolve().parent / "spaces"  # package data: found by any install
GRANULARITIES = ("layer", "group")
GROUPS = ("attention", "mlp")

_TOP_KEYS = ("name", "description", "granularity", "quantization", "genes", "embedding", "head", "structure")
_QUANT_KEYS = ("group_size", "symmetric", "zero_point", "prune_criterion", "quantizer")
# gptq needs the Hessian of a linear's input: the embedding and an untied head (no such input) take rtn,
# unless their table names a quantizer ([embedding] quantizer = "mse": clip search, columns weighted 1).
NO_HESSIAN_KEYS = ("embedding.bits", "head.bits")
TABLE_QUANTIZERS = ("rtn", "mse")  # what [embedding] / [head] quantizer may name (no Hessian: no gptq)
# Every unit has these genes (one choice when a space leaves them out); any other TensorSetting
# field listed under [genes] becomes a gene too, so a new operator's field needs no code here.
_UNIT_GENES: dict[str, tuple] = {"bits": (4,), "rescale": (1.0,), "sparsity": (0.0,)}
_SETTING_FIELDS = {f.name: f.default for f in fields(TensorSetting)}
_STRUCT_KEYS = ("drop", "fixed_drops")
_TENSOR_GENE_KEYS = ("bits", "quantizer")


@dataclass(frozen=True)
class SearchSpace:
    """Which genes exist and their allowed values; see evo/search/spaces/default.toml for the format."""

    name: str
    description: str
    granularity: str
    base: TensorSetting  # the fields no gene changes: group size, symmetric, zero point, criterion
    unit_genes: tuple[tuple[str, tuple], ...]  # (TensorSetting field, its choices) per unit, in genome order
    drops: tuple[str, ...]  # allowed structural drops; ("none",) = no drop gene
    fixed_drops: int | None  # EvoP: exactly this many whole layers removed
    embedding_bits: tuple[int, ...]
    head_bits: tuple[int, ...]
    embedding_quantizer: str | None = None  # None: the base's quantizer (gptq → rtn)
    head_quantizer: str | None = None

    def __post_init__(self) -> None:
        for key, value in (("embedding.quantizer", self.embedding_quantizer), ("head.quantizer", self.head_quantizer)):
            if value is not None and value not in TABLE_QUANTIZERS:
                raise EvoError(f"search space key {key} = {value!r}: use one of {list(TABLE_QUANTIZERS)} "
                               "(gptq needs a linear's input Hessian, which the embedding has not)")
        if self.granularity not in GRANULARITIES:
            raise EvoError(f"search space key granularity = {self.granularity!r}: use one of {list(GRANULARITIES)}")
        names = [name for name, _ in self.unit_genes]
        if names[: len(_UNIT_GENES)] != list(_UNIT_GENES) or len(set(names)) != len(names):
            raise EvoError(f"search space genes must start with {list(_UNIT_GENES)}, each once")
        for key, values in (("genes.bits", self.bits), ("embedding.bits", self.embedding_bits), ("head.bits", self.head_bits)):
            if not values:
                raise EvoError(f"search space key {key} is empty: give at least one bit-width")
            bad = [b for b in values if b not in ALLOWED_BITS]
            if bad:
                raise EvoError(f"search space key {key} has {bad[0]!r}: allowed bit-widths are {list(ALLOWED_BITS)}")
            if list(values) != sorted(set(values)):
                raise EvoError(f"search space key {key} must list distinct values in ascending order")
        for name, values in self.unit_genes[1:]:
            if not values:
                raise EvoError(f"search space key genes.{name} is empty: give at least one value")
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if (list(values) != sorted(set(values))) if numeric else len(set(values)) != len(values):
                raise EvoError(f"search space key genes.{name} must list distinct values"
                               + (" in ascending order" if numeric else ""))
        for drop in self.drops:
            if drop not in DROPS:
                raise EvoError(f"search space key structure.drop has {drop!r}: use values from {list(DROPS)}")
        if "none" not in self.drops:
            raise EvoError("search space key structure.drop must include \"none\"")
        if self.fixed_drops is not None:
            if self.fixed_drops < 1:
                raise EvoError("search space key structure.fixed_drops must be a positive number of layers")
            if set(self.drops) != {"none", "layer"}:
                raise EvoError('search space key structure.fixed_drops needs structure.drop = ["none", "layer"]')
        # every combination of unit genes must be a valid TensorSetting: fail now, not mid-run
        for combination in itertools.product(*(values for _, values in self.unit_genes)):
            self.setting(dict(zip(names, combination)), key="genes")
        for bits in self.embedding_bits:
            self.setting({"bits": bits}, key="embedding.bits")

    def choices(self, name: str) -> tuple:
        """The choices of a unit gene ("bits", "rescale", "sparsity", ...)."""
        return dict(self.unit_genes)[name]

    @property
    def bits(self) -> tuple[int, ...]:
        return self.choices("bits")

    @property
    def rescale(self) -> tuple[float, ...]:
        return self.choices("rescale")

    @property
    def sparsity(self) -> tuple[float, ...]:
        return self.choices("sparsity")

    def setting(self, values: Mapping[str, Any], *, key: str = "genes") -> TensorSetting:
        """The TensorSetting a gene combination means: the base's fields with the genes' values
        (bits=16 keeps the matrix, whatever the rest; a pruned matrix needs an integer zero point)."""
        memo = self.__dict__.setdefault("_setting_memo", {})  # decode asks for the same few settings
        try:
            found = memo.get((key, tuple(values.items())))
        except TypeError:  # unhashable values: not memoised
            found = None
        if found is not None:
            return found
        found = self._new_setting(values, key)
        try:
            memo[(key, tuple(values.items()))] = found
        except TypeError:
            pass
        return found

    def _new_setting(self, values: Mapping[str, Any], key: str) -> TensorSetting:
        if values["bits"] == KEPT_BITS:
            return KEPT
        chosen = {**asdict(self.base), "rescale": 1.0, "sparsity": 0.0, **values}
        own = {"embedding.bits": self.embedding_quantizer, "head.bits": self.head_quantizer}.get(key)
        if own is not None:
            chosen["quantizer"] = own
        elif key in NO_HESSIAN_KEYS and chosen["quantizer"] == "gptq":
            chosen["quantizer"] = "rtn"
        if chosen["sparsity"] != 0:
            chosen["zero_point"] = "int"
        try:
            return TensorSetting(**chosen)
        except EvoError as exc:
            raise EvoError(f"search space key {key}: {exc}") from None

    # --- genome layout -------------------------------------------------------------------------

    def genes(self, info: ModelInfo) -> tuple[Gene, ...]:
        """The genome layout for a model: per unit its genes (bits, rescale, sparsity, ...), per layer drop, then
        the embedding (and untied head) bits."""
        memo = self.__dict__.setdefault("_genes_memo", {})  # by the info object: decode asks per genome
        found = memo.get(id(info))
        if found is not None and found[0] is info:
            return found[1]
        genes = self._new_genes(info)
        memo[id(info)] = (info, genes)
        return genes

    def _new_genes(self, info: ModelInfo) -> tuple[Gene, ...]:
        genes: list[Gene] = []
        groups = ("all",) if self.granularity == "layer" else GROUPS
        unit = 0
        for layer in info.layers:
            for group in groups:
                prefix = f"layer{layer.index}.{group}" if group != "all" else f"layer{layer.index}"
                for name, values in self.unit_genes:
                    genes.append(Gene(f"{prefix}.{name}", name, values, unit, layer.index))
                unit += 1
            genes.append(Gene(f"layer{layer.index}.drop", "drop", self.drops, None, layer.index))
        genes.append(Gene("embedding.bits", "embedding_bits", self.embedding_bits))
        if not info.tied_embeddings and any(t.role == "head" for t in info.non_decoder):
            genes.append(Gene("head.bits", "head_bits", self.head_bits))
        return tuple(genes)

    def decode(self, genome: tuple[int, ...], info: ModelInfo) -> CompressionConfig:
        """The CompressionConfig a genome stands for. Each layer's entry is memoised by that layer's
        genes (a search decodes one genome per evaluation and most layers repeat a combination seen
        before); a layer first seen is made from its genes' values."""
        genes = self.genes(info)
        if len(genome) != len(genes):
            raise EvoError(f"genome has {len(genome)} genes but space {self.name!r} lays out {len(genes)} for this model")
        genome = tuple(genome)
        by_genes = self.__dict__.setdefault("_layer_by_genes", {})  # (layer, its genes) -> LayerConfig
        if len(by_genes) >= 1 << 16:
            by_genes.clear()
        layers: dict[int, LayerConfig] = {}
        spans, embedding_at, head_at = self._layout(info, genes)
        for index, start, end in spans:
            key = (index, genome[start:end])
            layer_config = by_genes.get(key)
            if layer_config is None:
                layer_config = by_genes[key] = self._layer_config(index, genes[start:end], genome[start:end])
            layers[index] = layer_config
        embedding = self.setting({"bits": genes[embedding_at].choices[genome[embedding_at]]}, key="embedding.bits")
        head = (KEPT if head_at is None
                else self.setting({"bits": genes[head_at].choices[genome[head_at]]}, key="head.bits"))
        return CompressionConfig(default=KEPT, embedding=embedding, head=head, layers=layers)

    def _layout(self, info: ModelInfo, genes: tuple[Gene, ...]) -> tuple[tuple, int, int | None]:
        """((layer index, first gene, end) of each layer's genes, the embedding gene's position, the head
        gene's or None), memoised by the genes: _new_genes lays each layer's genes out contiguously."""
        memo = self.__dict__.setdefault("_layout_memo", {})
        found = memo.get(id(genes))
        if found is not None and found[0] is genes:
            return found[1]
        spans = []
        for layer in info.layers:
            positions = [i for i, gene in enumerate(genes) if gene.layer == layer.index]
            if positions != list(range(positions[0], positions[-1] + 1)):
                raise RuntimeError(f"layer {layer.index}'s genes are not contiguous")  # a bug in _new_genes
            spans.append((layer.index, positions[0], positions[-1] + 1))
        names = [gene.name for gene in genes]
        layout = (tuple(spans), names.index("embedding.bits"), names.index("head.bits") if "head.bits" in names else None)
        memo[id(genes)] = (genes, layout)
        return layout

    def _layer_config(self, index: int, genes: tuple[Gene, ...], values: tuple[int, ...]) -> LayerConfig:
        """A layer's entry from its genes and their choice indices; one object per combination."""
        chosen = {gene.name: gene.choices[value] for gene, value in zip(genes, values)}
        if self.granularity == "layer":
            attention = mlp = self._unit_setting(chosen, f"layer{index}")
        else:
            attention = self._unit_setting(chosen, f"layer{index}.attention")
            mlp = self._unit_setting(chosen, f"layer{index}.mlp")
        made = self.__dict__.setdefault("_layer_memo", {})  # LayerConfigs are immutable: one per combination
        if len(made) >= 1 << 16:
            made.clear()
        key = (attention, mlp, chosen[f"layer{index}.drop"])
        layer_config = made.get(key)
        if layer_config is None:
            layer_config = made[key] = LayerConfig(attention=attention, mlp=mlp, drop=key[2])
        return layer_config

    def encode(self, config: CompressionConfig, info: ModelInfo) -> tuple[int, ...] | None:
        """The genome of a config, or None when the space cannot express it (inverse of decode)."""
        genome = []
        for gene in self.genes(info):
            if gene.kind == "drop":
                value = config.drop_for(gene.layer)
            elif gene.kind in ("embedding_bits", "head_bits"):
                setting = config.embedding if gene.kind == "embedding_bits" else config.head
                if setting.bits not in gene.choices or setting != self.setting({"bits": setting.bits},
                                                                               key=gene.name):
                    return None
                value = setting.bits
            else:
                entry = config.layer(gene.layer)
                group = gene.name.split(".")[1] if self.granularity == "group" else "attention"
                setting = getattr(entry, group) or config.default
                if setting != self.setting({name: getattr(setting, name) for name, _ in self.unit_genes}):
                    return None
                value = getattr(setting, gene.kind)
            if value not in gene.choices:
                return None
            genome.append(gene.choices.index(value))
        genome = tuple(genome)
        return genome if self.decode(genome, info) == _normalised(config, info) else None

    def _unit_setting(self, values: Mapping[str, Any], prefix: str) -> TensorSetting:
        return self.setting({name: values[f"{prefix}.{name}"] for name, _ in self.unit_genes})

    def uniform_genome(self, info: ModelInfo, bits: int, *, drop: str = "none", embedding_bits: int | None = None) -> tuple[int, ...]:
        """Every unit at `bits`, rescale and sparsity at their first value (nearest 1.0 / 0 by
        convention), no drops, the embedding at the highest allowed width unless given."""
        genome = []
        for gene in self.genes(info):
            if gene.kind == "bits":
                genome.append(_nearest_index(gene.choices, bits))
            elif gene.kind == "rescale":
                genome.append(_nearest_index(gene.choices, 1.0))
            elif gene.kind == "sparsity":
                genome.append(0)
            elif gene.kind == "drop":
                genome.append(gene.choices.index(drop) if drop in gene.choices else 0)
            elif gene.kind in ("embedding_bits", "head_bits"):
                genome.append(_nearest_index(gene.choices, embedding_bits) if embedding_bits else len(gene.choices) - 1)
            else:  # another setting field: the base's value when allowed, else the first choice
                default = getattr(self.base, gene.kind)
                genome.append(gene.choices.index(default) if default in gene.choices else 0)
        return tuple(genome)

    # --- files ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "granularity": self.granularity,
            "quantization": {
                "group_size": self.base.group_size if self.base.group_size is not None else "channel",
                "symmetric": self.base.symmetric,
                "zero_point": self.base.zero_point,
                "prune_criterion": self.base.prune_criterion,
                **({"quantizer": self.base.quantizer} if self.base.quantizer != "rtn" else {}),
            },
            "genes": {name: list(values) for name, values in self.unit_genes},
            "structure": {"drop": list(self.drops), **({"fixed_drops": self.fixed_drops} if self.fixed_drops else {})},
            "embedding": {"bits": list(self.embedding_bits),
                          **({"quantizer": self.embedding_quantizer} if self.embedding_quantizer else {})},
            "head": {"bits": list(self.head_bits), **({"quantizer": self.head_quantizer} if self.head_quantizer else {})},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "search space") -> "SearchSpace":
        _known(data, _TOP_KEYS, "", source)
        quant = _table(data, "quantization", source)
        genes = _table(data, "genes", source)
        structure = _table(data, "structure", source)
        embedding = _table(data, "embedding", source)
        head = _table(data, "head", source)
        _known(quant, _QUANT_KEYS, "quantization.", source)
        _known(genes, tuple(_SETTING_FIELDS), "genes.", source)
        _known(structure, _STRUCT_KEYS, "structure.", source)
        _known(embedding, _TENSOR_GENE_KEYS, "embedding.", source)
        _known(head, _TENSOR_GENE_KEYS, "head.", source)
        group_size = quant.get("group_size", 128)
        try:
            base = TensorSetting(
                bits=4,
                group_size=None if group_size == "channel" else group_size,
                symmetric=quant.get("symmetric", False),
                zero_point=quant.get("zero_point", "int"),
                prune_criterion=quant.get("prune_criterion", "magnitude"),
                quantizer=quant.get("quantizer", "rtn"),
            )
        except EvoError as exc:
            raise EvoError(f"{source}: key quantization: {exc}") from None
        try:
            return cls(
                name=str(data.get("name", Path(source).stem)),
                description=str(data.get("description", "")),
                granularity=data.get("granularity", "group"),
                base=base,
                unit_genes=tuple(
                    (name, _values(genes, name, _UNIT_GENES.get(name, ()), _kind(name), source, "genes."))
                    for name in [*_UNIT_GENES, *(k for k in genes if k not in _UNIT_GENES)]
                ),
                drops=_values(structure, "drop", ("none",), str, source, "structure."),
                fixed_drops=structure.get("fixed_drops"),
                embedding_bits=_values(embedding, "bits", (16,), int, source, "embedding."),
                head_bits=_values(head, "bits", (16,), int, source, "head."),
                embedding_quantizer=_quantizer(embedding, source, "embedding."),
                head_quantizer=_quantizer(head, source, "head."),
            )
        except EvoError as exc:
            message = str(exc)
            raise EvoError(message if message.startswith(source) else f"{source}: {message}") from None

    @classmethod
    def load(cls, spec: str | Path) -> "SearchSpace":
        """A space by file path or by name of a file in evo/search/spaces/ ('default', 'bits', ...)."""
        path = Path(spec)
        if not path.is_file():
            named = SPACES_DIR / f"{spec}.toml"
            if named.is_file():
                path = named
            else:
                known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.toml")))
                raise EvoError(f"search space {spec!r} not found: pass a .toml file or one of {known}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise EvoError(f"search space {path} is not valid TOML ({exc}): fix the file") from None
        if data.get("format", "evo") == "gguf":  # llama.cpp types in exact GGUF bytes
            from evo.search.gguf_space import GGUFSpace

            return GGUFSpace.from_dict(data, source=str(path))
        return cls.from_dict(data, source=str(path))


def _normalised(config: CompressionConfig, info: ModelInfo) -> CompressionConfig:
    """The config with every layer's attention and MLP settings spelled out, as decode writes it."""
    layers = {}
    for layer in info.layers:
        entry = config.layer(layer.index)
        layers[layer.index] = LayerConfig(attention=entry.attention or config.default,
                                          mlp=entry.mlp or config.default, drop=entry.drop)
    return CompressionConfig(default=KEPT, embedding=config.embedding, head=config.head, layers=layers,
                             tensors=config.tensors)


def _quantizer(table: Mapping[str, Any], source: str, prefix: str) -> str | None:
    value = table.get("quantizer")
    if value is not None and not isinstance(value, str):
        raise EvoError(f"{source}: key {prefix}quantizer must be a string, one of {list(TABLE_QUANTIZERS)}")
    return value


def _kind(name: str) -> type:
    """The type of a TensorSetting field's values in a space file (group_size: int)."""
    default = _SETTING_FIELDS[name]
    return int if default is None else type(default)


def _nearest_index(choices: tuple, value) -> int:
    return min(range(len(choices)), key=lambda i: (abs(choices[i] - value), i))


def _known(table: Mapping[str, Any], keys: tuple[str, ...], prefix: str, source: str) -> None:
    for key in table:
        if key not in keys:
            raise EvoError(f"{source}: key {prefix}{key} is unknown; known keys are {[prefix + k for k in keys]}")


def _table(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise EvoError(f"{source}: key {key} must be a table")
    return value


def _values(table: Mapping[str, Any], key: str, default: tuple, kind: type, source: str, prefix: str) -> tuple:
    value = table.get(key, list(default))
    if not isinstance(value, list):
        value = [value]
    try:
        if kind is int and any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise TypeError
        if kind is float and any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise TypeError
        if kind is str and any(not isinstance(v, str) for v in value):
            raise TypeError
        if kind is bool and any(not isinstance(v, bool) for v in value):
            raise TypeError
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise EvoError(f"{source}: key {prefix}{key} must be a list of {kind.__name__} values, got {value!r}") from None


# --- moving through the space: pure functions of (genome, problem, rng), deterministic for a seeded rng ---

SHRINK_KINDS = ("bits", "embedding_bits", "head_bits")  # a lower index is fewer bytes
RANDOM_TRIES_PER_SLOT = 50  # warm start: random genomes drawn per free slot before giving up on duplicates


def fix_drops(genome: list[int], problem: Problem, rng: random.Random) -> None:
    """Make exactly `fixed_drops` layers dropped (EvoP), changing as few genes as possible."""
    if problem.fixed_drops is None:
        return
    drop_genes = problem.positions("drop")
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
    drop_genes = problem.positions("drop")
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
    shrink = problem.positions(*SHRINK_KINDS)
    while problem.exceeds(tuple(fixed)):
        candidates = [i for i in shrink if fixed[i] > 0]
        if not candidates:
            last = problem.last_choices
            candidates = [i for i in problem.positions("sparsity") if fixed[i] < last[i]]
            if candidates:
                i = rng.choice(candidates)
                fixed[i] += 1
                continue
            raise EvoError(
                f"no genome of this space fits {problem.budget_bytes / 1e6:.3f} MB "
                f"(this one is {problem.size_of(tuple(fixed)) / 1e6:.3f} MB at the lowest bit-widths): "
                "raise --budget-mb"
            )
        i = rng.choice(candidates)
        fixed[i] -= 1
    return tuple(fixed)


def fill(genome: Genome, problem: Problem, rng: random.Random, tries: int = 8) -> Genome:
    """Spend what the budget leaves: raise random bit-widths one level while the genome still
    fits, giving up after `tries` raises that would not fit. Keeps offspring near the budget."""
    filled = list(genome)
    failures = 0
    shrink, last = problem.positions(*SHRINK_KINDS), problem.last_choices
    while failures < tries:
        candidates = [i for i in shrink if filled[i] < last[i]]
        if not candidates:
            break
        i = rng.choice(candidates)
        filled[i] += 1
        if problem.exceeds(tuple(filled)):
            filled[i] -= 1
            failures += 1
    return tuple(filled)


def level_move(genome: Genome, problem: Problem, rng: random.Random) -> Genome:
    """EvoPress's level switch: one bits gene up one level and another down one level, so the
    size stays near the budget while the allocation moves."""
    last = problem.last_choices
    bits_genes = [i for i in problem.positions("bits") if last[i] > 0]
    if len(bits_genes) < 2:
        return genome
    moved = list(genome)
    up = [i for i in bits_genes if moved[i] < last[i]]
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
            uniform = tuple(min(level, len(gene.choices) - 1) if gene.kind == "bits" else _uniform_value(gene)
                            for gene in problem.genes)
            add(uniform)
            if not problem.exceeds(uniform):
                break  # the largest uniform width that fits is in; narrower ones are dominated
        for genome in narrow_embedding_genomes(problem, rng):
            if len(chosen) >= size:
                break
            add(genome)
    attempts = 0
    while len(chosen) < size and attempts < RANDOM_TRIES_PER_SLOT * size:
        add(random_genome(problem, rng))
        attempts += 1
    return chosen[:size]


def narrow_embedding_genomes(problem: Problem, rng: random.Random) -> list[Genome]:
    """For each narrower embedding (and head) width, widest first: the widest uniform decoder that fits
    beside it, filled to the budget, and the next wider uniform decoder (over the budget: warm_start
    repairs it). At a tight budget the bytes an 8-bit embedding holds buy more as decoder bits
    (SmolLM2-135M at uniform 3-bit RTN's size: a 4-bit embedding beside a 4-bit GPTQ decoder with a few
    3-bit linears, benchmarks/results/explore_levels_cpu.md), and repair, lowering random genes one
    level, rarely walks there from the uniform genomes with the widest embedding."""
    shrink = [i for i, gene in enumerate(problem.genes) if gene.kind in ("embedding_bits", "head_bits")]
    bits_gene = next((g for g in problem.genes if g.kind == "bits"), None)
    if not shrink or bits_gene is None:
        return []
    widest = max(len(problem.genes[i].choices) for i in shrink) - 1
    found: list[Genome] = []
    for width in reversed(range(widest)):
        for level in reversed(range(len(bits_gene.choices))):
            genome = _uniform_at(problem, level, width, shrink)
            if not problem.exceeds(genome):
                found.append(fill(genome, problem, rng))
                if level + 1 < len(bits_gene.choices):
                    found.append(_uniform_at(problem, level + 1, width, shrink))
                break
    return found


def _uniform_at(problem: Problem, level: int, width: int, shrink: list[int]) -> Genome:
    return tuple(min(level, len(gene.choices) - 1) if gene.kind == "bits"
                 else min(width, len(gene.choices) - 1) if i in shrink else _uniform_value(gene)
                 for i, gene in enumerate(problem.genes))


def _uniform_value(gene) -> int:
    """A uniform configuration's other genes: widest embedding/head, no rescale, no sparsity or drop."""
    if gene.kind in ("embedding_bits", "head_bits"):
        return len(gene.choices) - 1
    if gene.kind == "rescale" and 1.0 in gene.choices:
        return gene.choices.index(1.0)
    return 0
