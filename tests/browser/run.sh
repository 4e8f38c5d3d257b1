#!/usr/bin/env bash
# Browser test of `vnca serve`: starts the server on a free port, drives the page in
# headless Chromium (browser_test.mjs), stops the server. Builds nothing.
#
#   tests/browser/run.sh VNCA_BINARY [CHECKPOINT_OR_SHIPPED_NAME ...]
#
# Without checkpoints the server shows every shipped model (built into the binary): the
# doubling default, the non-doubling model trained to heal (the drawing's erase-and-heal
# check runs on it) and the colour emoji model.
# Installs what it needs: Debian's chromium (/usr/bin/chromium) and, under
# tests/browser/node_modules, playwright-core (which downloads no browser of its own).
# Writes tests/browser/screenshot-*.png.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 VNCA_BINARY [CHECKPOINT_OR_SHIPPED_NAME ...]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
shift
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
models=()
for c in "$@"; do
    if [ -f "$c" ]; then c="$(realpath "$c")"; fi
    models+=(--checkpoint "$c")
done

if [ ! -x /usr/bin/chromium ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
cd "$here"
if [ ! -f node_modules/playwright-core/package.json ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error
fi

log="$(mktemp)"
"$bin" serve "${models[@]}" --port 0 --batch 4 > "$log" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2> /dev/null || true
    wait "$server" 2> /dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
url=""
for _ in $(seq 1 300); do
    url="$(grep -o 'http://[^ ]*' "$log" | head -n 1 || true)"
    [ -n "$url" ] && break
    if ! kill -0 "$server" 2> /dev/null; then
        echo "vnca serve exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.2
done
[ -n "$url" ] || { echo "vnca serve printed no URL:" >&2; cat "$log" >&2; exit 1; }
echo "server: $url"
VNCA_URL="$url" node browser_test.mjs
