#!/usr/bin/env bash
# The whole benchmark, one command: training (instruction data, fixed length, MFU), DPO vs TRL, then
# generation (decode speed, mixed adapters). Tables go to bench/results/. Arguments: none; see
# bench/README.md for each script's options.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
"$PY" bench/bench_train.py
"$PY" bench/bench_dpo.py
"$PY" bench/bench_generate.py
