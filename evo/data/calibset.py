"""The CalibrationSet: token ids of the calibration and held-out sequences, where each came from,
its cluster, and the provenance needed to trust and reproduce it. Saved as one JSON file, no pickle.

The same inputs give a byte-identical file: keys are sorted and nothing time-dependent is stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evo.errors import EvoError
from evo.fileio import atomic_write_text

FORMAT = "evo.calibration_set"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SequenceSet:
    """Sequences with per-sequence provenance; row i of token_ids belongs to sources[i], etc."""

    token_ids: np.ndarray  # int32 [n, seq_len]
    sources: tuple[str, ...]  # source name (file stem) of each sequence
    paths: tuple[str, ...]  # source file of each sequence
    documents: tuple[int, ...]  # index of the document (within its file) where it starts
    clusters: tuple[int, ...]  # cluster id
    pool_indices: tuple[int, ...]  # row in the candidate pool it was drawn from

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def to_dict(self) -> dict:
        return {
            "token_ids": self.token_ids.astype(np.int64).tolist(),
            "sources": list(self.sources),
            "paths": list(self.paths),
            "documents": [int(d) for d in self.documents],
            "clusters": [int(c) for c in self.clusters],
            "pool_indices": [int(i) for i in self.pool_indices],
        }

    @classmethod
    def from_dict(cls, data: dict, seq_len: int) -> "SequenceSet":
        token_ids = np.asarray(data["token_ids"], dtype=np.int32).reshape(-1, seq_len)
        fields = ("sources", "paths", "documents", "clusters", "pool_indices")
        if any(len(data[f]) != token_ids.shape[0] for f in fields):
            raise ValueError("per-sequence fields disagree in length with token_ids")
        return cls(
            token_ids=token_ids,
            sources=tuple(str(s) for s in data["sources"]),
            paths=tuple(str(p) for p in data["paths"]),
            documents=tuple(int(d) for d in data["documents"]),
            clusters=tuple(int(c) for c in data["clusters"]),
            pool_indices=tuple(int(i) for i in data["pool_indices"]),
        )


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster of the candidate pool, for the report table."""

    cluster: int
    size: int
    drawn: int
    dominant_source: str
    dominant_share: float
    snippet: str


@dataclass(frozen=True)
class Provenance:
    """Everything that determines a CalibrationSet."""

    model_id: str
    tokenizer: str
    vocab_size: int
    corpus_sha256: str
    corpus_files: tuple[str, ...]
    seq_len: int
    seed: int
    strategy: str
    within_cluster: str
    n_clusters: int
    embedding_layer: int
    embed_tokens: int
    n_candidates: int
    evo_version: str


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration and held-out sequences with their provenance and the clustering summary."""

    calibration: SequenceSet
    heldout: SequenceSet
    provenance: Provenance
    clusters: tuple[ClusterSummary, ...]
    adjusted_rand_index: float  # agreement of clusters with source files over the candidate pool

    @property
    def seq_len(self) -> int:
        return self.provenance.seq_len

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "provenance": asdict(self.provenance),
            "clusters": [asdict(c) for c in self.clusters],
            "adjusted_rand_index": round(float(self.adjusted_rand_index), 6),
            "calibration": self.calibration.to_dict(),
            "heldout": self.heldout.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationSet":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a calibration set (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {data.get('format_version')} is not {FORMAT_VERSION}")
        prov = dict(data["provenance"])
        prov["corpus_files"] = tuple(prov["corpus_files"])
        provenance = Provenance(**prov)
        return cls(
            calibration=SequenceSet.from_dict(data["calibration"], provenance.seq_len),
            heldout=SequenceSet.from_dict(data["heldout"], provenance.seq_len),
            provenance=provenance,
            clusters=tuple(ClusterSummary(**c) for c in data["clusters"]),
            adjusted_rand_index=float(data["adjusted_rand_index"]),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file, then rename): a crash never leaves half a file."""
        path = Path(path)
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        atomic_write_text(path, text + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationSet":
        path = Path(path)
        if not path.is_file():
            raise EvoError(f"calibration set {path} does not exist: create one with `evo calibrate --out {path}`")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise EvoError(f"calibration set {path} is corrupt or not an evo calibration set ({exc}): recreate it with `evo calibrate`") from exc
