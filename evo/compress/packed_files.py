"""The artifact's files beside tensors.bin and the manifest: the large ones (a tokenizer.json is
3.5 MB on SmolLM2, 5 % of a 3-bit budget) stored zstd-compressed as NAME.zst, every one covered by
a sha256 in the manifest, and read back through a temporary directory holding them as transformers
saved them (transformers reads only plain files).

A file is packed when it is at least PACK_MIN_BYTES and its packed form is smaller; JSON is written
compactly first (the same object, without the indentation). config.json, tokenizer_config.json and
generation_config.json stay plain: evo reads them before anything else (remote-code refusal, the
model's shapes) and they are small.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from evo.constants import (
    GENERATION_CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_CONFIG_FILE,
    TENSORS_FILE,
    TOKENIZER_CONFIG_FILE,
)
from evo.errors import EvoError

if TYPE_CHECKING:
    from evo.compress.artifact import ArtifactManifest

PACKED_SUFFIX = ".zst"
PACK_MIN_BYTES = 4096  # smaller files stay readable: a zstd frame would save a few bytes at most
PACK_LEVEL = 19  # zstd level: 0.5 s for SmolLM2's tokenizer.json, once per artifact (22 saves 0.004 %)
NEVER_PACKED = frozenset({MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE, TENSORS_FILE,
                          MANIFEST_FILE})
# The largest file a packed frame may declare: Gemma's 262k-token tokenizer.json is ~33 MB.
MAX_UNPACKED_BYTES = 1 << 30
PLACEHOLDER_SHA256 = "0" * 64  # stands for a digest where only its length matters (the size model)


def pack_files(directory: Path) -> None:
    """Replace every large file directly in `directory` (not NEVER_PACKED) by NAME.zst when smaller."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=PACK_LEVEL, write_content_size=True, write_checksum=False)
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name in NEVER_PACKED or path.name.endswith(PACKED_SUFFIX):
            continue
        raw = path.read_bytes()
        if len(raw) < PACK_MIN_BYTES:
            continue
        packed = compressor.compress(_compact_json(raw) if path.suffix == ".json" else raw)
        if len(packed) < len(raw):
            (directory / (path.name + PACKED_SUFFIX)).write_bytes(packed)
            path.unlink()


def _compact_json(raw: bytes) -> bytes:
    """The same JSON without indentation, or `raw` itself where it cannot be rewritten losslessly
    (not JSON, NaN, lone surrogates)."""
    try:
        text = json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        return raw


def digested_names(files: Iterable[str]) -> list[str]:
    """The files the manifest gives a sha256: all but tensors.bin (its frames have their own)."""
    return sorted(name for name in files if name != TENSORS_FILE)


def file_digests(directory: Path, files: Iterable[str]) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in digested_names(files)}


def digest_placeholders(files: Iterable[str]) -> dict[str, str]:
    """file_digests' table with every digest a placeholder of the same length."""
    return {name: PLACEHOLDER_SHA256 for name in digested_names(files)}


def is_packed(name: str) -> bool:
    return name.endswith(PACKED_SUFFIX)


def _read_checked(path: Path, name: str, manifest: ArtifactManifest, where: str) -> bytes:
    from evo.compress import integrity

    data = integrity.read_regular_file(path, name, manifest.files[name], where)
    if hashlib.sha256(data).hexdigest() != manifest.file_sha256[name]:
        raise EvoError(f"{where} is corrupt: {name} failed its checksum; re-export it")
    return data


def _unpacked_size(data: bytes, name: str, where: str) -> int:
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise EvoError(f"{where}: {name} is not a zstd frame; re-export it") from None
    if size < 0 or size > MAX_UNPACKED_BYTES:
        raise EvoError(f"{where}: {name} declares {'no' if size < 0 else size} unpacked bytes "
                       f"(at most {MAX_UNPACKED_BYTES} are read); the artifact is corrupt: re-export it")
    return size


def check_files(path: Path, manifest: ArtifactManifest, where: str) -> None:
    """Every digested file matches its sha256 and every packed one declares a bounded size; nothing
    is unpacked. Artifacts of format 1 have no digests and nothing packed."""
    for name in manifest.file_sha256:
        data = _read_checked(path, name, manifest, where)
        if is_packed(name):
            _unpacked_size(data, name, where)


def unpack(data: bytes, name: str, where: str) -> bytes:
    import zstandard

    size = _unpacked_size(data, name, where)
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError:
        raise EvoError(f"{where}: {name} does not unpack; the artifact is corrupt: re-export it") from None
    if len(raw) != size:
        raise EvoError(f"{where}: {name} unpacks to {len(raw)} bytes, not the {size} it declares; re-export it")
    return raw


@contextmanager
def readable_directory(path: Path, manifest: ArtifactManifest, where: str) -> Iterator[Path]:
    """A directory where transformers finds the artifact's configs and tokenizer files as they were
    saved: a temporary one (removed after the block) holding each file the manifest lists, checked
    against its sha256 as it is read, copied or unpacked (tensors.bin and the manifest stay out), so
    transformers reads nothing unlisted or unchecked; `path` itself for format 1 (no file digests)."""
    if not manifest.file_sha256:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="evo-artifact-files-") as tmp:
        directory = Path(tmp)
        for name in digested_names(manifest.files):
            data = _read_checked(path, name, manifest, where)
            target = directory / (name[: -len(PACKED_SUFFIX)] if is_packed(name) else name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(unpack(data, name, where) if is_packed(name) else data)
        yield directory

