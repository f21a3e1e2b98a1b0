"""Hostile inputs (issue 12, security): no code from a model or an artifact runs, and decoding a
tampered artifact is bounded. Every tampered artifact is crafted from a tiny model's real one with
its sha256 and sizes recomputed, so each check is reached on its own; each case must end in one
EvoError line (and one `error:` line from the CLI, exit 2)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evo.cli import main
from evo.compress import TensorSetting, coding
from evo.compress.artifact import load, write_artifact
from evo.compress.config import CompressionConfig, LayerConfig
from evo.compress.model import compress_model
from evo.constants import MANIFEST_FILE, MODEL_CONFIG_FILE, TENSORS_FILE
from evo.errors import EvoError
from evo.modelio import describe_model, load_model

from tiny import build, save_tiny_model, tiny_config, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BOMB_BYTES = 4 << 30  # what the bomb frame's zstd payload expands to


# --- a real artifact of a tiny model, and tampered copies of it -----------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A tiny Llama (tied embeddings) at 4 bits, asymmetric int zero points, one layer dropped."""
    model = build(tiny_config("llama", tied=True, bos_token_id=1, eos_token_id=2, pad_token_id=2), seed=0)
    info = describe_model(model, model_id="tiny-llama")
    config = CompressionConfig(default=TensorSetting(bits=4, group_size=32), layers={1: LayerConfig(drop="layer")})
    result = compress_model(model, info, config)
    path = tmp_path_factory.mktemp("pristine") / "art"
    write_artifact(path, model, tiny_tokenizer(), result, base_model="tiny-llama")
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    return path


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text())


def _quantized_tensor(path: Path) -> tuple[str, int, int]:
    """(name, element count, bits) of the first quantized tensor of an artifact."""
    data = _manifest(path)
    for tensor in data["tensors"]:
        bits = data["settings"][tensor["setting"]]["bits"]
        if bits != 16:
            count = 1
            for size in tensor["shape"]:
                count *= size
            return tensor["name"], count, bits
    raise AssertionError("no quantized tensor")


def tamper(src: Path, dst: Path, *, frames=None, files=None, edit=None) -> Path:
    """Copy an artifact and change it so that every hash and size still matches: frames maps
    (tensor name, kind) → new frame bytes (tensors.bin is rebuilt, offsets and sha256
    recomputed), files maps name → new content (its recorded size and sha256 updated), and `edit`
    changes the manifest dict last."""
    shutil.copytree(src, dst)
    data = _manifest(dst)
    blob = (dst / TENSORS_FILE).read_bytes()
    out = bytearray()
    for tensor in data["tensors"]:
        for frame in tensor["frames"]:
            chunk = (frames or {}).get((tensor["name"], frame["kind"]))
            if chunk is None:
                chunk = blob[frame["offset"] : frame["offset"] + frame["length"]]
            frame.update(offset=len(out), length=len(chunk), sha256=hashlib.sha256(chunk).hexdigest())
            out += chunk
    (dst / TENSORS_FILE).write_bytes(bytes(out))
    data["tensor_bytes"] = len(out)
    for name, content in (files or {}).items():
        (dst / name).write_bytes(content)
    data["files"] = {name: (dst / name).stat().st_size for name in data["files"]}
    data["file_sha256"] = {name: hashlib.sha256((dst / name).read_bytes()).hexdigest() for name in data["file_sha256"]}
    if edit is not None:
        edit(data)
    text = json.dumps(data, separators=(",", ":")) + "\n"
    data["total_bytes"] = sum(data["files"].values()) + len(text)
    (dst / MANIFEST_FILE).write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return dst


