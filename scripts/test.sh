#!/usr/bin/env bash
# The project's test command: installs what the tests need, checks format
# and lints, runs every test, then builds, installs and checks the .deb.
# README.md and .ci/run both call this.
# Run it as root: the end-to-end tests build network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental artefacts would only cost disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
bash scripts/deps.sh
cargo fmt --all -- --check
# --locked everywhere: a stale Cargo.lock or fuzz/Cargo.lock fails the run
# instead of being rewritten by it (commit the updated lock file).
cargo clippy --locked --workspace --all-targets -- -D warnings
# No two sibling modules import each other, directly or round a circle.
python3 scripts/check-import-cycles.py
# Documentation builds without broken or private intra-doc links.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps
# The fuzz targets build on their own (cargo-fuzz); make sure they still compile.
cargo check --locked --manifest-path fuzz/Cargo.toml --bins --examples
cargo test --locked --workspace
# The Debian package: build it, install it, check it, purge it. From the
# dev profile, whose binaries the tests have just built: a release build
# takes about 6 minutes more (docs/packaging.md).
TUNSEC_DEB_PROFILE=dev bash scripts/test-deb.sh
