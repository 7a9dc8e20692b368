//! What `tunsec status` shows: the daemon builds it from live state, the
//! CLI prints it as a table or as JSON. The JSON form is a stable
//! interface for scripts and tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole state of one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This host.
    pub node: NodeStatus,
    /// The virtual networks.
    pub networks: Vec<NetworkStatus>,
    /// The peers.
    pub peers: Vec<PeerStatus>,
    /// Data-path drops by reason (outside ESP; ESP drops are per SA).
    pub drops: BTreeMap<String, u64>,
    /// NAT keepalives received.
    pub keepalives: u64,
    /// IKE messages received on the ESP-in-UDP port (behind the non-ESP
    /// marker) and handed to the IKE driver.
    #[serde(default)]
    pub ike_on_esp_port: u64,
    /// The forwarding database.
    pub fdb: Vec<FdbStatus>,
    /// Gateway mode, when the daemon runs in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// The IKE endpoint's own counters, when an IKE driver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_endpoint: Option<IkeEndpointStatus>,
}

/// What the IKE endpoint refused or answered before any IKE SA (RFC 7296
/// section 2.6 cookies): the figures that tell a handshake failing under
/// a flood of IKE_SA_INIT requests from a dead peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeEndpointStatus {
    /// Responders that answered IKE_SA_INIT and wait for IKE_AUTH.
    pub half_open: u64,
    /// Responders kept since start: one Diffie-Hellman each.
    pub responders: u64,
    /// IKE_SA_INIT requests answered with a cookie request instead.
    pub cookies_sent: u64,
    /// Requests whose cookie did not match.
    pub bad_cookies: u64,
    /// IKE_SA_INIT requests refused without state (cookie requests
    /// included).
    pub refused: u64,
    /// Datagrams without a valid IKE header.
    pub malformed: u64,
    /// Messages for no IKE SA here.
    pub unknown_spi: u64,
}

/// Gateway mode: the TUN device, the steering, and each peer's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// The TUN device.
    pub tun: String,
    /// `transport` or `tunnel`.
    pub mode: String,
    /// The route table of the steering.
    pub table: u32,
    /// The priority of the fwmark bypass rule (the steering rules have
    /// one more).
    pub rule_priority: u32,
    /// The mark of tunsecd's own sockets.
    pub fwmark: u32,
    /// The nftables table of the inbound guard.
    pub nft_table: String,
    /// `all` (every cleartext source is guarded) or `peers`.
    #[serde(default)]
    pub guard: String,
    /// With `guard = "all"`: cleartext packets on a selector's ports from
    /// sources that are no peer, dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_others: Option<u64>,
    /// Cleartext packets matching a peer's selectors that were about to
    /// leave through another device than the TUN device, dropped (the
    /// guard's output chain); `None` if unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_out: Option<u64>,
    /// The TUN device's MTU.
    pub tun_mtu: u16,
    /// The largest MTU advised for a kernel VXLAN (or Geneve) device whose
    /// packets go through the TUN device.
    pub tunnel_mtu_advice: u16,
    /// The kernel tunnel devices named in the config, with their MTU.
    pub tunnel_devices: Vec<TunnelDeviceStatus>,
    /// One policy per peer.
    pub policies: Vec<GatewayPolicyStatus>,
    /// With `[ovsdb]`: the database and its tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovsdb: Option<OvsdbStatus>,
}

/// The OVS database that gateway mode takes tunnels from (`[ovsdb]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvsdbStatus {
    /// The remote (`unix:PATH`, `tcp:HOST:PORT`).
    pub remote: String,
    /// Whether the monitor is in place now.
    pub connected: bool,
    /// Why the last connection went, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Updates taken up (the first state and every change).
    pub updates: u64,
    /// The tunnel interfaces that need IPsec, by name.
    pub tunnels: Vec<OvsTunnelStatus>,
}

