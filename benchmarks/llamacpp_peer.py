"""llama.cpp's own quantizations of the default model, measured with evo's perplexity: the peer
that evo must beat at equal bytes (issue 18's table: method | bytes on disk | WikiText-2 PPL | C4 PPL).

    python benchmarks/llamacpp_peer.py --device cuda --out $OUT/peer          # the whole table
    python benchmarks/llamacpp_peer.py --build-only --jobs 16                  # only build llama.cpp
    python benchmarks/llamacpp_peer.py --skip-llamacpp --max-tokens 1024       # smoke: the source GGUF alone

Steps, each cached in --build-dir / --work-dir so a second run redoes nothing it has:
1. Build llama-quantize, llama-imatrix and llama-perplexity (CMake, static, CPU with -march=native;
   `--cuda` adds the CUDA backend) from the llama.cpp source vendored in the llama-cpp-python sdist:
   --source takes the sdist (.tar.gz, `pip download --no-deps --no-binary :all: llama-cpp-python`),
   the pruned tarball scripts/device/prepare_local.sh writes (.llamacpp/llama.cpp.tar.xz), or a
   source directory. `--llama-bin DIR` uses binaries built elsewhere.
2. An importance matrix of the source GGUF on evo's embedded calibration corpus (the six domains
   interleaved in slices of --slice-chars, so the first --imatrix-chunks chunks cover all of them).
3. `llama-quantize --allow-requantize` of the source GGUF (the Q4_1 file the alias ships) to each of
   --types, with and without the imatrix, each also with `--token-embedding-type q4_0`. A type that
   llama-quantize refuses (the 1- and 2-bit IQ types without an imatrix) is a row saying so.
4. evo's perplexity of every GGUF (the code path of `evo eval FILE.gguf --dataset D`: evo.modelio
   loads it through transformers' GGUF loader, evo.evaluate.perplexity scores non-overlapping windows
   of --seq-len; `--eval-via cli` runs `python -m evo.cli eval ... --json` itself, one process per
   file and dataset) on WikiText-2 test and C4 validation, the first --max-tokens tokens (default
   64 windows of 512, issue 18's protocol; 0 = all). A file transformers cannot load is a row saying so.
   `--extra NAME=PATH` adds other GGUFs or evo artifact directories to the same table.
5. Optionally (--llama-perplexity) llama.cpp's own perplexity and prompt tokens/s on WikiText-2.

Writes results.json and results.md under --out and prints the table last. Data: the shared data
folder (--data-dir, else $EVO_DATA_DIR, ./shared/data, ../shared/data): wikitext-2-raw/wiki.test.raw
and c4/c4_validation_2k.parquet.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")
CORE_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q4_0", "IQ4_XS", "IQ4_NL")
IQ_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M")
DEFAULT_TYPES = CORE_TYPES + IQ_TYPES
VARIANTS = ("plain", "emb", "imatrix", "imatrix+emb")  # emb: --token-embedding-type EMB_TYPE
EMB_TYPE = "q4_0"
DATASET_LABELS = {"wikitext2": "WikiText-2", "c4": "C4"}


class BenchError(Exception):
    """A problem the user can fix; main prints it as one line."""


@dataclass(frozen=True)
class Variant:
    """One llama-quantize run."""

    qtype: str
    imatrix: bool
    embedding: str | None  # --token-embedding-type, or None for llama.cpp's choice

    @property
    def name(self) -> str:
        return self.qtype + ("-imat" if self.imatrix else "") + (f"-emb{self.embedding}" if self.embedding else "")

    @property
    def label(self) -> str:
        extras = (["imatrix"] if self.imatrix else []) + ([f"emb {self.embedding}"] if self.embedding else [])
        return f"llama.cpp {self.qtype}" + (f" + {' + '.join(extras)}" if extras else "")


@dataclass
class Row:
    """One line of the table."""

    method: str
    path: str
    kind: str  # "gguf" or "artifact"
    qtype: str | None = None
    imatrix: bool | None = None
    embedding: str | None = None
    bytes: int | None = None
    status: str = "ok"
    detail: str = ""
    quantize_s: float | None = None
    eval: dict = field(default_factory=dict)  # dataset -> {ppl, mean_nll, tokens_predicted, ...} or {error}
    eval_s: float | None = None
    llama_perplexity: dict | None = None


# ----------------------------------------------------------------------------------------------
# 1. llama.cpp: source and build


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_llamacpp_root(path: Path) -> bool:
    return (path / "CMakeLists.txt").is_file() and (path / "tools" / "quantize").is_dir() and (path / "ggml").is_dir()


def _find_llamacpp_root(top: Path) -> Path:
    for candidate in [top, *sorted(top.glob("*")), *sorted(top.glob("*/*")), *sorted(top.glob("*/*/*"))]:
        if candidate.is_dir() and _is_llamacpp_root(candidate):
            return candidate
    raise BenchError(f"no llama.cpp source tree (CMakeLists.txt, ggml/, tools/quantize/) under {top}")


def _extract(archive: Path, dest: Path) -> None:
    name = archive.name.lower()
    if name.endswith((".tar.zst", ".tzst")):
        try:
            import zstandard
        except ImportError:  # the zstd program does as well
            if shutil.which("zstd") is None:
                raise BenchError(f"--source {archive}: install zstandard or zstd, or pass the .tar.xz") from None
            with subprocess.Popen(["zstd", "-dc", "--long=31", str(archive)], stdout=subprocess.PIPE) as proc:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    tar.extractall(dest, filter="data")
            return
        with open(archive, "rb") as raw:
            reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(raw)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(dest, filter="data")
    elif name.endswith((".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar")):  # the standard library reads these
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    else:
        raise BenchError(f"--source {archive}: use a llama.cpp directory, a .tar.xz/.tar.zst or the llama-cpp-python sdist (.tar.gz)")


def prepare_source(source: Path, build_dir: Path) -> Path:
    """The llama.cpp source directory: `source` itself, or its archive extracted once into build_dir/src."""
    if source.is_dir():
        return _find_llamacpp_root(source)
    if not source.is_file():
        raise BenchError(f"llama.cpp source {source} does not exist: run scripts/device/prepare_local.sh, or pass "
                         "--source with the llama-cpp-python sdist (pip download --no-deps --no-binary :all: llama-cpp-python)")
    stamp = f"{source.resolve()} {_sha256(source)}"
    dest = build_dir / "src"
    marker = build_dir / "src.stamp"
    if not (marker.is_file() and marker.read_text() == stamp and dest.is_dir()):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        tic = time.perf_counter()
        _extract(source, dest)
        marker.write_text(stamp)
        print(f"extracted {source} in {time.perf_counter() - tic:.1f} s", flush=True)
    return _find_llamacpp_root(dest)


def llamacpp_commit(src: Path) -> str:
    marker = src / "LLAMACPP_COMMIT"
    return marker.read_text().strip() if marker.is_file() else "unknown"


def build_llamacpp(src: Path, build_dir: Path, *, jobs: int, cuda: bool, cuda_arch: str) -> Path:
    """Configure and build the three tools (cached: a matching stamp and the binaries skip it); their bin dir."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BenchError("cmake is not on PATH: install it (pip install cmake) or pass --llama-bin DIR")
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
               "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DGGML_CCACHE=OFF"]
    if cuda:
        options += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    out = build_dir / ("cuda" if cuda else "cpu")
    bin_dir = out / "bin"
    stamp = json.dumps({"src": str(src), "commit": llamacpp_commit(src), "options": options, "generator": generator})
    marker = out / "evo-build.stamp"
    if marker.is_file() and marker.read_text() == stamp and all((bin_dir / t).is_file() for t in TOOLS):
        print(f"llama.cpp tools already built in {bin_dir}", flush=True)
        return bin_dir
    tic = time.perf_counter()
    _run([cmake, "-S", str(src), "-B", str(out), *generator, *options], "cmake configure")
    _run([cmake, "--build", str(out), "--target", *TOOLS, "-j", str(jobs)], "cmake build")
    missing = [t for t in TOOLS if not (bin_dir / t).is_file()]
    if missing:
        raise BenchError(f"the build finished without {', '.join(missing)} in {bin_dir}: read the build log above")
    marker.write_text(stamp)
    print(f"built {', '.join(TOOLS)} ({'CUDA' if cuda else 'CPU'}) with {jobs} jobs in {time.perf_counter() - tic:.0f} s",
          flush=True)
    return bin_dir


