"""CCDS, EvoP's cluster-based calibration data sampling: embed every candidate sequence with the
model being compressed, cluster the embeddings, and draw a calibration set that covers every cluster.

Embedding: the hidden state after decoder layer `layer` (default: a quarter of the way in), mean-pooled
over the sequence's first `embed_tokens` tokens and L2-normalised. On SmolLM2-135M and the six-domain
calibration mix, layer 7 of 30 separated domains as well as layer 21 (ARI 0.35 both) and better than the
token embeddings (0.19), the middle layer (0.33) or the last layer (0.11); the forward pass stops there,
so embedding costs a quarter of a full pass, and 128 tokens per sequence were enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from evo.errors import EvoError
from evo.evaluate.forward import Hook, StopForward, forward_batches
from evo.progress import EMBEDDING, KMEANS, StepCallback, counter

ProgressCallback = Callable[[int, int], None]  # (done, total)

STRATEGIES = ("ccds", "random")
WITHIN_CLUSTER = ("spread", "nearest", "random")
AUTO_K_RANGE = (2, 16)  # k tried when n_clusters="auto", bounded by the number of sequences
SILHOUETTE_SAMPLE = 2000  # silhouette is O(n²): score a fixed random subset
SPREAD = "k-means within clusters"  # the progress step of the spread draw's sub-clusterings


def embed_sequences(
    model: torch.nn.Module,
    layers: torch.nn.ModuleList,
    token_ids: np.ndarray,
    *,
    layer: int,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Mean-pooled, L2-normalised hidden states after decoder layer `layer`, one row per sequence."""
    if not -len(layers) <= layer < len(layers):
        raise EvoError(f"--layer {layer} is out of range: the model has {len(layers)} decoder layers")
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden.float().mean(dim=1))
        raise StopForward  # the layers above it are not needed

    rows = []
    for _ in forward_batches(model, token_ids, batch_size, hooks=[Hook(layers[layer], hook)], progress=progress):
        pooled = captured.pop()
        rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(rows, axis=0).astype(np.float32)


@dataclass(frozen=True)
class Selection:
    """Indices into the candidate pool: the calibration set and a disjoint held-out set."""

    calibration: np.ndarray
    heldout: np.ndarray


