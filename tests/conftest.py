"""Shared fixtures over tests/tiny.py (the one home of the tiny models and tokenizers).

Seconds per test; nothing is downloaded.
"""

import torch

# Tiny tensors gain nothing from threads, and OpenMP barriers stall tests ~30x on a busy CPU.
torch.set_num_threads(1)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from tiny import VOCAB, save_tiny_model, tiny_model, word_tokenizer  # noqa: E402


@pytest.fixture
def tiny_llama():
    """Llama: hidden 64, MLP 128, 4 layers, 4 heads, 2 KV heads, vocab 256, tied embeddings."""
    return tiny_model("llama", tied=True)


@pytest.fixture
def tiny_opt():
    """OPT: fc1/fc2 sit in the decoder layer itself, learned positions, untied head, biases."""
    return tiny_model("opt", tied=False, layers=3)


@pytest.fixture
def tiny_mistral():
    """Mistral: Llama's layout with a sliding window (the KV cache holds sliding-window layers)."""
    return tiny_model("mistral", tied=False, sliding_window=6)


@pytest.fixture
def tiny_qwen2():
    """Qwen2: q/k/v biases and per-layer layer_types."""
    return tiny_model("qwen2", tied=False)


@pytest.fixture
def tiny_tokenizer():
    """A word-level tokenizer over VOCAB tokens "t0".."t255", no training needed."""
    return word_tokenizer()


@pytest.fixture
def token_ids():
    """Four sequences of 16 token ids, fixed."""
    import numpy as np

    return np.random.default_rng(0).integers(0, VOCAB, size=(4, 16))


# --- tiny models saved as local directories, loaded through evo.modelio like a user's model ---


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: family name → directory of a saved tiny random model with a byte-level tokenizer."""
    cache = {}

    def make(family: str = "llama") -> Path:
        if family not in cache:
            cache[family] = save_tiny_model(tmp_path_factory.mktemp(f"tiny_{family}"), family)
        return cache[family]

    return make


@pytest.fixture()
def text_corpus(tmp_path):
    """Three small plain-text sources with distinct vocabularies."""
    sources = {
        "alpha": "The quick brown fox jumps over the lazy dog. " * 40,
        "digits": "0123456789 " * 150,
        "code": "def f(x):\n    return x * 2 + 1\n\n" * 60,
    }
    for name, text in sources.items():
        (tmp_path / f"{name}.txt").write_text(text)
    return tmp_path
