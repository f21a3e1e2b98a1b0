"""Mask-free causal attention (evaluate/causal_attention.py) and compile "auto": inside the block
SDPA gets no mask, is_causal and grouped keys in place, and the logits equal the model's own with the
full mask transformers builds under torch.compile before torch 2.14 (simulated here); models whose
attention is not plain causal keep their masks, saying why; the model's implementation is back after
the block, also after an error; FastForward wraps only its compiled calls; "auto" is reduce-overhead
on CUDA and eager elsewhere, and `evo search`'s default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers.masking_utils as masking_utils

from evo.evaluate.causal_attention import CAUSAL_SDPA, causal_attention, unsupported_reason
from evo.evaluate.evaluator import FitnessConfig
from evo.evaluate.fastforward import AUTO_CUDA_MODE, COMPILE_MODES, FastForward, resolve_compile_mode
from tests.tiny import build, tiny_config

IDS = torch.randint(3, 250, (3, 24), generator=torch.Generator().manual_seed(2))


@pytest.fixture
def sdpa_calls(monkeypatch):
    """(mask given, is_causal, enable_gqa) of every SDPA call; the real SDPA still runs."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask") is not None, kwargs.get("is_causal"), kwargs.get("enable_gqa", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def masks_forced(monkeypatch):
    """transformers builds the full causal mask, as it does under torch.compile with torch < 2.14."""
    monkeypatch.setattr(masking_utils, "_ignore_causal_mask_sdpa", lambda *args, **kwargs: False)


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt"])
@torch.no_grad()
def test_mask_free_logits_equal_the_masked_ones(family, sdpa_calls, masks_forced):
    model = build(tiny_config(family, tied=True))
    assert unsupported_reason(model) is None
    masked = model(input_ids=IDS, use_cache=False).logits
    assert sdpa_calls and all(mask for mask, _, _ in sdpa_calls)  # the forced masks were passed
    sdpa_calls.clear()
    with causal_attention(model):
        free = model(input_ids=IDS, use_cache=False).logits
    assert sdpa_calls and all(not mask and causal for mask, causal, _ in sdpa_calls)
    if family != "opt":  # 4 query heads over 2 key/value heads: read in place, not repeated
        assert all(gqa for _, _, gqa in sdpa_calls)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(free, masked, rtol=1e-5, atol=1e-5)


def test_attention_that_is_not_plain_causal_keeps_its_masks():
    mistral = build(tiny_config("mistral", tied=False, sliding_window=16))
    assert "sliding-window" in unsupported_reason(mistral)
    hybrid = build(tiny_config("qwen2", tied=True, use_sliding_window=True, sliding_window=8, max_window_layers=2))
    assert "layer types" in unsupported_reason(hybrid)
    eager = build(tiny_config("llama", tied=True, attn_implementation="eager"))
    assert "'eager', not sdpa" in unsupported_reason(eager)
    assert unsupported_reason(torch.nn.Linear(2, 2)) == "the model has no transformers config"
    assert unsupported_reason(mistral, tokens=16) is None  # a window as long as the sequence binds nothing
    assert "sliding-window" in unsupported_reason(mistral, tokens=17)
    forward = FastForward(mistral, "default", torch.device("cuda"))
    assert not forward.mask_free and "sliding-window" in forward.attention


@torch.no_grad()
def test_a_sliding_window_longer_than_the_sequence_runs_mask_free(monkeypatch, sdpa_calls, masks_forced):
    monkeypatch.setattr(torch, "compile", lambda function, **_: lambda *a, **k: function(*a, **k))
    model = build(tiny_config("mistral", tied=False, sliding_window=16))
    forward = FastForward(model, "default", torch.device("cuda"))
    for ids, masked in ((IDS[:, :16], False), (IDS, True)):  # 24 tokens > the window: its masks
        expected = model(input_ids=ids, use_cache=False).logits
        sdpa_calls.clear()
        torch.testing.assert_close(forward.logits(ids), expected, rtol=1e-5, atol=1e-5)
        assert sdpa_calls and all(mask == masked for mask, _, _ in sdpa_calls)
    assert "mask-free at 16 tokens" in forward.attention


def test_the_models_implementation_is_back_after_an_error():
    model = build(tiny_config("llama", tied=True))
    with pytest.raises(RuntimeError, match="boom"), causal_attention(model):
        assert model.config._attn_implementation == CAUSAL_SDPA
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


@torch.no_grad()
def test_fastforward_runs_only_its_compiled_calls_mask_free(monkeypatch, sdpa_calls, masks_forced):
    seen = []

    def passthrough(function, **_):  # torch.compile as on a GPU, without compiling
        def run(*args, **kwargs):
            seen.append(model.config._attn_implementation)
            return function(*args, **kwargs)

        return run

    model = build(tiny_config("llama", tied=True))
    expected = model(input_ids=IDS, use_cache=False).logits
    monkeypatch.setattr(torch, "compile", passthrough)
    forward = FastForward(model, "default", torch.device("cuda"))
    assert forward.compiled and forward.mask_free and forward.attention == "mask-free causal SDPA"
    sdpa_calls.clear()
    torch.testing.assert_close(forward.logits(IDS), expected, rtol=1e-5, atol=1e-5)
    assert seen == [CAUSAL_SDPA] and not any(mask for mask, _, _ in sdpa_calls)
    sdpa_calls.clear()
    forward.logits(IDS, eager=True)  # eager calls leave the model as it is
    assert all(mask for mask, _, _ in sdpa_calls) and model.config._attn_implementation == "sdpa"
    masks = FastForward(model, "default", torch.device("cuda"), mask_free=False)
    assert not masks.mask_free and "switched off" in masks.attention
    sdpa_calls.clear()
    masks.logits(IDS)
    assert all(mask for mask, _, _ in sdpa_calls)
    assert "eager" in FastForward(model, "off").attention


def test_auto_compiles_with_cuda_graphs_on_cuda_only():
    assert resolve_compile_mode("auto", torch.device("cuda")) == AUTO_CUDA_MODE == "reduce-overhead"
    assert resolve_compile_mode("auto", torch.device("cpu")) == "off"
    assert resolve_compile_mode("default", torch.device("cuda")) == "default"
    assert FitnessConfig(compile="auto").compile == "auto"
    model = build(tiny_config("llama", tied=True))
    forward = FastForward(model, "auto", torch.device("cpu"))
    assert forward.mode == "off" and not forward.compiled and forward.fallback is None


def test_evo_search_compiles_auto_by_default():
    from evo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["search", "--budget-mb", "70"]).compile == "auto"
    assert parser.parse_args(["search", "--budget-mb", "70", "--compile", "off"]).compile == "off"
    search = next(action for action in parser._subparsers._group_actions[0].choices["search"]._actions
                  if action.dest == "compile")
    assert tuple(search.choices) == COMPILE_MODES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@torch.no_grad()
