#!/usr/bin/env bash
# Builds the .deb (scripts/deb.sh), installs it with dpkg -i, checks that
# its files are in place, that `man tunsec` finds its page, that the
# binaries run, that the installed unit passes `systemd-analyze verify`
# and that the example config passes `tunsecd --check`; then purges the
# package, also after a failure. Run as root, on a machine without a
# tunsec package of its own (it refuses to touch one). TUNSEC_DEB_PROFILE
# picks the cargo profile (default release); scripts/test.sh uses dev.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${TUNSEC_DEB_PROFILE:-release}
if dpkg -s tunsec >/dev/null 2>&1; then
    echo "test-deb: a tunsec package is installed already; remove it first (dpkg --purge tunsec)" >&2
    exit 1
fi
deb=$(bash scripts/deb.sh --profile "$profile" | tail -n 1)
echo "test-deb: $deb ($(du -h "$deb" | cut -f1))"
tmp=$(mktemp -d)
cleanup() {
    dpkg --purge tunsec >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
dpkg -i "$deb"

fail() {
    echo "test-deb: $*" >&2
    exit 1
}
for f in \
    /usr/sbin/tunsecd /usr/bin/tunsec \
    /usr/lib/systemd/system/tunsecd.service \
    /usr/share/man/man1/tunsec.1.gz /usr/share/man/man1/tunsec-status.1.gz \
    /usr/share/man/man1/tunsec-sa-delete.1.gz /usr/share/man/man1/tunsec-pki-issue.1.gz \
    /usr/share/man/man8/tunsecd.8.gz \
    /usr/share/bash-completion/completions/tunsec /usr/share/bash-completion/completions/tunsecd \
    /usr/share/zsh/vendor-completions/_tunsec /usr/share/zsh/vendor-completions/_tunsecd \
    /usr/share/fish/vendor_completions.d/tunsec.fish /usr/share/fish/vendor_completions.d/tunsecd.fish \
    /usr/share/doc/tunsec/README.md /usr/share/doc/tunsec/config.md \
    /usr/share/doc/tunsec/packaging.md /usr/share/doc/tunsec/copyright \
    /usr/share/doc/tunsec/examples/overlay-psk.toml; do
    [ -f "$f" ] || fail "$f is missing"
done
cmp -s dist/tunsecd.service /usr/lib/systemd/system/tunsecd.service ||
    fail "the installed unit differs from dist/tunsecd.service"

# The man pages: found by man, and what the binaries say.
[ "$(man -w tunsec)" = /usr/share/man/man1/tunsec.1.gz ] || fail "man -w tunsec: $(man -w tunsec 2>&1)"
[ "$(man -w 8 tunsecd)" = /usr/share/man/man8/tunsecd.8.gz ] || fail "man -w 8 tunsecd"
[ "$(man -w tunsec-sa-delete)" = /usr/share/man/man1/tunsec-sa-delete.1.gz ] || fail "man -w tunsec-sa-delete"
MANWIDTH=100 man tunsec 2>/dev/null | grep -q "Inspect and control tunsecd" || fail "man tunsec: no description"
MANWIDTH=100 man 8 tunsecd 2>/dev/null | grep -q "SIGHUP" || fail "man tunsecd: no SIGNALS section"

# The binaries.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ "$(/usr/sbin/tunsecd --version)" = "tunsecd $version" ] || fail "tunsecd --version: $(/usr/sbin/tunsecd --version)"
[ "$(/usr/bin/tunsec --version)" = "tunsec $version" ] || fail "tunsec --version"
/usr/bin/tunsec --help | grep -q "sa delete" || fail "tunsec --help does not list sa delete"
bash -c 'source /usr/share/bash-completion/completions/tunsec && complete -p tunsec' >/dev/null ||
    fail "the bash completion does not load"

# The unit, as installed (its ExecStart= and man: pages now exist).
systemd-analyze verify /usr/lib/systemd/system/tunsecd.service
systemd-analyze security --offline=yes /usr/lib/systemd/system/tunsecd.service --no-pager |
    tail -n 1

# The example, with the key file it asks for (its /etc/tunsec/ moved
# into the temporary directory).
sed "s#/etc/tunsec/#$tmp/#g" /usr/share/doc/tunsec/examples/overlay-psk.toml >"$tmp/overlay-psk.toml"
mkdir -m 0700 "$tmp/keys"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/keys/host-b.psk")
/usr/sbin/tunsecd --check --config "$tmp/overlay-psk.toml"

dpkg --purge tunsec
for f in /usr/sbin/tunsecd /usr/bin/tunsec /usr/lib/systemd/system/tunsecd.service /usr/share/doc/tunsec; do
    [ ! -e "$f" ] || fail "$f is still there after dpkg --purge"
done
echo "test-deb: ok"
