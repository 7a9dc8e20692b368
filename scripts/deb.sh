#!/usr/bin/env bash
# Builds the Debian package, target/debian/tunsec_VERSION_ARCH.deb: tunsecd
# (/usr/sbin) and tunsec (/usr/bin), the systemd unit (dist/), the man
# pages and shell completions, the docs and examples/. The man pages and
# completions are generated here from the clap definitions (`tunsec
# generate`), so they are never stale. The package's contents are listed
# in [package.metadata.deb] of crates/tunsec/Cargo.toml.
#
#   bash scripts/deb.sh                # the release profile
#   bash scripts/deb.sh --profile dev  # unoptimised, quick (CI's check)
#
# Prints the path of the .deb on its last line (target/debian/ for release,
# target/debian/PROFILE/ for another profile). Needs cargo-deb, installed
# here from crates.io if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--profile" ]; then
    profile=${2:?--profile needs a profile name}
fi
# Pinned: the version whose metadata keys Cargo.toml uses.
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q " $cargo_deb_version\$"; then
    cargo install cargo-deb --locked --version "$cargo_deb_version"
fi
cargo build --profile "$profile" -p tunsec --bins
case "$profile" in
    dev) bin=target/debug ;;
    *) bin=target/$profile ;;
esac
gen=target/deb-gen
rm -rf "$gen"
"$bin/tunsec" generate man "$gen/man" >/dev/null
for shell in bash zsh fish; do
    "$bin/tunsec" generate completions "$shell" "$gen/completions" >/dev/null
done
# Anything but a release build goes to a folder of its own, so that
# target/debian/ holds only packages fit to ship.
out=target/debian
[ "$profile" = release ] || out=target/debian/$profile
mkdir -p "$out"
cargo deb -p tunsec --no-build --profile "$profile" --quiet --output "$out"
