"""benchmarks/llamacpp_peer.py without llama.cpp or a model: its source handling, the interleaved
calibration text, llama-quantize bookkeeping (with a stand-in program) and the table."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import llamacpp_peer as lp  # noqa: E402


def _tarball(path: Path, files: dict[str, str], mode: str) -> None:
    with tarfile.open(path, mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


LLAMA_TREE = {"CMakeLists.txt": "project(x)", "ggml/CMakeLists.txt": "", "tools/quantize/main.cpp": "",
              "LLAMACPP_COMMIT": "abc123\n"}


def test_prepare_source_finds_the_tree_in_an_sdist_and_caches(tmp_path):
    sdist = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    _tarball(sdist, {f"llama_cpp_python-0.0.1/vendor/llama.cpp/{k}": v for k, v in LLAMA_TREE.items()}, "w:gz")
    root = lp.prepare_source(sdist, tmp_path / "build")
    assert root == tmp_path / "build" / "src" / "llama_cpp_python-0.0.1" / "vendor" / "llama.cpp"
    assert lp.llamacpp_commit(root) == "abc123"
    (root / "marker").write_text("kept")
    assert lp.prepare_source(sdist, tmp_path / "build") == root and (root / "marker").is_file()  # not extracted again


def test_prepare_source_reads_xz_and_refuses_a_tree_without_llamacpp(tmp_path):
    good = tmp_path / "llama.cpp.tar.xz"
    _tarball(good, {f"llama.cpp/{k}": v for k, v in LLAMA_TREE.items()}, "w:xz")
    assert lp.prepare_source(good, tmp_path / "b1").name == "llama.cpp"
    bad = tmp_path / "other.tar.xz"
    _tarball(bad, {"other/README": "no"}, "w:xz")
    with pytest.raises(lp.BenchError, match="no llama.cpp source tree"):
        lp.prepare_source(bad, tmp_path / "b2")
    with pytest.raises(lp.BenchError, match="does not exist"):
        lp.prepare_source(tmp_path / "missing.tar.xz", tmp_path / "b3")


def test_calibration_text_interleaves_every_source_early(tmp_path):
    info = lp.write_calibration_text(tmp_path / "calib.txt", slice_chars=4000)
    text = (tmp_path / "calib.txt").read_text()
    assert info["sources"] == ["c4", "code", "multilingual", "technical", "tiny", "wiki"]
    assert info["chars"] == len(text) > 3_000_000
    from evo.data.corpus import read_corpus

    corpus = read_corpus(["calibration_mix"])
    first = text[:60_000]  # about 15k tokens: the first 30 imatrix chunks of 512
    for source in info["sources"]:
        doc = next(d.text.strip() for d in corpus.documents if d.source == source and d.text.strip())
        assert doc[:200] in first, source


def _fake_quantize(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "llama-quantize"
    script.write_text(
        "#!/bin/sh\n"
        "imat=0; for a in \"$@\"; do [ \"$a\" = --imatrix ] && imat=1; done\n"
        "eval \"src=\\${$(($# - 3))}; out=\\${$(($# - 2))}; type=\\${$(($# - 1))}\"\n"
        "case $type in IQ1_*|IQ2_*) [ $imat = 1 ] || { echo 'main: Missing importance matrix for tensor blk.0' >&2; exit 1; };; esac\n"
        "echo run >> \"$(dirname \"$out\")/calls\"; cp \"$src\" \"$out\"\n")
    script.chmod(0o755)
    return bin_dir


def test_quantize_rows_record_refusals_and_are_cached(tmp_path):
    bin_dir = _fake_quantize(tmp_path)
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(100))
    imatrix = tmp_path / "imatrix.gguf"
    imatrix.write_bytes(b"x")
    out = tmp_path / "gguf"
    out.mkdir()
    refused = lp.quantize_one(bin_dir, source, lp.Variant("IQ2_XXS", False, None), None, out, 1, None)
    assert refused.status == "rejected by llama-quantize" and "Missing importance matrix" in refused.detail
    ok = lp.quantize_one(bin_dir, source, lp.Variant("IQ2_XXS", True, "q4_0"), imatrix, out, 1, None)
    assert ok.status == "ok" and ok.bytes == 104 and ok.path.endswith("IQ2_XXS-imat-embq4_0.gguf")
    assert ok.method == "llama.cpp IQ2_XXS + imatrix + emb q4_0"
    again = lp.quantize_one(bin_dir, source, lp.Variant("IQ2_XXS", True, "q4_0"), imatrix, out, 1, None)
    assert again.status == "ok" and (out / "calls").read_text().count("run") == 1  # cached: not run twice
    late = lp.quantize_one(bin_dir, source, lp.Variant("Q4_0", False, None), None, out, 1, deadline=0.0)
    assert late.status == "not run"


def test_table_sorts_by_bytes_and_says_why_a_row_is_empty():
    rows = [lp.Row("big", "b", "gguf", bytes=2_000_000, eval={"wikitext2": {"ppl": 10.0}, "c4": {"ppl": 12.0}}),
            lp.Row("small", "s", "gguf", bytes=1_000_000, eval={"wikitext2": {"ppl": 20.0}, "c4": {"ppl": 22.0}}),
            lp.Row("refused", "r", "gguf", status="rejected by llama-quantize", detail="exit 1: needs imatrix")]
    table = lp.render_markdown(rows, ["wikitext2", "c4"], {"model": "m"}).splitlines()
    assert table[0] == "| method | bytes on disk | MB | WikiText-2 PPL | C4 PPL | status |"
    assert [line.split(" | ")[0] for line in table[2:5]] == ["| small", "| big", "| refused"]
    assert "10.000 | 12.000 | ok" in table[3] and "needs imatrix" in table[4]


def test_arguments_are_checked():
    args = lp.parse_args(["--types", "q2_k, IQ4_XS", "--variants", "plain,imatrix", "--device", "cuda", "--jobs", "16"])
    assert args.types == ["Q2_K", "IQ4_XS"] and args.variants == ["plain", "imatrix"]
    assert args.eval_workers == 8 and args.eval_threads == 2 and args.out == args.work_dir
    with pytest.raises(SystemExit):
        lp.parse_args(["--variants", "plain,fancy"])
    with pytest.raises(SystemExit):
        lp.parse_args(["--extra", "no-equals-sign"])


@pytest.mark.parametrize("text", ["a" * 25, "line one\nline two\n" * 7, "word " * 40, "x\n" + "y" * 30 + " z"])
def test_pieces_are_bounded_and_lose_no_text(text):
    pieces = lp._pieces(text, 10)
    assert all(0 < len(p) <= 10 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())
