#!/usr/bin/env bash
# The main job: three hosts, two encrypted virtual networks, in network
# namespaces on this machine. Needs root. Extra arguments go to
# `tunsec demo` (for example --suite chacha20poly1305 --encapsulation gue).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release -p tunsec
exec target/release/tunsec demo "$@"
