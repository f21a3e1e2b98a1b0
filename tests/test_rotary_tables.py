"""Rotary tables (evaluate/rotary_tables.py): inside `served(L)` a static rotary returns its own (cos,
sin) for positions 0..L-1 from a table, so the logits are unchanged; a traced forward reads the table
instead of computing cos/sin, and re-entering the block does not re-trace; length-dependent rotary
types, other positions and extra arguments compute their own; FastForward serves them only around
its compiled calls."""

from __future__ import annotations

import pytest
import torch

from evo.evaluate.fastforward import FastForward
from evo.evaluate.rotary_tables import RotaryTables
from tests.tiny import build, tiny_config

IDS = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@torch.no_grad()
def test_served_tables_give_the_models_own_logits(family):
    model = build(tiny_config(family, tied=family != "mistral"))
    expected = model(input_ids=IDS, use_cache=False).logits
    tables = RotaryTables(model)
    assert tables and len(tables.served_modules) == 1
    with tables.served(IDS.shape[1]):
        rotary = tables.served_modules[0]
        assert rotary.module.forward is rotary and rotary.cos.shape[-2] == IDS.shape[1]
        got = model(input_ids=IDS, use_cache=False).logits
    assert torch.equal(got, expected)
    assert "forward" not in vars(rotary.module)  # the class's forward is back
    with tables.served(8):  # a shorter length: a prefix of the same table, no new one
        assert rotary.cos.shape[-2] == IDS.shape[1]
        torch.testing.assert_close(model(input_ids=IDS[:, :8], use_cache=False).logits, expected[:, :8])


@torch.no_grad()
def test_a_traced_forward_reads_the_table_and_is_traced_once():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = build(tiny_config("llama", tied=True))
    tables = RotaryTables(model)
    counter = CompileCounterWithBackend("eager")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return counter(gm, example_inputs)

    compiled = torch.compile(lambda ids: model(input_ids=ids, use_cache=False).logits, backend=backend, dynamic=False)
    expected = model(input_ids=IDS, use_cache=False).logits
    for _ in range(3):  # the same served object each time: guards hold, no re-trace
        with tables.served(IDS.shape[1]):
            torch.testing.assert_close(compiled(IDS), expected)
    assert counter.frame_count == 1
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")}
    assert not any(name.endswith(("cos", "sin")) for name in targets), sorted(targets)
    torch._dynamo.reset()


def test_length_dependent_rotaries_compute_their_own():
    dynamic = build(tiny_config("llama", tied=True, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                    "rope_theta": 10000.0}))
    assert not RotaryTables(dynamic)
    opt = build(tiny_config("opt", tied=True))  # learned positions: no rotary at all
    assert not RotaryTables(opt)


@torch.no_grad()
def test_other_positions_and_arguments_pass_through():
    model = build(tiny_config("llama", tied=True))
    rotary_module = model.model.rotary_emb
    x = torch.zeros(1, 10, 1)
    shifted = torch.arange(5, 15)[None]
    expected = rotary_module(x, shifted)
    tables = RotaryTables(model)
    with tables.served(10):
        served = rotary_module(x, position_ids=torch.arange(10)[None])
        torch.testing.assert_close(served, type(rotary_module).forward(rotary_module, x, torch.arange(10)[None]))
        # a call with other positions gets the table's rows 0..L-1: the caller must pass 0..L-1 or none
        batched = rotary_module(x, torch.arange(10).expand(2, 10))  # a batch of positions: computed
        torch.testing.assert_close(batched[0], type(rotary_module).forward(rotary_module, x, torch.arange(10).expand(2, 10))[0])
        longer = rotary_module(torch.zeros(1, 12, 1), torch.arange(12)[None])  # beyond the table: computed
        assert longer[0].shape[-2] == 12
    torch.testing.assert_close(rotary_module(x, shifted), expected)


@torch.no_grad()
def test_fastforward_serves_tables_only_around_compiled_calls(monkeypatch):
    seen = []
    model = build(tiny_config("llama", tied=True))

    def passthrough(function, **_):  # torch.compile as on a GPU, without compiling
        def run(*args, **kwargs):
            seen.append("forward" in vars(model.model.rotary_emb))
            return function(*args, **kwargs)

        return run

    expected = model(input_ids=IDS, use_cache=False).logits
    monkeypatch.setattr(torch, "compile", passthrough)
    forward = FastForward(model, "default", torch.device("cuda"))
    assert forward.rotary == "tables computed once"
    torch.testing.assert_close(forward.logits(IDS), expected, rtol=1e-5, atol=1e-5)
    forward.logits(IDS, eager=True)
    assert seen == [True] and "forward" not in vars(model.model.rotary_emb)
    computed = FastForward(model, "default", torch.device("cuda"), rotary_tables=False)
    assert computed.rotary == "computed in each forward"
    computed.logits(IDS)
    assert seen == [True, False]


@torch.no_grad()
def test_a_rotary_that_cannot_fill_its_table_computes_its_own(monkeypatch):
    model = build(tiny_config("llama", tied=True))
    expected = model(input_ids=IDS, use_cache=False).logits
    rotary_class = type(model.model.rotary_emb)
    real = rotary_class.forward

    def wants_3d_positions(self, x, position_ids=None):
        if position_ids.shape[0] == 1 and not torch.compiler.is_compiling() and x.shape[-1] == 1:
            raise ValueError("positions must be [3, batch, L]")  # as a multimodal rotary would
        return real(self, x, position_ids)

    monkeypatch.setattr(rotary_class, "forward", wants_3d_positions)
    tables = RotaryTables(model)
    with tables.served(IDS.shape[1]):
        torch.testing.assert_close(model(input_ids=IDS, use_cache=False).logits, expected)
    assert not tables and "forward" not in vars(model.model.rotary_emb)
