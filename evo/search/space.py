"""Search spaces: parse evo/search/spaces/*.toml into a typed SearchSpace, lay out a model's genome
(one gene per layer or per attention/MLP group), and decode a genome into a CompressionConfig.

A genome is a tuple of choice indices, one per gene; choices are ordered so that a larger index
never means fewer bytes for bits (ascending) — the engines' "level" moves rely on that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evo.compress.settings import ALLOWED_BITS, TensorSetting
from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.errors import EvoError
from evo.types import ModelInfo

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SPACES_DIR = Path(__file__).resolve().parent / "spaces"  # package data: found by any install
GRANULARITIES = ("layer", "group")
GROUPS = ("attention", "mlp")
DROP_CHOICES = ("none", "attention", "mlp", "layer")

_TOP_KEYS = ("name", "description", "granularity", "quantization", "genes", "embedding", "head", "structure")
_QUANT_KEYS = ("group_size", "symmetric", "zero_point", "prune_criterion")
_GENE_KEYS = ("bits", "rescale", "sparsity")
_STRUCT_KEYS = ("drop", "fixed_drops")
_TENSOR_GENE_KEYS = ("bits",)


@dataclass(frozen=True)
class Gene:
    """One position of the genome: its name and its ordered choices."""

    name: str  # e.g. "layer3.mlp.bits", "layer3.drop", "embedding.bits"
    kind: str  # "bits", "rescale", "sparsity", "drop", "embedding_bits", "head_bits"
    choices: tuple
    unit: int | None = None  # index of the (layer, group) unit; None for model-wide genes
    layer: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    """Which genes exist and their allowed values; see evo/search/spaces/default.toml for the format."""

    name: str
    description: str
    granularity: str
    base: TensorSetting  # the fields no gene changes: group size, symmetric, zero point, criterion
    bits: tuple[int, ...]
    rescale: tuple[float, ...]
    sparsity: tuple[float, ...]
    drops: tuple[str, ...]  # allowed structural drops; ("none",) = no drop gene
    fixed_drops: int | None  # EvoP: exactly this many whole layers removed
    embedding_bits: tuple[int, ...]
    head_bits: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise EvoError(f"search space key granularity = {self.granularity!r}: use one of {list(GRANULARITIES)}")
        for key, values in (("genes.bits", self.bits), ("embedding.bits", self.embedding_bits), ("head.bits", self.head_bits)):
            if not values:
                raise EvoError(f"search space key {key} is empty: give at least one bit-width")
            bad = [b for b in values if b not in ALLOWED_BITS]
            if bad:
                raise EvoError(f"search space key {key} has {bad[0]!r}: allowed bit-widths are {list(ALLOWED_BITS)}")
            if list(values) != sorted(set(values)):
                raise EvoError(f"search space key {key} must list distinct values in ascending order")
        for key, values in (("genes.rescale", self.rescale), ("genes.sparsity", self.sparsity)):
            if not values:
                raise EvoError(f"search space key {key} is empty: give at least one value")
            if list(values) != sorted(set(values)):
                raise EvoError(f"search space key {key} must list distinct values in ascending order")
        for drop in self.drops:
            if drop not in DROP_CHOICES:
                raise EvoError(f"search space key structure.drop has {drop!r}: use values from {list(DROP_CHOICES)}")
        if "none" not in self.drops:
            raise EvoError("search space key structure.drop must include \"none\"")
        if self.fixed_drops is not None:
            if self.fixed_drops < 1:
                raise EvoError("search space key structure.fixed_drops must be a positive number of layers")
            if set(self.drops) != {"none", "layer"}:
                raise EvoError('search space key structure.fixed_drops needs structure.drop = ["none", "layer"]')
        # every (bits, rescale, sparsity) combination must be a valid TensorSetting: fail now, not mid-run
        for bits in self.bits:
            for rescale in self.rescale:
                for sparsity in self.sparsity:
                    self.setting(bits, rescale, sparsity, key="genes")
        for bits in self.embedding_bits:
            self.setting(bits, 1.0, 0.0, key="embedding.bits")

    def setting(self, bits: int, rescale: float, sparsity: float, *, key: str = "genes") -> TensorSetting:
        """The TensorSetting a gene combination means (bits=16 ignores rescale and sparsity)."""
        if bits == 16:
            return KEPT
        try:
            return TensorSetting(
                bits=bits,
                group_size=self.base.group_size,
                symmetric=self.base.symmetric,
                rescale=rescale,
                sparsity=sparsity,
                prune_criterion=self.base.prune_criterion,
                zero_point=self.base.zero_point if sparsity == 0 else "int",
            )
        except EvoError as exc:
            raise EvoError(f"search space key {key}: {exc}") from None

    # --- genome layout -------------------------------------------------------------------------

    def genes(self, info: ModelInfo) -> tuple[Gene, ...]:
        """The genome layout for a model: per unit bits/rescale/sparsity, per layer drop, then
        the embedding (and untied head) bits."""
        genes: list[Gene] = []
        groups = ("all",) if self.granularity == "layer" else GROUPS
        unit = 0
        for layer in info.layers:
            for group in groups:
                prefix = f"layer{layer.index}.{group}" if group != "all" else f"layer{layer.index}"
                genes.append(Gene(f"{prefix}.bits", "bits", self.bits, unit, layer.index))
                genes.append(Gene(f"{prefix}.rescale", "rescale", self.rescale, unit, layer.index))
                genes.append(Gene(f"{prefix}.sparsity", "sparsity", self.sparsity, unit, layer.index))
                unit += 1
            genes.append(Gene(f"layer{layer.index}.drop", "drop", self.drops, None, layer.index))
        genes.append(Gene("embedding.bits", "embedding_bits", self.embedding_bits))
        if not info.tied_embeddings and any(t.role == "head" for t in info.non_decoder):
            genes.append(Gene("head.bits", "head_bits", self.head_bits))
        return tuple(genes)

    def decode(self, genome: tuple[int, ...], info: ModelInfo) -> CompressionConfig:
        """The CompressionConfig a genome stands for."""
        genes = self.genes(info)
        if len(genome) != len(genes):
            raise EvoError(f"genome has {len(genome)} genes but space {self.name!r} lays out {len(genes)} for this model")
        values = {gene.name: gene.choices[index] for gene, index in zip(genes, genome)}
        layers: dict[int, LayerConfig] = {}
        for layer in info.layers:
            i = layer.index
            if self.granularity == "layer":
                shared = self._unit_setting(values, f"layer{i}")
                attention = mlp = shared
            else:
                attention = self._unit_setting(values, f"layer{i}.attention")
                mlp = self._unit_setting(values, f"layer{i}.mlp")
            layers[i] = LayerConfig(attention=attention, mlp=mlp, drop=values[f"layer{i}.drop"])
        embedding = self.setting(values["embedding.bits"], 1.0, 0.0, key="embedding.bits")
        head = self.setting(values["head.bits"], 1.0, 0.0, key="head.bits") if "head.bits" in values else KEPT
        return CompressionConfig(default=KEPT, embedding=embedding, head=head, layers=layers)

    def encode(self, config: CompressionConfig, info: ModelInfo) -> tuple[int, ...] | None:
        """The genome of a config, or None when the space cannot express it (inverse of decode)."""
        genome = []
        for gene in self.genes(info):
            if gene.kind == "drop":
                value = config.drop_for(gene.layer)
            elif gene.kind in ("embedding_bits", "head_bits"):
                setting = config.embedding if gene.kind == "embedding_bits" else config.head
                if setting.bits not in gene.choices or setting != self.setting(setting.bits, 1.0, 0.0):
                    return None
                value = setting.bits
            else:
                entry = config.layer(gene.layer)
                group = gene.name.split(".")[1] if self.granularity == "group" else "attention"
                setting = getattr(entry, group) or config.default
                if setting != self.setting(setting.bits, setting.rescale, setting.sparsity):
                    return None
                value = {"bits": setting.bits, "rescale": setting.rescale, "sparsity": setting.sparsity}[gene.kind]
            if value not in gene.choices:
                return None
            genome.append(gene.choices.index(value))
        genome = tuple(genome)
        return genome if self.decode(genome, info) == _normalised(config, info) else None

    def _unit_setting(self, values: Mapping[str, Any], prefix: str) -> TensorSetting:
        return self.setting(values[f"{prefix}.bits"], values[f"{prefix}.rescale"], values[f"{prefix}.sparsity"])

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
            else:
                genome.append(_nearest_index(gene.choices, embedding_bits) if embedding_bits else len(gene.choices) - 1)
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
            },
            "genes": {"bits": list(self.bits), "rescale": list(self.rescale), "sparsity": list(self.sparsity)},
            "structure": {"drop": list(self.drops), **({"fixed_drops": self.fixed_drops} if self.fixed_drops else {})},
            "embedding": {"bits": list(self.embedding_bits)},
            "head": {"bits": list(self.head_bits)},
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
        _known(genes, _GENE_KEYS, "genes.", source)
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
            )
        except EvoError as exc:
            raise EvoError(f"{source}: key quantization: {exc}") from None
        try:
            return cls(
                name=str(data.get("name", Path(source).stem)),
                description=str(data.get("description", "")),
                granularity=data.get("granularity", "group"),
                base=base,
                bits=_values(genes, "bits", (4,), int, source, "genes."),
                rescale=_values(genes, "rescale", (1.0,), float, source, "genes."),
                sparsity=_values(genes, "sparsity", (0.0,), float, source, "genes."),
                drops=_values(structure, "drop", ("none",), str, source, "structure."),
                fixed_drops=structure.get("fixed_drops"),
                embedding_bits=_values(embedding, "bits", (16,), int, source, "embedding."),
                head_bits=_values(head, "bits", (16,), int, source, "head."),
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
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise EvoError(f"{source}: key {prefix}{key} must be a list of {kind.__name__} values, got {value!r}") from None
