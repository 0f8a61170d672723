#!/usr/bin/env bash
# GPU check for a freshly lent CUDA machine with this repository checked out (run from anywhere):
#
#   benchmarks/gpu_check.sh     # OUT=/some/dir: also copy the results there; PYTHON=...: the python to use;
#                               # FRESH_VENV=1: make the virtual environment even if tracklink is installed
#
# 1. finds a python3 that imports torch ($PYTHON first when set; nothing is downloaded if all is there),
# 2. uses it directly when it already imports tracklink; otherwise makes a virtual environment on top of it (--system-site-packages, so that torch stays the machine's
#    CUDA build) and installs tracklink into it with `pip install --no-deps -e .`, then tries to add only
#    the missing packages (tracklink's dependencies, transformers, pytest), which may fail offline,
# 3. runs benchmarks/gpu.py (its own time budget: 270 s, less if the set-up was slow) and the GPU-only tests (`pytest -m gpu`) if the
#    project defines that marker,
# 4. copies benchmarks/results/gpu.json and this script's log to $OUT when it is set.
#
# Everything has a timeout; the whole check stays under 8 minutes. The exit status is the benchmark's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-gpu"
LOG="$(mktemp -t gpu_check.XXXXXX.log)"
exec > >(tee "$LOG") 2>&1

say() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

finish() {
  local status=$?
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    if [ -f benchmarks/results/gpu.json ]; then cp benchmarks/results/gpu.json "$OUT/gpu.json"; fi
    sleep 1  # let tee write the last lines
    cp "$LOG" "$OUT/gpu_check.log" || true
  fi
  exit "$status"
}
trap finish EXIT

say "machine"
command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"

say "python with torch"
REQUESTED="${PYTHON:-}"
PYTHON=""
for candidate in $REQUESTED python3 python /usr/bin/python3 /opt/conda/bin/python; do
  if command -v "$candidate" >/dev/null && timeout 120 "$candidate" -c "import torch" 2>/dev/null; then
    PYTHON="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$PYTHON" ]; then
  echo "no python3 with torch found: nothing to measure"
  exit 1
fi
timeout 120 "$PYTHON" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "${FRESH_VENV:-}" ] && timeout 120 "$PYTHON" -c "import tracklink" 2>/dev/null; then
  say "tracklink is already installed for $PYTHON: using it as it is"
  PY="$PYTHON"
else
  say "virtual environment $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    # no pip of its own: the machine's pip and setuptools (ensurepip's setuptools may be too old)
    timeout 60 "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
  fi
  PY="$VENV/bin/python"
  if ! timeout 120 "$PY" -c "import torch" 2>/dev/null; then
    # $PYTHON is itself a virtual environment: see its packages through a .pth file
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PYTHON" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' > "$site/outer-python.pth"
  fi
  timeout 60 "$PY" -m pip --version >/dev/null 2>&1 || timeout 120 "$PY" -m ensurepip --quiet
fi
PIP=(timeout 60 "$PY" -m pip install --quiet --disable-pip-version-check --retries 0 --timeout 10)
if [ "$PY" != "$PYTHON" ]; then
  "${PIP[@]}" --no-deps --no-build-isolation -e . || "${PIP[@]}" --no-deps -e .
fi

# only what is missing, one package at a time; offline these fail and the check goes on
for pair in pluggy:pluggy tqdm:tqdm safetensors:safetensors transformers:transformers pytest:pytest \
            pytest_timeout:pytest-timeout; do
  module="${pair%%:*}" package="${pair#*:}"
  if ! timeout 120 "$PY" -c "import $module" 2>/dev/null; then
    echo "missing $module: trying pip install $package"
    "${PIP[@]}" "$package" || echo "could not install $package"
  fi
done
timeout 120 "$PY" -c "import tracklink; print('tracklink', tracklink.__file__)"

say "benchmarks/gpu.py"
budget=$(( 400 - SECONDS ))  # what is left of the check's time for the benchmark's own budget
if [ "$budget" -gt 270 ]; then budget=270; fi
if [ "$budget" -lt 60 ]; then budget=60; fi
status=0
timeout $(( budget + 60 )) "$PY" benchmarks/gpu.py --budget "$budget" || status=$?
echo "benchmarks/gpu.py exit status: $status"

say "GPU-only tests"
if grep -Eq '^[[:space:]]*"gpu[:"]' pyproject.toml && timeout 60 "$PY" -c "import pytest" 2>/dev/null; then
  tests_budget=$(( 470 - SECONDS ))  # what is left of the 8 minutes (compiling and torchrun take a while)
  if [ "$tests_budget" -lt 60 ]; then tests_budget=60; fi
  timeout "$tests_budget" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests || echo "pytest -m gpu exit status: $?"
else
  echo "no gpu pytest marker (or no pytest): skipped"
fi

exit "$status"
