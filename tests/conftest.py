"""Shared fixtures: tiny randomly initialised causal LMs built from configs, and a tiny tokenizer.

Seconds per test; nothing is downloaded.
"""

import torch

# Tiny tensors gain nothing from threads, and OpenMP barriers stall tests ~30x on a busy CPU.
torch.set_num_threads(1)

import pytest  # noqa: E402

VOCAB = 256


def _build(config) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@pytest.fixture
def tiny_llama():
    """Llama: hidden 64, MLP 128, 4 layers, 4 heads, 2 KV heads, vocab 256, tied embeddings."""
    from transformers import LlamaConfig

    return _build(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    )


@pytest.fixture
def tiny_opt():
    """OPT: fc1/fc2 sit in the decoder layer itself, learned positions, untied head, biases."""
    from transformers import OPTConfig

    return _build(
        OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            word_embed_proj_dim=64,
            tie_word_embeddings=False,
        )
    )


@pytest.fixture
def tiny_mistral():
    """Mistral: Llama's layout with a sliding window (the KV cache holds sliding-window layers)."""
    from transformers import MistralConfig

    return _build(
        MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            sliding_window=6,
            tie_word_embeddings=False,
        )
    )


@pytest.fixture
def tiny_qwen2():
    """Qwen2: q/k/v biases and per-layer layer_types."""
    from transformers import Qwen2Config

    return _build(
        Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
    )


@pytest.fixture
def tiny_tokenizer():
    """A word-level tokenizer over VOCAB tokens "t0".."t255", no training needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", eos_token="t1", bos_token="t2")


@pytest.fixture
def token_ids():
    """Four sequences of 16 token ids, fixed."""
    import numpy as np

    return np.random.default_rng(0).integers(0, VOCAB, size=(4, 16))


# --- tiny models saved as local directories, loaded through evo.modelio like a user's model ---
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny_model  # noqa: E402


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
