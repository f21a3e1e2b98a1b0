"""Read corpora (plain text, JSON lines, parquet, built-in names) into documents, and cut them
into fixed-length token sequences that remember which file and document they came from.

The embedded default calibration corpus lives in evo/data/calibration_mix/ (zstd-compressed, MIT, see its SOURCE.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from evo.errors import EvoError, first_line
from evo.types import Document

TEXT_SUFFIXES = (".txt", ".utf8", ".raw", ".md", ".text")
RECORD_SUFFIXES = (".jsonl", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES + (".zst",)

EMBEDDED_CORPUS = "calibration_mix"
# The last documents of each embedded file are an evaluation slice that calibration never reads:
# `evo eval`'s offline default (~45k tokens of the six domains, a minute on a CPU for 135M).
EMBEDDED_HELDOUT = "calibration_mix_heldout"
HELDOUT_FRACTION = 0.05
HELDOUT_DESCRIPTION = (f"held-out slice of evo's embedded corpus: the last {HELDOUT_FRACTION:.0%} of the documents of "
                       "each of its six files, which calibration never reads")


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus name users expect, found in the shared data folder."""

    relative_path: str  # inside the shared data folder
    description: str


# Evaluation texts users ask for by name. They are read from a shared data folder (EVO_DATA_DIR,
# ./shared/data, ../shared/data); nothing is downloaded.
BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "wikitext2": BuiltinCorpus("wikitext-2-raw/wiki.test.raw", "WikiText-2 raw, test split"),
    "c4": BuiltinCorpus("c4/c4_validation_2k.parquet", "C4 en, 2,000 validation documents"),
}
_BUILTIN_ALIASES = {"wikitext-2": "wikitext2", "wikitext": "wikitext2", "default": EMBEDDED_CORPUS}


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: its source name, where it is, and its content hash."""

    source: str
    path: str
    sha256: str
    documents: int


@dataclass(frozen=True)
class Corpus:
    """Documents read from one or more files, with a hash of exactly what was read."""

    documents: tuple[Document, ...]
    files: tuple[CorpusFile, ...]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.source}\0{f.sha256}\n".encode())
        return digest.hexdigest()

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(f.source for f in self.files)


@dataclass(frozen=True)
class SequencePool:
    """Fixed-length token sequences cut from a corpus, each with its provenance.

    Sequences never cross a file boundary, so every sequence has exactly one source file;
    `documents[i]` is the document (within its file) where sequence i starts.
    """

    token_ids: np.ndarray  # int32 [n, seq_len]
    sources: tuple[str, ...]
    paths: tuple[str, ...]
    documents: tuple[int, ...]
    seq_len: int

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def subset(self, indices: Sequence[int]) -> "SequencePool":
        idx = [int(i) for i in indices]
        return SequencePool(
            token_ids=self.token_ids[idx],
            sources=tuple(self.sources[i] for i in idx),
            paths=tuple(self.paths[i] for i in idx),
            documents=tuple(self.documents[i] for i in idx),
            seq_len=self.seq_len,
        )


def shared_data_dirs() -> list[Path]:
    """Where the shared data folder may be: $EVO_DATA_DIR, ./shared/data, ../shared/data, and
    the same two beside the source checkout."""
    dirs = []
    if os.environ.get("EVO_DATA_DIR"):
        dirs.append(Path(os.environ["EVO_DATA_DIR"]))
    checkout = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), checkout):
        dirs += [base / "shared" / "data", base.parent / "shared" / "data"]
    return dirs


def find_builtin(name: str, option: str = "--corpus") -> Path:
    """Path of a built-in evaluation corpus, or an EvoError that names `option` PATH."""
    builtin = BUILTIN_CORPORA[name]
    for directory in shared_data_dirs():
        candidate = directory / builtin.relative_path
        if candidate.is_file():
            return candidate
    raise EvoError(
        f"built-in corpus {name!r} ({builtin.description}) not found: looked for {builtin.relative_path} "
        f"under $EVO_DATA_DIR, ./shared/data and ../shared/data; pass the file's path instead "
        f"({option} PATH), or use {EMBEDDED_HELDOUT} (shipped with evo)"
    )


def canonical_corpus_name(spec: str) -> str:
    key = spec.strip().lower()
    return _BUILTIN_ALIASES.get(key, key)


def read_corpus(specs: Sequence[str] | str = (EMBEDDED_CORPUS,), *, text_field: str = "text",
                option: str = "--corpus") -> Corpus:
    """Read documents from built-in names, files and directories (expanded, sorted)."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        specs = [EMBEDDED_CORPUS]
    documents: list[Document] = []
    files: list[CorpusFile] = []
    for spec in specs:
        for source, path, raw in _iter_corpus_files(spec, option):
            docs = _documents_from_bytes(raw, path=path, source=source, text_field=text_field)
            digest = hashlib.sha256(raw).hexdigest()
            part = _embedded_part(spec)
            if part is not None:
                docs, path, digest = _split_embedded(docs, path, part)
            files.append(CorpusFile(source=source, path=path, sha256=digest, documents=len(docs)))
            documents.extend(docs)
    if not any(_VISIBLE.search(doc.text) for doc in documents):  # NUL bytes and blanks are no text
        names = ", ".join(f.path for f in files) or ", ".join(specs)
        raise EvoError(f"corpus is empty: no text in {names}; pass files with text via {option} PATH")
    _check_unique_sources(files)
    return Corpus(documents=tuple(documents), files=tuple(files))


