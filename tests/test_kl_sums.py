"""The top-k KL's row sums in one pass (evaluate/kl_sums.py, evaluate/_kl_triton.py): the bitmask
flags exactly the ids; the four sums equal float64 log-sum-exps (whole row and tail, each with its own
peak, empty tails included); the Triton kernel gives them too (run by Triton's interpreter on a CPU
where Triton is installed, in a process of its own; natively on CUDA); topk_kl through the kernel equals topk_kl through torch
ops; a failing kernel falls back to torch ops once, saying so."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evo.evaluate import kl_sums
from evo.evaluate.metrics import topk_kl, topk_kl_sum

VOCAB = 1000


def _logits_and_ids(rows: int = 6, vocab: int = VOCAB, k: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(rows, vocab, generator=generator)
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(rows)])
    return logits, ids


def _exact(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    x = logits.double()
    outside = x.scatter(-1, ids.long(), float("-inf"))
    tail_peak = outside.amax(-1)
    tail_peak = torch.where(torch.isfinite(tail_peak), tail_peak, torch.zeros_like(tail_peak))
    return torch.stack([x.amax(-1), torch.logsumexp(x, -1) - x.amax(-1), tail_peak,
                        torch.logsumexp(outside, -1) - tail_peak], -1)


def test_torch_row_sums_are_the_log_sum_exps():
    logits, ids = _logits_and_ids()
    torch.testing.assert_close(kl_sums.torch_row_sums(logits, ids), _exact(logits, ids), rtol=1e-6, atol=1e-6)
    everything = torch.arange(VOCAB).expand(2, VOCAB)  # k = vocab: an empty tail, log Σ = −inf, peak 0
    sums = kl_sums.torch_row_sums(logits[:2], everything)
    assert torch.all(sums[:, 2] == 0) and torch.all(torch.isneginf(sums[:, 3]))


def _tail_lse(sums: torch.Tensor) -> torch.Tensor:
    """(peak, log Σ, the tail's log-sum-exp) of [rows, 4] row sums: what the KL reads (t + log Σ_tail)."""
    return torch.stack([sums[:, 0], sums[:, 1], sums[:, 2] + sums[:, 3]], -1)


def _check_the_kernel(device: str) -> None:
    """_kl_triton's bitmask and row sums against torch and float64 log-sum-exps on `device`."""
    from evo.evaluate import _kl_triton
    from evo.evaluate._kl_triton import CHUNK, row_sums, topk_bits

    ids = torch.tensor([[0, 31, 32, 63, 999, 31], [5, 6, 7, 8, 9, 10]])  # a repeated id counts once
    bits = topk_bits(ids.to(device), VOCAB).cpu()
    assert bits.shape == (2, -(-VOCAB // 32)) and bits.dtype == torch.int32
    columns = torch.arange(VOCAB)
    flags = (bits[:, columns // 32] >> (columns % 32)) & 1
    assert torch.equal(flags.long(), torch.zeros(2, VOCAB, dtype=torch.long).scatter_(1, ids, 1))
    assert bits[0, 0] == (1 | -(1 << 31))  # bit 31 is the int32 sign bit

    vocab = 2 * CHUNK + 904  # three chunks, the last one short
    logits, ids = _logits_and_ids(rows=5, vocab=vocab, k=40)
    logits[1, :] = -100.0
    logits[1, ids[1]] = 50.0  # the tail 150 nats below the peak: float32 exp(x − peak) underflows to 0
    logits[2, :CHUNK] = -200.0
    logits[2, ids[2]] = 50.0  # the first chunk's tail far below, the other chunks' near their peaks
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        got = row_sums(x.to(device), ids.to(device)).cpu()
        torch.testing.assert_close(_tail_lse(got), _tail_lse(_exact(x.float(), ids)), rtol=2e-6, atol=2e-6)
    smaller = row_sums(logits.to(device), ids.to(device), chunk=2048, warps=4).cpu()  # another shape of program
    torch.testing.assert_close(_tail_lse(smaller), _tail_lse(_exact(logits, ids)), rtol=2e-6, atol=2e-6)
    # programs walking several chunks, merged online: 2 of 3 chunks (the second program's last one wholly past
    # the vocabulary), 3 of 9, and one program a row with 7 chunks past the vocabulary
    # (words: each chunk laid out [chunk / 32, 32], one bitmask load a word)
    # (lean: three block reductions a chunk, not four, the tail's own peak only where its sum underflows)
    for chunk, warps, steps, words, lean in ((CHUNK, 8, 2, False, False), (2048, 4, 3, False, False),
                                             (2048, 4, 16, False, True), (4096, 4, 3, True, False),
                                             (1024, 2, 1, True, True), (2048, 4, 16, True, False),
                                             (4096, 4, 3, True, True)):
        shape = dict(chunk=chunk, warps=warps, steps=steps, words=words, lean=lean)
        walked = row_sums(logits.to(device), ids.to(device), **shape).cpu()
        torch.testing.assert_close(_tail_lse(walked), _tail_lse(_exact(logits, ids)), rtol=2e-6, atol=2e-6)
        whole = row_sums(logits[:2, :64].to(device), torch.arange(64).expand(2, 64).to(device), **shape).cpu()
        assert torch.all(whole[:, 2] == 0) and torch.all(torch.isneginf(whole[:, 3]))  # the empty tail

    kept = ids.to(device)  # the bitmask is kept for the same ids, rebuilt when they change in place
    x = logits.to(device)
    first = row_sums(x, kept)
    assert any(held is kept for held, _, _ in _kl_triton._BITS)
    assert torch.equal(row_sums(x, kept), first) and len(_kl_triton._BITS) <= _kl_triton.KEEP_BITS
    kept[0, 0] = logits[0].scatter(0, ids[0], float("-inf")).argmax()  # the tail's largest logit joins the top k
    torch.testing.assert_close(_tail_lse(row_sums(x, kept).cpu()), _tail_lse(_exact(logits, kept.cpu())),
                               rtol=2e-6, atol=2e-6)
    everything = torch.arange(64).expand(2, 64)
    empty = row_sums(logits[:2, :64].to(device), everything.to(device)).cpu()
    assert torch.all(empty[:, 2] == 0) and torch.all(torch.isneginf(empty[:, 3]))

    # a shape argument left out is the module's constant as it is at the call (kl_paths_real.py sets them to
    # run the evaluator's KL at other shapes); one given wins
    names = ("CHUNK", "WARPS", "STEPS", "WORDS", "LEAN")
    shipped, real_chunk_sums, launched = tuple(getattr(_kl_triton, n) for n in names), _kl_triton.chunk_sums, []
    _kl_triton.chunk_sums = lambda *args: launched.append(args[2:]) or real_chunk_sums(*args)
    try:
        row_sums(x, kept)
        _kl_triton.CHUNK, _kl_triton.LEAN = 1024, not shipped[4]
        moved = row_sums(x, kept).cpu()
        row_sums(x, kept, chunk=2048)
    finally:
        _kl_triton.chunk_sums = real_chunk_sums
        for name, value in zip(names, shipped):
            setattr(_kl_triton, name, value)
    assert launched == [shipped, (1024, *shipped[1:4], not shipped[4]), (2048, *shipped[1:4], not shipped[4])]
    torch.testing.assert_close(_tail_lse(moved), _tail_lse(_exact(logits, kept.cpu())), rtol=2e-6, atol=2e-6)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its interpreter runs on a CPU)")
def test_the_kernels_sums_equal_the_log_sum_exps_in_tritons_interpreter():
    # its own process: TRITON_INTERPRET must be set before Triton is first imported
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "from tests.test_kl_sums import _check_the_kernel; _check_the_kernel('cpu'); print('kernel ok')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and "kernel ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_kernels_sums_equal_the_log_sum_exps_on_cuda():
    _check_the_kernel("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("row_sums", ["auto", "full"])
def test_topk_kl_through_the_kernel_equals_torch_ops_on_cuda(compiled, row_sums):
    logits, ids = _logits_and_ids(rows=64, vocab=49152, k=256)
    logits, ids = logits.cuda().bfloat16(), ids.cuda()
    log_p = torch.log_softmax(logits.float() + 0.3 * torch.randn_like(logits.float()), -1)
    top = log_p.gather(-1, ids)
    tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    samples = torch.randint(0, 49152, (64, 16), device="cuda")
    rows = (ids, top, tail, samples, log_p.gather(-1, samples))
    assert kl_sums.available(logits)
    kl = torch.compile(topk_kl_sum, dynamic=False) if compiled else topk_kl_sum
    torch.testing.assert_close(kl(logits, *rows, row_sums=row_sums), topk_kl_sum(logits, *rows, row_sums="torch"),
                               rtol=1e-6, atol=1e-9)


def test_a_failing_kernel_falls_back_to_torch_ops_once(monkeypatch):
    logits, ids = _logits_and_ids()
    monkeypatch.setattr(kl_sums, "_FAILED", [])
    monkeypatch.setattr(kl_sums, "available", lambda tensor: not kl_sums._FAILED)  # as if on CUDA with Triton
    monkeypatch.setitem(sys.modules, "evo.evaluate._kl_triton", None)  # importing it raises
    with pytest.warns(RuntimeWarning, match="Triton top-k KL kernel failed"):
        sums = kl_sums.topk_row_sums(logits, ids)
    torch.testing.assert_close(sums, kl_sums.torch_row_sums(logits, ids))
    assert len(kl_sums._FAILED) == 1 and not kl_sums.available(logits)


def test_topk_kl_names_an_unknown_row_sums_choice():
    logits, ids = _logits_and_ids()
    with pytest.raises(ValueError, match="row_sums='triton'"):
        topk_kl(logits, ids, torch.zeros(6, 16), torch.zeros(6), row_sums="triton")


def test_topk_kl_reads_the_four_sums_as_the_torch_passes_do(monkeypatch):
    logits, ids = _logits_and_ids(rows=8, k=16)
    generator = torch.Generator().manual_seed(5)
    log_p = torch.log_softmax(logits + torch.randn(logits.shape, generator=generator), -1)
    top = log_p.gather(-1, ids)
    samples = torch.randint(0, VOCAB, (8, 4), generator=generator)
    rows = (ids, top, torch.log1p(-top.exp().sum(-1)), samples, log_p.gather(-1, samples))
    expected = topk_kl(logits, *rows, row_sums="torch")
    monkeypatch.setattr(kl_sums, "_FAILED", [])
    monkeypatch.setattr(kl_sums, "available", lambda tensor: True)  # the op's path, its sums from torch ops
    monkeypatch.setitem(sys.modules, "evo.evaluate._kl_triton", None)
    with pytest.warns(RuntimeWarning, match="kernel failed"):
        torch.testing.assert_close(topk_kl(logits, *rows), expected, rtol=1e-6, atol=1e-7)


def test_torch_row_sums_in_chunks_equal_the_whole():
    logits, ids = _logits_and_ids(rows=7)
    torch.testing.assert_close(kl_sums.torch_row_sums(logits, ids, chunk=2 * VOCAB), kl_sums.torch_row_sums(logits, ids))


def test_the_kl_kernel_benchmark_runs_on_a_cpu(tmp_path):
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import kl_kernel

    assert kl_kernel.main(["--device", "cpu", "--rows", "16", "--vocab", "512", "--k", "8", "--repeats", "1",
                           "--configs", "1024x2", "--out", str(tmp_path)]) == 0
    rows = {row["run"]: row for row in json.loads((tmp_path / "kl_kernel.json").read_text())["results"]}
    assert rows["kl torch ops"]["kl_per_token"] > 0
    assert rows["sums 1024x2"]["skipped"] == "needs CUDA and Triton"  # no CUDA here
    with pytest.raises(SystemExit, match="CHUNK is a power of 2"):
        kl_kernel.main(["--device", "cpu", "--configs", "3000x8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="1 <= k < vocab"):
        kl_kernel.main(["--device", "cpu", "--k", "600", "--vocab", "512", "--out", str(tmp_path)])


def test_the_shape_benchmarks_refuse_a_device_in_one_line(capsys):
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from attention_paths import device_option

    assert device_option("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device"):
        device_option("gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="use --device cpu"):
            device_option("cuda")
