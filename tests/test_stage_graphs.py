"""One CUDA graph of forward + KL per stage (evaluate/stage_graphs.py, FastForward's graph modes): its KL
equals the same compiled calls launched one by one; a stage is captured once and replayed after; weights
written in place show in the next replay; a parameter swapped for another tensor makes the stage be
captured again (never a stale read); at most `limit` stages are kept; a function that cannot be captured
leaves FastForward on its compiled calls without graphs, saying why; on a CPU nothing is graphed."""

from __future__ import annotations

import pytest
import torch

from evo.evaluate.fastforward import FastForward
from evo.evaluate.metrics import topk_kl_sum
from evo.evaluate.stage_graphs import StageGraphs, stage_key
from tests.tiny import build, tiny_config

IDS = torch.randint(3, 250, (4, 24), generator=torch.Generator().manual_seed(4))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_a_stage_is_its_inputs_addresses_shapes_strides_and_dtypes():
    ids = IDS.clone()
    assert stage_key((ids[:2, :16],)) == stage_key((ids[:2, :16],))  # views of kept tensors: the same stage
    assert stage_key((ids[:2, :16],)) != stage_key((ids[:2, :8],))
    assert stage_key((ids[:2, :16],)) != stage_key((ids[2:, :16],))  # another address
    assert stage_key((ids[:2, :16],)) != stage_key((ids[:2, :16].contiguous(),))  # other strides
    assert stage_key((ids,)) != stage_key((ids.view(torch.float64),))
    with pytest.raises(ValueError, match="at least one"):
        StageGraphs(torch.nn.Linear(2, 2), limit=0)


def test_nothing_is_graphed_on_a_cpu():
    model = build(tiny_config("llama", tied=True))
    forward = FastForward(model, "reduce-overhead", torch.device("cpu"))
    assert forward.graphs == "none" and not forward.uses_cuda_graphs


def _rows(model, ids, k=8, samples=4):
    """The dense model's top-k rows for ids (the evaluator's reference rows)."""
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    top = log_p.topk(k, dim=-1)
    tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-6))
    draws = torch.randint(0, log_p.shape[-1], (*ids.shape, samples), device=ids.device,
                          generator=torch.Generator(ids.device).manual_seed(0))
    return top.indices, top.values, tail, draws, log_p.gather(-1, draws)


def _perturb(model, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.device))


@pytest.fixture
def on_cuda():
    model = build(tiny_config("llama", tied=True)).cuda()
    ids = IDS.cuda()
    rows = _rows(model, ids)
    _perturb(model, 0.02, 1)
    return model, ids, rows


@cuda
@pytest.mark.parametrize("kl_chunk", [0, 32])
def test_a_stage_graph_gives_the_compiled_calls_kl_and_is_captured_once(on_cuda, kl_chunk):
    model, ids, rows = on_cuda
    graphed = FastForward(model, "reduce-overhead", torch.device("cuda"), kl_chunk=kl_chunk)
    plain = FastForward(model, "default", torch.device("cuda"), kl_chunk=kl_chunk)
    assert graphed.graphs == "one graph of forward + KL per stage" and graphed.uses_cuda_graphs
    expected = plain.kl_sum_of(ids, *rows)
    for _ in range(3):
        torch.testing.assert_close(graphed.kl_sum_of(ids, *rows), expected, rtol=1e-5, atol=1e-6)
    assert graphed._graphs.captures == 1 and graphed.fallback is None
    half = tuple(row[:2, :12] for row in rows)  # another stage: its own graph
    torch.testing.assert_close(graphed.kl_sum_of(ids[:2, :12], *half), plain.kl_sum_of(ids[:2, :12], *half),
                               rtol=1e-5, atol=1e-6)
    assert graphed._graphs.captures == 2
    assert graphed.kl_sum_of(ids, *rows, eager=True).dtype == torch.float64  # eager calls bypass the graphs
    assert graphed._graphs.captures == 2


@cuda
def test_weights_written_in_place_show_and_swapped_ones_are_captured_again(on_cuda):
    model, ids, rows = on_cuda
    graphed = FastForward(model, "reduce-overhead", torch.device("cuda"))
    plain = FastForward(model, "default", torch.device("cuda"))
    first = graphed.kl_sum_of(ids, *rows)
    _perturb(model, 0.05, 2)  # in place: the graph reads the new values
    moved = plain.kl_sum_of(ids, *rows)
    assert not torch.equal(moved, first)
    torch.testing.assert_close(graphed.kl_sum_of(ids, *rows), moved, rtol=1e-5, atol=1e-6)
    assert graphed._graphs.captures == 1
    weight = model.model.layers[0].mlp.down_proj.weight
    weight.data = weight.data * 1.5  # another tensor: the graph would read the old storage
    torch.testing.assert_close(graphed.kl_sum_of(ids, *rows), plain.kl_sum_of(ids, *rows), rtol=1e-5, atol=1e-6)
    assert graphed._graphs.captures == 2 and len(graphed._graphs) == 1


@cuda
@torch.no_grad()
def test_at_most_limit_stages_are_kept(on_cuda):
    model, ids, rows = on_cuda
    graphs = StageGraphs(model, limit=2)
    kl = torch.compile(topk_kl_sum, dynamic=False)
    for tokens in (8, 12, 16, 8):
        part = tuple(row[:, :tokens] for row in rows)
        value = graphs.run((ids[:, :tokens], *part), lambda: kl(model(input_ids=ids[:, :tokens]).logits, *part))
        assert value.dtype == torch.float64
    assert len(graphs) == 2 and graphs.captures == 4  # 8 was dropped before it came back


@cuda
def test_a_function_that_cannot_be_captured_runs_without_graphs(on_cuda):
    model, ids, rows = on_cuda

    def syncing_kl(logits, *reference):  # a host sync: CUDA graphs refuse it
        total = topk_kl_sum(logits, *reference)
        return total if float(total) >= 0 else total

    graphed = FastForward(model, "reduce-overhead", torch.device("cuda"), kl=syncing_kl)
    with pytest.warns(RuntimeWarning, match="CUDA graphs per stage off"):
        value = graphed.kl_sum_of(ids, *rows)
    torch.testing.assert_close(value, FastForward(model, "default", torch.device("cuda")).kl_sum_of(ids, *rows),
                               rtol=1e-5, atol=1e-6)
    assert graphed.graphs == "none" and "CUDA graphs per stage off" in graphed.fallback
    assert graphed.uses_cuda_graphs  # weights still go in place: nothing else changed
    # nothing of the failed capture is left: the thread's stream is its own again, capturing nothing, and
    # CUDA randomness (which checks the stream's capture state) works
    assert not torch.cuda.is_current_stream_capturing()
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.randn(8, device="cuda").isfinite().all()
