#!/usr/bin/env bash
# dist/device/vnca: runs vnca.bin (built by tools/device-build.sh, no RUNPATH) with the
# libtorch of this machine's own PyTorch: $VNCA_TORCH_LIB if set, else torch/lib of
# $VNCA_PYTHON (default python3). Warns when that torch is not the version built for.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
want=$(sed -n 's/^torch=//p' "$here/BUILD-INFO" 2>/dev/null || true)
if [ -z "${VNCA_TORCH_LIB:-}" ]; then
  py=${VNCA_PYTHON:-python3}
  if ! info=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib")); print(torch.__version__)' 2>/dev/null); then
    echo "error: \`$py\` cannot import torch; set VNCA_PYTHON to a Python with PyTorch $want, or VNCA_TORCH_LIB to its torch/lib" >&2
    exit 1
  fi
  VNCA_TORCH_LIB=$(echo "$info" | sed -n 1p)
  have=$(echo "$info" | sed -n 2p)
  if [ -n "$want" ] && [ "${have%%+*}" != "$want" ]; then
    echo "warning: vnca was built for PyTorch $want, this Python has $have" >&2
  fi
fi
export LD_LIBRARY_PATH="$VNCA_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/vnca.bin" "$@"