def _embedded_part(spec: str) -> str | None:
    """"calibration" or "heldout" for the two halves of the embedded corpus, else None."""
    if Path(spec).exists():
        return None
    name = canonical_corpus_name(spec)
    return {EMBEDDED_CORPUS: "calibration", EMBEDDED_HELDOUT: "heldout"}.get(name)


def heldout_cut(n_documents: int) -> int:
    """Index of the first held-out document of an embedded file of n documents (at least one)."""
    return n_documents - max(1, round(n_documents * HELDOUT_FRACTION))


def _split_embedded(docs: list[Document], path: str, part: str) -> tuple[list[Document], str, str]:
    """One part of an embedded file's documents (indices kept), its path and a hash of that part."""
    cut = heldout_cut(len(docs))
    kept = docs[:cut] if part == "calibration" else docs[cut:]
    if part == "heldout":
        path = f"{path}#heldout"
    digest = hashlib.sha256("\0".join(d.text for d in kept).encode()).hexdigest()
    return kept, path, digest


_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f]")


def _check_unique_sources(files: list[CorpusFile]) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.source in seen and seen[f.source] != f.path:
            raise EvoError(
                f"two corpus files share the source name {f.source!r} ({seen[f.source]} and {f.path}): rename one"
            )
        seen[f.source] = f.path


def _iter_corpus_files(spec: str, option: str = "--corpus") -> Iterable[tuple[str, str, bytes]]:
    """(source name, path, raw bytes) for each file named by one --corpus argument."""
    name = canonical_corpus_name(spec)
    if name in (EMBEDDED_CORPUS, EMBEDDED_HELDOUT) and not Path(spec).exists():
        yield from _embedded_files()
        return
    if name in BUILTIN_CORPORA and not Path(spec).exists():
        path = find_builtin(name, option)
        yield path.stem.split(".")[0], str(path), path.read_bytes()
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        children = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES))
        if not children:
            raise EvoError(
                f"corpus directory {spec} holds no {', '.join(SUPPORTED_SUFFIXES)} files: pass files with text"
            )
        for child in children:
            yield _source_name(child), str(child), child.read_bytes()
        return
    if path.is_file():
        yield _source_name(path), str(path), path.read_bytes()
        return
    known = ", ".join([EMBEDDED_CORPUS, EMBEDDED_HELDOUT, *BUILTIN_CORPORA])
    raise EvoError(f"corpus {spec} does not exist: pass an existing file or directory with {option} PATH, "
                   f"or one of {known}")


def _source_name(path: Path) -> str:
    return path.name.split(".")[0] or path.name


def _embedded_files() -> Iterable[tuple[str, str, bytes]]:
    import zstandard

    folder = resources.files("evo.data") / "calibration_mix"
    entries = sorted((p for p in folder.iterdir() if p.name.endswith(".utf8.zst")), key=lambda p: p.name)
    if not entries:
        raise EvoError("the embedded calibration corpus is missing from this install: reinstall evo")
    for entry in entries:
        raw = zstandard.ZstdDecompressor().decompress(entry.read_bytes())
        yield entry.name.split(".")[0], f"evo:{EMBEDDED_CORPUS}/{entry.name[: -len('.zst')]}", raw


def _documents_from_bytes(raw: bytes, *, path: str, source: str, text_field: str) -> list[Document]:
    lower = path.lower()
    if lower.endswith(".zst"):
        import zstandard

        try:
            raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 31)
        except zstandard.ZstdError as exc:
            raise EvoError(f"{path}: not a valid zstd file ({exc})") from exc
        lower = lower[: -len(".zst")]
    if lower.endswith(".jsonl"):
        texts = _jsonl_texts(raw, path, text_field)
    elif lower.endswith(".parquet"):
        texts = _parquet_texts(path, text_field)
    else:
        texts = split_plain_text(_decode(raw, path))
    return [Document(text=t, source=source, path=path, index=i) for i, t in enumerate(texts)]


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EvoError(f"{path}:{line}: not valid UTF-8 text; convert the file to UTF-8") from exc


_BLANK_LINES = re.compile(r"\n(?:[ \t\r]*\n)+")


def split_plain_text(text: str) -> list[str]:
    """Documents of a plain text file: blocks separated by blank lines; a file with no blank
    line but many lines (one record per line, as in C4 dumps) is split by lines."""
    blocks = [b for b in _BLANK_LINES.split(text) if b.strip()]
    if len(blocks) <= 1:
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) > 1:
            return lines
    return blocks


