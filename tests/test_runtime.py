"""evo.runtime: every resident mode gives the dense load's logits exactly, generation with the KV
cache matches token for token, the cache of decoded weights stays under its cap, corrupt frames fail
clearly, and bit-packing round-trips at every width."""

from __future__ import annotations

import time

import pytest
import torch

from evo.compress import TensorSetting
from evo.compress.artifact import load, read_manifest, write_artifact
from evo.compress.config import CompressionConfig, LayerConfig
from evo.compress.model import compress_model
from evo.constants import TENSORS_FILE
from evo.errors import EvoError
from evo.modelio import describe_model
from evo.runtime import ResidentOptions, resident_memory
from evo.runtime.modules import LazyLinear, PackedEmbedding, PackedLinear, PackedWeight, packed_nbytes
from evo.runtime.packing import pack_codes, packed_row_bytes, unpack_codes
from evo.runtime.resident import AutoPlan, LayerCost, plan_tiers
from evo.runtime.store import CodedWeight, DecodedWeights

IDS = torch.arange(5, 37).reshape(2, 16)
MODES = [
    dict(resident="codes"),
    dict(resident="compressed"),
    dict(resident="compressed", max_resident_mb=0.02, prefetch=2),
    dict(resident="compressed", max_resident_mb=10.0, prefetch=0),
    dict(resident="auto", max_resident_mb=0.03),
    dict(resident="auto", target_tokens_per_s=1e9),
]


def _config() -> CompressionConfig:
    # Every stored width, symmetric and asymmetric, float and int zero points, sparsity, a bf16
    # matrix, a dropped layer and block, and the tied embedding at 8 bits.
    return CompressionConfig(
        default=TensorSetting(bits=3, group_size=32),
        embedding=TensorSetting(bits=8, group_size=None, symmetric=True, rescale=1.5),
        layers={
            0: LayerConfig(
                attention=TensorSetting(bits=2, group_size=None, symmetric=True),
                mlp=TensorSetting(bits=5, sparsity=0.25, rescale=2.0),
            ),
            1: LayerConfig(drop="layer"),
            2: LayerConfig(drop="attention", mlp=TensorSetting(bits=6, group_size=64, zero_point="float")),
            3: LayerConfig(attention=TensorSetting(bits=4, group_size=128)),
        },
        tensors={"model.layers.3.self_attn.v_proj.weight": TensorSetting(bits=16)},
    )


@pytest.fixture
def artifact(tiny_llama, tiny_tokenizer, tmp_path):
    info = describe_model(tiny_llama, model_id="tiny-llama")
    result = compress_model(tiny_llama, info, _config(), measure=False, keep_tensors=True)
    write_artifact(tmp_path / "art", tiny_llama, tiny_tokenizer, result, base_model="tiny-llama")
    return tmp_path / "art"


@pytest.fixture
def qwen_artifact(tiny_qwen2, tiny_tokenizer, tmp_path):
    """Untied head and q/k/v biases."""
    info = describe_model(tiny_qwen2)
    config = CompressionConfig(default=TensorSetting(bits=4, group_size=32), embedding=TensorSetting(bits=6),
                               head=TensorSetting(bits=8, group_size=None))
    result = compress_model(tiny_qwen2, info, config, measure=False, keep_tensors=True)
    write_artifact(tmp_path / "qwen", tiny_qwen2, tiny_tokenizer, result)
    return tmp_path / "qwen"


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