def _run(cmd: list[str], what: str) -> None:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise BenchError(f"{what} failed (exit {result.returncode}): read the output above")


# ----------------------------------------------------------------------------------------------
# 2. importance matrix


def _pieces(text: str, size: int) -> list[str]:
    """text cut into pieces of at most `size` characters, at a line break where there is one, else a space."""
    out, start = [], 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + 1, start + size)
        if cut <= start:
            cut = text.rfind(" ", start + 1, start + size)
        if cut <= start:
            cut = start + size
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return [piece.strip() for piece in out if piece.strip()]


def write_calibration_text(path: Path, slice_chars: int) -> dict:
    """evo's embedded calibration corpus as one text file, its sources interleaved: each round takes
    about slice_chars characters from every source still holding some (documents longer than that
    are cut at line breaks), so llama-imatrix's first chunks already see all six domains."""
    from evo.data.corpus import read_corpus

    corpus = read_corpus(["calibration_mix"])
    queues: dict[str, list[str]] = {}
    for doc in corpus.documents:
        queues.setdefault(doc.source, []).extend(_pieces(doc.text.strip(), slice_chars))
    queues = {source: pieces for source, pieces in queues.items() if pieces}
    positions = {source: 0 for source in queues}
    pieces: list[str] = []
    while any(positions[s] < len(queues[s]) for s in queues):
        for source, docs in queues.items():
            taken = 0
            while positions[source] < len(docs) and taken < slice_chars:
                pieces.append(docs[positions[source]])
                taken += len(docs[positions[source]])
                positions[source] += 1
    text = "\n\n".join(pieces) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return {"corpus_sha256": corpus.sha256, "chars": len(text), "sources": sorted(queues), "slice_chars": slice_chars}


