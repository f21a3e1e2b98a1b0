"""Local safetensors checkpoints are streamed into a model built on the meta device (evo.shards): the
same logits as transformers' from_pretrained, ties and buffers kept, one copy of the weights in host RAM
(measured in a fresh process), and transformers' loader for checkpoints this path does not match."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evo.modelio import load_model
from tiny import build, save_tiny_model, tiny_config, tiny_tokenizer


@pytest.mark.parametrize("family", ["llama", "mistral", "opt"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_logits_equal_from_pretrained(tmp_path, family, dtype):
    from transformers import AutoModelForCausalLM

    model = build(tiny_config(family, tied=family != "mistral"), seed=3)
    model.save_pretrained(tmp_path, max_shard_size="40KB")  # many shards, the embedding alone in one
    tiny_tokenizer().save_pretrained(tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) > 3
    ours = load_model(str(tmp_path), dtype=dtype)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=getattr(torch, dtype))
    assert ours.loader == "streamed" and not ours.model.training
    ids = torch.randint(0, 250, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours.model(ids).logits, theirs(ids).logits)
    ours_buffers, their_buffers = dict(ours.model.named_buffers()), dict(theirs.named_buffers())
    assert ours_buffers.keys() == their_buffers.keys()
    for name, buffer in ours_buffers.items():  # rotary frequencies computed as transformers does
        assert buffer.dtype == their_buffers[name].dtype and torch.equal(buffer, their_buffers[name]), name
    embedding, head = ours.model.get_input_embeddings().weight, ours.model.get_output_embeddings().weight
    assert (embedding is head) is (family != "mistral")  # a tied head is the embedding, not a copy
    assert all(p.device.type == "cpu" and p.dtype == getattr(torch, dtype) for p in ours.model.parameters())


def test_checkpoints_that_do_not_match_one_to_one_use_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_tiny_model(tmp_path / "m", "mistral")
    weights = load_file(directory / "model.safetensors")
    del weights["lm_head.weight"]  # missing: transformers initialises it (and warns)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    assert load_model(str(directory)).loader == "transformers"


CHILD = r"""
import json, sys
import torch, transformers
from transformers import AutoConfig
from evo import shards
from evo.modelio import load_model

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

directory, dtype = sys.argv[1], sys.argv[2]
# what the load imports once (the model's classes, transformers' lazy modules: ~100 MB) is not the model's
shards.empty_model(AutoConfig.from_pretrained(directory), dtype=torch.float32, trust_remote_code=False)
# The peak is VmHWM, restarted here from the current RSS (Linux >= 4.0). Not getrusage's ru_maxrss: it
# also keeps the RSS of the image before exec, a fork of the parent (pytest, with whatever it loaded)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS:")
loaded = load_model(directory, dtype=dtype)
peak = status("VmHWM:")
weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
print(json.dumps({"loader": loaded.loader, "weights": weights, "peak_growth": peak - before, "before": before}))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: a float32 checkpoint cast as it streams
def test_a_sharded_checkpoint_loads_with_one_copy_in_host_ram(tmp_path_factory, dtype):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    directory = _large_checkpoint(tmp_path_factory)
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), dtype], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = result["peak_growth"] / result["weights"]
    print(f"\n[{dtype}] weights {result['weights'] / 1e6:.0f} MB, peak RSS growth {result['peak_growth'] / 1e6:.0f} MB "
          f"= {ratio:.2f}x")
    assert result["loader"] == "streamed"
    assert ratio <= 1.25


_LARGE: list[Path] = []


def _large_checkpoint(tmp_path_factory) -> Path:
    """A ~300 MB float32 Llama (random weights) saved in 50 MB shards, made once per session."""
    if not _LARGE:
        from transformers import LlamaConfig

        config = LlamaConfig(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                             num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=False,
                             max_position_embeddings=256)
        directory = tmp_path_factory.mktemp("large")
        model = build(config, seed=0)
        model.save_pretrained(directory, max_shard_size="50MB")
        del model
        tiny_tokenizer().save_pretrained(directory)
        _LARGE.append(directory)
    return _LARGE[0]