# --- bit-packing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("columns", [1, 7, 8, 64, 100])
def test_packing_round_trips_at_every_width(bits, columns):
    codes = torch.randint(0, 1 << bits, (5, columns), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, packed_row_bytes(columns, bits))
    assert packed.numel() == 5 * -(-columns // 8) * bits  # exactly `bits` bits per code, rows padded to 8
    assert torch.equal(unpack_codes(packed, bits, columns), codes)
    assert torch.equal(unpack_codes(packed[2:4], bits, columns), codes[2:4])  # any rows alone
    assert torch.equal(unpack_codes(packed[torch.tensor([4, 0])], bits, columns), codes[torch.tensor([4, 0])])


def test_packing_refuses_codes_that_do_not_fit():
    with pytest.raises(EvoError, match="does not fit in 3 bits"):
        pack_codes(torch.tensor([[8]], dtype=torch.uint8), 3)


# --- logits and generation ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_every_mode_gives_the_dense_logits(artifact, options):
    dense, _ = load(artifact)
    model, tokenizer = load(artifact, **options)
    assert torch.equal(_logits(model), _logits(dense))
    assert torch.equal(_logits(model), _logits(dense))  # again, with whatever the store now holds
    assert tokenizer("t5 t6")["input_ids"] == [5, 6]
    assert model.evo_runtime.options.mode == options["resident"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the lent H200)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_every_mode_gives_the_dense_logits_on_cuda(artifact, options, dtype):
    """On CUDA the dequantize kernel is compiled (one code object per layout): still the dense logits."""
    dense, _ = load(artifact, device="cuda", dtype=dtype)
    model, _ = load(artifact, device="cuda", dtype=dtype, **options)
    ids = IDS.to("cuda")
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
        for _ in range(2):  # again, with whatever the store now holds
            assert torch.equal(model(input_ids=ids).logits, expected)


@pytest.mark.parametrize("resident", ["codes", "compressed"])
def test_dequantizing_in_blocks_of_rows_changes_nothing(artifact, resident, monkeypatch):
    import evo.runtime.kernels
    import evo.runtime.modules

    dense, _ = load(artifact)
    monkeypatch.setattr(evo.runtime.modules, "CHUNK_WEIGHTS", 100)  # blocks of 1-2 rows, a ragged last one
    monkeypatch.setattr(evo.runtime.kernels, "BLOCK_WEIGHTS", 100)
    model, _ = load(artifact, resident=resident)
    assert torch.equal(_logits(model), _logits(dense))


def test_modules_are_replaced_and_memory_shrinks(artifact):
    dense, _ = load(artifact)
    codes, _ = load(artifact, resident="codes")
    assert isinstance(codes.model.layers[0].self_attn.q_proj, PackedLinear)
    assert isinstance(codes.model.embed_tokens, PackedEmbedding)
    assert codes.lm_head.packed is codes.model.embed_tokens.packed  # the tied head shares the codes
    assert isinstance(codes.model.layers[2].self_attn.v_proj, torch.nn.Linear)  # bf16 matrix stays dense
    compressed, _ = load(artifact, resident="compressed")
    assert isinstance(compressed.model.layers[1].mlp.down_proj, LazyLinear)
    dense_bytes = resident_memory(dense).total_bytes
    codes_bytes = resident_memory(codes).total_bytes
    memory = resident_memory(compressed)
    assert memory.cached_bytes == 0 and memory.frame_bytes > 0
    assert memory.total_bytes < codes_bytes < dense_bytes
    manifest = read_manifest(artifact)
    stored = {t.name: t.compressed_bytes for t in manifest.tensors}
    assert memory.frame_bytes == sum(stored[k] for k in compressed.evo_runtime.tensor_names)


def test_compressed_decodes_into_the_codes_form_and_counts_its_bytes(artifact):
    """A quantized weight decodes into its bit-packed codes (what "codes" holds), a bf16 matrix into its
    dense tensor; the decoded size is exactly what the store then holds, and with every weight decoded
    the cache holds what "codes" holds for the quantized matrices."""
    codes, _ = load(artifact, resident="codes")
    model, _ = load(artifact, resident="compressed", max_resident_mb=100.0, prefetch=0)
    store = model.evo_runtime.store
    _logits(model)
    manifest = {t.name: t for t in read_manifest(artifact).tensors}
    packed_of_codes = {}
    for module in codes.modules():
        if isinstance(module, (PackedLinear, PackedEmbedding)):
            packed_of_codes[id(module.packed)] = module.packed
    assert set(store.cached_keys()) == set(store.coded) == model.evo_runtime.tensor_names
    held = 0
    for key in store.cached_keys():
        weight = store.acquire(key)
        setting = manifest[key].setting
        if setting.quantized:
            assert isinstance(weight, PackedWeight)
            assert weight.nbytes == packed_nbytes(manifest[key].shape, setting) == store.coded[key].decoded_bytes
        else:
            assert isinstance(weight, torch.Tensor) and weight.dtype == torch.float32
            assert weight.numel() * 4 == store.coded[key].decoded_bytes
        held += store.coded[key].decoded_bytes
    assert store.cached_bytes == held
    quantized = sum(store.coded[k].decoded_bytes for k in store.coded if manifest[k].setting.quantized)
    assert quantized == sum(p.nbytes for p in packed_of_codes.values())


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6])
def test_cache_of_codes_stays_under_its_cap_counting_bytes(artifact, fraction):
    dense, _ = load(artifact)
    probe, _ = load(artifact, resident="compressed")
    decoded = sum(c.decoded_bytes for c in probe.evo_runtime.store.coded.values())
    cap_mb = fraction * decoded / 1e6
    model, _ = load(artifact, resident="compressed", max_resident_mb=cap_mb, prefetch=2)
    store = model.evo_runtime.store
    for _ in range(3):
        assert torch.equal(_logits(model), _logits(dense))
        assert store.cached_bytes == sum(store.coded[k].decoded_bytes for k in store.cached_keys()) <= cap_mb * 1e6
    store.close()
    assert store.stats().peak_cached_bytes <= cap_mb * 1e6
    memory = resident_memory(model)
    assert memory.total_bytes <= resident_memory(probe).total_bytes + cap_mb * 1e6