def compute_imatrix(bin_dir: Path, model: Path, work: Path, *, chunks: int, ctx: int, threads: int, ngl: int,
                    slice_chars: int) -> Path:
    text_path = work / "calibration_mix.txt"
    info = write_calibration_text(text_path, slice_chars)
    out = work / "imatrix.gguf"
    cmd = [str(bin_dir / "llama-imatrix"), "-m", str(model), "-f", str(text_path), "-o", str(out), "-c", str(ctx),
           "--chunks", str(chunks), "-t", str(threads), "-ngl", str(ngl), "--no-ppl"]
    stamp = json.dumps({"cmd": cmd[1:], "model": _file_key(model), "text": info})
    marker = work / "imatrix.stamp"
    if out.is_file() and marker.is_file() and marker.read_text() == stamp:
        print(f"imatrix already computed: {out}", flush=True)
        return out
    tic = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    (work / "imatrix.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not out.is_file():
        raise BenchError(f"llama-imatrix failed (exit {result.returncode}): {_tail(result.stderr)}; log {work / 'imatrix.log'}")
    marker.write_text(stamp)
    print(f"imatrix: {chunks} chunks of {ctx} tokens from {info['chars']:,} characters of calibration_mix "
          f"in {time.perf_counter() - tic:.0f} s", flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# 3. quantization


def _file_key(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _tail(text: str, lines: int = 1) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else ""


def _quantize_error(text: str) -> str:
    """The line of llama-quantize's output that says why it stopped."""
    for line in text.splitlines():
        if re.search(r"error|failed|missing|please|requires", line, re.IGNORECASE) and "====" not in line:
            return line.strip()
    return _tail(text)


def quantize_one(bin_dir: Path, source: Path, variant: Variant, imatrix: Path | None, out_dir: Path, threads: int,
                 deadline: float | None) -> Row:
    out = out_dir / f"{variant.name}.gguf"
    row = Row(method=variant.label, path=str(out), kind="gguf", qtype=variant.qtype, imatrix=variant.imatrix,
              embedding=variant.embedding)
    cmd = [str(bin_dir / "llama-quantize"), "--allow-requantize"]
    if variant.imatrix:
        cmd += ["--imatrix", str(imatrix)]
    if variant.embedding:
        cmd += ["--token-embedding-type", variant.embedding]
    cmd += [str(source), str(out), variant.qtype, str(threads)]
    stamp_key = {"cmd": cmd[1:], "source": _file_key(source), "imatrix": _file_key(imatrix) if variant.imatrix else None}
    marker = out_dir / f"{variant.name}.json"
    if marker.is_file():
        cached = json.loads(marker.read_text())
        if cached.get("key") == stamp_key and (cached["status"] != "ok" or out.is_file()):
            row.status, row.detail, row.quantize_s = cached["status"], cached["detail"], cached["seconds"]
            row.bytes = out.stat().st_size if row.status == "ok" else None
            return row
    if deadline is not None and time.time() > deadline:
        row.status, row.detail = "not run", "deadline reached before quantization"
        return row
    out.unlink(missing_ok=True)
    tic = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    row.quantize_s = time.perf_counter() - tic
    (out_dir / f"{variant.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not out.is_file():
        row.status = "rejected by llama-quantize"
        row.detail = f"exit {result.returncode}: {_quantize_error(result.stdout + result.stderr)}"
        out.unlink(missing_ok=True)
    else:
        row.bytes = out.stat().st_size
    marker.write_text(json.dumps({"key": stamp_key, "status": row.status, "detail": row.detail, "seconds": row.quantize_s}))
    return row


# ----------------------------------------------------------------------------------------------
# 4. evo's perplexity (runs in worker processes: each loads one file at a time)

_TOKEN_CACHE: dict[tuple[str, str], object] = {}


def _tokenizer_fingerprint(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def _token_ids(tokenizer, dataset: str):
    """evo.evaluate.tokenize_for_eval of the dataset's text, kept per tokenizer (the quantized files
    all carry the source's tokenizer, so each worker tokenizes each dataset once)."""
    from evo.data.corpus import read_text
    from evo.evaluate.perplexity import tokenize_for_eval

    fingerprint = _tokenizer_fingerprint(tokenizer)
    key = (fingerprint or "", dataset)
    if fingerprint is not None and key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    ids = tokenize_for_eval(tokenizer, read_text(dataset))
    if fingerprint is not None:
        _TOKEN_CACHE[key] = ids
    return ids


def _load(path: str, kind: str, device: str, dtype: str):
    if kind == "artifact":
        from evo.compress.artifact import load

        return load(path, device=device, dtype=None if dtype == "auto" else dtype)
    from evo.modelio import load_model

    loaded = load_model(path, dtype=dtype, device=device)
    return loaded.model, loaded.tokenizer


def _quiet_transformers() -> None:
    """No per-tensor progress bars from transformers' GGUF loader in a log of dozens of loads."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def evaluate_inproc(task: dict) -> dict:
    """evo's perplexity of one file on each dataset: {dataset: result dict}, or {'error': ...}."""
    import torch

    from evo.evaluate.perplexity import perplexity

    if task["deadline"] is not None and time.time() > task["deadline"]:
        return {"status": "not run", "detail": "deadline reached before evaluation"}
    _quiet_transformers()
    torch.set_num_threads(task["threads"])
    tic = time.perf_counter()
    try:
        model, tokenizer = _load(task["path"], task["kind"], task["device"], task["dtype"])
    except Exception as exc:  # the point is to record what transformers' GGUF loader cannot read
        return {"status": "unsupported by evo/transformers", "detail": f"{type(exc).__name__}: {_first_line(exc)}"}
    results = {}
    for dataset in task["datasets"]:
        ids = _token_ids(tokenizer, dataset)
        result = perplexity(model, ids, seq_len=task["seq_len"], max_tokens=task["max_tokens"],
                            batch_size=task["batch_size"])
        results[dataset] = result.to_dict()
    del model
    if task["device"].startswith("cuda"):
        torch.cuda.empty_cache()
    return {"status": "ok", "eval": results, "seconds": time.perf_counter() - tic}


def evaluate_cli(task: dict) -> dict:
    """The same through `python -m evo.cli eval FILE --dataset D --json`, one process per dataset."""
    if task["deadline"] is not None and time.time() > task["deadline"]:
        return {"status": "not run", "detail": "deadline reached before evaluation"}
    tic = time.perf_counter()
    results = {}
    for dataset in task["datasets"]:
        cmd = [sys.executable, "-m", "evo.cli", "eval", task["path"], "--dataset", dataset, "--json",
               "--seq-len", str(task["seq_len"]), "--batch-size", str(task["batch_size"]),
               "--device", task["device"], "--dtype", task["dtype"]]
        if task["max_tokens"]:
            cmd += ["--max-tokens", str(task["max_tokens"])]
        env = dict(os.environ, OMP_NUM_THREADS=str(task["threads"]))
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            return {"status": "unsupported by evo/transformers", "detail": f"evo eval exit {result.returncode}: "
                    f"{_tail(result.stderr or result.stdout)}"}
        record = json.loads(lines[-1])
        results[dataset] = {k: v for k, v in record.items() if k not in ("model", "dataset")}
    return {"status": "ok", "eval": results, "seconds": time.perf_counter() - tic}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


class Evaluator:
    """evo's perplexity of every file handed to `add`: read from work_dir/eval when its cache key
    matches, else run in a pool of worker processes that starts at once, so that files are scored
    while llama-quantize is still writing others (one worker: run in order in `wait`)."""

    def __init__(self, args, deadline: float | None) -> None:
        import threading

        self.args, self.deadline = args, deadline
        self.cache_dir = args.work_dir / "eval"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.worker = evaluate_cli if args.eval_via == "cli" else evaluate_inproc
        self.lock = threading.Lock()
        self.queued: list[tuple] = []  # (row, task, key, cache, future or None)
        self.cached = 0
        self.pool = None
        if args.eval_workers > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(max_workers=args.eval_workers, mp_context=context)
        print(f"evaluating with {args.eval_workers} worker(s) on {args.device}, {args.dtype}", flush=True)

    def add(self, row: Row) -> None:
        """Thread-safe: quantization threads call it as each file is written."""
        if row.status != "ok":
            return
        args = self.args
        task = {"path": row.path, "kind": row.kind, "datasets": list(args.datasets), "seq_len": args.seq_len,
                "max_tokens": args.max_tokens or None, "batch_size": args.batch_size, "device": args.device,
                "dtype": args.dtype, "threads": args.eval_threads, "deadline": self.deadline}
        key = {k: task[k] for k in ("datasets", "seq_len", "max_tokens", "batch_size", "device", "dtype")}
        key["file"] = _tree_key(Path(row.path))
        key["via"] = args.eval_via
        cache = self.cache_dir / (hashlib.sha256(row.path.encode()).hexdigest()[:16] + ".json")
        if cache.is_file():
            record = json.loads(cache.read_text())
            if record["key"] == key:
                _apply(row, record["result"])
                with self.lock:
                    self.cached += 1
                return
        future = self.pool.submit(self.worker, task) if self.pool else None
        with self.lock:
            self.queued.append((row, task, key, cache, future))

    def wait(self) -> None:
        """Collect every result (in order of completion), write the caches, print one line each."""
        total = len(self.queued)
        print(f"{total} files to evaluate, {self.cached} from the cache", flush=True)
        if self.pool is None:
            for done, (row, task, key, cache, _) in enumerate(self.queued, 1):
                self._finish(row, key, cache, self.worker(task), done, total)
            return
        by_future = {future: (row, key, cache) for row, _, key, cache, future in self.queued}
        for done, future in enumerate(cf.as_completed(by_future), 1):
            row, key, cache = by_future[future]
            try:
                result = future.result()
            except Exception as exc:  # a worker that died (out of memory, a crash in a native library)
                result = {"status": "evaluation failed", "detail": f"{type(exc).__name__}: {_first_line(exc)}"}
            self._finish(row, key, cache, result, done, total)
        self.pool.shutdown()

    def close(self) -> None:
        """Drop what has not started (after an error); a no-op after wait."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _finish(row: Row, key: dict, cache: Path, result: dict, done: int, total: int) -> None:
        _apply(row, result)
        if result["status"] != "not run":
            cache.write_text(json.dumps({"key": key, "result": result}))
        ppl = " ".join(f"{d} {v['ppl']:.3f}" for d, v in row.eval.items()) if row.eval else row.detail
        print(f"[{done}/{total}] {row.method}: {row.status} {ppl}", flush=True)


def _tree_key(path: Path) -> list:
    if path.is_dir():
        return sorted(_file_key(p) for p in path.rglob("*") if p.is_file())
    return _file_key(path)


def _apply(row: Row, result: dict) -> None:
    row.status = result["status"]
    row.detail = result.get("detail", row.detail)
    row.eval = result.get("eval", {})
    row.eval_s = result.get("seconds")


# ----------------------------------------------------------------------------------------------
# 5. llama.cpp's own perplexity and speed


def llama_perplexity(bin_dir: Path, row: Row, text: Path, *, chunks: int, ctx: int, threads: int, ngl: int) -> dict:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", row.path, "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
           "-t", str(threads), "-ngl", str(ngl)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    output = result.stdout + result.stderr
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", output)
    speed = re.search(r"prompt eval time =\s*([0-9.]+) ms /\s*(\d+) tokens .*?([0-9.]+) tokens per second", output)
    if result.returncode != 0 or not final:
        return {"error": f"exit {result.returncode}: {_tail(output)}"}
    record = {"ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)), "chunks": chunks, "ctx": ctx,
              "threads": threads, "ngl": ngl}
    if speed:
        record.update(prompt_ms=float(speed.group(1)), prompt_tokens=int(speed.group(2)),
                      tokens_per_s=float(speed.group(3)))
    else:  # builds that print no perf summary: the tool's own "seconds per pass" over n_seq windows of n_ctx
        per_pass = re.search(r"([0-9.]+) seconds per pass", output)
        shape = re.search(r"n_ctx=(\d+).*?n_seq=(\d+)", output)
        if per_pass and shape and float(per_pass.group(1)) > 0:
            tokens = int(shape.group(1)) * int(shape.group(2))
            record.update(prompt_tokens=tokens, tokens_per_s=round(tokens / float(per_pass.group(1)), 1),
                          speed_from="seconds per pass")
    return record


# ----------------------------------------------------------------------------------------------
# table


def _bytes_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def render_markdown(rows: list[Row], datasets: list[str], meta: dict) -> str:
    heads = ["method", "bytes on disk", "MB"] + [f"{DATASET_LABELS.get(d, d)} PPL" for d in datasets]
    with_llama = any(r.llama_perplexity for r in rows)
    if with_llama:
        heads += ["llama-perplexity PPL", "prompt tok/s"]
    heads.append("status")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in sorted(rows, key=lambda r: (r.bytes is None, r.bytes or 0, r.method)):
        cells = [row.method, f"{row.bytes:,}" if row.bytes else "-", f"{row.bytes / 1e6:.2f}" if row.bytes else "-"]
        cells += [f"{row.eval[d]['ppl']:.3f}" if d in row.eval else "-" for d in datasets]
        if with_llama:
            lp = row.llama_perplexity or {}
            cells += [f"{lp['ppl']:.3f}" if "ppl" in lp else "-",
                      f"{lp['tokens_per_s']:.0f}" if "tokens_per_s" in lp else "-"]
        cells.append(row.status if row.status == "ok" else f"{row.status}: {row.detail}")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    notes = [f"- {k}: {v}" for k, v in meta.items() if k != "argv"]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def render_plain(rows: list[Row], datasets: list[str]) -> str:
    width = max([len(r.method) for r in rows] + [6])
    heads = f"{'method':<{width}} {'bytes':>11} " + " ".join(f"{DATASET_LABELS.get(d, d) + ' PPL':>14}" for d in datasets)
    out = [heads]
    for row in sorted(rows, key=lambda r: (r.bytes is None, r.bytes or 0, r.method)):
        cells = " ".join(f"{row.eval[d]['ppl']:>14.3f}" if d in row.eval else f"{'-':>14}" for d in datasets)
        status = "" if row.status == "ok" else f"  {row.status}: {row.detail[:120]}"
        out.append(f"{row.method:<{width}} {row.bytes if row.bytes else '-':>11} {cells}{status}")
    return "\n".join(out)


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "gguf", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    try:
        import torch

        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return versions


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="source GGUF: evo alias or .gguf path (default smollm2-135m)")
    p.add_argument("--source", type=Path, default=REPO / ".llamacpp" / "llama.cpp.tar.xz",
                   help="llama.cpp source: directory, pruned .tar.xz/.tar.zst, or the llama-cpp-python sdist .tar.gz")
    p.add_argument("--llama-bin", type=Path, default=None, help="directory with prebuilt llama-quantize/imatrix/perplexity")
    p.add_argument("--build-dir", type=Path, default=REPO / ".evo_cache" / "llamacpp", help="build cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "llamacpp_peer", help="GGUFs, imatrix, logs, caches")
    p.add_argument("--out", type=Path, default=None, help="where results.json and results.md go (default --work-dir)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs and total CPU threads")
    p.add_argument("--cuda", action="store_true", help="build llama.cpp with its CUDA backend (imatrix, perplexity on GPU)")
    p.add_argument("--cuda-arch", default="90", help="CMAKE_CUDA_ARCHITECTURES for --cuda (default 90: H100/H200)")
    p.add_argument("--build-only", action="store_true", help="build the tools and stop")
    p.add_argument("--skip-llamacpp", action="store_true", help="no build, no quantization: evaluate the source GGUF "
                   "(and --extra) only")
    p.add_argument("--types", default=",".join(DEFAULT_TYPES), help="llama-quantize types, comma-separated")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--imatrix-chunks", type=int, default=128, help="imatrix chunks of --imatrix-ctx tokens (default 128)")
    p.add_argument("--imatrix-ctx", type=int, default=512)
    p.add_argument("--slice-chars", type=int, default=4000, help="characters per source per round of the interleaved corpus")
    p.add_argument("--quant-jobs", type=int, default=4, help="llama-quantize processes at once (threads split --jobs)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                   help="another .gguf file or evo artifact directory for the table (repeatable)")
    p.add_argument("--datasets", default="wikitext2,c4", help="evo eval datasets, comma-separated")
    p.add_argument("--data-dir", type=Path, default=None, help="shared data folder (sets EVO_DATA_DIR)")
    p.add_argument("--max-tokens", type=int, default=64 * 512, help="tokens per dataset, whole windows (0 = all)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="evo eval device: cpu, cuda, auto")
    p.add_argument("--dtype", default="float32", help="evo eval dtype (float32 as the other benchmarks; auto = bf16 on CUDA)")
    p.add_argument("--eval-workers", type=int, default=None, help="evaluation processes (default 1 on CPU, "
                   "min(8, jobs // 2) on CUDA)")
    p.add_argument("--eval-via", choices=("inproc", "cli"), default="inproc",
                   help="inproc: evo's load_model + perplexity in worker processes, both datasets per load; "
                        "cli: python -m evo.cli eval --json per file and dataset")
    p.add_argument("--llama-perplexity", action="store_true", help="also llama-perplexity PPL and tokens/s on WikiText-2")
    p.add_argument("--llama-ppl-chunks", type=int, default=16, help="chunks of --seq-len tokens (default 16)")
    p.add_argument("--llama-ppl-ngl", type=int, default=None, help="layers on the GPU (default 99 with --cuda, else 0)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new quantization or evaluation after this many seconds; rerun to finish (cached)")
    args = p.parse_args(argv)
    args.types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}: use {', '.join(VARIANTS)}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.eval_workers is None:
        args.eval_workers = min(8, max(1, args.jobs // 2)) if args.device.startswith("cuda") else 1
    args.eval_threads = max(1, args.jobs // args.eval_workers)
    args.out = args.out or args.work_dir
    if args.llama_ppl_ngl is None:
        args.llama_ppl_ngl = 99 if args.cuda else 0
    extras = []
    for item in args.extra:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--extra {item!r}: use NAME=PATH")
        extras.append((name, Path(path)))
    args.extra = extras
    return args


def source_gguf(spec: str) -> Path:
    from evo.modelio import resolve_model_source

    source = resolve_model_source(spec)
    if not source.gguf_file:
        raise BenchError(f"--model {spec} is not a GGUF file: llama-quantize needs one (use smollm2-135m or a .gguf path)")
    return Path(source.location) / source.gguf_file


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    deadline = started + args.deadline_s if args.deadline_s else None
    if args.data_dir:
        os.environ["EVO_DATA_DIR"] = str(args.data_dir.resolve())  # worker processes inherit it
    from evo.errors import EvoError

    try:
        return run(args, started, deadline)
    except (BenchError, EvoError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def quantize_and_evaluate(args, rows: list[Row], evaluator: Evaluator, bin_dir: Path | None, source: Path, meta: dict,
                          deadline: float | None) -> None:
    """Imatrix, every llama-quantize variant (appended to rows), and evo's perplexity of every row."""
    for row in rows:
        evaluator.add(row)
    if bin_dir is not None:
        variants = [Variant(t, "imatrix" in v, EMB_TYPE if "emb" in v else None) for t in args.types for v in args.variants]
        imatrix = None
        if any(v.imatrix for v in variants):
            imatrix = compute_imatrix(bin_dir, source, args.work_dir, chunks=args.imatrix_chunks, ctx=args.imatrix_ctx,
                                      threads=args.jobs, ngl=args.llama_ppl_ngl, slice_chars=args.slice_chars)
            meta["imatrix"] = {"chunks": args.imatrix_chunks, "ctx": args.imatrix_ctx, "corpus": "calibration_mix"}
        gguf_dir = args.work_dir / "gguf"
        gguf_dir.mkdir(exist_ok=True)
        threads = max(1, args.jobs // args.quant_jobs)

        def quantize_and_queue(variant: Variant) -> Row:
            row = quantize_one(bin_dir, source, variant, imatrix, gguf_dir, threads, deadline)
            evaluator.add(row)
            return row

        tic = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=args.quant_jobs) as pool:
            quantized = list(pool.map(quantize_and_queue, variants))
        print(f"llama-quantize: {sum(r.status == 'ok' for r in quantized)} of {len(quantized)} files "
              f"in {time.perf_counter() - tic:.0f} s", flush=True)
        rows += quantized
    evaluator.wait()


def run(args, started: float, deadline: float | None) -> int:
    from evo.data.corpus import find_builtin

    meta = {"argv": sys.argv, "versions": _versions()}
    if not args.build_only:
        for dataset in args.datasets:  # fail before any work if a dataset is missing
            if dataset in DATASET_LABELS:
                meta[f"data_{dataset}"] = str(find_builtin(dataset))
    bin_dir = None
    if not args.skip_llamacpp:
        if args.llama_bin:
            bin_dir = args.llama_bin
            missing = [t for t in TOOLS if not (bin_dir / t).is_file()]
            if missing:
                raise BenchError(f"--llama-bin {bin_dir} lacks {', '.join(missing)}")
        else:
            args.build_dir.mkdir(parents=True, exist_ok=True)
            src = prepare_source(args.source, args.build_dir)
            meta["llamacpp_commit"] = llamacpp_commit(src)
            bin_dir = build_llamacpp(src, args.build_dir, jobs=args.jobs, cuda=args.cuda, cuda_arch=args.cuda_arch)
    if args.build_only:
        return 0
    source = source_gguf(args.model)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [Row(method=f"source GGUF ({source.name})", path=str(source), kind="gguf", bytes=source.stat().st_size)]
    for name, path in args.extra:
        if not path.exists():
            raise BenchError(f"--extra {name}={path}: no such file or directory")
        kind = "artifact" if (path / "manifest.json").is_file() else "gguf"
        rows.append(Row(method=name, path=str(path), kind=kind, bytes=_bytes_of(path)))
    evaluator = Evaluator(args, deadline)
    try:
        quantize_and_evaluate(args, rows, evaluator, bin_dir, source, meta, deadline)
    finally:
        evaluator.close()
    if args.llama_perplexity and bin_dir is not None:
        from evo.data.corpus import find_builtin as _find

        text = _find("wikitext2")
        for row in rows:
            if row.status == "ok" and row.kind == "gguf" and (deadline is None or time.time() < deadline):
                row.llama_perplexity = llama_perplexity(bin_dir, row, text, chunks=args.llama_ppl_chunks,
                                                        ctx=args.seq_len, threads=args.jobs, ngl=args.llama_ppl_ngl)
    meta.update(model=args.model, max_tokens=args.max_tokens or "all", seq_len=args.seq_len, device=args.device,
                dtype=args.dtype, eval_via=args.eval_via, seconds=round(time.time() - started, 1))
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    (args.out / "results.md").write_text(render_markdown(rows, args.datasets, meta))
    print(render_plain(rows, args.datasets))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
