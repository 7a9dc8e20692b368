#!/usr/bin/env bash
# Installs the Debian packages that the demo and the tests use, if missing.
#   iproute2, iputils-ping: network namespaces, veth, ping
#   tshark:                 captures, and a dissector to cross-check against
#   python3-scapy:          an independent ESP implementation
#   python3-cryptography:   Scapy's ciphers (only a Recommends of python3-scapy)
#   python3-prometheus-client: an independent OpenMetrics parser for
#                           `tunsec metrics`
#   iperf3:                 TCP transfers through the overlay
#   sockperf:               tunsec bench --latency (request/response round trips)
#   nftables:               a NAT (masquerade) between hosts in the IKE tests,
#                           the inbound filter of the strongSwan host, and
#                           tunsecd's inbound guard in gateway mode (nft)
#   iptables:               the NFQUEUE rule of the reordering test (nft backend,
#                           iptables-nft; this kernel has no netem)
#   strongswan-charon, strongswan-swanctl, libcharon-extra-plugins
#   (kernel-libipsec), libstrongswan-standard-plugins (openssl, gcm):
#                           strongSwan 5.9.8, the peer of tests/strongswan_*.rs
#   strongswan-pki:         strongSwan's pki, the certificates of its certificate cases
#   dpkg-dev:               dpkg-shlibdeps, for cargo deb's automatic dependencies
#                           (scripts/deb.sh)
#   man-db:                 `man`, to check that the installed .deb's man pages are found
#                           (scripts/test-deb.sh)
#   systemd:                systemd-analyze verify/security on tunsecd.service
#                           (scripts/test-deb.sh, docs/packaging.md)
#   openvswitch-switch, openvswitch-common: ovsdb-server, ovsdb-tool, ovs-vsctl, ovs-pki
#                           and the vswitch schema, the real server of tunsec-ovsdb's tests
#                           and of ovs_e2e.rs
#   ovn-central, ovn-host:  ovn-northd, the NB/SB schemas, ovn-nbctl/ovn-sbctl and
#                           ovn-controller, the OVN cloud of ovn_e2e.rs
# Then strongSwan 6.0.6 (ML-KEM, IKE_INTERMEDIATE; the peer of
# tests/strongswan6_*.rs), built into /opt/strongswan6 from the source
# tarball in shared/refs/strongswan6 (STRONGSWAN6_SRC, or ../shared beside
# this repository); build.sh does nothing when it is there already.
set -euo pipefail
need=()
for pkg in iproute2 iputils-ping tshark python3-scapy python3-cryptography python3-prometheus-client iperf3 sockperf nftables iptables \
    strongswan-charon strongswan-swanctl libcharon-extra-plugins \
    libstrongswan-standard-plugins strongswan-pki dpkg-dev man-db systemd \
    openvswitch-switch openvswitch-common ovn-central ovn-host; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

here=$(cd "$(dirname "$0")/.." && pwd)
src=${STRONGSWAN6_SRC:-}
if [ -z "$src" ]; then
    for d in "$here/../shared/refs/strongswan6" /work/shared/refs/strongswan6; do
        if [ -f "$d/build.sh" ]; then src=$d; break; fi
    done
fi
if [ -n "$src" ]; then
    bash "$src/build.sh"
elif [ ! -x /opt/strongswan6/libexec/ipsec/charon ]; then
    echo "deps.sh: no strongSwan 6 source (set STRONGSWAN6_SRC to shared/refs/strongswan6);" \
        "the strongswan6_* tests will fail" >&2
fi
