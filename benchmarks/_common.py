"""Shared pieces of the artifact benchmarks: compress a fresh copy of the model with a config,
write the artifact, count its bytes on disk, and measure WikiText-2 perplexity of what loads back."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from evo.compress.artifact import load
from evo.compress.config import CompressionConfig
from evo.data.corpus import read_text
from evo.evaluate.perplexity import perplexity, tokenize_for_eval
from evo.compress.model import compress_and_write


def bytes_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


class ArtifactBench:
    """One loaded model whose dense weights are restored before each config is applied."""

    def __init__(self, loaded, device: str, max_tokens: int) -> None:
        self.loaded = loaded
        self.dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        self.device = device
        self.max_tokens = max_tokens
        self.tokens = tokenize_for_eval(loaded.tokenizer, read_text("wikitext2"))
        self.workdir = Path(tempfile.mkdtemp(prefix="evo-bench-"))

    def dense_ppl(self) -> float:
        return perplexity(self.loaded.model, self.tokens, max_tokens=self.max_tokens).ppl

    def run(self, name: str, config: CompressionConfig, stats=None) -> dict:
        self.loaded.model.load_state_dict(self.dense_state)
        tic = time.perf_counter()
        summary = compress_and_write(self.loaded, config, self.workdir / name, stats=stats, overwrite=True)
        model, _ = load(self.workdir / name, device=self.device)
        ppl = perplexity(model, self.tokens, max_tokens=self.max_tokens).ppl
        del model
        return {"name": name, "summary": summary, "on_disk": bytes_on_disk(self.workdir / name), "ppl": ppl,
                "seconds": time.perf_counter() - tic}

    def restore(self) -> None:
        self.loaded.model.load_state_dict(self.dense_state)


def setup_threads() -> None:
    torch.set_num_threads(2)
