"""The one home of the tests' tiny models and tokenizers: causal LMs of four families (Llama,
Mistral, Qwen2, OPT) built from configs with random weights, in memory or saved as local model
directories (so tests exercise the real loading path offline), and two tokenizers. Seconds each;
nothing is downloaded. conftest.py turns them into fixtures."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 256  # in-memory models: token ids 0..255, the word-level tokenizer's "t0".."t255"
TINY_VOCAB = 256 + 3  # saved models: 256 byte tokens + <unk>, <s>, </s>
SAVED_TIED = {"llama": True, "mistral": False, "qwen2": True, "opt": True}  # tied embeddings of saved models


def tiny_config(family: str, *, tied: bool, vocab: int = TINY_VOCAB, layers: int = 4, positions: int = 512,
                **extra):
    """A transformers config: hidden 64, MLP 128, 4 heads (2 KV heads where the family has them)."""
    from transformers import LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  max_position_embeddings=positions, tie_word_embeddings=tied, **extra)
    if family == "llama":
        return LlamaConfig(intermediate_size=128, num_key_value_heads=2, **common)
    if family == "mistral":
        return MistralConfig(intermediate_size=128, num_key_value_heads=2, **common)
    if family == "qwen2":
        return Qwen2Config(intermediate_size=128, num_key_value_heads=2, **common)
    if family == "opt":  # fc1/fc2 sit in the decoder layer itself, learned positions, biases
        return OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **common)
    raise ValueError(family)


def build(config, seed: int = 0) -> torch.nn.Module:
    """A float32 model of `config` with weights drawn from `seed`, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def tiny_model(family: str = "llama", *, tied: bool = True, layers: int = 4, positions: int = 128,
               seed: int = 0, **extra) -> torch.nn.Module:
    """An in-memory tiny model over VOCAB token ids."""
    return build(tiny_config(family, tied=tied, vocab=VOCAB, layers=layers, positions=positions, **extra), seed)


def word_tokenizer():
    """A word-level tokenizer over VOCAB tokens "t0".."t255", no training needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", eos_token="t1", bos_token="t2")


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token (TINY_VOCAB ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in sorted(byte_tokens):
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def save_tiny_model(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """Build a tiny random model of a family and save it with the byte-level tokenizer to `directory`."""
    model = build(tiny_config(family, tied=SAVED_TIED[family], bos_token_id=1, eos_token_id=2, pad_token_id=2), seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