/// One tunnel interface of the OVS database that needs IPsec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvsTunnelStatus {
    /// The interface's name (the peer's, once configured).
    pub name: String,
    /// Its type: `vxlan`, `geneve`, `gre`, `stt`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `options:remote_ip`, as written.
    pub remote: String,
    /// `psk`, `certificate, pinned peer`, `certificate, CA-signed peer
    /// NAME`; empty if invalid before that was known.
    pub auth: String,
    /// `configured` (a peer, not yet up), `established` (its IKE SA and
    /// a Child SA are up), or `invalid`.
    pub state: String,
    /// With `invalid`: why, naming the option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The row's options, `psk` as `<redacted>` (for `tunnels/show`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// `Open_vSwitch:other_config:certificate`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cert: Option<String>,
    /// `other_config:private_key`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_key: Option<String>,
    /// `other_config:ca_cert`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// A kernel tunnel device and whether its MTU is too large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelDeviceStatus {
    /// Its name.
    pub name: String,
    /// Its MTU, if the device exists.
    pub mtu: Option<u16>,
    /// Why its MTU is a problem, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One peer's gateway policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPolicyStatus {
    /// The peer's name.
    pub peer: String,
    /// Its underlay address.
    pub underlay: String,
    /// `require`.
    pub policy: String,
    /// The selectors, as `udp/4789` or `tcp/16385-16390`.
    pub selectors: Vec<String>,
    /// Packets steered into the TUN device, sealed and sent.
    pub tx_packets: u64,
    /// Their bytes (before ESP).
    pub tx_bytes: u64,
    /// Packets received, opened and written to the TUN device.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Cleartext packets matching the selectors that the inbound guard
    /// dropped (its nftables counter); `None` if it could not be read.
    pub guard_drops: Option<u64>,
    /// Its policies by VNI (`[[peer.selector.vni]]`), each rule and then
    /// each default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vnis: Vec<GatewayVniStatus>,
}

/// One VNI rule of a peer's gateway policy, or a policy's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayVniStatus {
    /// `vxlan/4789` or `geneve/6081`.
    pub tunnel: String,
    /// `200`, `300-399`, or `default` (every VNI no rule names).
    pub vnis: String,
    /// `require`, `clear` or `discard`.
    pub policy: String,
    /// Packets sealed with ESP and sent.
    pub sealed: u64,
    /// Packets sent in the clear.
    pub clear: u64,
    /// Packets dropped, either way.
    pub discarded: u64,
    /// Packets opened from the peer's ESP.
    pub opened: u64,
    /// Packets opened under another rule's SA, dropped.
    #[serde(default)]
    pub network_mismatch: u64,
}

/// This host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: String,
    /// `udp:PORT` or `esp`.
    pub esp: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
}

/// One virtual network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
    /// `vxlan`, `geneve` or `gue`.
    pub encapsulation: String,
    /// The tunnel port.
    pub port: u16,
    /// The TAP device.
    pub tap: String,
    /// The TAP MTU.
    pub mtu: u16,
    /// Frames sent to peers.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames received from peers.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames flooded to every peer.
    pub flooded: u64,
    /// Frames naming this network that came under another network's SA
    /// (keys per network), dropped.
    #[serde(default)]
    pub network_mismatch: u64,
    /// `encrypted_vxlan` for the Encrypted VXLAN layout; absent for ESP
    /// in UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: String,
    /// Network name to policy (`require`, `prefer`, `clear`).
    pub policies: BTreeMap<String, String>,
    /// Its SAs (none, or an inbound and an outbound one).
    pub sas: Vec<SaStatus>,
    /// The IKE SA, for peers with `[peer.ike]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<IkeStatus>,
}

