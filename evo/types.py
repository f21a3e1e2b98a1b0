"""Frozen, typed objects shared across evo's modules.

They are plain data: what a model looks like (ModelInfo), what a corpus holds (Document), a zero-shot task item (Example), what a
search evolves (Gene, Genome) and what an evaluation measured (Score, FrontPoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Roles of the linear weights inside a decoder layer, in the field's words. Fused projections
# (Phi-3 style qkv / gate_up) keep their own role so nobody mistakes them for one projection.
ATTENTION_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv")
MLP_ROLES = ("mlp_gate", "mlp_up", "mlp_down", "mlp_gate_up")
LINEAR_ROLES = ATTENTION_ROLES + MLP_ROLES + ("other",)

# Roles of the tensors that live outside the decoder layers.
NON_DECODER_ROLES = ("embedding", "position_embedding", "head", "norm", "other")


@dataclass(frozen=True)
class LinearInfo:
    """One linear weight of a decoder layer."""

    name: str  # full parameter name, e.g. "model.layers.3.self_attn.q_proj.weight"
    module: str  # module path, e.g. "model.layers.3.self_attn.q_proj"
    shape: tuple[int, int]  # (out_features, in_features)
    role: str  # one of LINEAR_ROLES

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class DecoderLayerInfo:
    """One decoder layer: its module path, its linears and its attention / MLP sub-blocks."""

    index: int
    module: str  # e.g. "model.layers.3"
    linears: tuple[LinearInfo, ...]
    attention_module: str | None  # e.g. "model.layers.3.self_attn"; None when not a sub-module
    mlp_module: str | None  # e.g. "model.layers.3.mlp"; None for OPT, whose fc1/fc2 sit in the layer
    other_tensors: tuple[tuple[str, tuple[int, ...]], ...] = ()  # norms, biases: (name, shape)

    def linear(self, role: str) -> LinearInfo:
        for lin in self.linears:
            if lin.role == role:
                return lin
        raise KeyError(f"layer {self.index} has no linear with role {role!r}")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor outside the decoder layers (embeddings, head, final norm, ...)."""

    name: str
    shape: tuple[int, ...]
    role: str  # one of NON_DECODER_ROLES


@dataclass(frozen=True)
class ModelInfo:
    """What evo needs to know about a causal LM, discovered generically from the module tree."""

    model_id: str  # what the user asked for, resolved (alias → file path, hub id kept)
    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # e.g. "llama"
    layers_path: str  # module path of the decoder ModuleList, e.g. "model.layers"
    layers: tuple[DecoderLayerInfo, ...]
    non_decoder: tuple[TensorInfo, ...]
    tied_embeddings: bool
    hidden_size: int
    vocab_size: int
    total_parameters: int = field(default=0)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def linears(self) -> tuple[LinearInfo, ...]:
        return tuple(lin for layer in self.layers for lin in layer.linears)


@dataclass(frozen=True)
class Document:
    """One document of a corpus and where it came from."""

    text: str
    source: str  # short name of the source, e.g. the file stem "code"
    path: str  # the file it was read from
    index: int  # position of the document inside its file (0-based)


@dataclass(frozen=True)
class Example:
    """One item of a zero-shot task: per choice a context and the continuation scored after it; the gold choice."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.continuations) or not self.contexts:
            raise ValueError("an example needs one context and one continuation per choice")
        if not 0 <= self.label < len(self.contexts):
            raise ValueError(f"label {self.label} is not one of the {len(self.contexts)} choices")


# --- the search ----------------------------------------------------------------------------------------

Genome = tuple[int, ...]  # one choice index per gene


@dataclass(frozen=True)
class Gene:
    """One position of the genome: its name and its ordered choices.

    kind is the TensorSetting field a per-unit gene sets ("bits", "rescale", "sparsity", or any
    other field a search space lists under [genes]), or "drop", "embedding_bits", "head_bits".
    """

    name: str  # e.g. "layer3.mlp.bits", "layer3.drop", "embedding.bits"
    kind: str
    choices: tuple
    unit: int | None = None  # index of the (layer, group) unit; None for model-wide genes
    layer: int | None = None


@dataclass(frozen=True)
class Score:
    """What an evaluation measured: quality (lower is better: KL or perplexity) and exact bytes."""

    quality: float
    size_bytes: int


@dataclass(frozen=True)
class FrontPoint:
    """One point of a run's Pareto front, as front.json records it."""

    genome: Genome
    quality: float
    size_bytes: int
    config: dict[str, Any]  # CompressionConfig.to_dict() of the genome

    def to_dict(self) -> dict[str, Any]:
        return {"genome": list(self.genome), "quality": self.quality, "size_bytes": self.size_bytes,
                "config": self.config}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontPoint":
        return cls(tuple(int(g) for g in data["genome"]), float(data["quality"]), int(data["size_bytes"]),
                   dict(data["config"]))