def test_untied_head_and_biases(qwen_artifact):
    dense, _ = load(qwen_artifact)
    for options in MODES[:3]:
        model, _ = load(qwen_artifact, **options)
        assert torch.equal(_logits(model), _logits(dense))


@pytest.mark.parametrize("options", MODES[:3] + MODES[4:5], ids=["codes", "compressed", "compressed-lru", "auto"])
def test_generation_with_kv_cache_matches_dense(artifact, options):
    dense, _ = load(artifact)
    model, _ = load(artifact, **options)
    prompt = IDS[:1, :6]
    expected = dense.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    got = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    assert got.shape == expected.shape and torch.equal(got, expected)


# --- the store -------------------------------------------------------------------------------------


def _toy_store(capacity: int | None, prefetch: int) -> tuple[DecodedWeights, dict[str, int]]:
    sizes = {f"w{i}": 4 * (10 + 7 * i) for i in range(6)}  # float32 weights of various sizes
    coded = {k: CodedWeight(k, (n // 4,), {"codes": bytes(3)}, n) for k, n in sizes.items()}

    def decode(c: CodedWeight) -> torch.Tensor:
        return torch.full(c.shape, float(int(c.key[1:])))

    return DecodedWeights(coded, decode, capacity_bytes=capacity, prefetch=prefetch), sizes


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("capacity", [0, 100, 250, 10_000])
def test_cache_never_exceeds_its_cap(capacity, prefetch):
    store, sizes = _toy_store(capacity, prefetch)
    order = [f"w{i}" for i in [0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 3, 5, 5, 0]] * 3
    for key in order:
        weight = store.acquire(key)
        assert float(weight[0]) == float(int(key[1:]))
        cached = store.cached_keys()
        assert store.cached_bytes == sum(sizes[k] for k in cached) <= capacity
    store.close()
    stats = store.stats()
    assert stats.peak_cached_bytes <= capacity
    assert stats.hits + stats.misses + stats.prefetched == len(order)
    if capacity == 10_000:
        assert stats.cached_bytes == sum(sizes.values())  # everything fits: all of it stays
        assert stats.misses + stats.prefetched == len(sizes)


def test_prefetch_keeps_decoding_ahead_pass_after_pass():
    store, sizes = _toy_store(4 * (10 + 17 + 24), 1)  # three of the six weights fit
    order = [f"w{i}" for i in range(6)] * 10
    for key in order:
        store.acquire(key)
        time.sleep(0.002)  # the layer computes; the background thread decodes the next one meanwhile
        # Only the weights ahead are in flight: a finished prefetch found in the cache must not linger
        # (its future would keep the weight alive outside the cap).
        assert len(store._inflight) <= store.prefetch
    store.close()
    stats = store.stats()
    # The first pass learns the order (the wrap from w5 to w0 only when it happens, hence one more
    # miss); after it each weight is cached or decoded ahead: never on the critical path again.
    assert stats.misses <= len(sizes) + 1
    assert stats.hits + stats.prefetched + stats.misses == len(order)


def test_cache_keeps_the_weights_that_filled_it():
    store, sizes = _toy_store(sizes_cap := 4 * (10 + 17 + 24), 0)  # w0, w1, w2 fit
    order = [f"w{i}" for i in range(6)] * 4  # the cyclic order of forward passes
    for key in order:
        store.acquire(key)
    assert store.cached_keys() == ["w0", "w1", "w2"] and store.cached_bytes == sizes_cap
    stats = store.stats()
    # Every pass after the first hits the three cached weights (an LRU would have hit none).
    assert stats.hits == 3 * 3 and stats.misses == len(order) - 9


def test_plan_moves_the_most_seconds_per_byte_within_the_cap():
    costs = (
        LayerCost("cheap", 1000, 200, 0.001, 300, 0.0005),
        LayerCost("slow", 1000, 200, 0.010, 300, 0.002),
        LayerCost("big", 5000, 1000, 0.020, 1500, 0.004),
        LayerCost("bf16", 2000, 1500, 0.004),  # no codes: frames or decoded only
    )
    frames = sum(c.frame_bytes for c in costs)  # 2900: the least that can be held
    # Frames decode into codes that are then dequantized: a quantized weight as frames costs its
    # decoding plus its dequantization. The most seconds saved per byte added first: slow 1e-4 s/B
    # to codes, big 4e-5, cheap to codes 1e-5, the bf16 matrix decoded 8e-6; then decoding those
    # held as codes.
    assert costs[0].option("frames") == (200, 0.001 + 0.0005) and costs[3].option("frames") == (1500, 0.004)
    moves = plan_tiers(costs, None, None, 0.0)
    assert moves[:4] == (("slow", "codes"), ("big", "codes"), ("cheap", "codes"), ("bf16", "decoded"))
    assert dict(moves) == {"cheap": "decoded", "slow": "decoded", "big": "decoded", "bf16": "decoded"}
    # A cap on everything held: the frames, plus what each move adds, never above it.
    for cap in (frames, frames + 100, frames + 350, frames + 2000, frames + 5000):
        plan = AutoPlan(costs, plan_tiers(costs, cap, None, 0.0), cap, None, 0.0)
        assert plan.pinned_bytes + plan.codes_bytes + plan.coded_frame_bytes <= cap
    assert plan_tiers(costs, frames, None, 0.0) == ()
    assert dict(plan_tiers(costs, frames + 100, None, 0.0)) == {"slow": "codes"}
    # A target already met moves nothing; a target needing one move makes the best one.
    assert plan_tiers(costs, None, 1.0, 0.0) == ()
    assert plan_tiers(costs, None, 1 / 0.032, 0.0) == (("slow", "codes"),)  # 41.5 ms → 31.5 ms


@pytest.mark.parametrize("cap_mb", [0.0, 0.03, 0.2, 1.0])
def test_auto_reports_its_plan(artifact, cap_mb):
    dense, _ = load(artifact)
    model, _ = load(artifact, resident="auto", max_resident_mb=cap_mb)
    plan = model.evo_runtime.plan
    assert len(plan.costs) == len(model.evo_runtime.tensor_names)
    assert "auto plan" in plan.summary()
    frames = sum(c.frame_bytes for c in plan.costs)
    held = plan.pinned_bytes + plan.codes_bytes + plan.coded_frame_bytes
    assert held <= max(cap_mb * 1e6, frames)  # below the frames' size nothing can move
    memory = resident_memory(model)
    assert memory.pinned_bytes == plan.pinned_bytes and memory.frame_bytes == plan.coded_frame_bytes
    assert memory.packed_bytes == plan.codes_bytes
    for key in plan.codes:  # held as codes: a packed module in the model, no frames left
        assert key not in model.evo_runtime.store.coded
    if cap_mb == 1.0:
        assert not plan.codes and len(plan.pinned) == len(plan.costs)  # everything fits decoded
    if cap_mb == 0.2:
        assert plan.codes  # the cap between codes and decoded sizes: some weights as codes
    assert torch.equal(_logits(model), _logits(dense))


def test_auto_plan_compute_is_the_pass_measured_without_its_decoding_and_dequantization(artifact, monkeypatch):
    import evo.runtime.resident as resident

    measured = []

    def measure(model, store):
        measured.append(resident_measure(model, store))
        return measured[-1]

    def slow_packed_weights(self, keys, device):  # steady-state dequantization timed long after, under load
        return {k: (w, n, seconds + 1e3) for k, (w, n, seconds) in packed_weights(self, keys, device).items()}

    resident_measure, packed_weights = resident.measure_pass, resident.ResidentRuntime._packed_weights
    monkeypatch.setattr(resident, "measure_pass", measure)
    monkeypatch.setattr(resident.ResidentRuntime, "_packed_weights", slow_packed_weights)
    model, _ = load(artifact, resident="auto", max_resident_mb=0.03)
    plan = model.evo_runtime.plan
    (timing,) = measured
    assert timing.decode_seconds > 0 and timing.dequantize_seconds > 0  # the pass decoded and dequantized codes
    assert plan.compute_seconds == timing.compute_seconds > 0
    assert timing.wall_seconds == pytest.approx(timing.compute_seconds + timing.decode_seconds
                                                + timing.dequantize_seconds)
    assert set(timing.first_use) == {c.key for c in plan.costs}
    assert all(c.codes_seconds is None or c.codes_seconds > 1e3 for c in plan.costs)
    assert f"compute {timing.compute_seconds * 1e3:.1f} ms" in plan.summary()
    with pytest.raises(ValueError, match="neither caches nor prefetches"):
        resident_measure(model, model.evo_runtime.store)  # the planned store prefetches


# --- errors ------------------------------------------------------------------------------------------


def test_corrupt_frame_met_lazily_is_the_eager_error(artifact):
    manifest = read_manifest(artifact)
    victim = next(t for t in manifest.tensors if t.name == "model.layers.2.mlp.up_proj.weight")
    message = f"corrupt: tensor {victim.name} failed its checksum"
    model, _ = load(artifact, resident="compressed", prefetch=2)  # nothing decoded yet
    held = model.evo_runtime.store.coded[victim.name].frames
    kind = victim.frames[0].kind
    held[kind] = held[kind][:5] + bytes([held[kind][5] ^ 0xFF]) + held[kind][6:]  # corrupted once resident
    data = bytearray((artifact / TENSORS_FILE).read_bytes())
    data[victim.frames[0].offset + 5] ^= 0xFF
    (artifact / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(EvoError, match=message) as eager:
        load(artifact)
    with pytest.raises(EvoError, match=message) as lazy:
        _logits(model)
    assert str(lazy.value) == str(eager.value)
    # On disk, every mode refuses it before building anything: read_artifact checks every frame.
    for options in (dict(resident="codes"), dict(resident="compressed"), dict(resident="auto", max_resident_mb=1)):
        with pytest.raises(EvoError, match=message):
            load(artifact, **options)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(resident="fast"), "resident='fast' is unknown"),
        (dict(resident="auto"), "needs max_resident_mb or target_tokens_per_s"),
        (dict(resident="codes", max_resident_mb=5), "applies to resident='compressed' or 'auto'"),
        (dict(resident="compressed", max_resident_mb=-1), "must be a non-negative number"),
        (dict(resident="compressed", prefetch=-1), "must be a non-negative integer"),
        (dict(resident="compressed", target_tokens_per_s=5), "applies to resident='auto' only"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(EvoError, match=message):
        ResidentOptions(options.pop("resident"), **options)


# --- fast-decoding coders (--prefer-decode-speed) ---------------------------------------------------


def _inner_coders(frame: bytes) -> list[str]:
    """The coders of a frame and of the byte streams inside a two-byte split."""
    from evo.compress import coding

    name = coding.frame_coder(frame)
    if name not in ("u16-planes", "u16-bf16-fields"):
        return [name]
    _, _, _, pos = coding._parse_header(frame)
    first_len, pos = coding._get_varint(frame, pos)
    return [name, *_inner_coders(frame[pos : pos + first_len]), *_inner_coders(frame[pos + first_len :])]


def test_prefer_decode_speed_is_exact_in_size_and_never_uses_ans(tiny_model_dir, tmp_path):
    from evo.compress import coding
    from evo.modelio import load_model
    from evo.runtime.sizes import decode_speed_model
    from evo.compress.size import SizeCache, SizeModel

    directory = tiny_model_dir("llama")
    config = CompressionConfig(default=TensorSetting(bits=3, group_size=32), embedding=TensorSetting(bits=8),
                               layers={1: LayerConfig(drop="attention")},
                               tensors={"model.layers.2.mlp.up_proj.weight": TensorSetting(bits=16)})
    cache = SizeCache(tmp_path / "sizes")  # shared: the two coder choices must not mix their entries
    smallest = SizeModel.for_model(load_model(str(directory)), cache)
    fast = decode_speed_model(smallest)
    sizes = {}
    for prefer in (False, True):
        loaded = load_model(str(directory))
        result = compress_model(loaded, None, config, size_cache=cache, prefer_decode_speed=prefer)
        summary = write_artifact(tmp_path / f"art{prefer}", loaded.model, loaded.tokenizer, result)
        sizes[prefer] = summary.total_bytes
        assert summary.total_bytes == sum(p.stat().st_size for p in (tmp_path / f"art{prefer}").iterdir())
        data = (tmp_path / f"art{prefer}" / TENSORS_FILE).read_bytes()
        coders = {c for t in read_manifest(tmp_path / f"art{prefer}").tensors for f in t.frames
                  for c in _inner_coders(data[f.offset : f.offset + f.length])}
        assert ("ans" in coders) != prefer
        assert not prefer or coders <= {*coding.FAST_DECODE_CODERS, "u16-zstd", "u16-planes", "u16-bf16-fields"}
    assert smallest.artifact_bytes(config) == sizes[False] < sizes[True] == fast.artifact_bytes(config)
    dense, _ = load(tmp_path / "artFalse")
    for options in ({}, dict(resident="compressed")):
        model, _ = load(tmp_path / "artTrue", **options)
        assert torch.equal(_logits(model), _logits(dense))


def test_evo_run_prints_text_speed_and_memory(artifact, capsys):
    from evo.cli import main

    assert main(["run", str(artifact), "--prompt", "t5 t6 t7", "--max-new-tokens", "5", "--resident", "auto",
                 "--max-resident-mb", "0.03"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("t5 t6 t7")
    assert "tokens/s" in captured.err and "peak RSS" in captured.err and "auto plan" in captured.err
    assert main(["run", str(artifact), "--prompt", "t5", "--resident", "codes", "--max-resident-mb", "1"]) == 2
    assert "applies to resident='compressed' or 'auto'" in capsys.readouterr().err


def test_generate_greedy_matches_generate(artifact):
    from evo.runtime.generate import generate_greedy

    dense, tokenizer = load(artifact)
    model, _ = load(artifact, resident="compressed", max_resident_mb=0.02)
    prompt = IDS[:1, :6]
    expected = dense.generate(prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    result = generate_greedy(model, tokenizer, prompt, 7, stop_at_eos=False)
    assert list(result.token_ids) == expected
    assert result.peak_weight_bytes >= result.weight_memory.total_bytes > 0 and result.tokens_per_s > 0


def test_evo_eval_gives_the_same_perplexity_in_every_mode(artifact, tmp_path, capsys):
    import json

    from evo.cli import main

    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"t{(7 * i) % 200}" for i in range(300)))
    results = []
    for options in ([], ["--resident", "codes"], ["--resident", "compressed", "--max-resident-mb", "0.02"]):
        args = ["eval", str(artifact), "--dataset", str(text), "--seq-len", "32", "--json", *options]
        assert main(args) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ppl"])
    assert results[0] == results[1] == results[2]


def test_generate_greedy_stops_at_its_decode_time_limit(artifact):
    from evo.runtime.generate import generate_greedy

    model, tokenizer = load(artifact, resident="codes")
    full = generate_greedy(model, tokenizer, IDS[:1, :6], 6, stop_at_eos=False)
    cut = generate_greedy(model, tokenizer, IDS[:1, :6], 6, stop_at_eos=False, max_decode_seconds=0.0)
    assert cut.new_tokens == 2 and cut.token_ids == full.token_ids[:2]  # the limit still lets one decode step run
    assert cut.tokens_per_s > 0
    assert full.weight_memory.scratch_bytes > 0  # the reused dequantization buffer, reported apart
    assert full.weight_memory.total_bytes == resident_memory(model).total_bytes


def test_forgotten_weights_leave_the_prefetch_order():
    store, sizes = _toy_store(None, 1)
    for key in [f"w{i}" for i in range(6)] * 2:
        store.acquire(key)
    store.forget(["w2", "w3"])  # now held another way (auto's codes)
    assert "w2" not in store.coded and "w3" not in store.coded
    assert store._next["w1"] == "w4" and "w2" not in store._next.values()
    for key in ["w0", "w1", "w4", "w5"] * 3:
        store.acquire(key)
    store.close()  # drain: no prefetch of a forgotten weight failed


@pytest.mark.parametrize("cap_mb", [0.2])
def test_auto_with_codes_generates_and_drains(artifact, cap_mb):
    from evo.runtime.generate import generate_greedy

    dense, tokenizer = load(artifact)
    model, _ = load(artifact, resident="auto", max_resident_mb=cap_mb, prefetch=2)
    assert model.evo_runtime.plan.codes and len(model.evo_runtime.plan.codes) < len(model.evo_runtime.plan.costs)
    prompt = IDS[:1, :6]
    expected = dense.generate(prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    result = generate_greedy(model, tokenizer, prompt, 7, stop_at_eos=False)  # drains the prefetch at the end
    assert list(result.token_ids) == expected
