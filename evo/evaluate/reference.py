"""The dense model's next-token distributions on the calibration tokens, kept compactly (top-k,
tail mass, sampled tail tokens) so the search's KL needs one dense pass per run, not per candidate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evo.errors import EvoError
from evo.evaluate.forward import check_batch_size, check_positive_int, forward_batches, per_batch, token_batch
from evo.fileio import atomic_path

# Measured on SmolLM2-135M, 8 × 512 calibration tokens, against the exact KL from full logits, for
# uniform 8/4/3/2-bit and one-layer-dropped candidates: the top-k bound alone reads 4-11 % low at
# k=256 (8-20 % at k=64); adding 16 tail samples brings every estimate within 0.3 % at k=256
# (0.7 % at k=64, but one draw 4.8 % high on a 3-bit model). 272 numbers per position, not 49152.
DEFAULT_TOP_K = 256
DEFAULT_TAIL_SAMPLES = 16
REFERENCE_FORMAT = "evo.dense_reference"
REFERENCE_VERSION = "1"

ProgressCallback = Callable[[int, int], None]  # (batches done, batches total)


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
        ids = token_batch(token_ids, min_length=2)
        check_positive_int("top_k", top_k)
        check_batch_size(batch_size)
        if isinstance(tail_samples, bool) or not isinstance(tail_samples, int) or tail_samples < 0:
            raise EvoError(f"tail_samples={tail_samples!r} must be a non-negative integer")
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("ids", "logprobs", "tail", "samples",
                                                                       "sample_logprobs", "target")}
        for _, batch, logits in forward_batches(model, ids, batch_size, progress=per_batch(progress, batch_size)):
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
        """Write as safetensors, atomically (evo.fileio)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self, name) for name in _REFERENCE_FIELDS}
        with atomic_path(path) as tmp:
            save_file(
                {name: value.contiguous().cpu() for name, value in tensors.items()},
                str(tmp),
                metadata={"format": REFERENCE_FORMAT, "format_version": REFERENCE_VERSION},
            )
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
