#!/usr/bin/env bash
# The GPU check in one call (docs/BENCHMARKS.md, "GPU"): writes device-check.md and
# device-check.json (plus each step's raw output) into $OUT.
#   (a) `vnca check`: the PyTorch fixtures on the device in fp32, tf32 and bf16;
#   (b) `vnca bench` against the PyTorch mirror (tools/reference_mirror.py) on the same
#       device with this machine's python3, per precision;
#   (c) a short training run of the paper preset `mnist-doubling`, fp32 and bf16, with
#       the final validation NLL (single-sample bound on 256 validation images);
#   (d) IWAE-128 throughput (the bench's IWAE row) and `vnca eval` IWAE-128 of the fp32
#       run on --eval-images test images;
#   (e) data parallel: one rank per GPU, the engine self-test (26.3 MB all-reduce timed)
#       and 20 training steps as ranks of a job.
# Each step has its own time limit, so the whole stays within --minutes (default 8).
#
# Usage: tools/device-check.sh [--device cuda|cpu] [--tiny] [--minutes M]
#   --tiny: tiny-test preset, a few steps: the plumbing only (how it is tested on a CPU).
# Environment: VNCA (default dist/device/vnca, else target/release/vnca), PYTHON (the
# mirror's Python, default python3), OUT (default ./device-check-out), TRAIN_STEPS.
# Nothing here assumes the machine it was written on: paths are relative to the repo.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=0
MINUTES=8
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --minutes) MINUTES=$2; shift 2 ;;
    *) echo "error: unknown option \`$1\` (--device D, --tiny, --minutes M)" >&2; exit 2 ;;
  esac
done
if [ -z "${VNCA:-}" ]; then
  if [ -x dist/device/vnca ]; then VNCA=dist/device/vnca; else VNCA=target/release/vnca; fi
fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-device-check-out}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
START=$(date +%s)
DEADLINE=$((START + MINUTES * 60 - 15))

if [ "$TINY" = 1 ]; then
  PRESET=tiny-test; TRAIN_PRESET=tiny-test; STEPS=${TRAIN_STEPS:-4}
  BENCH=(--preset tiny-test --batch 2 --repeats 1 --warmup 0 --iwae-images 1 --iw-samples 4)
  EVAL_IMAGES=4; EVAL_K=4
  PRECISIONS=(fp32 bf16)
else
  PRESET=mnist-doubling; TRAIN_PRESET=mnist-doubling; STEPS=${TRAIN_STEPS:-600}
  BENCH=(--preset mnist-doubling --batch 32 --repeats 5 --warmup 2 --iwae-images 8 --iw-samples 128)
  EVAL_IMAGES=256; EVAL_K=128
  PRECISIONS=(fp32 tf32 bf16)
fi

# Runs one step under a time limit (the smaller of its own and what is left), logging
# its output to $OUT/NAME.log; records "NAME rc seconds" in $SCRATCH/steps.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    echo "$name skipped 0" >> "$SCRATCH/steps"
    echo "== $name: skipped (out of time)" >&2
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*" >&2
  local t0; t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
  local rc=$?
  echo "$name $rc $(($(date +%s) - t0))" >> "$SCRATCH/steps"
  [ "$rc" = 0 ] || { echo "   $name: exit $rc (tail of $OUT/$name.log:)" >&2; tail -5 "$OUT/$name.log" >&2; }
  return $rc
}

# GPU memory in use, sampled every 200 ms while a step runs (peak per step in the report).
mem_watch_start() {
  if [ "$DEVICE" != cpu ] && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$1.gpumem" 2> /dev/null &
    MEMPID=$!
  else
    MEMPID=
  fi
}
mem_watch_stop() { [ -n "${MEMPID:-}" ] && kill "$MEMPID" 2> /dev/null; wait "$MEMPID" 2> /dev/null; MEMPID=; }

{
  echo "start=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "vnca=$VNCA"
  echo "device=$DEVICE tiny=$TINY minutes=$MINUTES"
  echo "cpu=$(lscpu 2> /dev/null | sed -n 's/^Model name: *//p' | head -1) cores=$(nproc)"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())' 2>&1
  [ -f dist/device/BUILD-INFO ] && tr '\n' ' ' < dist/device/BUILD-INFO && echo
} > "$OUT/environment.txt"
step info 60 "$VNCA" --device "$DEVICE" info --preset "$PRESET"

# (a) numerics
for p in "${PRECISIONS[@]}"; do
  step "check-$p" 90 "$VNCA" --device "$DEVICE" check --precision "$p" --json
done

# (b) + (d) bench against the mirror, per precision
for p in "${PRECISIONS[@]}"; do
  mem_watch_start "bench-$p"
  step "bench-$p" 150 "$VNCA" --device "$DEVICE" bench --precision "$p" --python "$PYTHON" --json "${BENCH[@]}"
  mem_watch_stop
done

# (c) short training, fp32 and bf16 (checkpoints stay in scratch: only metrics come back)
for p in fp32 bf16; do
  mem_watch_start "train-$p"
  step "train-$p" 150 "$VNCA" --device "$DEVICE" train --preset "$TRAIN_PRESET" --steps "$STEPS" \
    --precision "$p" --out "$SCRATCH/train-$p" --quiet
  mem_watch_stop
  cp "$SCRATCH/train-$p/metrics.jsonl" "$OUT/train-$p.metrics.jsonl" 2> /dev/null
  cp "$SCRATCH/train-$p/samples.png" "$OUT/train-$p.samples.png" 2> /dev/null
done
# (d) IWAE-128 of the fp32 run on test images, timed by the step's wall clock
if [ -f "$SCRATCH/train-fp32/latest.safetensors" ]; then
  step eval-iwae 90 "$VNCA" --device "$DEVICE" eval --checkpoint "$SCRATCH/train-fp32/latest.safetensors" \
    --iw-samples "$EVAL_K" --limit "$EVAL_IMAGES" --batch 8 --json
fi

# (e) data parallel on the device: a job of one rank per GPU (NCCL where it was built, else
# Gloo on CUDA tensors), the engine self-test with the paper model's 26.3 MB all-reduce
# timed, then 20 training steps of tiny-test as ranks of a job (raw output in $OUT).
NGPU=1
command -v nvidia-smi > /dev/null && NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || echo 1)
[ "$NGPU" -ge 1 ] || NGPU=1
PORT=$(( 29500 + RANDOM % 2000 ))
rank_env() { echo "RANK=$1 WORLD_SIZE=$NGPU LOCAL_RANK=$1 LOCAL_WORLD_SIZE=$NGPU MASTER_ADDR=127.0.0.1 MASTER_PORT=$2 VNCA_DIST_TIMEOUT=60"; }
dist_job() {
  local port=$1; shift
  for r in $(seq 0 $((NGPU - 1))); do env $(rank_env "$r" "$port") "$@" & done
  wait
}
step dist-selftest 60 bash -c "$(declare -f rank_env dist_job); NGPU=$NGPU; dist_job $PORT \"$VNCA\" --device $DEVICE dist-selftest --bench --elems 6585088 --repeat 10"
step dist-train 90 bash -c "$(declare -f rank_env dist_job); NGPU=$NGPU; dist_job $((PORT + 1)) \"$VNCA\" --device $DEVICE train --preset tiny-test --steps 20 --out $SCRATCH/dist-train --quiet"
cp "$SCRATCH/dist-train/metrics.jsonl" "$OUT/dist-train.metrics.jsonl" 2> /dev/null

"$PYTHON" tools/device_report.py "$OUT" "$SCRATCH/steps" $((($(date +%s) - START)))
