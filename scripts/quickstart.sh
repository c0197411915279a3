#!/usr/bin/env bash
# Set up, then fine-tune the embedded model with LoRA on the built-in task and show before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/tunesmith quickstart "$@"