class CCDSSampler:
    """Cluster-based calibration sampler with scikit-learn conventions.

    Parameters are hyper-parameters only; `fit(embeddings)` learns `labels_`, `cluster_centers_`,
    `n_clusters_` (and `silhouette_scores_` when k is chosen automatically); `sample()` draws.

    strategy="ccds": every cluster gets at least one calibration sequence, the rest proportionally
    to cluster size (largest remainder). Within a cluster that gets q sequences:
    "spread" (default) splits it into q sub-clusters and takes the member nearest to each
    sub-centroid — representative and diverse; "nearest" takes the q members nearest to the
    centroid (on the six-domain mix they were all from the cluster's dominant domain: 4 of 6
    domains covered at k=6, against 6 of 6 for "spread" over 10 seeds); "random" draws q members. strategy="random": a uniform draw of the same size,
    for ablations. The held-out set is drawn from what is left, stratified by cluster but random
    within each one, so it is representative rather than a copy of the centroids.
    """

    def __init__(
        self,
        n_samples: int = 32,
        n_clusters: int | str = 8,
        n_heldout: int = 32,
        *,
        strategy: str = "ccds",
        within_cluster: str = "spread",
        random_state: int = 0,
    ) -> None:
        self.n_samples = n_samples
        self.n_clusters = n_clusters
        self.n_heldout = n_heldout
        self.strategy = strategy
        self.within_cluster = within_cluster
        self.random_state = random_state

    def _validate(self, n_sequences: int) -> None:
        if self.strategy not in STRATEGIES:
            raise EvoError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.within_cluster not in WITHIN_CLUSTER:
            raise EvoError(f"unknown within-cluster choice {self.within_cluster!r}: use one of {', '.join(WITHIN_CLUSTER)}")
        if self.n_samples < 1:
            raise EvoError(f"--samples {self.n_samples} must be at least 1")
        if self.n_heldout < 0:
            raise EvoError(f"--heldout {self.n_heldout} must be 0 or more")
        if self.n_clusters != "auto":
            if not isinstance(self.n_clusters, int) or self.n_clusters < 1:
                raise EvoError(f"--clusters {self.n_clusters!r} must be a positive integer or 'auto'")
            if self.n_clusters > n_sequences:
                raise EvoError(
                    f"--clusters {self.n_clusters} is larger than the {n_sequences} sequences in the corpus: "
                    "use fewer clusters, a smaller --seq-len, or more text"
                )
            if self.strategy == "ccds" and self.n_samples < self.n_clusters:
                raise EvoError(
                    f"--samples {self.n_samples} is smaller than --clusters {self.n_clusters}: "
                    "CCDS draws at least one sequence per cluster, so ask for more samples or fewer clusters"
                )
        if self.n_samples + self.n_heldout > n_sequences:
            raise EvoError(
                f"--samples {self.n_samples} + --heldout {self.n_heldout} exceed the {n_sequences} sequences "
                "in the corpus: ask for fewer, use a smaller --seq-len, or pass more text"
            )

    def _spread(self, members: np.ndarray, count: int) -> np.ndarray:
        """The member nearest to each centroid of `count` sub-clusters of one cluster."""
        if count >= len(members):
            return members
        points = self.embeddings_[members]
        sub = KMeans(n_clusters=count, n_init=3, random_state=self.random_state).fit(points)
        chosen = []
        for j in range(count):
            inside = np.flatnonzero(sub.labels_ == j)
            distances = np.linalg.norm(points[inside] - sub.cluster_centers_[j], axis=1)
            chosen.append(members[inside[np.lexsort((inside, distances))[0]]])
        return np.asarray(chosen, dtype=np.int64)

    def fit(self, embeddings: np.ndarray, progress: ProgressCallback | None = None) -> "CCDSSampler":
        """Cluster the embeddings; `progress(done, total)` counts the KMeans fits (one per k tried)."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        self.embeddings_ = embeddings
        n = embeddings.shape[0]
        self._validate(n)
        if self.n_clusters == "auto":
            low, high = AUTO_K_RANGE
            high = min(high, n - 1, self.n_samples if self.strategy == "ccds" else high)
            if high < low:
                raise EvoError(f"cannot choose k automatically from {n} sequences: pass --clusters")
            rng = np.random.default_rng(self.random_state)
            subset = rng.choice(n, size=min(n, SILHOUETTE_SAMPLE), replace=False)
            self.silhouette_scores_ = {}
            fits = {}
            if progress:
                progress(0, high - low + 1)
            for k in range(low, high + 1):
                fits[k] = self._kmeans(k).fit(embeddings)
                if progress:
                    progress(k - low + 1, high - low + 1)
                labels = fits[k].labels_[subset]
                self.silhouette_scores_[k] = (
                    float(silhouette_score(embeddings[subset], labels)) if len(set(labels)) > 1 else -1.0
                )
            best = max(self.silhouette_scores_, key=lambda k: (self.silhouette_scores_[k], -k))
            kmeans = fits[best]
        else:
            if progress:
                progress(0, 1)
            kmeans = self._kmeans(int(self.n_clusters)).fit(embeddings)
            if progress:
                progress(1, 1)
        self.n_clusters_ = int(kmeans.n_clusters)
        self.labels_ = kmeans.labels_.astype(np.int64)
        self.cluster_centers_ = kmeans.cluster_centers_
        self.distances_ = np.linalg.norm(embeddings - self.cluster_centers_[self.labels_], axis=1)
        self.n_sequences_ = n
        return self

    def _kmeans(self, k: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=10, random_state=self.random_state)

    def sample(self, progress: ProgressCallback | None = None) -> Selection:
        """Draw; `progress(done, total)` counts the calibration set's clusters drawn from (with
        within_cluster="spread" each one is a KMeans fit of its own)."""
        if not hasattr(self, "labels_"):
            raise RuntimeError("CCDSSampler.sample() called before fit()")
        rng = np.random.default_rng(self.random_state)
        everything = np.arange(self.n_sequences_)
        if self.strategy == "random":
            chosen = rng.choice(everything, size=self.n_samples, replace=False)
            rest = np.setdiff1d(everything, chosen)
            heldout = rng.choice(rest, size=self.n_heldout, replace=False)
            return Selection(calibration=np.sort(chosen), heldout=np.sort(heldout))
        chosen = self._stratified(everything, self.n_samples, rng, self.within_cluster, progress)
        rest = np.setdiff1d(everything, chosen)
        heldout = self._stratified(rest, self.n_heldout, rng, "random")
        return Selection(calibration=np.sort(chosen), heldout=np.sort(heldout))

    def _stratified(self, pool: np.ndarray, count: int, rng: np.random.Generator, within: str,
                    progress: ProgressCallback | None = None) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        labels = self.labels_[pool]
        sizes = np.bincount(labels, minlength=self.n_clusters_)
        quotas = allocate_quotas(sizes, count)
        picked = []
        drawn_from = int(np.count_nonzero(quotas))
        for cluster in range(self.n_clusters_):
            members = pool[labels == cluster]
            if quotas[cluster] == 0:
                continue
            if progress:
                progress(len(picked), drawn_from)
            if within == "nearest":
                order = np.lexsort((members, self.distances_[members]))  # ties broken by index
                picked.append(members[order[: quotas[cluster]]])
            elif within == "spread":
                picked.append(self._spread(members, int(quotas[cluster])))
            else:
                picked.append(rng.choice(members, size=quotas[cluster], replace=False))
        if progress:
            progress(len(picked), drawn_from)
        return np.concatenate(picked).astype(np.int64)


def allocate_quotas(sizes: np.ndarray, count: int) -> np.ndarray:
    """How many to draw from each cluster: one from each non-empty cluster (while count allows),
    the rest in proportion to size by largest remainder, never more than a cluster holds."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if count > sizes.sum():
        raise EvoError(f"cannot draw {count} sequences from {int(sizes.sum())}")
    quotas = np.zeros_like(sizes)
    nonempty = np.flatnonzero(sizes)
    if count < len(nonempty):
        # fewer draws than clusters: the largest clusters get one each
        quotas[nonempty[np.argsort(-sizes[nonempty], kind="stable")[:count]]] = 1
        return quotas
    quotas[nonempty] = 1
    remaining = count - len(nonempty)
    while remaining > 0:
        room = sizes - quotas
        share = remaining * room / room.sum()
        whole = np.minimum(np.floor(share).astype(np.int64), room)
        quotas += whole
        remaining -= int(whole.sum())
        if remaining == 0:
            break
        fraction = np.where(room - whole > 0, share - np.floor(share), -1.0)
        for cluster in np.argsort(-fraction, kind="stable")[:remaining]:
            if quotas[cluster] < sizes[cluster]:
                quotas[cluster] += 1
                remaining -= 1
    return quotas