def one_line_error(path: Path, text_file: Path, capsys, match: str) -> str:
    """The EvoError evo.load raises (one line, matching `match`), and the same through the CLI."""
    with pytest.raises(EvoError, match=match) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message
    capsys.readouterr()
    assert main(["eval", str(path), "--dataset", str(text_file)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors[-1] == f"error: {message}" and not any("Traceback" in line for line in errors)
    print(f"\n[{path.name}] {errors[-1]}")
    return message


def test_the_untouched_artifact_loads(pristine, tmp_path):
    copy = tamper(pristine, tmp_path / "same")  # the tamper helper alone changes nothing that matters
    model, _ = load(copy)
    assert len(model.model.layers) == 3


# --- 1. no code from a model directory or an artifact ---------------------------------------------


EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("code from the model ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    pass


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _add_auto_map(directory: Path, filename: str, marker: Path) -> None:
    (directory / "evil.py").write_text(textwrap.dedent(EVIL.format(marker=str(marker))))
    config = json.loads((directory / filename).read_text())
    if filename == "config.json":
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    else:
        config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (directory / filename).write_text(json.dumps(config))


def _run_cli(args: list[str], home: Path, trust: bool = False) -> subprocess.CompletedProcess:
    """`yes | evo ...`: a `y` on stdin for any prompt transformers might show."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "evo.cli", *args] + (["--trust-remote-code"] if trust else [])
    shell = "yes | " + " ".join(f"'{part}'" for part in command) + "; exit ${PIPESTATUS[1]}"
    return subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("filename", ["config.json", "tokenizer_config.json"])
def test_model_dir_with_auto_map_is_refused_without_a_prompt(tmp_path, text_file, filename):
    model_dir = save_tiny_model(tmp_path / "model")
    marker = tmp_path / "MARKER"
    _add_auto_map(model_dir, filename, marker)
    done = _run_cli(["eval", str(model_dir), "--dataset", str(text_file)], tmp_path / "hf")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    print(f"\n[model dir, auto_map in {filename}] {errors}")
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and "ships its own Python code" in errors[0] and "--trust-remote-code" in errors[0]
    assert "Traceback" not in done.stderr and "[y/N]" not in done.stderr + done.stdout
    assert not marker.exists()
    assert not list((tmp_path / "hf").rglob("evil.py"))  # nothing copied to the modules cache


def test_artifact_with_auto_map_is_refused_without_a_prompt(pristine, tmp_path, text_file):
    marker = tmp_path / "MARKER"
    shutil.copytree(pristine, tmp_path / "stage")
    _add_auto_map(tmp_path / "stage", "tokenizer_config.json", marker)
    content = (tmp_path / "stage" / "tokenizer_config.json").read_bytes()
    path = tamper(pristine, tmp_path / "art", files={"tokenizer_config.json": content})
    shutil.copy(tmp_path / "stage" / "evil.py", path / "evil.py")
    done = _run_cli(["eval", str(path), "--dataset", str(text_file)], tmp_path / "hf")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    print(f"\n[artifact, auto_map in tokenizer_config.json] {errors}")
    assert done.returncode == 2 and len(errors) == 1 and "evo artifacts never run code" in errors[0]
    assert "Traceback" not in done.stderr and not marker.exists()


def test_trust_remote_code_is_an_explicit_opt_in(tmp_path, text_file):
    """The flag reaches transformers: with it, the model's own code does run (and only then)."""
    model_dir = save_tiny_model(tmp_path / "model")
    marker = tmp_path / "MARKER"
    _add_auto_map(model_dir, "config.json", marker)
    _run_cli(["eval", str(model_dir), "--dataset", str(text_file), "--max-tokens", "64"], tmp_path / "hf", trust=True)
    assert marker.exists()


def test_safetensors_win_over_a_pickle_beside_them(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", seed=0)
    assert (model_dir / "model.safetensors").is_file()
    other = save_tiny_model(tmp_path / "other", seed=1)
    from transformers import AutoModelForCausalLM

    torch.save(AutoModelForCausalLM.from_pretrained(other).state_dict(), model_dir / "pytorch_model.bin")
    loaded = load_model(str(model_dir), dtype="float32")
    expected = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.model.state_dict()[name], expected.state_dict()[name])


@pytest.mark.parametrize("case", ["dev-zero", "fifo"])
def test_model_dir_config_files_are_read_bounded(tmp_path, case):
    """A tokenizer_config.json linked to /dev/zero or made a named pipe is refused, not read forever."""
    model_dir = save_tiny_model(tmp_path / "model")
    (model_dir / "tokenizer_config.json").unlink()
    if case == "dev-zero":
        (model_dir / "tokenizer_config.json").symlink_to("/dev/zero")
    else:
        os.mkfifo(model_dir / "tokenizer_config.json")
    with pytest.raises(EvoError, match="tokenizer_config.json is not a regular file") as caught:
        load_model(str(model_dir))
    assert "\n" not in str(caught.value)
    print(f"\n[model dir, tokenizer_config.json {case}] error: {caught.value}")


# --- 2. bounded decoding --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_frame(pristine) -> bytes:
    """A codes frame whose header matches the tensor but whose zstd payload expands to 4 GiB."""
    import zstandard

    _, count, bits = _quantized_tensor(pristine)
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=BOMB_BYTES)
    chunk = bytes(1 << 22)
    payload = b"".join(compressor.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))) + compressor.flush()
    return bytes(coding._header("zstd", bits, count)) + payload


