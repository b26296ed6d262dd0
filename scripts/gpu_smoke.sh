#!/usr/bin/env bash
# GPU smoke test on a machine with one CUDA GPU (sized for under 8 minutes on an H100/H200; not yet timed):
#     [SEQTUNE_WHEELS=wheels/] bash scripts/gpu_smoke.sh [--steps 20] [--only base len-8192 ...]
# Needs only python (PYTHON, else python3) with a CUDA build of torch, and downloads nothing: it installs
# seqtune's own wheel, built from this checkout (or, where that cannot be built, the one in SEQTUNE_WHEELS),
# with its deepspeed extra; a dependency that is not installed yet comes from SEQTUNE_WHEELS (a folder made
# by scripts/wheelhouse.py), always with --no-index. A development install of this checkout (pip install
# -e .) is kept as it is. A Python that pip may not install into (PEP 668's EXTERNALLY-MANAGED, or a
# site-packages this user cannot write) gets a venv, SEQTUNE_SMOKE_VENV (default output/gpu_smoke-venv),
# made with --system-site-packages so that its torch, transformers and the rest are reused.
# Then scripts/gpu_smoke.py runs recipes/gpu_smoke.yaml varied one setting at a time (lengths, packing,
# attention kernels, checkpointing, the loss) and writes output/gpu_smoke/smoke.jsonl and smoke.md:
# tokens/s, MFU, peak GPU memory and the memory plan's estimate for each run.
# Exit status: 0 every run done, 1 a run that should train failed, 3 no CUDA GPU here (it stops after the
# first run's CUDA check), 4 the install failed.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wheels=${SEQTUNE_WHEELS:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { printf 'gpu_smoke: %s\n' "$*" >&2; }

# This machine's pip configuration stays out: an index or find-links URL there would download.
pip() { PIP_CONFIG_FILE=/dev/null "$python" -m pip "$@"; }

# sys.executable is absolute, so later checks may run from another folder.
absolute_python() { "$1" -c 'import sys; print(sys.executable)'; }

# pip's own PEP 668 rule, plus a site-packages this user cannot write (pip would fall back to --user).
needs_venv() {
    "$python" - <<'EOF'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
writable = os.access(sysconfig.get_path("purelib"), os.W_OK)
sys.exit(0 if sys.prefix == sys.base_prefix and (managed or not writable) else 1)
EOF
}

use_venv() {
    local venv=${SEQTUNE_SMOKE_VENV:-output/gpu_smoke-venv}
    if [ ! -x "$venv/bin/python" ]; then
        say "pip may not install into $python (PEP 668, or a read-only site-packages):" \
            "making $venv with --system-site-packages"
        # --without-pip: the system's pip serves the venv too (Debian's Python has no ensurepip)
        "$python" -m venv --system-site-packages --without-pip "$venv" || { say "cannot make $venv"; exit 4; }
    fi
    python=$(absolute_python "$venv/bin/python")
    if ! "$python" -m pip --version >/dev/null 2>&1; then
        "$python" -m ensurepip -q >&2 || { say "$venv has no pip and ensurepip failed"; exit 4; }
    fi
}

# True when `import framework`, from outside the checkout, already finds this checkout's code.
checkout_installed() {
    local found
    found=$(cd "$tmp" && "$python" -c 'import framework, os; print(os.path.realpath(framework.__path__[0]))' \
        2>/dev/null) || return 1
    [ "$found" = "$(pwd -P)/framework" ]
}

# Prints seqtune's wheel: built from a copy of this checkout (an in-tree build would also pack what an
# older build left in build/), without build isolation, which would need setuptools from an index.
own_wheel() {
    if "$python" -c 'import setuptools' 2>/dev/null; then
        mkdir -p "$tmp/src"
        # keep this list equal to scripts/wheelhouse.py's SOURCES: both build the wheel users get
        tar --exclude=__pycache__ -cf - pyproject.toml README.md framework plugins | tar -xf - -C "$tmp/src"
        pip wheel -q --no-deps --no-build-isolation --no-index -w "$tmp/dist" "$tmp/src" \
            >"$tmp/build.log" 2>&1 || true
        local built=("$tmp"/dist/seqtune-*.whl)
        if [ ${#built[@]} = 1 ]; then echo "${built[0]}"; return; fi
        local version
        version=$("$python" -c 'import setuptools; print(setuptools.__version__)')
        say "building seqtune's wheel with setuptools $version failed:" \
            "$(grep -i error "$tmp/build.log" | grep -v subprocess-exited | head -n 1 | sed 's/^ *//')"
    else
        say "setuptools does not import here, so seqtune's wheel cannot be built from this checkout"
    fi
    local made=()
    [ -z "$wheels" ] || made=("$wheels"/seqtune-*.whl)
    if [ ${#made[@]} = 0 ]; then
        say "and SEQTUNE_WHEELS holds no seqtune wheel: make one there with scripts/wheelhouse.py"
        return 1
    fi
    say "installing ${made[-1]} instead (scripts/wheelhouse.py built it from the checkout it ran in)"
    echo "${made[-1]}"
}

install() {
    local wheel links=()
    [ -z "$wheels" ] || links=(--find-links "$wheels")
    if checkout_installed; then
        say "seqtune is this checkout, installed for development: kept"
    else
        wheel=$(own_wheel) || exit 4
        say "installing $(basename "$wheel") into $("$python" -c 'import sys; print(sys.prefix)')"
        pip install -q --no-index --no-deps --force-reinstall "$wheel" >&2 \
            || { say "pip cannot install $wheel"; exit 4; }
    fi
    if ! pip install -q --no-index ${links[@]+"${links[@]}"} "seqtune[deepspeed]" >&2; then
        say "a dependency of seqtune[deepspeed] is not installed${wheels:+ and not in $wheels}:" \
            "add it with scripts/wheelhouse.py (SEQTUNE_WHEELS names the folder)"
        exit 4
    fi
}

python=$(absolute_python "${PYTHON:-python3}") || { say "no Python at ${PYTHON:-python3} (set PYTHON)"; exit 4; }
if needs_venv; then use_venv; fi
install
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$tmp"
trap - EXIT
exec "$python" scripts/gpu_smoke.py "$@"
