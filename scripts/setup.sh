#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtualenv in .venv with the locked dependencies.
# Re-running is cheap: nothing is installed again while requirements.lock is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Perimeter needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.perimeter-lock
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing locked dependencies (the first time compiles llama.cpp: about 5-10 minutes)"
    python -m pip install --quiet --upgrade pip
    # The CPU build of PyTorch first: an unpinned torch would pull gigabytes of CUDA packages.
    python -m pip install --quiet "torch==2.13.0"
    # Portable llama.cpp build (no -march=native), so the wheel pip caches runs on any x86-64.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" python -m pip install --quiet -r requirements.lock
    python -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
fi