def test_lazy_decoding_checks_frames_like_the_eager_load(pristine, bomb_frame):
    """evo.runtime decodes held frames through decode_stored_tensor: a bomb whose sha256 matches is
    still refused by its declared sizes before anything is decompressed."""
    from dataclasses import replace

    from evo.compress.artifact import decode_stored_tensor, read_manifest

    name, _, _ = _quantized_tensor(pristine)
    tensor = next(t for t in read_manifest(pristine).tensors if t.name == name)
    blob = (pristine / TENSORS_FILE).read_bytes()
    frames = {frame.kind: blob[frame.offset : frame.offset + frame.length] for frame in tensor.frames}
    frames["codes"] = bomb_frame
    stored = replace(tensor, frames=tuple(
        replace(frame, sha256=hashlib.sha256(bomb_frame).hexdigest(), length=len(bomb_frame))
        if frame.kind == "codes" else frame for frame in tensor.frames))
    start = time.perf_counter()
    with pytest.raises(EvoError, match=f"tensor {name}: the codes frame .* expands to {BOMB_BYTES} bytes"):
        decode_stored_tensor(pristine, stored, frames)
    assert time.perf_counter() - start < 5


def test_decompression_bomb_is_refused_before_decompressing(pristine, bomb_frame, tmp_path, text_file, capsys):
    name, count, _ = _quantized_tensor(pristine)
    path = tamper(pristine, tmp_path / "bomb", frames={(name, "codes"): bomb_frame})
    start = time.perf_counter()
    message = one_line_error(path, text_file, capsys, f"expands to {BOMB_BYTES} bytes, {count} expected")
    assert name in message
    assert time.perf_counter() - start < 60


def test_zstd_frame_without_a_content_size_is_refused(pristine, tmp_path, text_file, capsys):
    import zstandard

    name, count, bits = _quantized_tensor(pristine)
    payload = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(count))
    frame = bytes(coding._header("zstd", bits, count)) + payload
    path = tamper(pristine, tmp_path / "nosize", frames={(name, "codes"): frame})
    one_line_error(path, text_file, capsys, "does not record its decompressed size")