@dataclass(frozen=True)
class CalibrationConfig:
    """Hyper-parameters of one CCDS draw; validated here so bad values fail before any model work."""

    samples: int = 32
    clusters: int | str = 8
    heldout: int = 32
    seq_len: int = 512
    seed: int = 0
    strategy: str = "ccds"
    within_cluster: str = "spread"
    layer: int | None = None  # decoder layer whose output is embedded; None = num_layers // 4
    embed_tokens: int | None = 128  # pool the first this many tokens of each sequence; None = all
    max_candidates: int | None = 4096  # embed at most this many sequences (a seeded random subset)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise EvoError(f"--seq-len {self.seq_len} is too small: use at least 2 tokens")
        if self.max_candidates is not None and self.max_candidates < self.samples + self.heldout:
            raise EvoError(
                f"--max-candidates {self.max_candidates} is below --samples + --heldout "
                f"({self.samples + self.heldout}): raise it"
            )
        if self.embed_tokens is not None and self.embed_tokens < 1:
            raise EvoError(f"--embed-tokens {self.embed_tokens} must be at least 1")
        if self.batch_size < 1:
            raise EvoError(f"--batch-size {self.batch_size} must be at least 1")
        CCDSSampler(self.samples, self.clusters, self.heldout, strategy=self.strategy,
                    within_cluster=self.within_cluster)._validate(n_sequences=1 << 62)


