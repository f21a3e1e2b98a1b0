"""Builders of tiny randomly initialised causal LMs (Llama, Mistral, Qwen2, OPT) and a byte-level
tokenizer, saved as local model directories so tests exercise the real loading path offline."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB = 256 + 3  # 256 byte tokens + <unk>, <s>, </s>


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token."""
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


def tiny_config(family: str):
    from transformers import LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family == "llama":
        return LlamaConfig(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family == "mistral":
        return MistralConfig(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=False, **common)
    if family == "qwen2":
        return Qwen2Config(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True, **common)
    if family == "opt":
        common.pop("max_position_embeddings")
        return OPTConfig(ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=512,
                         tie_word_embeddings=True, **common)
    raise ValueError(family)


def save_tiny_model(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """Build a tiny random model of a family and save it with its tokenizer to `directory`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