@pytest.mark.parametrize(
    "case, low, span, counts, match",
    [
        ("span-beyond-bits", 0, 1 << 20, None, r"ANS symbol range \[0, 1048576\) exceeds the 16 codes"),
        ("range-past-bits", 15, 2, None, r"ANS symbol range \[15, 17\) exceeds"),
        ("histogram-too-large", 0, 2, [1 << 40, 1], "histogram counts more than"),
    ],
)
def test_ans_header_spans_are_bounded(pristine, tmp_path, text_file, capsys, case, low, span, counts, match):
    name, count, bits = _quantized_tensor(pristine)
    assert bits == 4
    frame = coding._header("ans", bits, count)
    coding._put_varint(frame, low)
    coding._put_varint(frame, span)
    for value in counts or [count] + [0] * 7:
        coding._put_varint(frame, value)
    frame += bytes(8)
    path = tamper(pristine, tmp_path / case, frames={(name, "codes"): bytes(frame)})
    one_line_error(path, text_file, capsys, match)


def test_frame_counts_must_match_the_shape(pristine, tmp_path, text_file, capsys):
    """A header that claims 10^12 values is refused from the manifest's shape, before any allocation."""
    name, count, bits = _quantized_tensor(pristine)
    frame = bytes(coding._header("ans", bits, 10**12)) + b"\x00\x01" + b"\x80\xa0\x94\xa5\x8d\x1d"
    path = tamper(pristine, tmp_path / "count", frames={(name, "codes"): frame})
    one_line_error(path, text_file, capsys, f"header says {10**12} values, {count} expected")


def test_decode_alone_is_bounded_by_its_header():
    """coding.decode without expectations: every declared size is checked against the header's count."""
    import zstandard

    frame = bytes(coding._header("zstd", 8, 10)) + zstandard.ZstdCompressor().compress(bytes(10**6))
    with pytest.raises(EvoError, match="expands to 1000000 bytes, 10 expected"):
        coding.decode(frame)
    with pytest.raises(EvoError, match="4 packed codes of 3 bits take 2 bytes"):
        coding.decode(bytes(coding._header("packed", 3, 4)) + bytes(1000))
    with pytest.raises(EvoError, match="varint longer than 10 bytes"):
        coding.decode(b"\x04\x04" + b"\xff" * 100)
    with pytest.raises(EvoError, match="holds 16-bit values"):
        coding.decode(bytes(coding._header("u16-zstd", 8, 4)) + zstandard.ZstdCompressor().compress(bytes(8)))


