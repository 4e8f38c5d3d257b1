#!/usr/bin/env bash
# Browser test of `vnca serve`: starts the server on a free port, drives the page in
# headless Chromium (browser_test.mjs), stops the server. Builds nothing.
#
#   tests/browser/run.sh VNCA_BINARY CHECKPOINT [--expect-recovery]
#
# --expect-recovery also asserts that erased cells grow back (only with a trained model;
# the doubling model was never trained to heal, so this is a check of a particular model).
# VNCA_EXTRA_CHECKPOINTS="A B": more models to serve; with a colour one among them the
# test also switches to it and checks the canvas shows colour.
# Installs what it needs: Debian's chromium (/usr/bin/chromium) and, under
# tests/browser/node_modules, playwright-core (which downloads no browser of its own).
# Writes tests/browser/screenshot.png.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 VNCA_BINARY CHECKPOINT [--expect-recovery]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
ckpt="$(realpath "$2")"
shift 2
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
[ -f "$ckpt" ] || { echo "no checkpoint at $ckpt" >&2; exit 2; }
extra=()
for c in ${VNCA_EXTRA_CHECKPOINTS:-}; do
    [ -f "$c" ] || { echo "no checkpoint at $c" >&2; exit 2; }
    extra+=(--checkpoint "$(realpath "$c")")
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
"$bin" serve --checkpoint "$ckpt" "${extra[@]}" --port 0 --batch 4 > "$log" 2>&1 &
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
VNCA_URL="$url" node browser_test.mjs "$@"
