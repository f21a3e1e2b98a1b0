"""Host RAM (and GPU memory) of loading a sharded safetensors checkpoint: evo's streamed loader
(evo/shards.py, what `load_model` uses for a local directory) beside transformers' from_pretrained
(then .to(device), what evo did before), for random models built from the configs of Llama-3.2-1B and
Llama-3.1-8B (benchmarks/scale.py's CONFIGS), saved in 5 GB shards in --save-dtype. Each load runs in
a fresh process; its peak host RSS growth is VmHWM (reset after the imports) minus the RSS then.

  # on one H200 (the lead's command; ~4-6 min, partial results written at --deadline-s):
  python benchmarks/load_memory.py --device cpu,cuda --deadline-s 540 --out benchmarks/results/load_memory_h200
  # CPU smoke (a tiny config, seconds):
  python benchmarks/load_memory.py --smoke --out /tmp/load_memory_smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's evo, not an installed one
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[5])
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM
from evo import shards

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

directory, loader, device, dtype = sys.argv[1], sys.argv[2], torch.device(sys.argv[3]), getattr(torch, sys.argv[4])
config = AutoConfig.from_pretrained(directory)
shards.empty_model(config, dtype=torch.float32, trust_remote_code=False)  # the imports a load makes once
if device.type == "cuda":
    torch.zeros(1, device=device)  # the CUDA context, before the baseline
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS:")
tic = time.perf_counter()
if loader == "streamed":
    model = shards.load_streamed(directory, config, dtype=dtype, device=device)
    assert model is not None, "the checkpoint did not take the streamed path"
else:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device)
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - tic
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"weights": weights, "peak_rss_growth": status("VmHWM:") - before,
                  "rss_growth": status("VmRSS:") - before, "seconds": seconds,
                  "gpu_peak": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0}))
"""


def save_random(name: str, directory: Path, save_dtype: str, build_device: str) -> int:
    """A random model of a config saved in 5 GB shards; the file bytes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from scale import CONFIGS

    config = LlamaConfig(**CONFIGS[name])
    torch.manual_seed(0)
    with torch.device(build_device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, save_dtype))
    model.save_pretrained(directory, max_shard_size="5GB")
    del model
    if build_device == "cuda":
        torch.cuda.empty_cache()
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def measure(directory: Path, loader: str, device: str, dtype: str, timeout: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), loader, device, dtype, str(ROOT)],
                         capture_output=True, text=True, timeout=max(10.0, timeout))
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--device", default="cpu,cuda", help="comma-separated devices to load onto")
    parser.add_argument("--dtype", default="bfloat16", help="the dtype loaded")
    parser.add_argument("--save-dtype", default="bfloat16", help="the checkpoint's dtype (HF's Llamas: bfloat16)")
    parser.add_argument("--loaders", default="streamed,transformers")
    parser.add_argument("--work", default=None, help="where checkpoints are written (default: a temp dir)")
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--smoke", action="store_true", help="a tiny config on the CPU (seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.device, args.save_dtype = "tiny", "cpu", "float32"
    deadline = time.monotonic() + args.deadline_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    build_device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: list[dict] = []
    work = Path(args.work or tempfile.mkdtemp(prefix="evo-load-"))
    complete = True
    try:
        for name in args.models.split(","):
            if time.monotonic() > deadline:
                complete = False
                break
            directory = work / name
            shutil.rmtree(directory, ignore_errors=True)
            tic = time.perf_counter()
            file_bytes = save_random(name, directory, args.save_dtype, build_device)
            print(f"{name}: {file_bytes / 1e9:.2f} GB of {args.save_dtype} shards written in "
                  f"{time.perf_counter() - tic:.0f} s", flush=True)
            for device in args.device.split(","):
                for loader in args.loaders.split(","):
                    left = deadline - time.monotonic()
                    if left < 10:
                        complete = False
                        break
                    try:
                        row = measure(directory, loader, device, args.dtype, left)
                    except subprocess.TimeoutExpired:
                        row, complete = {"error": "deadline"}, False
                    row.update(model=name, device=device, loader=loader, dtype=args.dtype,
                               save_dtype=args.save_dtype, file_bytes=file_bytes)
                    rows.append(row)
                    print(_line(row), flush=True)
                    _write(out, rows, complete=False)
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _write(out, rows, complete=complete)
    print(f"results in {out}/results.md{'' if complete else ' (partial: the deadline came first)'}")


def _line(row: dict) -> str:
    if "error" in row:
        return f"| {row['model']} | {row['device']} | {row['loader']} | error: {row['error']} |"
    weights = row["weights"]
    return (f"| {row['model']} | {row['device']} | {row['loader']} | {weights / 1e9:.2f} | "
            f"{row['peak_rss_growth'] / 1e9:.2f} ({row['peak_rss_growth'] / weights:.2f}x) | "
            f"{row['rss_growth'] / 1e9:.2f} | {row['gpu_peak'] / 1e9:.2f} | {row['seconds']:.1f} |")


def _write(out: Path, rows: list[dict], *, complete: bool) -> None:
    (out / "results.json").write_text(json.dumps({"complete": complete, "rows": rows}, indent=2) + "\n")
    header = ("| model | device | loader | weights GB | peak host RSS growth GB (x weights) | RSS after GB | "
              "peak GPU GB | seconds |\n|---|---|---|---|---|---|---|---|\n")
    note = "" if complete else "\n(partial: the deadline came first)\n"
    (out / "results.md").write_text(header + "\n".join(_line(r) for r in rows) + "\n" + note)


if __name__ == "__main__":
    main()
