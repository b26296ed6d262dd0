#!/usr/bin/env bash
# GPU smoke test on a machine with one CUDA GPU (sized for under 8 minutes on an H100/H200; not yet timed):
#     bash scripts/gpu_smoke.sh [--steps 20] [--only base len-8192 ...]
# Needs only python with a CUDA build of torch. Installs this project with its deepspeed extra unless
# seqtune, deepspeed, omegaconf and datasets already import; on a machine without network, from
# SEQTUNE_WHEELS (a folder made by scripts/wheelhouse.py) with --no-index. Then scripts/gpu_smoke.py
# runs recipes/gpu_smoke.yaml varied one setting at a time (lengths, packing, attention kernels,
# checkpointing, the loss) and writes output/gpu_smoke/smoke.jsonl and smoke.md: tokens/s, MFU, peak
# GPU memory and the memory plan's estimate for each run. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c "import framework, deepspeed, omegaconf, datasets" 2>/dev/null; then
    if [ -n "${SEQTUNE_WHEELS:-}" ]; then
        "$python" -m pip install -q --no-index --find-links "$SEQTUNE_WHEELS" -e ".[deepspeed]"
    else
        "$python" -m pip install -q -e ".[deepspeed]"
    fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" scripts/gpu_smoke.py "$@"
