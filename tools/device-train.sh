#!/usr/bin/env bash
# Train a preset on the lent GPU for a fixed time and bring the run back (docs/EXPERIMENTS.md,
# "Shipped models"): the shipped demo models take CPU-days here and minutes there.
# Runs `vnca train --device cuda` into a scratch directory, stops it with SIGINT after
# MINUTES (vnca saves `latest` and exits: the Ctrl-C path), and copies into $OUT the run's
# best.safetensors, latest.safetensors (without the damage pool: pool.save = false, so
# the file stays small; a resumed run starts with an empty pool), metrics.jsonl,
# config.toml and pictures, then evaluates the best model there (IWAE-128 and damage
# recovery; EVAL_LIMIT=0 skips it). Carry a previous run's directory to continue it
# (checkpoints/ holds the runs in progress).
#
# Usage: tools/device-train.sh PRESET MINUTES [RESUME_DIR]
# Environment: VNCA (default dist/device/vnca, else target/release/vnca), OUT (default
# ./device-train-out), DEVICE (default cuda), EVAL_LIMIT (test images for IWAE-128,
# default 1000; 0: no evaluation), EVAL_MINUTES (the limit of each evaluation, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:?preset}
minutes=${2:?minutes}
resume=${3:-}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-./device-train-out}
EVAL_LIMIT=${EVAL_LIMIT:-1000}
EVAL_MINUTES=${EVAL_MINUTES:-2}
if [ -z "${VNCA:-}" ]; then
  if [ -x dist/device/vnca ]; then VNCA=dist/device/vnca; else VNCA=target/release/vnca; fi
fi
mkdir -p "$OUT"
run=$(mktemp -d)/run
if [ -n "$resume" ]; then
  cp -r "$resume" "$run"
  args=(--out "$run" --resume)
else
  "$VNCA" info --preset "$preset" > /dev/null
  # The preset with the pool left out of checkpoints.
  mkdir -p "$run"
  python3 - "$preset" "$run/config.toml" "$VNCA" <<'PY'
import subprocess, sys
preset, out, vnca = sys.argv[1:4]
text = open(f"configs/{preset}.toml").read()
if "[train.pool]" in text and "save =" not in text:
    text = text.replace("[train.pool]", "[train.pool]\nsave = false", 1)
open(out, "w").write(text)
PY
  args=(--config "$run/config.toml" --out "$run" --overwrite)
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
t0=$(date +%s)
set +e
timeout -s INT -k 60 "$((minutes * 60))" "$VNCA" --device "$DEVICE" train "${args[@]}" --quiet \
  > "$OUT/train.out" 2> "$OUT/train.log"
rc=$?
set -e
echo "exit $rc after $(($(date +%s) - t0)) s (130 or 124: stopped by the time limit, latest saved)" | tee -a "$OUT/train.log"
for f in best.safetensors latest.safetensors metrics.jsonl config.toml samples.png reconstructions.png; do
  [ -f "$run/$f" ] && cp "$run/$f" "$OUT/"
done
# Issue 14's measurements of the best model on the same machine, each bounded by
# EVAL_MINUTES so that the call ends within its lease: IWAE-128 on the first EVAL_LIMIT
# test images, and log p(x) before damage, right after and after 1..64 recovery steps.
if [ "$EVAL_LIMIT" -gt 0 ] && [ -f "$run/best.safetensors" ]; then
  for what in eval damage-eval; do
    case $what in
      eval) extra=(--limit "$EVAL_LIMIT" --batch 32) ;;
      damage-eval) extra=(--n 256) ;;
    esac
    set +e
    timeout -k 10 "$((EVAL_MINUTES * 60))" "$VNCA" --device "$DEVICE" "$what" \
      --checkpoint "$run/best.safetensors" "${extra[@]}" > "$OUT/$what.txt" 2>&1
    echo "$what: exit $? (124: stopped after $EVAL_MINUTES min)" | tee -a "$OUT/train.log"
    set -e
  done
fi
ls -la "$OUT"