def _jsonl_texts(raw: bytes, path: str, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(_decode(raw, path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvoError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove that line") from exc
        if not isinstance(record, dict) or text_field not in record:
            raise EvoError(f"{path}:{number}: no {text_field!r} field; pass the right one with --text-field")
        value = record[text_field]
        if not isinstance(value, str):
            raise EvoError(f"{path}:{number}: field {text_field!r} is not a string")
        texts.append(value)
    return texts


def _parquet_texts(path: str, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise EvoError(f"{path}: not a readable parquet file ({first_line(exc)})") from exc
    if text_field not in schema.names:
        raise EvoError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); pass --text-field")
    try:
        column = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise EvoError(f"{path}: cannot read column {text_field!r} ({first_line(exc)})") from exc
    for row, value in enumerate(column):
        if value is not None and not isinstance(value, str):
            raise EvoError(f"{path}: row {row} of column {text_field!r} is not a string")
    return [v for v in column if v]


def wikitext_hf_text(raw: str) -> str:
    """WikiText-2 as the Hugging Face recipe evaluates it: `"\n\n".join(dataset["text"])`, where
    each line of the raw file is a row keeping its newline and blank lines are empty rows. This is
    the text behind the commonly quoted perplexities (SmolLM2-135M: 29.9; the raw file gives 29.5)."""
    rows = ["" if not line.strip() else line + "\n" for line in raw.split("\n")[:-1]]
    return "\n\n".join(rows)


def read_text(spec: str, option: str = "--dataset") -> str:
    """The whole text of an evaluation corpus, documents joined by blank lines; the built-in
    wikitext2 follows the Hugging Face recipe (see wikitext_hf_text)."""
    name = canonical_corpus_name(spec)
    if name in BUILTIN_CORPORA and not Path(spec).exists():
        path = find_builtin(name, option)
        if path.suffix in TEXT_SUFFIXES:
            text = _decode(path.read_bytes(), str(path))
            return wikitext_hf_text(text) if name == "wikitext2" else text
    corpus = read_corpus([spec], option=option)
    return "\n\n".join(doc.text for doc in corpus.documents)


def tokenize_corpus(corpus: Corpus, tokenizer, seq_len: int) -> SequencePool:
    """Tokenize each file's documents into one stream and cut it into non-overlapping sequences.

    Records (jsonl, parquet) are independent documents, so an EOS token separates them; plain-text
    blocks are continuous prose or code, so they are rejoined by a blank line. The tail shorter than
    seq_len is dropped.
    """
    if seq_len < 2:
        raise EvoError(f"--seq-len {seq_len} is too small: use at least 2 tokens")
    eos = getattr(tokenizer, "eos_token_id", None)
    token_rows: list[np.ndarray] = []
    sources: list[str] = []
    paths: list[str] = []
    documents: list[int] = []
    total_tokens = 0
    for file in corpus.files:
        docs = [d for d in corpus.documents if d.path == file.path]
        records = file.path.lower().removesuffix(".zst").endswith(RECORD_SUFFIXES)
        texts = [d.text if records else d.text + "\n\n" for d in docs]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        starts: list[int] = []
        for ids in encoded:
            starts.append(len(stream))
            stream.extend(ids)
            if records and eos is not None:
                stream.append(int(eos))
        total_tokens += len(stream)
        n = len(stream) // seq_len
        if n == 0:
            continue
        array = np.asarray(stream[: n * seq_len], dtype=np.int32).reshape(n, seq_len)
        starts_array = np.asarray(starts)
        for i in range(n):
            doc_position = int(np.searchsorted(starts_array, i * seq_len, side="right") - 1)
            documents.append(docs[doc_position].index)
        token_rows.append(array)
        sources += [file.source] * n
        paths += [file.path] * n
    if not token_rows:
        raise EvoError(
            f"corpus has {total_tokens} tokens, fewer than one sequence of --seq-len {seq_len} in every file: "
            "pass more text or a smaller --seq-len"
        )
    return SequencePool(
        token_ids=np.concatenate(token_rows, axis=0),
        sources=tuple(sources),
        paths=tuple(paths),
        documents=tuple(documents),
        seq_len=seq_len,
    )


DEFAULT_STATS_SEQUENCES = 16
DEFAULT_STATS_SEQ_LEN = 256


def default_stats_tokens(tokenizer) -> np.ndarray:
    """Token ids for activation statistics when no calibration set is given: the first sequences
    of every source of the embedded corpus, round-robin (deterministic, no model pass needed)."""
    pool = tokenize_corpus(read_corpus(), tokenizer, DEFAULT_STATS_SEQ_LEN)
    by_source: dict[str, list[int]] = {}
    for index, source in enumerate(pool.sources):
        by_source.setdefault(source, []).append(index)
    order = [rows[i] for i in range(max(map(len, by_source.values()))) for rows in by_source.values() if i < len(rows)]
    return pool.token_ids[order[:DEFAULT_STATS_SEQUENCES]]