def test_compiled_mask_free_logits_equal_the_masked_ones_on_cuda(mode):
    model = build(tiny_config("llama", tied=True)).cuda()
    ids = IDS.cuda()
    free = FastForward(model, mode, torch.device("cuda"))
    masks = FastForward(model, mode, torch.device("cuda"), mask_free=False)
    assert free.mask_free and not masks.mask_free
    expected = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(free.logits(ids), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masks.logits(ids), expected, rtol=1e-4, atol=1e-4)
    assert free.compiled and masks.compiled


def test_attention_paths_benchmark_runs_on_a_cpu(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import attention_paths

    assert attention_paths.main(["--device", "cpu", "--layers", "1", "--repeats", "1", "--out", str(tmp_path),
                                 "--runs", "off:masks:2x16,off:free:2x16,default:free:2x16", "--profile"]) == 0
    rows = {row["run"]: row for row in json.loads((tmp_path / "attention_paths.json").read_text())["results"]}
    assert rows["default:free:2x16"] == {"run": "default:free:2x16", "skipped": "CUDA only"}
    assert rows["off:masks:2x16"]["kl_per_token"] == rows["off:free:2x16"]["kl_per_token"] > 0
    assert rows["off:free:2x16"]["profile"]["what"] == "CPU ops (self time)"  # --profile: one more call, traced
    report = (tmp_path / "attention_paths.md").read_text()
    assert "| off:free:2x16 |" in report and "off:free:2x16: CPU ops (self time)" in report


def test_the_kernel_profile_finds_the_lead_and_the_widest_gaps():
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from kernel_profile import idle_spans

    def kernel(name, start, end):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end))

    # b overlaps c (two streams): the gap before d is counted from b's end, the later one
    spans = idle_spans([kernel("b", 25, 30), kernel("a", 10, 20), kernel("c", 28, 29), kernel("d", 100, 110)], 0)
    assert spans["lead_ms"] == 0.01 and spans["gap_count"] == 2
    assert spans["gaps_ms"] == pytest.approx(0.075)
    assert spans["widest_gaps"][0] == {"ms": 0.07, "after": "b", "before": "d"}


@torch.no_grad()
def test_the_forward_floor_yardstick_computes_the_models_logits(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import forward_floor

    model = build(tiny_config("llama", tied=False))  # 4 query heads over 2 key/value heads, untied head
    torch.testing.assert_close(forward_floor.MinimalLlama(model)(IDS), model(input_ids=IDS).logits,
                               rtol=1e-5, atol=1e-5)
    assert forward_floor.main(["--device", "cpu", "--layers", "1", "--repeats", "1", "--out", str(tmp_path),
                               "--runs", "transformers:off:2x16,minimal:off:2x16,minimal:max-autotune:2x16"]) == 0
    report = json.loads((tmp_path / "forward_floor.json").read_text())
    rows = {row["run"]: row for row in report["results"]}
    assert report["agreement"] < 1e-3
    assert rows["minimal:off:2x16"]["kl_per_token"] == pytest.approx(rows["transformers:off:2x16"]["kl_per_token"],
                                                                     rel=1e-4)
    assert rows["minimal:max-autotune:2x16"]["skipped"] == "CUDA only"


@pytest.mark.parametrize("run, says", [
    ("bogus", "write it as MODE:PATH:NxL, e.g. reduce-overhead:free:64x512"),
    ("default:free:64", "write it as MODE:PATH:NxL"),
    ("default:maybe:4x512", "the path is one of masks, rotary, torch_kl, before, trees, tuned, free"),
    ("turbo:free:4x512", "compile mode 'turbo' is unknown"),
    ("default:free:0x512", "at least 1 sequence"),
])
def test_a_shape_benchmark_refuses_a_bad_run_in_one_line_before_building_its_model(run, says, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import attention_paths
    import forward_floor

    with pytest.raises(SystemExit, match=says.replace("(", r"\(")) as refused:
        attention_paths.main(["--device", "cpu", "--runs", run, "--out", str(tmp_path)])
    assert "\n" not in str(refused.value) and not any(tmp_path.iterdir())
    with pytest.raises(SystemExit, match="write it as PATH:MODE:NxL, e.g. minimal:reduce-overhead"):
        forward_floor.main(["--device", "cpu", "--runs", "minimal", "--out", str(tmp_path)])
