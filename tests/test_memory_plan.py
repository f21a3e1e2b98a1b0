"""The memory plan: tiers filled in order up to their caps, the plan from a config equals the plan
from the loaded model, an impossible model refused in one line before any weight is read, and a
sharded safetensors directory loaded without two copies of the model in host RAM."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from evo.errors import EvoError
from evo.search.memory_plan import GB, MemoryInputs, inputs_for, plan_memory
from evo.search.space import SearchSpace


def _info(tiny_model_dir):
    from evo.modelio import load_model

    return load_model(str(tiny_model_dir("llama"))).info


def _inputs(info, **changes) -> MemoryInputs:
    base = inputs_for(info, SearchSpace.load("bits"), dtype_bytes=2, sequences=4, tokens=32, top_k=256,
                      tail_samples=16, device="cuda", device_free_bytes=10 * GB, host_free_bytes=10 * GB)
    return replace(base, **changes)


def test_describe_config_is_the_loaded_models_description(tiny_model_dir):
    from evo.modelio import describe_config

    assert describe_config(str(tiny_model_dir("llama"))) == _info(tiny_model_dir)
    assert describe_config("smollm2-135m") is None  # a GGUF is planned once it has loaded (its config parse is slow)


def test_levels_fill_the_tiers_in_order_and_the_plan_is_pure(tiny_model_dir):
    info = _info(tiny_model_dir)
    roomy = plan_memory(_inputs(info))
    assert roomy == plan_memory(_inputs(info)) and roomy.refusal is None
    assert roomy.tier_of(0) == "device" and all(roomy.tier_of(i) == "device" for i in range(len(info.layers)))
    per_layer = roomy.level_bytes // (len(info.layers) + 1)  # rough: a layer's levels
    # a device that holds the base weights and about two layers of levels: the rest spill to the host
    tight = plan_memory(_inputs(info, device_free_bytes=roomy.base_bytes + roomy.forward_bytes + roomy.reference_bytes
                                + int(2.5 * per_layer / 0.85)))
    tiers = [tight.tier_of(i) for i in range(len(info.layers))]
    assert tiers[0] == "device" and tiers[-1] == "host" and tiers == sorted(tiers, key=("device", "host").index)
    assert all(t.planned_bytes <= t.cap_bytes for t in tight.tiers if t.cap_bytes is not None)
    assert tight.cap("device") < roomy.cap("device") and tight.cap("codes") == tight.cap("host") > 0
    assert next(t for t in tight.tiers if t.name == "disk").cap_bytes is None  # free disk unknown: unbounded
    # no host room for dequantized levels: codes, then the run directory
    coded = plan_memory(_inputs(info, device_free_bytes=tight.device_free_bytes, host_free_bytes=roomy.host_bytes,
                                disk_free_bytes=10 * GB))
    assert {coded.tier_of(i) for i in range(len(info.layers))} <= {"device", "disk"}
    assert coded.tier_of(len(info.layers) - 1) == "disk"
    assert "levels in disk" in coded.table()


def test_a_model_whose_layer_cannot_fit_is_refused_in_one_line_with_the_numbers(tiny_model_dir):
    info = _info(tiny_model_dir)
    plan = plan_memory(_inputs(info, device_free_bytes=10_000))
    with pytest.raises(EvoError) as refused:
        plan.check()
    message = str(refused.value)
    assert "\n" not in message and "one layer's working set needs" in message and " MB (" in message
    fits_layer = plan_memory(_inputs(info, device_free_bytes=plan.layer_working_set_bytes + 1))
    assert fits_layer.refusal is not None and "base weights" in fits_layer.refusal  # evo keeps them resident


def _huge_config_dir(directory: Path) -> Path:
    """A config-only Llama whose one layer (hidden 65536, MLP 262144) takes ~200 GB: no weights exist."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 65536,
              "intermediate_size": 262144, "num_hidden_layers": 2, "num_attention_heads": 64,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 4096,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_evo_search_refuses_an_impossible_model_before_reading_its_weights(tmp_path):
    model = _huge_config_dir(tmp_path / "huge")  # no weights: any attempt to load them would fail otherwise
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "evo.cli", "search", "--model", str(model), "--budget-mb", "1000",
                           "--device", "cpu", "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "one layer's working set needs" in errors[0] and "GB" in errors[0], done.stderr
    assert "memory plan (cpu" in done.stdout + done.stderr and not run_dir.exists()
    assert "loading model" not in done.stdout + done.stderr  # refused before its weights
