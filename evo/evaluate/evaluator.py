"""The search's quality objective: KL of a candidate's next-token distributions to the dense model's
(from a compact top-k reference computed once) or its perplexity, on the calibration tokens.

Candidates are materialised in one resident model by copying cached dequantized weights into its
parameters and swapping drop modules in and out, never by reloading. Stage 1 screens on a prefix
of the tokens (causal attention: a prefix's logits are the full sequence's, so the reference is
sliced); stage 2 uses every calibration sequence at full length.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evo.compress import ActivationStats, compress_tensor
from evo.compress.structure import apply_block_drop, replaced_modules
from evo.compress.model import _check_matches, plan_model
from evo.compress.config import CompressionConfig, tensor_shapes
from evo.errors import EvoError
from evo.compress.sizemodel import stats_for
from evo.types import ModelInfo

METRICS = ("kl", "ppl")
SCREEN_STAGE = 1  # the engines' stage numbers (evo.search.engines.deap_engine)
FINAL_STAGE = 2
# Measured on SmolLM2-135M, 8 × 512 calibration tokens, against the exact KL from full logits, for
# uniform 8/4/3/2-bit and one-layer-dropped candidates: the top-k bound alone reads 4-11 % low at
# k=256 (8-20 % at k=64); adding 16 tail samples brings every estimate within 0.3 % at k=256
# (0.7 % at k=64, but one draw 4.8 % high on a 3-bit model). 272 numbers per position, not 49152.
DEFAULT_TOP_K = 256
DEFAULT_TAIL_SAMPLES = 16
DEFAULT_CACHE_BYTES = 2 << 30  # dequantized weights kept for reuse, per Evaluator
REFERENCE_FORMAT = "evo.dense_reference"
REFERENCE_VERSION = "1"

ProgressCallback = Callable[[int, int], None]  # (batches done, batches total)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvoError(f"FitnessConfig.{name}={value!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class FitnessConfig:
    """How candidates are scored.

    metric: "kl" (mean KL(dense ‖ candidate) per token, nats, from the top-k reference) or "ppl"
        (perplexity of the calibration tokens). Lower is better for both.
    screen_sequences, screen_tokens: stage 1 scores the first screen_sequences calibration
        sequences truncated to screen_tokens tokens; stage 2 scores all of them in full.
    top_k: dense log-probabilities kept per position (the rest is one tail outcome).
    tail_samples: tokens drawn from the rest per position, for the unbiased tail term of the KL
        (0 keeps only the top-k lower bound; see topk_kl).
    batch_size: sequences per forward pass.
    """

    metric: str = "kl"
    screen_sequences: int = 4
    screen_tokens: int = 128
    top_k: int = DEFAULT_TOP_K
    tail_samples: int = DEFAULT_TAIL_SAMPLES
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise EvoError(f"FitnessConfig.metric={self.metric!r} is unknown: use one of {list(METRICS)}")
        for name in ("screen_sequences", "top_k", "batch_size"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.tail_samples, bool) or not isinstance(self.tail_samples, int) or self.tail_samples < 0:
            raise EvoError(f"FitnessConfig.tail_samples={self.tail_samples!r} must be a non-negative integer")
        if _positive_int("screen_tokens", self.screen_tokens) < 2:
            raise EvoError("FitnessConfig.screen_tokens must be at least 2: perplexity needs a predicted token")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitnessConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise EvoError(f"unknown FitnessConfig field(s) {unknown}")
        return cls(**data)


# --- KL from full logits and from the compact reference ----------------------------------------------


def exact_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats at every position, p = softmax(reference_logits), q = softmax(logits),
    both [..., vocab]; float32 [...]."""
    log_p = torch.log_softmax(reference_logits.float(), dim=-1)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def topk_kl(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    tail_ids: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(p ‖ q) at every position from p's top-k tokens, its tail mass and (optionally) tokens
    sampled from its tail; q = softmax(logits). float32 [...] for logits [..., vocab], top-k
    tensors [..., k], tail_logprob [...], tail samples [..., m].

    By the chain rule KL(p ‖ q) = KL(p̄ ‖ q̄) + p_tail · KL(p̃ ‖ q̃), where p̄, q̄ are coarse-grained
    to the k tokens plus one tail outcome and p̃, q̃ are the distributions inside the tail.
    Without samples only the first term is returned: a lower bound of the KL (coarse-graining
    never increases it), exact when k covers the vocabulary. With m samples i ~ p̃ the second
    term is estimated without bias as p_tail · mean(ρ − 1 − log ρ), ρ = q̃_i / p̃_i: E[ρ] = 1
    makes it unbiased, and every term is ≥ 0 and ≈ (log ρ)²/2, which keeps the variance small
    except where q lifts a token p finds rare far above p (terms ≈ ρ); a larger k tames that.
    q's tail mass is a log-sum-exp over the tokens outside the top k, not 1 − Σ q_i, so it stays
    accurate when the top k hold nearly all the mass.
    """
    log_q = torch.log_softmax(logits.float(), dim=-1)
    ids = topk_ids.long()
    log_q_top = log_q.gather(-1, ids)
    log_q_sampled = log_q.gather(-1, tail_ids.long()) if tail_ids is not None and tail_ids.shape[-1] else None
    log_q.scatter_(-1, ids, float("-inf"))  # log_q is ours: reuse it instead of a second vocab-sized copy
    log_q_tail = torch.logsumexp(log_q, dim=-1)
    log_p_top = topk_logprobs.float()
    log_p_tail = tail_logprob.float()
    kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1)
    empty_tail = torch.isneginf(log_p_tail)  # k = vocab: 0 · (−inf − x) would be nan
    tail = log_p_tail.exp() * (log_p_tail - log_q_tail)
    if log_q_sampled is not None:
        # log ρ in float64: ρ − 1 − log ρ cancels to (log ρ)²/2, tiny for a good candidate.
        log_rho = (log_q_sampled.double() - log_q_tail.double()[..., None]) - (
            tail_logprobs.double() - log_p_tail.double()[..., None]
        )
        inside = (torch.expm1(log_rho) - log_rho).mean(-1)
        tail = tail + (log_p_tail.double().exp() * inside).float()
    return kl + torch.where(empty_tail, torch.zeros_like(tail), tail)


# --- the dense reference -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DenseReference:
    """The dense model's next-token distributions on the calibration tokens, compactly: per position
    the top-k token ids and log-probabilities (sorted, most likely first), the log of the remaining
    (tail) mass, m tokens drawn from the tail with their log-probabilities (for topk_kl's unbiased
    tail term), and the log-probability of the token that follows (for the dense perplexity).

    32 sequences × 512 positions × (k=256 + m=16) take 36 MB; full float32 logits of a 49k
    vocabulary would take 3.2 GB, which is why only this much of each distribution is kept.
    """

    token_ids: torch.Tensor  # int32 [n, L]
    topk_ids: torch.Tensor  # int32 [n, L, k]
    topk_logprobs: torch.Tensor  # float32 [n, L, k]
    tail_logprob: torch.Tensor  # float32 [n, L]; -inf when k covers the vocabulary
    tail_ids: torch.Tensor  # int32 [n, L, m], drawn with replacement from p restricted to the tail
    tail_logprobs: torch.Tensor  # float32 [n, L, m]
    target_logprob: torch.Tensor  # float32 [n, L - 1]: log p(token t+1 | tokens ≤ t)

    def __post_init__(self) -> None:
        n, length = self.token_ids.shape
        k = self.topk_ids.shape[-1] if self.topk_ids.ndim == 3 else -1
        m = self.tail_ids.shape[-1] if self.tail_ids.ndim == 3 else -1
        expected = {
            "topk_ids": (n, length, k),
            "topk_logprobs": (n, length, k),
            "tail_logprob": (n, length),
            "tail_ids": (n, length, m),
            "tail_logprobs": (n, length, m),
            "target_logprob": (n, length - 1),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise EvoError(
                    f"DenseReference.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}: "
                    "the reference is corrupt; delete it and it is recomputed"
                )

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[-1])

    @property
    def tail_samples(self) -> int:
        return int(self.tail_ids.shape[-1])

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        model: nn.Module,
        token_ids,
        *,
        top_k: int = DEFAULT_TOP_K,
        tail_samples: int = DEFAULT_TAIL_SAMPLES,
        batch_size: int = 4,
        seed: int = 0,
        progress: ProgressCallback | None = None,
    ) -> DenseReference:
        """Run the dense model once over token_ids [n, L] on its device and keep, per position, the
        top-k and `tail_samples` tokens drawn from the rest (top_k at or above the vocabulary keeps
        the whole distribution and draws nothing). `seed` makes the draws reproducible."""
        ids = _as_token_batch(token_ids)
        _positive_int("top_k", top_k)
        _positive_int("batch_size", batch_size)
        if isinstance(tail_samples, bool) or not isinstance(tail_samples, int) or tail_samples < 0:
            raise EvoError(f"tail_samples={tail_samples!r} must be a non-negative integer")
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("ids", "logprobs", "tail", "samples",
                                                                       "sample_logprobs", "target")}
        batches = range(0, ids.shape[0], batch_size)
        if progress:
            progress(0, len(batches))
        for done, start in enumerate(batches, 1):
            batch = ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            k = min(top_k, logits.shape[-1])
            m = tail_samples if k < logits.shape[-1] else 0
            for row in range(batch.shape[0]):  # one float32 [L, vocab] at a time
                log_p = torch.log_softmax(logits[row].float(), dim=-1)
                values, indices = log_p.topk(k, dim=-1)
                parts["target"].append(log_p[:-1].gather(-1, batch[row, 1:, None]).squeeze(-1).cpu())
                log_p.scatter_(-1, indices, float("-inf"))
                tail = torch.logsumexp(log_p, dim=-1)
                samples = torch.empty(log_p.shape[0], m, dtype=torch.long, device=device)
                if m:
                    # The top-k have probability 0 here, so every draw lands in the tail.
                    inside = torch.exp(log_p - tail[:, None])
                    samples = torch.multinomial(inside, m, replacement=True, generator=generator)
                    del inside
                parts["sample_logprobs"].append(log_p.gather(-1, samples).cpu())
                parts["samples"].append(samples.to(torch.int32).cpu())
                parts["tail"].append(tail.cpu())
                parts["ids"].append(indices.to(torch.int32).cpu())
                parts["logprobs"].append(values.cpu())
            del logits
            if progress:
                progress(done, len(batches))
        return cls(
            token_ids=ids.to(torch.int32),
            topk_ids=torch.stack(parts["ids"]),
            topk_logprobs=torch.stack(parts["logprobs"]),
            tail_logprob=torch.stack(parts["tail"]),
            tail_ids=torch.stack(parts["samples"]),
            tail_logprobs=torch.stack(parts["sample_logprobs"]),
            target_logprob=torch.stack(parts["target"]),
        )

    def perplexity(self, sequences: int | None = None, tokens: int | None = None) -> float:
        """The dense model's perplexity on the first `sequences` sequences cut to `tokens` tokens."""
        n = sequences or self.token_ids.shape[0]
        length = tokens or self.token_ids.shape[1]
        return math.exp(float(-self.target_logprob[:n, : length - 1].double().mean()))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as safetensors, atomically (a temp file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self, name) for name in _REFERENCE_FIELDS}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(
            {name: value.contiguous().cpu() for name, value in tensors.items()},
            str(tmp),
            metadata={"format": REFERENCE_FORMAT, "format_version": REFERENCE_VERSION},
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DenseReference:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except FileNotFoundError:
            raise EvoError(f"dense reference {path} does not exist: compute it with DenseReference.compute") from None
        except (SafetensorError, OSError) as exc:
            raise EvoError(f"dense reference {path} is corrupt ({exc}): delete it and it is recomputed") from None
        if metadata.get("format") != REFERENCE_FORMAT or metadata.get("format_version") != REFERENCE_VERSION:
            raise EvoError(f"{path} is not a dense reference of this evo version: delete it and it is recomputed")
        missing = [name for name in _REFERENCE_FIELDS if name not in tensors]
        if missing:
            raise EvoError(f"dense reference {path} lacks {missing}: delete it and it is recomputed")
        return cls(**{name: tensors[name] for name in _REFERENCE_FIELDS})


_REFERENCE_FIELDS = (
    "token_ids", "topk_ids", "topk_logprobs", "tail_logprob", "tail_ids", "tail_logprobs", "target_logprob"
)


def _as_token_batch(token_ids) -> torch.Tensor:
    if isinstance(token_ids, torch.Tensor):
        ids = token_ids.detach().cpu()
    else:
        array = np.asarray(token_ids)
        if array.dtype.kind not in "iu":
            raise EvoError(f"token ids must be integers, got {array.dtype}")
        ids = torch.from_numpy(array.astype(np.int64))
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise EvoError(f"token ids must be [sequences, length ≥ 2], got shape {tuple(ids.shape)}")
    if ids.is_floating_point():
        raise EvoError(f"token ids must be integers, got {ids.dtype}")
    return ids.long()


# --- the evaluator -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationStats:
    """What the evaluator did, for the progress display: totals and the last evaluation."""

    evaluations: int = 0
    seconds: float = 0.0  # in evaluate(), all evaluations
    swapped: int = 0  # tensors whose resident weights were replaced, all evaluations
    compressed: int = 0  # of those, compressed anew (the weight cache missed)
    last_seconds: float = 0.0
    last_swapped: int = 0
    last_compressed: int = 0
    last_stage: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0


@dataclass
class _WeightCache:
    """Dequantized weights by (tensor, setting key), least recently used first, bounded in bytes."""

    limit: int
    entries: OrderedDict = field(default_factory=OrderedDict)
    nbytes: int = 0

    def get(self, key) -> torch.Tensor | None:
        weight = self.entries.get(key)
        if weight is not None:
            self.entries.move_to_end(key)
        return weight

    def put(self, key, weight: torch.Tensor) -> None:
        size = weight.numel() * weight.element_size()
        if size > self.limit or key in self.entries:
            return
        self.entries[key] = weight
        self.nbytes += size
        while self.nbytes > self.limit:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


class Evaluator:
    """Scores CompressionConfigs on one resident model (see the module docstring).

    model: the loaded, uncompressed model, changed in place from the first evaluation on (restore()
        puts it back); info: its description. token_ids: the calibration tokens [n, L]; the
        reference must have been computed on them (needed for metric "kl"). stats: activation
        statistics for wanda/linf pruning. cache_bytes bounds the cache of dequantized weights
        (on the model's device). base_weights: the original tensors by name (e.g. a SizeModel's
        weights); by default they are copied to the CPU here.
    """

    def __init__(
        self,
        model: nn.Module,
        info: ModelInfo,
        token_ids,
        fitness: FitnessConfig,
        reference: DenseReference | None = None,
        *,
        stats: Mapping[str, ActivationStats] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        base_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(fitness, FitnessConfig):
            raise EvoError(f"fitness must be a FitnessConfig, got {type(fitness).__name__}")
        _check_matches(model, info)
        self.model = model.eval()
        self.info = info
        self.fitness = fitness
        self.activation_stats = stats
        self.token_ids = _as_token_batch(token_ids)
        n, length = self.token_ids.shape
        if fitness.screen_sequences > n or fitness.screen_tokens > length:
            raise EvoError(
                f"the screening stage ({fitness.screen_sequences} sequences × {fitness.screen_tokens} tokens) "
                f"must fit the calibration set ({n} × {length}): lower it or draw more calibration samples"
            )
        self.device = next(model.parameters()).device
        self.reference = self._check_reference(reference)
        self._params = dict(model.named_parameters())
        shapes = tensor_shapes(info)
        if base_weights is None:
            base_weights = {name: self._params[name].detach().to("cpu", copy=True) for name in shapes}
        for name, shape in shapes.items():
            weight = base_weights.get(name)
            if weight is None or tuple(weight.shape) != tuple(shape) or weight.dtype != self._params[name].dtype:
                raise EvoError(f"base_weights[{name!r}] is missing or differs from the model's tensor: pass the "
                               "uncompressed model's named parameters")
        self._originals = base_weights
        self._resident: dict[str, str | None] = dict.fromkeys(shapes)  # tensor → setting key, None = original
        self._replaced: dict[tuple[int, str], dict[str, nn.Module]] = {}  # (layer, block) → its original modules
        self._layer_drops_checked = False
        self._cache = _WeightCache(int(cache_bytes))
        self._stats = EvaluationStats()

    def _check_reference(self, reference: DenseReference | None) -> DenseReference | None:
        if reference is None:
            if self.fitness.metric == "kl":
                raise EvoError("metric 'kl' needs the dense reference: pass DenseReference.compute(model, tokens)")
            return None
        if tuple(reference.token_ids.shape) != tuple(self.token_ids.shape) or not torch.equal(
            reference.token_ids.long(), self.token_ids
        ):
            raise EvoError(
                "the dense reference was computed on other tokens than the calibration set: delete it and it is "
                "recomputed"
            )
        whole = reference.top_k >= self.info.vocab_size  # no tail: nothing to sample
        if reference.top_k != min(self.fitness.top_k, self.info.vocab_size) or (
            reference.tail_samples < self.fitness.tail_samples and not whole
        ):
            raise EvoError(
                f"the dense reference keeps the top {reference.top_k} tokens and {reference.tail_samples} tail samples, "
                f"but top_k={self.fitness.top_k} and tail_samples={self.fitness.tail_samples} are asked: delete it and "
                "it is recomputed"
            )
        # The draws are independent, so the first m of them are m draws.
        m = min(self.fitness.tail_samples, reference.tail_samples)
        # Kept on the model's device, in the dtypes the KL reads: sliced per row, never copied back.
        self._reference_rows = (
            reference.topk_ids.to(self.device, torch.long),
            reference.topk_logprobs.to(self.device, torch.float32),
            reference.tail_logprob.to(self.device, torch.float32),
            reference.tail_ids[..., :m].to(self.device, torch.long),
            reference.tail_logprobs[..., :m].to(self.device, torch.float32),
        )
        return reference

    # --- public API -----------------------------------------------------------------------------------

    @property
    def stats(self) -> EvaluationStats:
        return EvaluationStats(
            **{**asdict(self._stats), "cache_entries": len(self._cache.entries), "cache_bytes": self._cache.nbytes}
        )

    def stage_shape(self, stage: int) -> tuple[int, int]:
        """(sequences, tokens) a stage scores."""
        if stage == SCREEN_STAGE:
            return self.fitness.screen_sequences, self.fitness.screen_tokens
        if stage == FINAL_STAGE:
            return tuple(self.token_ids.shape)  # type: ignore[return-value]
        raise EvoError(f"stage {stage!r} is unknown: use {SCREEN_STAGE} (screen) or {FINAL_STAGE} (full)")

    @torch.no_grad()
    def evaluate(self, config: CompressionConfig, stage: int = FINAL_STAGE,
                 progress: ProgressCallback | None = None) -> float:
        """The config's quality at `stage`, lower is better: mean KL in nats per token, or perplexity."""
        sequences, tokens = self.stage_shape(stage)
        tic = time.perf_counter()
        swapped, compressed = self.materialise(config)
        ids = self.token_ids[:sequences, :tokens]
        if self.fitness.metric == "kl":
            quality = self._kl(ids, progress)
        else:
            quality = self._perplexity(ids, progress)
        if not math.isfinite(quality):
            raise RuntimeError(f"the evaluation of a candidate gave {quality}: the model produced non-finite logits")
        seconds = time.perf_counter() - tic
        s = self._stats
        self._stats = EvaluationStats(
            evaluations=s.evaluations + 1,
            seconds=s.seconds + seconds,
            swapped=s.swapped + swapped,
            compressed=s.compressed + compressed,
            last_seconds=seconds,
            last_swapped=swapped,
            last_compressed=compressed,
            last_stage=stage,
        )
        return quality

    def baseline(self, stage: int = FINAL_STAGE) -> float:
        """The dense model's quality at `stage`: 0 for KL, its perplexity for ppl (needs the reference)."""
        sequences, tokens = self.stage_shape(stage)
        if self.fitness.metric == "kl":
            return 0.0
        if self.reference is None:
            raise EvoError("the dense perplexity needs the dense reference")
        return self.reference.perplexity(sequences, tokens)

    @torch.no_grad()
    def materialise(self, config: CompressionConfig) -> tuple[int, int]:
        """Make the resident model the one compress_model(model, info, config) would give, but with
        dropped layers zeroed in place instead of removed. Returns (tensors swapped, of which
        compressed anew)."""
        if not isinstance(config, CompressionConfig):
            raise EvoError(f"config must be a CompressionConfig, got {type(config).__name__}")
        plan = plan_model(self.info, config)  # validates the config against the model
        self._set_drops(config.drops)
        swapped = compressed = 0
        for tensor in plan.tensors:
            key = tensor.setting.key()
            if self._resident[tensor.source] == key:
                continue
            param = self._params[tensor.source]
            weight = self._cache.get((tensor.source, key))
            if weight is None:
                act = stats_for(self.activation_stats, tensor.source, tensor.setting)
                original = self._originals[tensor.source].to(param.device)
                # compress_model's own steps on the model's device, so the weights are bit-identical.
                weight = compress_tensor(original, tensor.setting, act).dequantized().to(
                    device=param.device, dtype=param.dtype
                )
                self._cache.put((tensor.source, key), weight)
                compressed += 1
            param.data.copy_(weight)
            self._resident[tensor.source] = key
            swapped += 1
        return swapped, compressed

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original weights and modules back: the model is the uncompressed one again."""
        self._set_drops({})
        for name, key in self._resident.items():
            if key is not None:
                self._params[name].data.copy_(self._originals[name])
                self._resident[name] = None

    # --- materialisation ------------------------------------------------------------------------------

    def _set_drops(self, drops: Mapping[int, str]) -> None:
        """Swap zero modules in for the dropped blocks and the originals back for the others. A
        dropped layer has both blocks zeroed: in a residual block that is the identity."""
        wanted = set()
        for index, drop in drops.items():
            if drop in ("attention", "layer"):
                wanted.add((index, "attention"))
            if drop in ("mlp", "layer"):
                wanted.add((index, "mlp"))
        for block in [b for b in self._replaced if b not in wanted]:
            for path, module in self._replaced.pop(block).items():
                self.model.set_submodule(path, module)
        for index, block in sorted(wanted - set(self._replaced)):
            layer = self.info.layers[index]
            try:
                paths = replaced_modules(layer, block)
            except EvoError as exc:
                raise EvoError(f"cannot drop layer {index} of this model by zeroing its blocks: {exc}") from None
            self._replaced[(index, block)] = {path: self.model.get_submodule(path) for path in paths}
            apply_block_drop(self.model, layer, block)

    def _check_layer_drops(self, ids: torch.Tensor) -> None:
        """Once per evaluator, on the first config that drops whole layers: each such layer must
        pass its input through unchanged, or zeroing is not removing it (post-norm blocks)."""
        dropped = sorted(i for i, block in self._replaced if block == "attention" and (i, "mlp") in self._replaced)
        if not dropped or self._layer_drops_checked:
            return
        layers = self.model.get_submodule(self.info.layers_path)
        failures: list[int] = []

        def hook(index):
            def check(module, args, kwargs, output):
                hidden = args[0] if args else kwargs.get("hidden_states")
                out = output[0] if isinstance(output, (tuple, list)) else output
                if hidden is None or not torch.equal(hidden, out):
                    failures.append(index)

            return check

        handles = [layers[i].register_forward_hook(hook(i), with_kwargs=True) for i in dropped]
        try:
            self.model(input_ids=ids[:1, : min(8, ids.shape[1])].to(self.device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        if failures:
            raise EvoError(
                f"layer {failures[0]} of {self.info.architecture} does not reduce to the identity when its attention "
                "and MLP output zero (not a pre-norm residual block), so dropped layers cannot be evaluated on the "
                "resident model: use a search space without layer drops"
            )
        self._layer_drops_checked = True

    # --- metrics ------------------------------------------------------------------------------------------

    def _batches(self, ids: torch.Tensor, progress: ProgressCallback | None):
        self._check_layer_drops(ids)
        size = self.fitness.batch_size
        starts = range(0, ids.shape[0], size)
        for done, start in enumerate(starts, 1):
            batch = ids[start : start + size].to(self.device)
            logits = self.model(input_ids=batch, use_cache=False).logits
            yield start, batch, logits
            del logits
            if progress:
                progress(done, len(starts))

    def _kl(self, ids: torch.Tensor, progress: ProgressCallback | None) -> float:
        sequences, tokens = ids.shape
        total = 0.0  # a Python float (float64): thousands of positions lose nothing
        for start, batch, logits in self._batches(ids, progress):
            for row in range(batch.shape[0]):  # one float32 [tokens, vocab] at a time
                seq = start + row
                kl = topk_kl(logits[row], *(part[seq, :tokens] for part in self._reference_rows))
                total += float(kl.double().sum())
        return total / (sequences * tokens)

    def _perplexity(self, ids: torch.Tensor, progress: ProgressCallback | None) -> float:
        sequences, tokens = ids.shape
        total = 0.0
        for _, batch, logits in self._batches(ids, progress):
            for row in range(batch.shape[0]):  # evaluate.perplexity's reduction, row by row
                total += float(F.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="sum"))
        return math.exp(total / (sequences * (tokens - 1)))
