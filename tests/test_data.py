import json

import numpy as np
import pytest

from evo.data.corpus import read_corpus, read_text, split_plain_text, tokenize_corpus
from evo.errors import EvoError
from tiny import tiny_tokenizer


def test_directory_is_read_sorted_with_sources(text_corpus):
    corpus = read_corpus([str(text_corpus)])
    assert corpus.sources == ("alpha", "code", "digits")
    assert all(doc.source in corpus.sources for doc in corpus.documents)
    assert len(corpus.sha256) == 64


def test_corpus_hash_changes_with_content(text_corpus):
    before = read_corpus([str(text_corpus)]).sha256
    (text_corpus / "digits.txt").write_text("changed " * 300)
    assert read_corpus([str(text_corpus)]).sha256 != before


def test_jsonl_and_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"doc {i} " * 30}) for i in range(5)) + "\n")
    pq.write_table(pa.table({"body": [f"row {i} " * 30 for i in range(4)]}), tmp_path / "b.parquet")
    corpus = read_corpus([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")], text_field="body")
    assert [d.source for d in corpus.documents] == ["a"] * 5 + ["b"] * 4
    assert corpus.documents[6].index == 1 and corpus.documents[6].text.startswith("row 1")


def test_sequences_keep_source_and_document(text_corpus):
    corpus = read_corpus([str(text_corpus)])
    pool = tokenize_corpus(corpus, tiny_tokenizer(), seq_len=64)
    assert pool.token_ids.shape[1] == 64 and pool.token_ids.dtype == np.int32
    assert set(pool.sources) == {"alpha", "code", "digits"}
    # sequences never cross files: every row decodes to text of its own source
    tok = tiny_tokenizer()
    for row, source in zip(pool.token_ids, pool.sources):
        text = tok.decode(row.tolist())
        if source == "digits":
            assert set(text) <= set("0123456789 \n")


def test_plain_text_splits_on_blank_lines_or_lines():
    assert split_plain_text("a\nb\n\n c \n\n\n d") == ["a\nb", " c ", " d"]
    assert split_plain_text("one\ntwo\nthree") == ["one", "two", "three"]


def test_embedded_default_corpus_has_six_domains():
    corpus = read_corpus()
    assert corpus.sources == ("c4", "code", "multilingual", "technical", "tiny", "wiki")
    assert len(corpus.documents) > 1000


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("", ".txt", "corpus is empty"),
        ("   \n\n  ", ".txt", "corpus is empty"),
        ('{"text": "ok"}\n{"text": broken}\n', ".jsonl", r"bad\.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', ".jsonl", r"bad\.jsonl:2: no 'text' field"),
    ],
)
def test_bad_corpus_files(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(EvoError, match=message):
        read_corpus([str(path)])


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(EvoError, match="bad.parquet"):
        read_corpus([str(path)])


def test_missing_path_names_the_option(tmp_path):
    with pytest.raises(EvoError, match="--corpus PATH"):
        read_corpus([str(tmp_path / "nope.txt")])


def test_corpus_shorter_than_one_sequence(tmp_path):
    (tmp_path / "short.txt").write_text("just a few words")
    corpus = read_corpus([str(tmp_path / "short.txt")])
    with pytest.raises(EvoError, match="fewer than one sequence"):
        tokenize_corpus(corpus, tiny_tokenizer(), seq_len=512)


def test_builtin_missing_names_corpus_option(monkeypatch, tmp_path):
    import evo.data.corpus as data

    monkeypatch.setattr(data, "shared_data_dirs", lambda: [tmp_path])
    with pytest.raises(EvoError, match="--corpus PATH"):
        read_corpus(["wikitext2"])
    with pytest.raises(EvoError, match="--dataset PATH") as info:  # evo eval reads text; it has no --corpus
        read_text("wikitext2")
    assert "--corpus" not in str(info.value)


def test_wikitext2_builtin_reads_the_raw_file():
    try:
        text = read_text("wikitext2")
    except EvoError:
        pytest.skip("shared data folder with wikitext-2 is absent")
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n")  # the HF rows joined by blank lines
    assert text.count(" = Robert Boulter = ") == 1