/// The IKE SA with one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeStatus {
    /// `established`, `connecting`, `waiting` (a responder before the
    /// peer's first message) or `failed: <reason>`.
    pub state: String,
    /// `initiator` (our underlay address is the lower) or `responder`.
    pub role: String,
    /// The initiator's IKE SPI, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spi_i: Option<String>,
    /// The responder's IKE SPI, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spi_r: Option<String>,
    /// The IKE suite, once IKE_SA_INIT is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// The IKE SA's key exchanges, in the order they ran, joined by `+`
    /// (`x25519+mlkem768`: X25519 in IKE_SA_INIT, ML-KEM-768 in
    /// IKE_INTERMEDIATE, RFC 9370), once IKE_SA_INIT is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_exchange: Option<String>,
    /// Each Child SA pair that is up, with the key exchanges its keys came
    /// from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildKeyExchange>,
    /// Whose keys the networks travel under: `shared` (one Child SA for
    /// all), `per network`, or `shared: the peer does not do keys per
    /// network` (configured per network, and the peer did not take it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// The last failure, kept while the initiator tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Child SAs brought up since start-up.
    #[serde(default)]
    pub child_sas: u64,
    /// Rekeys of the IKE SA since start-up.
    #[serde(default)]
    pub ike_rekeys: u64,
    /// Seconds since the IKE SA came up or was last rekeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
    /// Seconds until the IKE SA is rekeyed (with `ike_lifetime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey_in_secs: Option<u64>,
    /// Seconds until the Child SA is rekeyed (with `child_lifetime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_rekey_in_secs: Option<u64>,
    /// What NAT detection found and whether UDP encapsulation is forced,
    /// in words ([`nat_summary`]; RFC 7296 section 2.23). The fields
    /// below give the same apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// NAT detection: this host's address is translated (the peer's
    /// NAT_DETECTION_DESTINATION_IP does not match it); this host then
    /// sends NAT keepalives. Absent before IKE_SA_INIT, with raw ESP,
    /// and from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_local: Option<bool>,
    /// NAT detection: the peer's NAT_DETECTION_SOURCE_IP does not match
    /// the address its packets come from. Either a NAT translates the
    /// peer's address, or the peer forces UDP encapsulation (tunsecd
    /// with ESP in UDP does, and strongSwan with `encap = yes`): on the
    /// wire the two look the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_peer_mismatch: Option<bool>,
    /// This host forces UDP encapsulation (`[esp] encapsulation =
    /// "udp"`), NAT or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_encap_forced: Option<bool>,
    /// IKE requests this host sent again after a timeout.
    #[serde(default)]
    pub retransmits: u64,
    /// IKE messages dropped without a change of state (malformed, wrong
    /// SPI or message ID, failed integrity, unexpected).
    #[serde(default)]
    pub dropped: u64,
    /// IKE fragments (RFC 7383) this host sent, retransmissions included.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fragments_sent: u64,
    /// Authentic IKE fragments (RFC 7383) this host received and kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fragments_received: u64,
    /// IKE_SA_INIT requests from the peer's address that this host
    /// answered and that wait for their IKE_AUTH now (at most 4; RFC
    /// 7296 section 2.6).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub half_open: u64,
    /// Answered IKE_SA_INIT requests from the peer's address that never
    /// authenticated (no IKE_AUTH within 30 s, a failed one, or pushed
    /// out by newer ones). Many of them mean requests spoofed with the
    /// peer's address (or a peer that gives up); a dead peer shows as
    /// `peer dead` in `last_error` instead, from our own requests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handshakes_failed: u64,
    /// How this host authenticates (as configured, after the last
    /// reload): `psk`, or `certificate <subject> (<key type>, until
    /// <notAfter>)` and the trust in the peer (`CA <subject>...`,
    /// `pinned`) with the identity it must prove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// A Child SA pair of an IKE SA and where its keys came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildKeyExchange {
    /// Our SPI (inbound), as `0x...`.
    pub spi_in: String,
    /// The peer's SPI (outbound), as `0x...`.
    pub spi_out: String,
    /// The key exchanges of the CREATE_CHILD_SA and its IKE_FOLLOWUP_KE
    /// exchanges that made it, joined by `+` (`x25519+mlkem768`), or
    /// `none` for keys from the IKE SA's SK_d alone (the Child SA of
    /// IKE_AUTH, or a rekey without PFS).
    pub key_exchange: String,
    /// With keys per network: the network it carries alone (absent: a
    /// shared Child SA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// What NAT detection found (`local`: this host's address is translated;
/// `peer_mismatch`: the peer's is, or it forces UDP encapsulation) and
/// whether this host forces UDP encapsulation, in words, each apart.
pub fn nat_summary(local: bool, peer_mismatch: bool, forced: bool) -> String {
    let this = if local {
        "this host is behind a NAT"
    } else {
        "this host is not behind a NAT"
    };
    let peer = if peer_mismatch {
        "the peer is behind a NAT or forces UDP encapsulation"
    } else {
        "the peer is not behind a NAT"
    };
    let encap = match (forced, local || peer_mismatch) {
        (true, _) => "UDP encapsulation forced by this host",
        (false, true) => "UDP encapsulation for the NAT",
        (false, false) => "no UDP encapsulation",
    };
    format!("detected: {this}, {peer}; {encap}")
}

impl IkeStatus {
    /// The NAT line of the text status: from the separate fields, or for
    /// an older daemon its `nat` text.
    fn nat_text(&self) -> Option<String> {
        match (
            self.nat_local,
            self.nat_peer_mismatch,
            self.udp_encap_forced,
        ) {
            (Some(local), Some(peer), Some(forced)) => Some(nat_summary(local, peer, forced)),
            _ => self.nat.clone(),
        }
    }
}

