#!/usr/bin/env bash
# Builds, on this machine, a `vnca` that runs on the GPU machine (docs/BENCHMARKS.md,
# "GPU"): PyTorch 2.11.0 there, CUDA 13, no Rust, at most 64 MiB of files per call.
#
#   1. .venv-device: the torch 2.11.0 wheel from PyPI (its libtorch, a few GB with the
#      nvidia-* wheels), apart from the 2.13 in .venv that the main build uses;
#   2. target-device/tree: a copy of the sources whose manifest asks for tch 0.24.0
#      (the tch for PyTorch 2.11; Cargo cannot hold two torch-sys, `links = "tch"`, in one
#      dependency graph, so this is a second manifest, not a feature), built into
#      target-device/ with `--cfg vnca_tch_024` (src/tch_compat.rs), no RUNPATH, stripped;
#   3. dist/device/: vnca.bin, the wrapper `vnca` that points LD_LIBRARY_PATH at the
#      running machine's own torch/lib, and BUILD-INFO.
#
# Usage: tools/device-build.sh        (PYTHON=python3.12 to choose the venv's Python)
# Then, here:  dist/device/vnca info   (VNCA_PYTHON=.venv-device/bin/python picks the
# 2.11 libraries, as the GPU machine's python3 will there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_VERSION=2.11.0
TCH_VERSION=0.24.0
PY=${PYTHON:-python3}

if [ ! -x .venv-device/bin/python ]; then
  "$PY" -m venv .venv-device
fi
have=$(.venv-device/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "installing torch==$TORCH_VERSION into .venv-device (several GB)..."
  .venv-device/bin/pip install --quiet "torch==$TORCH_VERSION" numpy safetensors
fi
LIBTORCH_DEVICE=$(.venv-device/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')

# The sources as they are in the work tree (committed or not), with tch pinned to 0.24.
TREE=target-device/tree
mkdir -p "$TREE"
# The workspace members (crates/) and the targets Cargo.toml names (tests/malloc.rs)
# must be there for cargo to read the manifest at all.
mkdir -p "$TREE/tests"
for item in Cargo.toml Cargo.lock build.rs csrc src configs assets crates tests/malloc.rs; do
  rm -rf "${TREE:?}/$item"
  cp -r "$item" "$TREE/$item"
done
sed -i "s/^tch = \"=[0-9.]*\"/tch = \"=$TCH_VERSION\"/" "$TREE/Cargo.toml"
grep -q "^tch = \"=$TCH_VERSION\"" "$TREE/Cargo.toml" || {
  echo "error: could not pin tch to $TCH_VERSION in $TREE/Cargo.toml" >&2
  exit 1
}

echo "building vnca against libtorch $TORCH_VERSION ($LIBTORCH_DEVICE) with tch $TCH_VERSION..."
(
  cd "$TREE"
  env -u LIBTORCH_LIB -u LIBTORCH_INCLUDE \
    LIBTORCH="$LIBTORCH_DEVICE" VNCA_NO_RPATH=1 \
    CARGO_TARGET_DIR="$ROOT/target-device" \
    RUSTFLAGS="${RUSTFLAGS:-} --cfg vnca_tch_024" \
    cargo build --release --bin vnca \
    --config profile.release.debug=0 --config profile.release.strip=true
)

DIST=dist/device
mkdir -p "$DIST"
cp target-device/release/vnca "$DIST/vnca.bin"
cp tools/device-wrapper.sh "$DIST/vnca"
chmod +x "$DIST/vnca" "$DIST/vnca.bin"
{
  echo "torch=$TORCH_VERSION"
  echo "tch=$TCH_VERSION"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$DIST/BUILD-INFO"
if readelf -d "$DIST/vnca.bin" | grep -qE 'RPATH|RUNPATH'; then
  echo "error: $DIST/vnca.bin has a RUNPATH; it must find libtorch through the wrapper" >&2
  exit 1
fi
du -sh "$DIST"
echo "dist: $DIST (carry it to the GPU machine; run $DIST/vnca there)"
