#!/usr/bin/env bash
# The project's test command: installs what the tests need, checks format
# and lints, then runs every test. README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use as independent implementations:
# Scapy's IPsec (python3-scapy) and Wireshark's dissectors (tshark).
need=()
for pkg in python3-scapy tshark; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