SNIPPET_CHARS = 60


def build_calibration_set(
    loaded,
    corpus,
    config: CalibrationConfig,
    *,
    on_embed_progress: ProgressCallback | None = None,
    progress: StepCallback | None = None,
):
    """Tokenize → cut → embed with the model → cluster → draw. Returns a CalibrationSet.

    `progress` hears the steps embedding (sequences), k-means (fits) and, with within-cluster
    "spread", the per-cluster sub-clustering (clusters); `on_embed_progress(done, total)` is the
    older callback for the embedding alone."""
    from sklearn.metrics import adjusted_rand_score

    from evo import __version__
    from evo.data.calibset import CalibrationSet, ClusterSummary, Provenance, SequenceSet
    from evo.data.corpus import tokenize_corpus
    from evo.modelio import find_decoder_layers

    pool = tokenize_corpus(corpus, loaded.tokenizer, config.seq_len)
    if config.max_candidates is not None and len(pool) > config.max_candidates:
        rng = np.random.default_rng(config.seed)
        pool = pool.subset(np.sort(rng.choice(len(pool), size=config.max_candidates, replace=False)))
    sampler = CCDSSampler(
        config.samples,
        config.clusters,
        config.heldout,
        strategy=config.strategy,
        within_cluster=config.within_cluster,
        random_state=config.seed,
    )
    sampler._validate(len(pool))  # fail on sizes before the slow embedding pass
    _, layers = find_decoder_layers(loaded.model)
    layer = len(layers) // 4 if config.layer is None else config.layer
    embeddings = embed_sequences(
        loaded.model,
        layers,
        pool.token_ids[:, : config.embed_tokens],
        layer=layer,
        batch_size=config.batch_size,
        progress=on_embed_progress or counter(progress, EMBEDDING, "sequences"),
    )
    layer %= len(layers)  # record -1 as the index it meant
    sampler.fit(embeddings, progress=counter(progress, KMEANS, "fits"))
    selection = sampler.sample(progress=counter(progress, SPREAD, "clusters"))

    def sequence_set(indices: np.ndarray) -> SequenceSet:
        part = pool.subset(indices)
        return SequenceSet(
            token_ids=part.token_ids,
            sources=part.sources,
            paths=part.paths,
            documents=part.documents,
            clusters=tuple(int(sampler.labels_[i]) for i in indices),
            pool_indices=tuple(int(i) for i in indices),
        )

    calibration = sequence_set(selection.calibration)
    summaries = []
    for cluster in range(sampler.n_clusters_):
        members = np.flatnonzero(sampler.labels_ == cluster)
        sources = [pool.sources[i] for i in members]
        dominant = max(sorted(set(sources)), key=sources.count)
        central = int(members[np.argmin(sampler.distances_[members])])
        text = loaded.tokenizer.decode(pool.token_ids[central][:32].tolist(), skip_special_tokens=True)
        summaries.append(
            ClusterSummary(
                cluster=cluster,
                size=int(len(members)),
                drawn=int(sum(1 for c in calibration.clusters if c == cluster)),
                dominant_source=dominant,
                dominant_share=round(sources.count(dominant) / len(sources), 4),
                snippet=" ".join(text.split())[:SNIPPET_CHARS],
            )
        )
    tokenizer = loaded.tokenizer
    provenance = Provenance(
        model_id=loaded.info.model_id,
        tokenizer=f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}",
        vocab_size=int(len(tokenizer)),
        corpus_sha256=corpus.sha256,
        corpus_files=tuple(f.path for f in corpus.files),
        seq_len=config.seq_len,
        seed=config.seed,
        strategy=config.strategy,
        within_cluster=config.within_cluster,
        n_clusters=sampler.n_clusters_,
        embedding_layer=int(layer),
        embed_tokens=int(min(config.embed_tokens or config.seq_len, config.seq_len)),
        n_candidates=len(pool),
        evo_version=__version__,
    )
    return CalibrationSet(
        calibration=calibration,
        heldout=sequence_set(selection.heldout),
        provenance=provenance,
        clusters=tuple(summaries),
        adjusted_rand_index=float(adjusted_rand_score(pool.sources, sampler.labels_)),
    )
