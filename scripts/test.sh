#!/usr/bin/env bash
# The project's test command: installs what the tests need, checks format
# and lints, then runs every test. README.md and .ci/run both call this.
# Run it as root: the end-to-end tests build network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Documentation builds without broken or private intra-doc links.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
# The fuzz targets build on their own (cargo-fuzz); make sure they still compile.
cargo check --manifest-path fuzz/Cargo.toml --bins --examples
cargo test --workspace
