#!/usr/bin/env bash
# Data-parallel scaling on one machine (docs/BENCHMARKS.md, "Data-parallel"): the paper's
# doubling MNIST model (configs/mnist-doubling.toml) at its batch, trained for STEPS steps
# by 1 process x 2 threads and by 2 ranks x 1 thread (Gloo over loopback); prints the
# median step time of steps 2..STEPS of each (from the runs' metrics.jsonl).
# Usage: tools/ddp-scaling.sh [STEPS] [BATCH]   (defaults 6 and 32)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
batch=${2:-32}
bin=target/release/vnca
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The paper preset, evaluated on 8 images only (the evaluation is not timed).
sed -e "s/^batch_size = .*/batch_size = $batch/" -e 's/^eval_images = .*/eval_images = 8/' \
  configs/mnist-doubling.toml > "$work/paper.toml"
median() {
  python3 -c 'import json,sys,statistics as s
t=[json.loads(l)["step_seconds"] for l in open(sys.argv[1]) if "\"train\"" in l][1:]
print(f"{s.median(t):.2f} s (min {min(t):.2f}, max {max(t):.2f}, {len(t)} steps)")' "$1"
}
"$bin" --threads 2 train --config "$work/paper.toml" --steps "$steps" --out "$work/one" --quiet 2>/dev/null
echo "1 process x 2 threads, batch $batch: $(median "$work/one/metrics.jsonl")"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$bin" --threads 1 train --config "$work/paper.toml" --steps "$steps" --out "$work/two" --quiet 2>/dev/null &
done
wait
echo "2 ranks x 1 thread, $((batch / 2)) images each: $(median "$work/two/metrics.jsonl")"
