#!/usr/bin/env bash
# Installs the pinned PyTorch wheel (which carries libtorch) into a project-local
# virtual environment, .venv, and links .venv/libtorch to it for the Rust build
# (.cargo/config.toml points LIBTORCH there). Idempotent: does nothing when the
# right version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0   # the version tch 0.26.0 is built against
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "installing torch==$TORCH_VERSION into .venv (libtorch for the Rust build; a few GB)..."
  .venv/bin/pip install --quiet "torch==$TORCH_VERSION" numpy safetensors
fi
site=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$site" .venv/libtorch
echo "libtorch: $(readlink .venv/libtorch)"