/// For `skip_serializing_if`: a counter that never moved stays out of the
/// JSON.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One SA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaStatus {
    /// `in` or `out`.
    pub direction: String,
    /// The SPI, as `0x...`.
    pub spi: String,
    /// The suite name.
    pub suite: String,
    /// Extended sequence numbers.
    pub esn: bool,
    /// `transport` or `tunnel` (absent from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The traffic selectors, strongSwan-style (`192.0.2.1/32[udp/4789]
    /// === 192.0.2.2/32[udp/4789]`), comma-separated; absent for SAs
    /// without selectors (manual keys) and from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectors: Option<String>,
    /// `live`, `soft` (rekey due) or `expired`.
    pub state: String,
    /// Packets processed.
    pub packets: u64,
    /// Payload bytes processed.
    pub bytes: u64,
    /// The highest sequence number sent or accepted.
    pub last_seq: u64,
    /// Seconds since the SA was installed.
    #[serde(default)]
    pub age_secs: u64,
    /// Drops by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
}

/// One forwarding entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbStatus {
    /// The network name.
    pub network: String,
    /// The MAC address.
    pub mac: String,
    /// The peer name.
    pub peer: String,
    /// `static` or `learned`.
    pub kind: String,
    /// Seconds since last seen.
    pub age_secs: u64,
}

impl Status {
    /// A human-readable rendering.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let n = &self.node;
        let _ = writeln!(
            s,
            "node {} underlay {} esp {} up {}s",
            n.name, n.underlay, n.esp, n.uptime_secs
        );
        // Gateway mode has no overlay networks and no forwarding database.
        let overlay = self.gateway.is_none();
        if overlay {
            let _ = writeln!(s, "\nnetworks:");
        }
        for net in &self.networks {
            let _ = writeln!(
                s,
                "  {:<10} vni {:<8} {:<6} port {:<5} tap {:<15} mtu {:<5} tx {} frames / {} B (flooded {})  rx {} frames / {} B",
                net.name,
                net.vni,
                net.encapsulation,
                net.port,
                net.tap,
                net.mtu,
                net.tx_frames,
                net.tx_bytes,
                net.flooded,
                net.rx_frames,
                net.rx_bytes
            );
            if net.network_mismatch > 0 {
                let _ = writeln!(
                    s,
                    "  {:<10} network_mismatch {}: frames under another network's SA, dropped",
                    "", net.network_mismatch
                );
            }
            if let Some(layout) = &net.layout {
                let _ = writeln!(
                    s,
                    "  {:<10} layout {layout}: VXLAN in the clear, then ESP",
                    ""
                );
            }
        }
        if let Some(e) = &self.ike_endpoint {
            let _ = writeln!(
                s,
                "ike endpoint: half-open {} responders {} cookies sent {} (bad {}) refused {} malformed {} unknown spi {}",
                e.half_open,
                e.responders,
                e.cookies_sent,
                e.bad_cookies,
                e.refused,
                e.malformed,
                e.unknown_spi
            );
        }
        let _ = writeln!(s, "\npeers:");
        for p in &self.peers {
            let policies: Vec<String> = p
                .policies
                .iter()
                .map(|(n, pol)| format!("{n}={pol}"))
                .collect();
            let _ = writeln!(
                s,
                "  {:<12} {:<40} {}",
                p.name,
                p.underlay,
                policies.join(" ")
            );
            if let Some(ike) = &p.ike {
                let secs = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v}s"));
                let _ = writeln!(
                    s,
                    "    ike {} ({}) spis {}/{} suite {} child SAs {}{}",
                    ike.state,
                    ike.role,
                    ike.spi_i.as_deref().unwrap_or("-"),
                    ike.spi_r.as_deref().unwrap_or("-"),
                    ike.suite.as_deref().unwrap_or("-"),
                    ike.child_sas,
                    ike.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
                let _ = writeln!(
                    s,
                    "        age {} rekey in {} (child in {}) ike rekeys {} retransmits {} dropped {}",
                    secs(ike.age_secs),
                    secs(ike.rekey_in_secs),
                    secs(ike.child_rekey_in_secs),
                    ike.ike_rekeys,
                    ike.retransmits,
                    ike.dropped
                );
                if let Some(kex) = &ike.key_exchange {
                    let _ = writeln!(s, "        key exchanges {kex}");
                }
                if let Some(keys) = &ike.keys {
                    let _ = writeln!(s, "        keys {keys}");
                }
                for c in &ike.children {
                    let _ = writeln!(
                        s,
                        "        child SA {}/{} key exchanges {}{}",
                        c.spi_in,
                        c.spi_out,
                        c.key_exchange,
                        c.network
                            .as_deref()
                            .map(|n| format!(" network {n}"))
                            .unwrap_or_default()
                    );
                }
                if let Some(nat) = ike.nat_text() {
                    let _ = writeln!(s, "        nat {nat}");
                }
                if ike.half_open + ike.handshakes_failed > 0 {
                    let _ = writeln!(
                        s,
                        "        half-open {} handshakes failed {}",
                        ike.half_open, ike.handshakes_failed
                    );
                }
                if ike.fragments_sent + ike.fragments_received > 0 {
                    let _ = writeln!(
                        s,
                        "        ike fragments sent {} received {}",
                        ike.fragments_sent, ike.fragments_received
                    );
                }
                if let Some(auth) = &ike.auth {
                    let _ = writeln!(s, "        auth {auth}");
                }
            }
            if p.sas.is_empty() {
                let _ = writeln!(s, "    no SA");
            }
            for sa in &p.sas {
                let _ = writeln!(
                    s,
                    "    {:<3} spi {} {} {} esn={} {} age {}s packets {} bytes {} last_seq {} drops: {}",
                    sa.direction,
                    sa.spi,
                    sa.suite,
                    sa.mode.as_deref().unwrap_or("-"),
                    sa.esn,
                    sa.state,
                    sa.age_secs,
                    sa.packets,
                    sa.bytes,
                    sa.last_seq,
                    drops_text(&sa.drops)
                );
                if let Some(ts) = &sa.selectors {
                    let _ = writeln!(s, "        selectors {ts}");
                }
            }
        }
        let _ = writeln!(s, "\ndata path drops: {}", drops_text(&self.drops));
        if let Some(g) = &self.gateway {
            g.render(&mut s);
        }
        if !overlay {
            return s;
        }
        let _ = writeln!(s, "\nforwarding database: {} entries", self.fdb.len());
        for e in &self.fdb {
            let _ = writeln!(
                s,
                "  {:<10} {} -> {} ({}, {}s)",
                e.network, e.mac, e.peer, e.kind, e.age_secs
            );
        }
        s
    }
}