@pytest.mark.parametrize(
    "case, edit, match",
    [
        ("layers-1e9", lambda m: m.update(base_num_layers=10**9), "base_num_layers is 1000000000"),
        ("kept-unsorted", lambda m: m.update(kept_layers=[2, 0, 3]), "kept_layers is not an increasing"),
        ("negative-offset", lambda m: m["tensors"][0]["frames"][0].update(offset=-5), "at offset -5, expected 0"),
        ("offset-past-file", lambda m: m["tensors"][-1]["frames"][-1].update(offset=10**12), "at offset 1000000000000"),
        ("length-huge", lambda m: m["tensors"][-1]["frames"][-1].update(length=2**62), "frames add up to"),
        ("shape-absurd", lambda m: m["tensors"][0].update(shape=[2**40, 2**40]), "not a list of 1..8 positive sizes"),
        ("shape-negative", lambda m: m["tensors"][0].update(shape=[-1, 64]), "not a list of 1..8 positive sizes"),
        ("file-outside", lambda m: m["files"].update({"../outside": 1}), "not a plain path inside the artifact"),
        ("digits-5000", None, "truncated or corrupt"),
        ("nested", None, "nested too deeply"),
    ],
)
def test_manifest_integers_are_validated(pristine, tmp_path, text_file, capsys, case, edit, match):
    path = tamper(pristine, tmp_path / case, edit=edit)
    if case == "digits-5000":  # an integer json.loads refuses to parse (Python's 4300-digit limit)
        text = (path / MANIFEST_FILE).read_text()
        (path / MANIFEST_FILE).write_text(text.replace('"base_num_layers":4', '"base_num_layers":' + "9" * 5000))
    if case == "nested":
        (path / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    start = time.perf_counter()
    one_line_error(path, text_file, capsys, match)
    assert time.perf_counter() - start < 30  # refused, not counted to 10^9


@pytest.mark.parametrize(
    "case, change, match",
    [
        ("layers-20000", {"num_hidden_layers": 20_000}, "declares 20000 decoder layers but the manifest keeps 3"),
        ("vocab-1e9", {"vocab_size": 10**9}, r"model.embed_tokens.weight \(259, 64\) does not fit .* \(shape \(1000000000, 64\)\)"),
        ("hidden-4096", {"hidden_size": 4096}, "does not fit the model its config.json builds"),
        ("untied", {"tie_word_embeddings": False}, "lacks tensor"),
    ],
)
def test_config_json_must_agree_with_the_manifest_shapes(pristine, tmp_path, text_file, capsys, case, change, match):
    config = json.loads((pristine / MODEL_CONFIG_FILE).read_text())
    config.update(change)
    path = tamper(pristine, tmp_path / case, files={MODEL_CONFIG_FILE: json.dumps(config).encode()})
    start = time.perf_counter()
    one_line_error(path, text_file, capsys, match)
    assert time.perf_counter() - start < 30


def _constant_frame(bits: int, count: int) -> bytes:
    """A valid frame of `count` equal values in a dozen bytes: an ANS histogram of one symbol."""
    if bits == 16:
        half = _constant_frame(8, count)
        frame = coding._header("u16-planes", 16, count)
        coding._put_varint(frame, len(half))
        return bytes(frame) + half + half
    frame = coding._header("ans", bits, count)
    for value in (0, 1, count):
        coding._put_varint(frame, value)
    return bytes(frame)


def test_config_and_manifest_that_agree_on_a_huge_model_are_refused(pristine, tmp_path, text_file, capsys):
    """config.json with a 10^9 vocabulary and a manifest whose shapes agree (frames of a few bytes
    declaring 64 * 10^9 constant weights): refused before the 256 GB model is built."""
    from evo.compress.coding import expected_frames

    data = _manifest(pristine)
    embedding = next(t for t in data["tensors"] if t["name"] == "model.embed_tokens.weight")
    setting = TensorSetting.from_dict(data["settings"][embedding["setting"]])
    shape = (10**9, embedding["shape"][1])
    frames = {("model.embed_tokens.weight", kind): _constant_frame(bits, count)
              for kind, (count, bits) in expected_frames(shape, setting).items()}
    config = json.loads((pristine / MODEL_CONFIG_FILE).read_text())
    config["vocab_size"] = shape[0]

    def grow(manifest):
        next(t for t in manifest["tensors"] if t["name"] == "model.embed_tokens.weight")["shape"] = list(shape)

    path = tamper(pristine, tmp_path / "huge", frames=frames, files={MODEL_CONFIG_FILE: json.dumps(config).encode()},
                  edit=grow)
    one_line_error(path, text_file, capsys, r"shapes declare 64000\d+ weights for \d+ bytes of frames")


@pytest.mark.parametrize("case", ["tensors-dev-zero", "tensors-outside", "manifest-dev-zero", "tokenizer-outside",
                                  "config-fifo"])
def test_only_regular_files_inside_the_artifact(pristine, tmp_path, text_file, capsys, case):
    path = tamper(pristine, tmp_path / case)
    outside = tmp_path / "outside"
    outside.mkdir()
    if case == "tensors-dev-zero":
        (path / TENSORS_FILE).unlink()
        (path / TENSORS_FILE).symlink_to("/dev/zero")
        match = f"{TENSORS_FILE} is a symbolic link"
    elif case == "tensors-outside":  # the same bytes, but outside the artifact
        shutil.move(path / TENSORS_FILE, outside / TENSORS_FILE)
        (path / TENSORS_FILE).symlink_to(outside / TENSORS_FILE)
        match = f"{TENSORS_FILE} is a symbolic link"
    elif case == "manifest-dev-zero":
        (path / MANIFEST_FILE).unlink()
        (path / MANIFEST_FILE).symlink_to("/dev/zero")
        match = f"{MANIFEST_FILE} is a symbolic link"
    elif case == "tokenizer-outside":
        packed = "tokenizer.json.zst"  # the tokenizer as the artifact stores it (evo.compress.packed_files)
        shutil.move(path / packed, outside / packed)
        (path / packed).symlink_to(outside / packed)
        match = f"{packed} is a symbolic link"
    else:
        (path / MODEL_CONFIG_FILE).unlink()
        os.mkfifo(path / MODEL_CONFIG_FILE)
        match = f"{MODEL_CONFIG_FILE} is not a regular file"
    one_line_error(path, text_file, capsys, match)


def test_config_that_builds_too_many_modules_is_stopped_while_building(pristine):
    """The meta-device build runs under a module cap: a config that would build a million
    modules (say, experts) is refused after a few thousand, in milliseconds."""
    from types import SimpleNamespace

    from torch import nn

    from evo.compress import integrity
    from evo.compress.artifact import read_manifest

    manifest = read_manifest(pristine)
    config = SimpleNamespace(num_hidden_layers=len(manifest.kept_layers))
    start = time.perf_counter()
    with pytest.raises(EvoError, match="builds more than .* modules") as caught:
        integrity.check_model_config(config, manifest, "artifact X",
                                     lambda: nn.ModuleList(nn.ReLU() for _ in range(10**6)))
    assert time.perf_counter() - start < 5
    print(f"\n[module cap] error: {caught.value}")


def test_files_changed_after_export_are_refused(pristine, tmp_path, text_file, capsys):
    path = tamper(pristine, tmp_path / "grown")
    with open(path / MODEL_CONFIG_FILE, "a") as handle:
        handle.write(" " * 100)
    one_line_error(path, text_file, capsys, f"{MODEL_CONFIG_FILE} holds .* bytes but the manifest records")


# --- peak memory on a decompression bomb, under an address-space cap --------------------------------

PEAK_SCRIPT = """
import json, resource, sys
import torch
torch.set_num_threads(1)
import transformers, transformers.models.llama.modeling_llama, zstandard, hashlib
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
import evo, evo.remote_code, evo.modelio
from evo.compress import artifact, integrity
from evo.errors import EvoError

path = sys.argv[1]
manifest = artifact.read_manifest(path)
declared = integrity.dense_bytes(manifest, 4)  # float32, the dtype the artifact loads in
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
cap = vm + (1 << 30)  # 1 GiB of address space above what the imports took; the bomb needs 4 GiB
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:  # reset the peak RSS to the current RSS (Linux >= 4.0), so the delta is the load's own peak
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    reset = True
except OSError:
    reset = False
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    evo.load(path)
    outcome = "loaded"
except EvoError as exc:
    outcome = "EvoError: " + str(exc)
except BaseException as exc:
    outcome = type(exc).__name__ + ": " + (str(exc).splitlines() or [""])[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"declared": declared, "peak_delta": after - before, "outcome": outcome, "peak_reset": reset,
                  "cap": cap, "vm": vm}))
"""


def test_decompression_bomb_peak_memory_is_bounded(pristine, bomb_frame, tmp_path):
    name, _, _ = _quantized_tensor(pristine)
    path = tamper(pristine, tmp_path / "bomb", frames={(name, "codes"): bomb_frame})
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n[bomb {BOMB_BYTES} B] declared {result['declared']} B, peak RSS delta {result['peak_delta']} B "
          f"({result['peak_delta'] / result['declared']:.3f}x, peak reset {result['peak_reset']}, RLIMIT_AS "
          f"{result['cap']} B = VmSize + 1 GiB), {result['outcome']}")
    assert result["outcome"].startswith("EvoError: ") and "expands to" in result["outcome"]
    assert result["peak_delta"] < 2 * result["declared"]
