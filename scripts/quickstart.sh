#!/usr/bin/env bash
# Set up .venv (with the plot extra), train recipes/quickstart.yaml on the CPU (offline), then ask the result a few questions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plot  # matplotlib: the run's folder gets its loss curve
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
.venv/bin/seqtune train recipes/quickstart.yaml "$@"
.venv/bin/python scripts/ask.py output/quickstart