/// Drop counters in the text status: `reason=count` for each that is
/// not zero, or `none`.
fn drops_text(drops: &BTreeMap<String, u64>) -> String {
    let counted: Vec<String> = drops
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if counted.is_empty() {
        "none".to_owned()
    } else {
        counted.join(" ")
    }
}

impl GatewayStatus {
    fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\ngateway: tun {} mtu {} mode {} table {} rules {}/{} fwmark {:#x} nft inet {}",
            self.tun,
            self.tun_mtu,
            self.mode,
            self.table,
            self.rule_priority,
            self.rule_priority + 1,
            self.fwmark,
            self.nft_table
        );
        let _ = writeln!(
            s,
            "  kernel tunnel MTU advice: at most {} (VXLAN or Geneve over this TUN)",
            self.tunnel_mtu_advice
        );
        for d in &self.tunnel_devices {
            let mtu = d.mtu.map_or("missing".to_owned(), |m| m.to_string());
            match &d.warning {
                Some(w) => {
                    let _ = writeln!(s, "  device {} mtu {mtu}  WARNING: {w}", d.name);
                }
                None => {
                    let _ = writeln!(s, "  device {} mtu {mtu} ok", d.name);
                }
            }
        }
        if let Some(n) = self.guard_others {
            let _ = writeln!(s, "  guard ({}) drops from other sources: {n}", self.guard);
        }
        if let Some(n) = self.clear_out {
            let _ = writeln!(s, "  cleartext stopped on its way out: {n}");
        }
        for p in &self.policies {
            let _ = writeln!(
                s,
                "  policy {} ({}) {} [{}] tx {} pkts / {} B  rx {} pkts / {} B  guard drops {}",
                p.peer,
                p.underlay,
                p.policy,
                p.selectors.join(", "),
                p.tx_packets,
                p.tx_bytes,
                p.rx_packets,
                p.rx_bytes,
                p.guard_drops.map_or("?".to_owned(), |d| d.to_string())
            );
            for v in &p.vnis {
                let _ = writeln!(
                    s,
                    "    vni {} {} {}: sealed {} clear {} discarded {} opened {} network_mismatch {}",
                    v.tunnel,
                    v.vnis,
                    v.policy,
                    v.sealed,
                    v.clear,
                    v.discarded,
                    v.opened,
                    v.network_mismatch
                );
            }
        }
        if let Some(o) = &self.ovsdb {
            let link = if o.connected {
                "connected"
            } else {
                "DISCONNECTED"
            };
            let _ = writeln!(
                s,
                "\novsdb {} {link}, {} updates, {} tunnels",
                o.remote,
                o.updates,
                o.tunnels.len()
            );
            if let (false, Some(e)) = (o.connected, &o.last_error) {
                let _ = writeln!(s, "  last error: {e}");
            }
            for t in &o.tunnels {
                let _ = write!(
                    s,
                    "  tunnel {} {} remote {} auth {}: {}",
                    t.name, t.kind, t.remote, t.auth, t.state
                );
                let _ = match &t.reason {
                    Some(r) => writeln!(s, " ({r})"),
                    None => writeln!(s),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status with one IKE peer whose `ike` is `ike` (JSON fields).
    fn with_ike(ike: &str) -> Status {
        let json = format!(
            r#"{{"node": {{"name": "h1", "underlay": "192.0.2.1", "esp": "udp/4500", "uptime_secs": 5}},
                "networks": [], "drops": {{}}, "keepalives": 0, "fdb": [],
                "peers": [{{"name": "h2", "underlay": "192.0.2.2", "policies": {{}}, "sas": [],
                            "ike": {{"state": "established", "role": "initiator", {ike}}}}}]}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn nat_line(s: &Status) -> Option<String> {
        s.render()
            .lines()
            .find(|l| l.trim_start().starts_with("nat "))
            .map(|l| l.trim().to_owned())
    }

    /// A plain link where this host forces UDP encapsulation (as tunsecd
    /// does with ESP in UDP): no NAT here, the peer's hash does not match
    /// because it forces too, and the forcing is ours. Said apart, and not
    /// as "the peer is behind a NAT".
    #[test]
    fn forced_encapsulation_is_not_a_nat() {
        let json = format!(
            r#""nat": {:?}, "nat_local": false, "nat_peer_mismatch": true, "udp_encap_forced": true"#,
            nat_summary(false, true, true)
        );
        let s = with_ike(&json);
        assert_eq!(
            nat_line(&s).as_deref(),
            Some(
                "nat detected: this host is not behind a NAT, the peer is behind a NAT or forces \
                 UDP encapsulation; UDP encapsulation forced by this host"
            )
        );
        let plain = with_ike(
            r#""nat_local": false, "nat_peer_mismatch": false, "udp_encap_forced": false"#,
        );
        assert_eq!(
            nat_line(&plain).as_deref(),
            Some(
                "nat detected: this host is not behind a NAT, the peer is not behind a NAT; \
                 no UDP encapsulation"
            )
        );
        let behind =
            with_ike(r#""nat_local": true, "nat_peer_mismatch": false, "udp_encap_forced": false"#);
        assert_eq!(
            nat_line(&behind).as_deref(),
            Some(
                "nat detected: this host is behind a NAT, the peer is not behind a NAT; \
                 UDP encapsulation for the NAT"
            )
        );
    }

    /// The JSON keeps `nat` (the words) beside the new fields; a status
    /// from a daemon that predates them still renders its `nat` text, and
    /// a peer before IKE_SA_INIT has no NAT line.
    #[test]
    fn nat_json_is_compatible() {
        let s = with_ike(
            r#""nat": "x", "nat_local": true, "nat_peer_mismatch": true, "udp_encap_forced": false"#,
        );
        let json = serde_json::to_value(&s).unwrap();
        let ike = &json["peers"][0]["ike"];
        assert_eq!(ike["nat"], "x");
        assert_eq!(ike["nat_local"], true);
        assert_eq!(ike["nat_peer_mismatch"], true);
        assert_eq!(ike["udp_encap_forced"], false);
        let old = with_ike(r#""nat": "we are behind a NAT""#);
        assert_eq!(nat_line(&old).as_deref(), Some("nat we are behind a NAT"));
        let none = with_ike(r#""retransmits": 0"#);
        assert_eq!(nat_line(&none), None);
        assert!(
            !serde_json::to_string(&none).unwrap().contains("nat"),
            "NAT fields before NAT detection"
        );
    }
}
