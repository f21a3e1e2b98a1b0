"""benchmarks/resident_memory.py with the arguments of the device call (benchmarks/device_runtime.sh),
on the CPU and a tiny artifact: every mode runs in one process, gives the dense tokens, and the JSON
holds each mode's figures; and benchmarks/double_compression_runtime.py's settings all build configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from evo.compress import TensorSetting
from evo.compress.artifact import write_artifact
from evo.compress.config import CompressionConfig
from evo.compress.model import compress_model
from evo.data.corpus import read_text
from evo.errors import EvoError
from evo.modelio import describe_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.fixture
def artifact(tiny_llama, tiny_tokenizer, tmp_path):
    info = describe_model(tiny_llama, model_id="tiny-llama")
    config = CompressionConfig(default=TensorSetting(bits=3, group_size=32),
                               embedding=TensorSetting(bits=8, group_size=None, symmetric=True, rescale=4.0))
    result = compress_model(tiny_llama, info, config, measure=False, keep_tensors=True)
    write_artifact(tmp_path / "art", tiny_llama, tiny_tokenizer, result, base_model="tiny-llama")
    return tmp_path / "art"


def test_resident_memory_runs_every_mode_with_the_device_arguments(artifact, tmp_path, monkeypatch, capsys):
    try:
        read_text("wikitext2")
    except EvoError:
        pytest.skip("shared data folder with wikitext-2 is absent")
    import resident_memory

    out = tmp_path / "resident.json"
    # device_runtime.sh's arguments, --device cpu instead of cuda (which implies --in-process there).
    argv = [str(artifact), "--device", "cpu", "--in-process", "--dtype", "bfloat16", "--prompt-tokens", "16",
            "--new-tokens", "3", "--mode-seconds", "10", "--prefetch", "4", "--deadline-s", "200", "--threads", "1",
            "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["resident_memory.py", *argv])
    resident_memory.main()
    printed = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [r["mode"] for r in records] == ["dense", "codes", "compressed 0%", "compressed 25%", "compressed 50%",
                                            "compressed 100%", "auto 50%"]
    assert all(r["tokens"] == records[0]["tokens"] and len(r["tokens"]) == 3 for r in records)
    assert "failed" not in printed and "skipped" not in printed
    by_mode = {r["mode"]: r for r in records}
    assert by_mode["codes"]["weights"] < by_mode["dense"]["weights"]
    assert 0 < by_mode["compressed 100%"]["frames"] < by_mode["dense"]["weights"]
    # Frames alone hold less than the codes; each cap adds at most its share of the decoded size (codes).
    assert by_mode["compressed 0%"]["weights"] < by_mode["codes"]["weights"]
    assert by_mode["compressed 0%"]["weights"] <= by_mode["compressed 50%"]["weights"] <= by_mode["compressed 100%"]["weights"]


def test_every_double_compression_setting_builds_a_config(tiny_llama):
    import double_compression_runtime as dc

    info = describe_model(tiny_llama, model_id="tiny-llama")
    for name in dc.SETTINGS:
        if name in dc.FILES:  # per-tensor configs of SmolLM2-135M: checked below without the model
            continue
        config = dc.config_for(name, info, tied=True)
        config.validate_against(info)
        assert config.embedding.quantizer == "rtn" and config.embedding.sparsity == 0.0
        assert config.default == dc.SETTINGS[name]


def test_per_tensor_double_compression_configs_are_8_bit_settings():
    import double_compression_runtime as dc

    for name, file in dc.FILES.items():
        config = dc.config_for(name, None, tied=True)
        assert config.default == dc.SETTINGS[name] and config.embedding.quantizer == "rtn"
        settings = [config.default, config.embedding, *dict(config.tensors).values()]
        assert all(s.bits == 8 and s.group_size is None and s.symmetric for s in settings), file
        assert all(n.startswith("model.layers.") and n.endswith("_proj.weight") for n, _ in config.tensors), file
