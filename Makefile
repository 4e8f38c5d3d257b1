# The README's commands. `make train` and `make test` work on a fresh machine with only
# a Rust toolchain and Python 3 installed: `setup` fetches the pinned PyTorch wheel
# (which carries libtorch) into .venv, and the build links against it.
.PHONY: setup build train test lint bench fixtures browser-test device-build device-check-cpu

ARGS ?=

setup:
	@tools/setup-libtorch.sh

build: setup
	cargo build --release

# Train the default preset (mnist-doubling-small) into runs/; pass options with ARGS="...".
train: build
	./target/release/vnca train $(ARGS)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

# Format and lint checks, then every test of every workspace member (numerics against
# PyTorch fixtures, checkpoints, CLI end to end; the data readers in crates/vnca-data).
test: lint
	cargo test --release --workspace

# The web UI in headless Chromium (installs Debian's chromium and playwright-core if
# missing), every shipped model: growth that holds, a drawn digit grown and healed, the
# phone layout. CI runs it after `test`.
browser-test: build
	tests/browser/run.sh target/release/vnca

# Regenerate the PyTorch fixtures under tests/fixtures (committed; only needed when
# tools/make_fixtures.py changes).
fixtures: setup
	.venv/bin/python tools/make_fixtures.py tests/fixtures
	.venv/bin/python tools/make_dml_fixtures.py tests/fixtures
	.venv/bin/python tools/make_colour_fixtures.py tests/fixtures

bench: build
	./target/release/vnca bench $(ARGS)

# The GPU machine's binary: vnca against PyTorch 2.11 (tch 0.24) in .venv-device and
# target-device, stripped, with a wrapper that uses the running machine's own torch
# (dist/device/; docs/BENCHMARKS.md, "GPU").
device-build:
	tools/device-build.sh

# The device check's plumbing on this CPU, through the 2.11 binary and its wrapper.
device-check-cpu: device-build
	VNCA_PYTHON=.venv-device/bin/python PYTHON=.venv-device/bin/python OUT=device-check-out \
	  tools/device-check.sh --device cpu --tiny
