//! The configuration file: one TOML document, read once, validated in full
//! before anything is changed on the host.
//!
//! Parsing has two passes, as in the rest of the project's boundaries:
//! serde reads the text into `Raw*` structs (unknown keys are errors;
//! `syntax`), then `Config::validate` checks every rule and turns them
//! into typed values. Each error names the field, as a path like
//! `peer[1].sa.suite`, and the value that was wrong, except where the
//! value may be a secret. `docs/config.md` documents every field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tunsec_esp::{SaKeys, Suite};
use tunsec_ike::message::{Identity, Proposal, ProtocolId};
use tunsec_wire::ethernet::EthernetAddress;

mod cert;
mod mtu;
mod secret;
mod syntax;
pub use cert::{AuthKind, der_to_dn, dn_to_der};
pub use mtu::NetworkMtu;
pub use secret::write_secret;

/// Where the control socket lives unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunsec/tunsecd.sock";
/// The default ESP-in-UDP port (RFC 3948).
pub const DEFAULT_ESP_PORT: u16 = 4500;
/// How often a host behind a NAT sends a NAT keepalive unless the config
/// says otherwise (RFC 3948 section 4 suggests 20 s).
pub const DEFAULT_NAT_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);
/// The longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A configuration that failed validation: the field, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The text is not valid TOML, or a value has the wrong type, or a
    /// key is unknown or missing. It never quotes the text (a line may
    /// hold a secret), nor the value of a field that names a secret.
    #[error("{}", syntax_message(field.as_deref(), *at, reason))]
    Syntax {
        /// The field's path, such as `network[0].vni`, where known.
        field: Option<String>,
        /// The line and column (from 1) of the error, where known.
        at: Option<(usize, usize)>,
        /// What is wrong, such as `expected an integer, found the string
        /// "100"`.
        reason: String,
    },
    /// A value breaks a rule.
    #[error("{field}: {value} {reason}")]
    Invalid {
        /// The field's path, such as `peer[1].sa.suite`.
        field: String,
        /// The value as written.
        value: String,
        /// The rule it breaks.
        reason: String,
    },
}

/// `network[0].vni: expected ... (line 8, column 7)`, or without a field
/// `TOML syntax error ... at line 8, column 7`.
fn syntax_message(field: Option<&str>, at: Option<(usize, usize)>, reason: &str) -> String {
    match (field, at) {
        (Some(field), Some((line, column))) => {
            format!("{field}: {reason} (line {line}, column {column})")
        }
        (Some(field), None) => format!("{field}: {reason}"),
        (None, Some((line, column))) => format!("line {line}, column {column}: {reason}"),
        (None, None) => reason.to_owned(),
    }
}

fn invalid(
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// How ESP travels between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EspEncapsulation {
    /// ESP in UDP (RFC 3948), the default: it passes NAT and lets the
    /// kernel spread load across cores by UDP ports.
    Udp,
    /// Raw ESP, IP protocol 50.
    Esp,
}

/// The tunnel format of a virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelEncapsulation {
    /// VXLAN (RFC 7348), UDP port 4789 by default.
    Vxlan,
    /// Geneve (RFC 8926), UDP port 6081 by default; options are carried
    /// through.
    Geneve,
    /// GUE variant 0 (draft-ietf-intarea-gue); the port must be configured.
    Gue,
}

impl TunnelEncapsulation {
    /// The IANA port, where there is one.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Vxlan => Some(tunsec_wire::vxlan::PORT),
            Self::Geneve => Some(tunsec_wire::geneve::PORT),
            Self::Gue => None,
        }
    }
}

/// The ESP mode of the Child SAs negotiated with an IKE peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildMode {
    /// Transport mode, asked for with USE_TRANSPORT_MODE (RFC 7296 section
    /// 1.3.1): ESP protects the tunnel's UDP datagram. The default. As a
    /// responder, the initiator's choice is followed.
    #[default]
    Transport,
    /// Tunnel mode (RFC 4303 section 3.1.2): ESP protects an inner IP
    /// header between the two underlay addresses and the datagram.
    Tunnel,
}

/// The traffic selectors of the Child SAs negotiated with an IKE peer
/// (RFC 7296 section 2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildSelectors {
    /// Host to host: the two underlay addresses, UDP, any port. The
    /// default.
    #[default]
    Host,
    /// Narrowed to the overlay's own datagrams: for each tunnel port P of
    /// the peer's networks, `local[udp/P]` and `remote[udp/P]`. Tunnel
    /// datagrams under such an SA leave from the tunnel port.
    Ports,
}

/// What a peer's traffic on one network must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// ESP or nothing: without a usable SA the traffic is dropped, and
    /// cleartext from the peer is refused. The default.
    Require,
    /// ESP when an SA is up; cleartext otherwise, and cleartext is
    /// accepted.
    Prefer,
    /// Cleartext only, for interop with plain tunnel endpoints and for
    /// debugging.
    Clear,
}

/// The MTU of a TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// The underlay MTU minus the worst-case overhead.
    Auto,
    /// A fixed value.
    Fixed(u16),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    esp: RawEsp,
    #[serde(default)]
    offload: RawOffload,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    gateway: Option<RawGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    tun: Option<String>,
    mode: Option<ChildMode>,
    table: Option<u32>,
    rule_priority: Option<u32>,
    fwmark: Option<u32>,
    nft_table: Option<String>,
    guard: Option<GuardScopeKind>,
    on_stop: Option<OnStop>,
    #[serde(default)]
    tunnel_devices: Vec<String>,
}

/// What gateway mode leaves in place when tunsecd stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// The guard, the steering rules and the table's `unreachable`
    /// route stay (the default): the protected traffic stays blocked
    /// until the next start adopts them, or `tunsec gateway release`
    /// removes them.
    #[default]
    Block,
    /// Everything goes on a clean stop: the kernel's tunnels then send
    /// in the clear.
    Release,
}

/// Which cleartext sources gateway mode's inbound guard drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardScopeKind {
    /// Every source (the default): traffic on a peer's selector ports
    /// must come through the TUN device, whoever sent it.
    #[default]
    All,
    /// Only the peers' addresses.
    Peers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    protocol: toml::Value,
    ports: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    underlay: String,
    control_socket: Option<PathBuf>,
    underlay_mtu: Option<u16>,
    workers: Option<u16>,
    metrics_listen: Option<String>,
    log_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEsp {
    encapsulation: Option<EspEncapsulation>,
    port: Option<u16>,
    replay_window: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffload {
    tap: Option<bool>,
    gro: Option<bool>,
    udp_gso: Option<bool>,
    udp_gro: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    vni: u32,
    encapsulation: TunnelEncapsulation,
    port: Option<u16>,
    tap: Option<String>,
    bridge: Option<String>,
    mtu: Option<toml::Value>,
    #[serde(default)]
    fdb: Vec<RawFdbEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFdbEntry {
    mac: String,
    peer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    underlay: String,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    selector: Vec<RawSelector>,
    policy: Option<PolicyKind>,
    #[serde(default)]
    policies: BTreeMap<String, PolicyKind>,
    sa: Option<RawSa>,
    ike: Option<RawIke>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIke {
    auth: Option<AuthKind>,
    psk_file: Option<PathBuf>,
    psk_env: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    intermediates: Option<Vec<PathBuf>>,
    ca: Option<Vec<PathBuf>>,
    crl: Option<Vec<PathBuf>>,
    pin_cert: Option<PathBuf>,
    pin_sha256: Option<String>,
    mode: Option<ChildMode>,
    selectors: Option<ChildSelectors>,
    local_id: Option<String>,
    remote_id: Option<String>,
    ike_proposals: Option<Vec<String>>,
    esp_proposals: Option<Vec<String>>,
    child_lifetime: Option<u64>,
    ike_lifetime: Option<u64>,
    reauth_before_expiry: Option<u64>,
    nat_keepalive: Option<u64>,
    fragmentation: Option<bool>,
    fragment_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    spi_in: u32,
    spi_out: u32,
    suite: String,
    key_in: PathBuf,
    key_out: PathBuf,
    #[serde(default)]
    esn: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This host.
    pub node: Node,
    /// ESP settings shared by every peer.
    pub esp: EspSettings,
    /// Which offloads the data path uses.
    pub offload: Offload,
    /// The virtual networks, in file order.
    pub networks: Vec<Network>,
    /// The peers, in file order.
    pub peers: Vec<Peer>,
    /// Gateway mode (`[gateway]`): the kernel's own tunnels, steered into
    /// a TUN device by policy routing, instead of overlay networks.
    pub gateway: Option<Gateway>,
}

/// Gateway mode's settings (`[gateway]`). The routing table, rule
/// priority, firewall mark and nftables table are fixed, recognisable
/// values, so that entries a killed daemon left behind are found and
/// removed on the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The TUN device tunsecd creates and owns.
    pub tun: String,
    /// ESP transport mode (default) or tunnel mode.
    pub mode: ChildMode,
    /// The routing table whose default route is the TUN device.
    pub table: u32,
    /// The priority of the first policy-routing rule; the others follow
    /// it (`rule_priority + 1`).
    pub rule_priority: u32,
    /// The firewall mark on tunsecd's own sockets, whose packets the
    /// steering never catches.
    pub fwmark: u32,
    /// The nftables table (family `inet`) of the inbound guard.
    pub nft_table: String,
    /// Which cleartext sources the guard drops.
    pub guard: GuardScopeKind,
    /// What a clean stop (or a failed start) leaves in place.
    pub on_stop: OnStop,
    /// Kernel tunnel devices (a vxlan device, say) whose MTU status checks
    /// against the advice.
    pub tunnel_devices: Vec<String>,
}

/// The defaults of [`Gateway`].
pub mod gateway_defaults {
    /// The TUN device.
    pub const TUN: &str = "tunsec-gw";
    /// The routing table (0x7453, "tS").
    pub const TABLE: u32 = 0x7453;
    /// The first rule's priority (before the `main` table's 32766).
    pub const RULE_PRIORITY: u32 = 29_000;
    /// The firewall mark of tunsecd's own sockets.
    pub const FWMARK: u32 = 0x7453;
    /// The nftables table.
    pub const NFT_TABLE: &str = "tunsec_gw";
}

/// This host.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its name, for logs and status.
    pub name: String,
    /// Its underlay address: the source of its tunnels.
    pub underlay: IpAddr,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// The underlay MTU that `mtu = "auto"` starts from.
    pub underlay_mtu: u16,
    /// How many data-path worker pairs (transmit and receive) run, each
    /// with its own queue of every TAP device and its own UDP sockets.
    pub workers: usize,
    /// Where tunsecd serves its metrics over HTTP (`GET /metrics`), if
    /// anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// What tunsecd logs, unless `--log-level` or `RUST_LOG` says
    /// otherwise (see [`crate::logging`]).
    pub log_level: Option<crate::logging::LogLevel>,
}

/// The most worker pairs `node.workers` allows.
pub const MAX_WORKERS: u16 = 64;

/// The data path's offloads, each of which can be turned off (kernels have
/// had offload bugs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// TAP devices with a virtio-net header, TCP segmentation and checksum
    /// offload: the kernel hands over 64 KB TCP super-frames, which the
    /// transmit worker cuts into wire frames.
    pub tap: bool,
    /// Coalesce received TCP frames of one flow into super-frames before
    /// writing them to the TAP device (needs `tap`).
    pub gro: bool,
    /// Send runs of equal ESP datagrams to one peer as one message with
    /// UDP generic segmentation offload (`UDP_SEGMENT`).
    pub udp_gso: bool,
    /// Receive runs of equal datagrams of one flow as one buffer (UDP
    /// generic receive offload, `UDP_GRO`).
    pub udp_gro: bool,
}

/// ESP settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EspSettings {
    /// ESP in UDP or raw ESP.
    pub encapsulation: EspEncapsulation,
    /// The UDP port of ESP in UDP.
    pub port: u16,
    /// The anti-replay window of inbound SAs.
    pub replay_window: u32,
}

/// A virtual network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// Its VNI (24 bits).
    pub vni: u32,
    /// The tunnel format.
    pub encapsulation: TunnelEncapsulation,
    /// The tunnel's UDP port.
    pub port: u16,
    /// The TAP device name.
    pub tap: String,
    /// An existing Linux bridge that tunsecd enslaves the TAP device to
    /// at every start (a restart makes a new TAP device).
    pub bridge: Option<String>,
    /// The TAP device MTU.
    pub mtu: Mtu,
    /// Static forwarding entries: MAC to peer name.
    pub fdb: Vec<(EthernetAddress, String)>,
}

/// A peer host.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: IpAddr,
    /// The networks it carries, each with its policy.
    pub networks: Vec<(String, PolicyKind)>,
    /// Manually keyed SAs, if configured.
    pub sa: Option<ManualSa>,
    /// SAs negotiated with IKEv2, if configured (never with `sa`).
    pub ike: Option<IkePeer>,
    /// Gateway mode: the kernel traffic to and from this peer that is
    /// protected (`[[peer.selector]]`); empty in overlay mode.
    pub selectors: Vec<tunsec_datapath::gateway::GatewaySelector>,
}

/// A peer whose SAs are negotiated with IKEv2, with a pre-shared key or
/// certificates.
#[derive(Clone)]
pub struct IkePeer {
    /// The pre-shared key (the file's or the environment variable's
    /// content, trimmed); empty with certificates.
    pub psk: tunsec_esp::Key,
    /// Certificate authentication (`auth = "cert"`): our key and chain,
    /// the peer's trust. `None`: the PSK.
    pub cert: Option<std::sync::Arc<tunsec_ike::sa::CertAuth>>,
    /// Our identity.
    pub local_id: Identity,
    /// The identity the peer must prove; `None` only with a pinned
    /// certificate and no `remote_id` (the pin names the peer).
    pub remote_id: Option<Identity>,
    /// The IKE proposals, most preferred first.
    pub ike_proposals: Vec<Proposal>,
    /// The ESP proposals, most preferred first.
    pub esp_proposals: Vec<Proposal>,
    /// How long a Child SA lives before it is rekeyed (at about 80-90% of
    /// it); `None`: no rekeying.
    pub child_lifetime: Option<std::time::Duration>,
    /// How long the IKE SA lives before it is rekeyed (at about 80-90% of
    /// it, RFC 7296 section 2.18); `None`: no rekeying.
    pub ike_lifetime: Option<std::time::Duration>,
    /// With a certificate: how long before our certificate's notAfter
    /// tunsecd looks for a renewed one and re-authenticates with it;
    /// `None`: a third of the certificate's validity, at most 7 days
    /// (`ike::CertRenewal`).
    pub reauth_before_expiry: Option<std::time::Duration>,
    /// How often a host behind a NAT sends a NAT keepalive (RFC 3948
    /// section 4).
    pub nat_keepalive: std::time::Duration,
    /// Offer and use IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// The largest IP datagram an IKE fragment makes, headers included.
    pub fragment_size: usize,
    /// The ESP mode asked for (initiator) or accepted (responder).
    pub mode: ChildMode,
    /// The traffic selectors offered (initiator) or narrowed to
    /// (responder).
    pub selectors: ChildSelectors,
}

impl fmt::Debug for IkePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkePeer")
            .field("psk", &"<redacted>")
            .field("cert", &self.cert.is_some())
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("ike_proposals", &self.ike_proposals.len())
            .field("esp_proposals", &self.esp_proposals.len())
            .field("child_lifetime", &self.child_lifetime)
            .field("ike_lifetime", &self.ike_lifetime)
            .field("nat_keepalive", &self.nat_keepalive)
            .field("fragmentation", &self.fragmentation)
            .field("fragment_size", &self.fragment_size)
            .field("mode", &self.mode)
            .field("selectors", &self.selectors)
            .finish()
    }
}

/// A manually keyed SA pair.
#[derive(Clone, PartialEq, Eq)]
pub struct ManualSa {
    /// The SPI of packets from the peer.
    pub spi_in: u32,
    /// The SPI of packets to the peer.
    pub spi_out: u32,
    /// The cipher suite.
    pub suite: Suite,
    /// Keys for packets from the peer.
    pub keys_in: SaKeys,
    /// Keys for packets to the peer.
    pub keys_out: SaKeys,
    /// Extended sequence numbers.
    pub esn: bool,
}

impl fmt::Debug for ManualSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSa")
            .field("spi_in", &format_args!("{:#010x}", self.spi_in))
            .field("spi_out", &format_args!("{:#010x}", self.spi_out))
            .field("suite", &self.suite)
            .field("keys", &"<redacted>")
            .field("esn", &self.esn)
            .finish()
    }
}

impl Config {
    /// Reads and validates a config file. Relative key file paths are
    /// taken from the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates config text, with the process's environment
    /// for `psk_env`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, base_dir, &|name| std::env::var_os(name))
    }

    /// Parses and validates config text; `env` looks up environment
    /// variables (tests pass their own instead of the process's).
    pub fn parse_with_env(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = syntax::from_str(text)?;
        Self::validate(raw, &Sources { base_dir, env })
    }

    fn validate(raw: RawConfig, sources: &Sources<'_>) -> Result<Self, ConfigError> {
        let node = validate_node(raw.node)?;
        let esp = EspSettings {
            encapsulation: raw.esp.encapsulation.unwrap_or(EspEncapsulation::Udp),
            port: raw.esp.port.unwrap_or(DEFAULT_ESP_PORT),
            replay_window: raw
                .esp
                .replay_window
                .unwrap_or(tunsec_esp::ReplayWindow::DEFAULT_SIZE),
        };
        if esp.port == 0 {
            return Err(invalid("esp.port", 0, "is not a usable port"));
        }
        if node.workers > 1 && esp.encapsulation == EspEncapsulation::Esp {
            // Every raw ESP socket receives a copy of every ESP packet:
            // per-worker sockets would open each packet several times.
            return Err(invalid(
                "node.workers",
                node.workers,
                "needs esp.encapsulation = \"udp\": raw ESP sockets cannot share the packets between workers",
            ));
        }
        if tunsec_esp::ReplayWindow::new(esp.replay_window).is_err() {
            return Err(invalid(
                "esp.replay_window",
                esp.replay_window,
                "is outside 64..=65536",
            ));
        }

        let gateway = raw.gateway.map(validate_gateway).transpose()?;
        if gateway.is_some() && !raw.network.is_empty() {
            return Err(invalid(
                "network[0].name",
                quoted(&raw.network[0].name),
                "cannot be combined with [gateway]: gateway mode protects the kernel's own tunnels, not overlay networks",
            ));
        }
        let peer_names: HashSet<&str> = raw.peer.iter().map(|p| p.name.as_str()).collect();
        let mut networks = Vec::with_capacity(raw.network.len());
        let mut names = HashSet::new();
        let mut vnis = HashSet::new();
        let mut taps = HashSet::new();
        for (i, n) in raw.network.into_iter().enumerate() {
            let net = validate_network(i, n, &peer_names, esp)?;
            if !names.insert(net.name.clone()) {
                return Err(invalid(
                    format!("network[{i}].name"),
                    quoted(&net.name),
                    "is used by another network",
                ));
            }
            if !vnis.insert((net.encapsulation, net.port, net.vni)) {
                return Err(invalid(
                    format!("network[{i}].vni"),
                    net.vni,
                    "is used by another network of the same encapsulation and port",
                ));
            }
            if let Some(other) = networks
                .iter()
                .find(|o: &&Network| o.port == net.port && o.encapsulation != net.encapsulation)
            {
                return Err(invalid(
                    format!("network[{i}].port"),
                    net.port,
                    format!(
                        "is already the {:?} port of network {:?}; one port carries one encapsulation",
                        other.encapsulation, other.name
                    ),
                ));
            }
            if !taps.insert(net.tap.clone()) {
                return Err(invalid(
                    format!("network[{i}].tap"),
                    quoted(&net.tap),
                    "is used by another network",
                ));
            }
            networks.push(net);
        }

        let mut peers = Vec::with_capacity(raw.peer.len());
        let mut seen_names = HashSet::new();
        let mut seen_addrs = HashSet::new();
        let mut spis_in = HashMap::new();
        for (i, p) in raw.peer.into_iter().enumerate() {
            let peer = validate_peer(
                i,
                p,
                &node,
                &networks,
                gateway.as_ref().map(|g| g.mode),
                esp,
                sources,
            )?;
            if !seen_names.insert(peer.name.clone()) {
                return Err(invalid(
                    format!("peer[{i}].name"),
                    quoted(&peer.name),
                    "is used by another peer",
                ));
            }
            if !seen_addrs.insert(peer.underlay) {
                return Err(invalid(
                    format!("peer[{i}].underlay"),
                    peer.underlay,
                    "is used by another peer",
                ));
            }
            if let Some(sa) = &peer.sa {
                if let Some(other) = spis_in.insert(sa.spi_in, peer.name.clone()) {
                    return Err(invalid(
                        format!("peer[{i}].sa.spi_in"),
                        format_args!("{:#x}", sa.spi_in),
                        format!("is already the inbound SPI of peer {other:?}"),
                    ));
                }
            }
            peers.push(peer);
        }
        let offload = Offload {
            tap: raw.offload.tap.unwrap_or(true),
            gro: raw.offload.gro.unwrap_or(true),
            udp_gso: raw.offload.udp_gso.unwrap_or(true),
            udp_gro: raw.offload.udp_gro.unwrap_or(true),
        };
        if offload.gro && !offload.tap && raw.offload.gro == Some(true) {
            return Err(invalid(
                "offload.gro",
                true,
                "needs offload.tap = true (coalesced frames travel behind a virtio-net header)",
            ));
        }
        let offload = Offload {
            gro: offload.gro && offload.tap,
            ..offload
        };
        let config = Self {
            node,
            esp,
            offload,
            networks,
            peers,
            gateway,
        };
        // Last: the overhead depends on the peers' ESP modes.
        for net in &config.networks {
            config.network_mtu(net)?;
        }
        Ok(config)
    }

    /// The network with this name.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            quoted(name),
            "must be 1 to 63 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

fn parse_addr(field: &str, value: &str) -> Result<IpAddr, ConfigError> {
    let addr: IpAddr = value
        .parse()
        .map_err(|_| invalid(field, quoted(value), "is not an IPv4 or IPv6 address"))?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(invalid(field, quoted(value), "must be a unicast address"));
    }
    Ok(addr)
}

fn validate_node(raw: RawNode) -> Result<Node, ConfigError> {
    check_name("node.name", &raw.name)?;
    let underlay = parse_addr("node.underlay", &raw.underlay)?;
    let underlay_mtu = raw.underlay_mtu.unwrap_or(1500);
    let min = if underlay.is_ipv4() { 576 } else { 1280 };
    if underlay_mtu < min {
        return Err(invalid(
            "node.underlay_mtu",
            underlay_mtu,
            format!("is below the minimum of {min} for the underlay's address family"),
        ));
    }
    let workers = raw.workers.unwrap_or(1);
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(invalid(
            "node.workers",
            workers,
            format!("is not between 1 and {MAX_WORKERS}"),
        ));
    }
    let metrics_listen = raw
        .metrics_listen
        .map(|v| {
            let addr: SocketAddr = v.parse().map_err(|_| {
                invalid(
                    "node.metrics_listen",
                    quoted(&v),
                    "is not an address and port, such as \"127.0.0.1:9464\" or \"[::1]:9464\"",
                )
            })?;
            if addr.port() == 0 {
                return Err(invalid("node.metrics_listen", quoted(&v), "needs a port"));
            }
            Ok(addr)
        })
        .transpose()?;
    let log_level = raw
        .log_level
        .map(|v| {
            crate::logging::LogLevel::parse(&v)
                .map_err(|reason| invalid("node.log_level", quoted(&v), reason))
        })
        .transpose()?;
    Ok(Node {
        log_level,
        metrics_listen,
        workers: usize::from(workers),
        name: raw.name,
        underlay,
        control_socket: raw
            .control_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        underlay_mtu,
    })
}

fn validate_network(
    i: usize,
    raw: RawNetwork,
    peer_names: &HashSet<&str>,
    esp: EspSettings,
) -> Result<Network, ConfigError> {
    let f = |name: &str| format!("network[{i}].{name}");
    check_name(&f("name"), &raw.name)?;
    if tunsec_wire::vxlan::Vni::new(raw.vni).is_none() {
        return Err(invalid(
            f("vni"),
            raw.vni,
            "does not fit in 24 bits (0..=16777215)",
        ));
    }
    let port = match (raw.port, raw.encapsulation.default_port()) {
        (Some(0), _) => return Err(invalid(f("port"), 0, "is not a usable port")),
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(invalid(
                f("port"),
                "(missing)",
                "is required for gue: the GUE draft assigns no port",
            ));
        }
    };
    if esp.encapsulation == EspEncapsulation::Udp && port == esp.port {
        return Err(invalid(
            f("port"),
            port,
            "is the ESP-in-UDP port (esp.port)",
        ));
    }
    let tap = raw.tap.unwrap_or_else(|| format!("ts-{}", raw.name));
    let ifname = |field: &str, name: &str| {
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name.contains(['/', ' ', '\0'])
            || name == "."
            || name == ".."
        {
            return Err(invalid(
                f(field),
                quoted(name),
                format!(
                    "is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, no '/' or spaces)"
                ),
            ));
        }
        Ok(())
    };
    ifname("tap", &tap)?;
    if let Some(bridge) = &raw.bridge {
        ifname("bridge", bridge)?;
        if *bridge == tap {
            return Err(invalid(
                f("bridge"),
                quoted(bridge),
                "is the network's own TAP device; name the existing bridge to enslave it to",
            ));
        }
    }
    let mtu = match raw.mtu {
        None => Mtu::Auto,
        Some(toml::Value::String(s)) if s == "auto" => Mtu::Auto,
        Some(toml::Value::Integer(n)) if (576..=65_000).contains(&n) => Mtu::Fixed(n as u16),
        Some(v) => {
            return Err(invalid(
                f("mtu"),
                v,
                "must be \"auto\" or a number from 576 to 65000",
            ));
        }
    };
    let mut fdb = Vec::with_capacity(raw.fdb.len());
    for (j, e) in raw.fdb.into_iter().enumerate() {
        let mac = parse_mac(&e.mac).ok_or_else(|| {
            invalid(
                format!("network[{i}].fdb[{j}].mac"),
                quoted(&e.mac),
                "is not a MAC address like 02:00:00:00:00:01",
            )
        })?;
        if !mac.is_unicast() {
            return Err(invalid(
                format!("network[{i}].fdb[{j}].mac"),
                quoted(&e.mac),
                "must be a unicast MAC address",
            ));
        }
        if !peer_names.contains(e.peer.as_str()) {
            return Err(invalid(
                format!("network[{i}].fdb[{j}].peer"),
                quoted(&e.peer),
                "is not the name of a peer",
            ));
        }
        fdb.push((mac, e.peer));
    }
    Ok(Network {
        name: raw.name,
        vni: raw.vni,
        encapsulation: raw.encapsulation,
        port,
        tap,
        bridge: raw.bridge,
        mtu,
        fdb,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut bytes {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(EthernetAddress(bytes))
}

#[allow(clippy::too_many_arguments)]
fn validate_peer(
    i: usize,
    raw: RawPeer,
    node: &Node,
    networks: &[Network],
    gateway: Option<ChildMode>,
    esp: EspSettings,
    sources: &Sources<'_>,
) -> Result<Peer, ConfigError> {
    let f = |name: &str| format!("peer[{i}].{name}");
    check_name(&f("name"), &raw.name)?;
    let underlay = parse_addr(&f("underlay"), &raw.underlay)?;
    if underlay == node.underlay {
        return Err(invalid(
            f("underlay"),
            underlay,
            "is this node's own underlay address",
        ));
    }
    if underlay.is_ipv4() != node.underlay.is_ipv4() {
        return Err(invalid(
            f("underlay"),
            underlay,
            format!(
                "is not of the same address family as node.underlay ({})",
                node.underlay
            ),
        ));
    }
    let selectors = validate_selectors(i, &raw, gateway, esp)?;
    if raw.networks.is_empty() && gateway.is_none() {
        return Err(invalid(
            f("networks"),
            "[]",
            "must name at least one network",
        ));
    }
    let default_policy = raw.policy.unwrap_or(PolicyKind::Require);
    let mut nets = Vec::with_capacity(raw.networks.len());
    for (j, name) in raw.networks.iter().enumerate() {
        if !networks.iter().any(|n| &n.name == name) {
            return Err(invalid(
                format!("peer[{i}].networks[{j}]"),
                quoted(name),
                "is not the name of a network",
            ));
        }
        if nets.iter().any(|(n, _)| n == name) {
            return Err(invalid(
                format!("peer[{i}].networks[{j}]"),
                quoted(name),
                "is listed twice",
            ));
        }
        let policy = raw.policies.get(name).copied().unwrap_or(default_policy);
        nets.push((name.clone(), policy));
    }
    for name in raw.policies.keys() {
        if !raw.networks.contains(name) {
            return Err(invalid(
                format!("peer[{i}].policies.{name}"),
                quoted(name),
                "is not one of this peer's networks",
            ));
        }
    }
    if raw.sa.is_some() && raw.ike.is_some() {
        return Err(invalid(
            f("ike"),
            "[peer.ike]",
            "cannot be combined with [peer.sa]: keys are either manual or negotiated",
        ));
    }
    let sa = raw
        .sa
        .map(|sa| validate_sa(i, sa, sources.base_dir))
        .transpose()?;
    let mut ike = raw
        .ike
        .map(|ike| validate_ike(i, ike, node.underlay, underlay, sources))
        .transpose()?;
    if let (Some(ike), Some(mode)) = (ike.as_mut(), gateway) {
        // Gateway mode: one ESP mode for all peers (`gateway.mode`).
        ike.mode = mode;
    }
    Ok(Peer {
        name: raw.name,
        underlay,
        networks: nets,
        sa,
        ike,
        selectors,
    })
}

fn validate_gateway(raw: RawGateway) -> Result<Gateway, ConfigError> {
    use gateway_defaults as d;
    let tun = raw.tun.unwrap_or_else(|| d::TUN.to_owned());
    check_ifname("gateway.tun", &tun)?;
    for (j, dev) in raw.tunnel_devices.iter().enumerate() {
        check_ifname(&format!("gateway.tunnel_devices[{j}]"), dev)?;
    }
    let table = raw.table.unwrap_or(d::TABLE);
    // 253 default, 254 main, 255 local; 0 unspecified.
    if table == 0 || (253..=255).contains(&table) {
        return Err(invalid(
            "gateway.table",
            table,
            "is a reserved routing table (0, 253 default, 254 main, 255 local)",
        ));
    }
    let rule_priority = raw.rule_priority.unwrap_or(d::RULE_PRIORITY);
    if rule_priority == 0 || rule_priority >= 32_765 {
        return Err(invalid(
            "gateway.rule_priority",
            rule_priority,
            "must be within 1..=32764, before the main table's rule (32766)",
        ));
    }
    let fwmark = raw.fwmark.unwrap_or(d::FWMARK);
    if fwmark == 0 {
        return Err(invalid("gateway.fwmark", 0, "must not be 0 (unmarked)"));
    }
    let nft_table = raw.nft_table.unwrap_or_else(|| d::NFT_TABLE.to_owned());
    let ok = !nft_table.is_empty()
        && nft_table.len() <= 63
        && nft_table.starts_with(|c: char| c.is_ascii_alphabetic())
        && nft_table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "gateway.nft_table",
            quoted(&nft_table),
            "must be 1 to 63 letters, digits or '_', starting with a letter",
        ));
    }
    Ok(Gateway {
        tun,
        mode: raw.mode.unwrap_or_default(),
        table,
        rule_priority,
        fwmark,
        nft_table,
        guard: raw.guard.unwrap_or_default(),
        on_stop: raw.on_stop.unwrap_or_default(),
        tunnel_devices: raw.tunnel_devices,
    })
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            quoted(name),
            format!("must be 1 to {MAX_IFNAME_LEN} characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// A peer's `[[peer.selector]]` tables: only in gateway mode, where they
/// are required and replace `networks`; only `require` policies (there is
/// no cleartext path out of the TUN device).
fn validate_selectors(
    i: usize,
    raw: &RawPeer,
    gateway: Option<ChildMode>,
    esp: EspSettings,
) -> Result<Vec<tunsec_datapath::gateway::GatewaySelector>, ConfigError> {
    let f = |name: &str| format!("peer[{i}].{name}");
    let Some(gateway_mode) = gateway else {
        if !raw.selector.is_empty() {
            return Err(invalid(
                f("selector[0]"),
                "[[peer.selector]]",
                "needs [gateway]: selectors are for gateway mode",
            ));
        }
        return Ok(Vec::new());
    };
    if let Some(n) = raw.networks.first() {
        return Err(invalid(
            f("networks[0]"),
            quoted(n),
            "cannot be used in gateway mode: list [[peer.selector]] instead",
        ));
    }
    if raw.selector.is_empty() {
        return Err(invalid(
            f("selector"),
            "[]",
            "gateway mode needs at least one [[peer.selector]]",
        ));
    }
    if let Some(p) = raw.policy.filter(|p| *p != PolicyKind::Require) {
        return Err(invalid(
            f("policy"),
            quoted(&format!("{p:?}").to_lowercase()),
            "is not supported in gateway mode: only \"require\" (steered traffic has no cleartext way out)",
        ));
    }
    if let Some(ike) = &raw.ike {
        if let Some(s) = ike.selectors {
            return Err(invalid(
                f("ike.selectors"),
                quoted(&format!("{s:?}").to_lowercase()),
                "cannot be set in gateway mode: the Child SA's selectors are the [[peer.selector]]s",
            ));
        }
        if let Some(m) = ike.mode.filter(|m| *m != gateway_mode) {
            return Err(invalid(
                f("ike.mode"),
                quoted(&format!("{m:?}").to_lowercase()),
                format!(
                    "differs from gateway.mode ({:?}): gateway mode has one ESP mode",
                    gateway_mode
                ),
            ));
        }
    }
    let mut out = Vec::with_capacity(raw.selector.len());
    for (j, s) in raw.selector.iter().enumerate() {
        let field = |name: &str| format!("peer[{i}].selector[{j}].{name}");
        let protocol = match &s.protocol {
            toml::Value::String(p) => match p.as_str() {
                "udp" => 17,
                "tcp" => 6,
                "sctp" => 132,
                "gre" => tunsec_datapath::gateway::GRE,
                _ => {
                    return Err(invalid(
                        field("protocol"),
                        quoted(p),
                        "is not \"udp\", \"tcp\", \"sctp\" or \"gre\"",
                    ));
                }
            },
            toml::Value::Integer(n @ (6 | 17 | 47 | 132)) => *n as u8,
            other => {
                return Err(invalid(
                    field("protocol"),
                    other,
                    "is not \"udp\", \"tcp\", \"sctp\" or \"gre\" (or 17, 6, 132, 47)",
                ));
            }
        };
        if protocol == tunsec_datapath::gateway::GRE {
            // GRE has no ports: the selector takes the whole protocol.
            if let Some(p) = &s.ports {
                return Err(invalid(
                    field("ports"),
                    p,
                    "cannot be set for GRE, which has no ports",
                ));
            }
            out.push(tunsec_datapath::gateway::GatewaySelector::whole_protocol(
                protocol,
            ));
            continue;
        }
        let Some(raw_ports) = &s.ports else {
            return Err(invalid(
                field("ports"),
                "(none)",
                "is required for UDP, TCP and SCTP: a port or a range \"LOW-HIGH\"",
            ));
        };
        let ports = parse_port_range(raw_ports).ok_or_else(|| {
            invalid(
                field("ports"),
                raw_ports,
                "is not a port or a range \"LOW-HIGH\" of ports 1 to 65535",
            )
        })?;
        // tunsecd's own IKE and ESP must never match a selector: the
        // inbound guard would drop the peer's ESP.
        let own: [u16; 2] = [500, esp.port];
        if protocol == 17 {
            if let Some(p) = own.iter().find(|&&p| ports.contains(&p)) {
                return Err(invalid(
                    field("ports"),
                    raw_ports,
                    format!("covers UDP port {p}, which tunsecd's own IKE or ESP uses"),
                ));
            }
        }
        out.push(tunsec_datapath::gateway::GatewaySelector { protocol, ports });
    }
    Ok(out)
}

/// `4789` or `"16384-16400"`.
fn parse_port_range(v: &toml::Value) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = match v {
        toml::Value::Integer(n) => (*n, *n),
        toml::Value::String(s) => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            (lo.trim().parse().ok()?, hi.trim().parse().ok()?)
        }
        _ => return None,
    };
    let (lo, hi) = (u16::try_from(lo).ok()?, u16::try_from(hi).ok()?);
    (lo >= 1 && lo <= hi).then_some(lo..=hi)
}

/// An identity as written in the config: an IP address is ID_IPV4_ADDR or
/// ID_IPV6_ADDR, `keyid:TEXT` is ID_KEY_ID, anything else is ID_FQDN.
pub(crate) fn parse_identity(field: &str, value: &str) -> Result<Identity, ConfigError> {
    if let Ok(addr) = value.parse::<IpAddr>() {
        return Ok(ip_identity(addr));
    }
    if let Some(typed) = cert::parse_typed_identity(field, value) {
        return typed;
    }
    let (make, text): (fn(Vec<u8>) -> Identity, &str) = match value.strip_prefix("keyid:") {
        Some(rest) => (Identity::KeyId, rest),
        None => (Identity::Fqdn, value),
    };
    if text.is_empty() || text.len() > 255 || text.chars().any(|c| c.is_whitespace()) {
        return Err(invalid(
            field,
            quoted(value),
            "is not an identity (an IP address, a name like host-b.example, dn:CN=..., fqdn:NAME, email:ADDR, ip:ADDR, or keyid:TEXT)",
        ));
    }
    Ok(make(text.as_bytes().to_vec()))
}

/// The IP-address identity of an underlay address.
pub fn ip_identity(addr: IpAddr) -> Identity {
    match addr {
        IpAddr::V4(a) => Identity::Ipv4(a),
        IpAddr::V6(a) => Identity::Ipv6(a),
    }
}

fn parse_proposals(
    field: &str,
    list: Option<Vec<String>>,
    protocol: ProtocolId,
) -> Result<Vec<Proposal>, ConfigError> {
    let Some(list) = list else {
        return Ok(tunsec_ike::proposal::defaults(protocol));
    };
    if list.is_empty() {
        return Err(invalid(field, "[]", "must list at least one proposal"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, text) in list.iter().enumerate() {
        let parsed = match protocol {
            ProtocolId::Esp => tunsec_ike::proposal::parse_esp(text),
            _ => tunsec_ike::proposal::parse_ike(text),
        };
        let mut p = parsed.map_err(|e| match e {
            tunsec_ike::Error::Proposal { token, reason, .. } => invalid(
                format!("{field}[{j}]"),
                quoted(text),
                format!("is not a valid proposal: {token:?}: {reason}"),
            ),
            other => invalid(format!("{field}[{j}]"), quoted(text), other.to_string()),
        })?;
        p.number = u8::try_from(j + 1)
            .map_err(|_| invalid(field, list.len(), "lists more than 255 proposals"))?;
        out.push(p);
    }
    Ok(out)
}

/// Where a config's values from outside the text come from.
struct Sources<'a> {
    /// Relative key file paths are taken from here.
    base_dir: &'a Path,
    /// Looks up an environment variable (`psk_env`).
    env: &'a dyn Fn(&str) -> Option<OsString>,
}

/// Reads the pre-shared key from exactly one of `psk_file` and `psk_env`;
/// leading and trailing whitespace is trimmed, and an empty key refused.
fn read_psk(
    f: &dyn Fn(&str) -> String,
    raw: &RawIke,
    sources: &Sources<'_>,
) -> Result<tunsec_esp::Key, ConfigError> {
    let (field, shown, bytes) = match (&raw.psk_file, &raw.psk_env) {
        (Some(_), Some(name)) => {
            return Err(invalid(
                f("psk_env"),
                quoted(name),
                "cannot be combined with psk_file: the key comes from one of them",
            ));
        }
        (None, None) => {
            return Err(invalid(
                f("psk_file"),
                "(missing)",
                "is required, or psk_env: the pre-shared key comes from a file or an environment variable",
            ));
        }
        (Some(path), None) => {
            let shown = quoted(&path.display().to_string());
            let bytes = secret::read(&f("psk_file"), sources.base_dir, path)?;
            ("psk_file", shown, bytes)
        }
        (None, Some(name)) => {
            let shown = quoted(name);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(invalid(
                    f("psk_env"),
                    &shown,
                    "is not an environment variable name",
                ));
            }
            let value = (sources.env)(name).ok_or_else(|| {
                invalid(
                    f("psk_env"),
                    &shown,
                    "names an environment variable that is not set",
                )
            })?;
            let bytes = std::os::unix::ffi::OsStringExt::into_vec(value);
            ("psk_env", shown, zeroize::Zeroizing::new(bytes))
        }
    };
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        let reason = match field {
            "psk_env" => "names an environment variable that is empty",
            _ => "is empty",
        };
        return Err(invalid(f(field), &shown, reason));
    }
    Ok(tunsec_esp::Key::from_slice(trimmed))
}

fn validate_ike(
    i: usize,
    raw: RawIke,
    local: IpAddr,
    remote: IpAddr,
    sources: &Sources<'_>,
) -> Result<IkePeer, ConfigError> {
    let f = |name: &str| format!("peer[{i}].ike.{name}");
    let cert = cert::load(&f, &raw, sources.base_dir)?;
    let psk = match cert {
        None => read_psk(&f, &raw, sources)?,
        Some(_) => tunsec_esp::Key::from_slice(&[]),
    };
    // With a certificate, we are its subject DN unless told otherwise;
    // the peer must be named unless it is pinned.
    let local_id = match (&raw.local_id, &cert) {
        (Some(s), _) => parse_identity(&f("local_id"), s)?,
        (None, Some(c)) => Identity::DerAsn1Dn(c.subject.clone()),
        (None, None) => ip_identity(local),
    };
    // RFC 4945 section 3.1: the peer checks our ID against our
    // certificate; say so now rather than in the peer's log.
    if let (Some(c), Some(text)) = (&cert, &raw.local_id) {
        tunsec_ike::cert::check_identity(c.auth.credentials.end_entity(), &local_id).map_err(
            |e| {
                invalid(
                    f("local_id"),
                    quoted(text),
                    format!("does not match cert: {e}"),
                )
            },
        )?;
    }
    let remote_id = match (&raw.remote_id, &cert) {
        (Some(s), _) => Some(parse_identity(&f("remote_id"), s)?),
        (None, None) => Some(ip_identity(remote)),
        (None, Some(c)) if c.pinned => None,
        (None, Some(_)) => {
            return Err(invalid(
                f("remote_id"),
                "(missing)",
                "is required with auth = \"cert\" and ca: the CA vouches for many nodes, name the one expected (dn:..., fqdn:..., email:..., ip:...)",
            ));
        }
    };
    let lifetime = |name: &str, value: Option<u64>| match value {
        None => Ok(None),
        Some(secs) if (2..=86_400 * 7).contains(&secs) => {
            Ok(Some(std::time::Duration::from_secs(secs)))
        }
        Some(secs) => Err(invalid(f(name), secs, "must be from 2 to 604800 seconds")),
    };
    let child_lifetime = lifetime("child_lifetime", raw.child_lifetime)?;
    let ike_lifetime = lifetime("ike_lifetime", raw.ike_lifetime)?;
    let reauth_before_expiry = match raw.reauth_before_expiry {
        None => None,
        Some(secs) if (60..=86_400 * 365).contains(&secs) => {
            Some(std::time::Duration::from_secs(secs))
        }
        Some(secs) => {
            return Err(invalid(
                f("reauth_before_expiry"),
                secs,
                "must be from 60 to 31536000 seconds (a year)",
            ));
        }
    };
    if reauth_before_expiry.is_some() && raw.cert.is_none() {
        return Err(invalid(
            f("reauth_before_expiry"),
            raw.reauth_before_expiry.unwrap_or(0),
            "only applies to auth = \"cert\" (a certificate that expires)",
        ));
    }
    let nat_keepalive = match raw.nat_keepalive {
        None => DEFAULT_NAT_KEEPALIVE,
        Some(secs) if (1..=3600).contains(&secs) => std::time::Duration::from_secs(secs),
        Some(secs) => {
            return Err(invalid(
                f("nat_keepalive"),
                secs,
                "must be from 1 to 3600 seconds",
            ));
        }
    };
    let fragment_size = match raw.fragment_size {
        None => tunsec_ike::sa::fragment::DEFAULT_FRAGMENT_SIZE,
        // RFC 791: every IPv4 host accepts datagrams of 576 bytes.
        Some(size @ 576..=65_535) => size as usize,
        Some(size) => {
            return Err(invalid(
                f("fragment_size"),
                size,
                "must be from 576 to 65535 bytes",
            ));
        }
    };
    Ok(IkePeer {
        psk,
        cert: cert.map(|c| c.auth),
        local_id,
        remote_id,
        ike_proposals: parse_proposals(&f("ike_proposals"), raw.ike_proposals, ProtocolId::Ike)?,
        esp_proposals: parse_proposals(&f("esp_proposals"), raw.esp_proposals, ProtocolId::Esp)?,
        child_lifetime,
        ike_lifetime,
        reauth_before_expiry,
        nat_keepalive,
        fragmentation: raw.fragmentation.unwrap_or(true),
        fragment_size,
        mode: raw.mode.unwrap_or_default(),
        selectors: raw.selectors.unwrap_or_default(),
    })
}

fn validate_sa(i: usize, raw: RawSa, base_dir: &Path) -> Result<ManualSa, ConfigError> {
    let f = |name: &str| format!("peer[{i}].sa.{name}");
    let suite: Suite = raw.suite.parse().map_err(|_| {
        invalid(
            f("suite"),
            quoted(&raw.suite),
            "is not a known suite (aes128gcm16, aes256gcm16, chacha20poly1305, aes256-sha256)",
        )
    })?;
    for (name, spi) in [("spi_in", raw.spi_in), ("spi_out", raw.spi_out)] {
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.1
        //# The set of SPI values in the range 1 through 255 are reserved by the
        //# Internet Assigned Numbers Authority (IANA) for future use
        if spi < 256 {
            return Err(invalid(
                f(name),
                spi,
                "is reserved: SPIs 0 to 255 are not for SAs",
            ));
        }
    }
    let keys_in = read_keys(&f("key_in"), &raw.key_in, base_dir, suite)?;
    let keys_out = read_keys(&f("key_out"), &raw.key_out, base_dir, suite)?;
    Ok(ManualSa {
        spi_in: raw.spi_in,
        spi_out: raw.spi_out,
        suite,
        keys_in,
        keys_out,
        esn: raw.esn,
    })
}

/// Reads key material: hex digits (whitespace and a leading `0x` are
/// ignored), encryption key first, then the integrity key for non-AEAD
/// suites, as `ip xfrm` and IKEv2's KEYMAT order them.
fn read_keys(
    field: &str,
    path: &Path,
    base_dir: &Path,
    suite: Suite,
) -> Result<SaKeys, ConfigError> {
    let shown = quoted(&path.display().to_string());
    let bytes = secret::read(field, base_dir, path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid(field, &shown, "does not hold hex key material"))?;
    let digits: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        text.trim()
            .trim_start_matches("0x")
            .split_whitespace()
            .collect(),
    );
    let bytes = zeroize::Zeroizing::new(
        hex::decode(digits.as_str())
            .map_err(|_| invalid(field, &shown, "does not hold hex key material"))?,
    );
    SaKeys::from_keymat(suite, &bytes).map_err(|_| {
        invalid(
            field,
            &shown,
            format!(
                "holds {} bytes of key material; {suite} needs {}",
                bytes.len(),
                suite.encryption_key_len() + suite.integrity_key_len()
            ),
        )
    })
}

#[cfg(test)]
mod test {
    use super::*;

    const BASE: &str = r#"
[node]
name = "host-a"
underlay = "192.0.2.1"

[[network]]
name = "blue"
vni = 100
encapsulation = "vxlan"

[[network]]
name = "red"
vni = 200
encapsulation = "gue"
port = 6080
mtu = 1360

[[network.fdb]]
mac = "02:00:00:00:00:0b"
peer = "host-b"

[[peer]]
name = "host-b"
underlay = "192.0.2.2"
networks = ["blue", "red"]
policies = { red = "clear" }

[peer.sa]
spi_in = 0x1001
spi_out = 0x2001
suite = "aes128gcm16"
key_in = "b.in"
key_out = "b.out"
"#;

    fn dir_with_keys() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_secret(
            dir.path().join("b.in"),
            "0x00112233445566778899aabbccddeeff 01020304\n",
        )
        .unwrap();
        write_secret(
            dir.path().join("b.out"),
            "ffeeddccbbaa99887766554433221100a0b0c0d0",
        )
        .unwrap();
        dir
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = dir_with_keys();
        Config::parse(text, dir.path())
    }

    #[test]
    fn full_example_parses() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.node.name, "host-a");
        assert_eq!(c.node.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.esp.encapsulation, EspEncapsulation::Udp);
        assert_eq!(c.esp.port, 4500);
        assert_eq!(c.networks[0].port, 4789);
        assert_eq!(c.networks[0].tap, "ts-blue");
        assert_eq!(c.networks[0].mtu, Mtu::Auto);
        assert_eq!(c.networks[1].mtu, Mtu::Fixed(1360));
        assert_eq!(c.networks[1].fdb[0].1, "host-b");
        let p = &c.peers[0];
        assert_eq!(
            p.networks,
            vec![
                ("blue".to_owned(), PolicyKind::Require),
                ("red".to_owned(), PolicyKind::Clear)
            ]
        );
        let sa = p.sa.as_ref().unwrap();
        assert_eq!(sa.keys_in.encryption.len(), 20);
        assert!(!format!("{sa:?}").contains("0011"), "keys never print");
    }

    #[test]
    fn metrics_listen() {
        assert_eq!(parse(BASE).unwrap().node.metrics_listen, None);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        let c = parse(&with("metrics_listen = \"[::1]:9464\"")).unwrap();
        assert_eq!(c.node.metrics_listen, Some("[::1]:9464".parse().unwrap()));
        assert_invalid(
            &with("metrics_listen = \"localhost\""),
            "node.metrics_listen",
            "\"localhost\"",
        );
        assert_invalid(
            &with("metrics_listen = \"127.0.0.1:0\""),
            "node.metrics_listen",
            "\"127.0.0.1:0\"",
        );
    }

    #[test]
    fn workers() {
        assert_eq!(parse(BASE).unwrap().node.workers, 1);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        assert_eq!(parse(&with("workers = 4")).unwrap().node.workers, 4);
        assert_invalid(&with("workers = 0"), "node.workers", "0");
        assert_invalid(&with("workers = 65"), "node.workers", "65");
        let raw_esp = with("workers = 2") + "\n[esp]\nencapsulation = \"esp\"\n";
        assert_invalid(&raw_esp, "node.workers", "2");
    }

    #[test]
    fn log_level() {
        assert_eq!(parse(BASE).unwrap().node.log_level, None);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        let c = parse(&with("log_level = \"debug\"")).unwrap();
        assert_eq!(c.node.log_level.unwrap().as_str(), "debug");
        let c = parse(&with("log_level = \"info,tunsec_ike=trace\"")).unwrap();
        assert_eq!(c.node.log_level.unwrap().as_str(), "info,tunsec_ike=trace");
        assert_invalid(
            &with("log_level = \"verbose\""),
            "node.log_level",
            "\"verbose\"",
        );
        let e = parse(&with("log_level = \"verbose\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.log_level") && e.contains("debug, trace"),
            "{e}"
        );
    }

    fn assert_invalid(text: &str, field: &str, value: &str) {
        match parse(text) {
            Err(ConfigError::Invalid {
                field: f, value: v, ..
            }) => {
                assert_eq!((f.as_str(), v.as_str()), (field, value));
            }
            other => panic!("expected an error on {field}, got {other:?}"),
        }
    }

    const GATEWAY: &str = r#"
[node]
name = "host-a"
underlay = "192.0.2.1"

[gateway]
tunnel_devices = ["vxlan0"]

[[peer]]
name = "host-b"
underlay = "192.0.2.2"

[[peer.selector]]
protocol = "udp"
ports = 4789

[[peer.selector]]
protocol = "tcp"
ports = "16385-16390"

[peer.sa]
spi_in = 0x100
spi_out = 0x200
suite = "aes128gcm16"
key_in = "b.in"
key_out = "b.out"
"#;

    #[test]
    fn gateway_parses_with_defaults() {
        let c = parse(GATEWAY).unwrap();
        let g = c.gateway.as_ref().unwrap();
        assert_eq!(g.tun, gateway_defaults::TUN);
        assert_eq!(g.mode, ChildMode::Transport);
        assert_eq!(g.table, gateway_defaults::TABLE);
        assert_eq!(g.rule_priority, gateway_defaults::RULE_PRIORITY);
        assert_eq!(g.fwmark, gateway_defaults::FWMARK);
        assert_eq!(g.nft_table, "tunsec_gw");
        assert_eq!(g.guard, GuardScopeKind::All);
        assert_eq!(g.tunnel_devices, ["vxlan0"]);
        let sel = &c.peers[0].selectors;
        assert_eq!((sel[0].protocol, sel[0].ports.clone()), (17, 4789..=4789));
        assert_eq!((sel[1].protocol, sel[1].ports.clone()), (6, 16385..=16390));
        assert!(c.peers[0].networks.is_empty());
        let c = parse(&GATEWAY.replace(
            "[gateway]\n",
            "[gateway]\nmode = \"tunnel\"\ntun = \"gw0\"\ntable = 100\nrule_priority = 1000\nfwmark = 7\nnft_table = \"gw\"\n",
        ))
        .unwrap();
        let g = c.gateway.unwrap();
        assert_eq!(
            (
                g.mode,
                g.tun.as_str(),
                g.table,
                g.rule_priority,
                g.fwmark,
                g.nft_table.as_str()
            ),
            (ChildMode::Tunnel, "gw0", 100, 1000, 7, "gw")
        );
    }

    #[test]
    fn gateway_gre_selector_takes_the_whole_protocol() {
        let c =
            parse(&GATEWAY.replacen("protocol = \"udp\"\nports = 4789", "protocol = \"gre\"", 1))
                .unwrap();
        let s = &c.peers[0].selectors[0];
        assert_eq!(s.protocol, 47);
        assert_eq!(s.ports, 0..=u16::MAX);
        assert!(!s.has_ports());
    }

    #[test]
    fn gateway_errors_name_the_field_and_value() {
        let with = |from: &str, to: &str| GATEWAY.replacen(from, to, 1);
        assert_invalid(
            &with("ports = 4789", "ports = \"4000-5000\""),
            "peer[0].selector[0].ports",
            "\"4000-5000\"",
        );
        assert_invalid(
            &with("ports = 4789", "ports = 0"),
            "peer[0].selector[0].ports",
            "0",
        );
        assert_invalid(
            &with("ports = 4789", "ports = \"9-3\""),
            "peer[0].selector[0].ports",
            "\"9-3\"",
        );
        assert_invalid(
            &with("protocol = \"udp\"", "protocol = \"icmp\""),
            "peer[0].selector[0].protocol",
            "\"icmp\"",
        );
        // GRE has no ports; UDP, TCP and SCTP need them.
        assert_invalid(
            &with("protocol = \"udp\"", "protocol = \"gre\""),
            "peer[0].selector[0].ports",
            "4789",
        );
        assert_invalid(
            &with("ports = 4789\n", ""),
            "peer[0].selector[0].ports",
            "(none)",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\ntable = 254\n"),
            "gateway.table",
            "254",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nrule_priority = 32766\n"),
            "gateway.rule_priority",
            "32766",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nfwmark = 0\n"),
            "gateway.fwmark",
            "0",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\ntun = \"much-too-long-name\"\n"),
            "gateway.tun",
            "\"much-too-long-name\"",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nnft_table = \"bad-name\"\n"),
            "gateway.nft_table",
            "\"bad-name\"",
        );
        assert_invalid(
            &with(
                "underlay = \"192.0.2.2\"\n",
                "underlay = \"192.0.2.2\"\npolicy = \"prefer\"\n",
            ),
            "peer[0].policy",
            "\"prefer\"",
        );
        assert_invalid(
            &with(
                "underlay = \"192.0.2.2\"\n",
                "underlay = \"192.0.2.2\"\nnetworks = [\"blue\"]\n",
            ),
            "peer[0].networks[0]",
            "\"blue\"",
        );
        // Selectors are required in gateway mode...
        let no_selectors = GATEWAY
            .replace("[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n", "")
            .replace(
                "[[peer.selector]]\nprotocol = \"tcp\"\nports = \"16385-16390\"\n",
                "",
            );
        assert_invalid(&no_selectors, "peer[0].selector", "[]");
        // ...and refused in overlay mode, where networks are.
        let overlay = BASE.replacen(
            "[peer.sa]",
            "[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n\n[peer.sa]",
            1,
        );
        assert_invalid(&overlay, "peer[0].selector[0]", "[[peer.selector]]");
        // IKE in gateway mode: selectors and mode come from [gateway].
        let ike = |extra: &str| {
            GATEWAY.replacen(
                "[peer.sa]\nspi_in = 0x100\nspi_out = 0x200\nsuite = \"aes128gcm16\"\nkey_in = \"b.in\"\nkey_out = \"b.out\"\n",
                &format!("[peer.ike]\npsk_file = \"b.in\"\n{extra}"),
                1,
            )
        };
        let c = parse(&ike("")).unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let c = parse(&ike("").replace("[gateway]\n", "[gateway]\nmode = \"tunnel\"\n")).unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Tunnel);
        assert_invalid(
            &ike("mode = \"tunnel\"\n"),
            "peer[0].ike.mode",
            "\"tunnel\"",
        );
        assert_invalid(
            &ike("selectors = \"ports\"\n"),
            "peer[0].ike.selectors",
            "\"ports\"",
        );
        // Networks and [gateway] do not mix.
        let both = format!(
            "{GATEWAY}\n[[network]]\nname = \"blue\"\nvni = 1\nencapsulation = \"vxlan\"\n"
        );
        assert_invalid(&both, "network[0].name", "\"blue\"");
    }

    #[test]
    fn errors_name_the_field_and_value() {
        assert_invalid(
            &format!("{BASE}\n[offload]\ntap = false\ngro = true\n"),
            "offload.gro",
            "true",
        );
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 16777216"),
            "network[0].vni",
            "16777216",
        );
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"192.0.2.300\""),
            "peer[0].underlay",
            "\"192.0.2.300\"",
        );
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"192.0.2.1\""),
            "peer[0].underlay",
            "192.0.2.1",
        );
        assert_invalid(
            &BASE.replace("underlay = \"192.0.2.2\"", "underlay = \"2001:db8::2\""),
            "peer[0].underlay",
            "2001:db8::2",
        );
        assert_invalid(
            &BASE.replace("aes128gcm16", "aes128"),
            "peer[0].sa.suite",
            "\"aes128\"",
        );
        assert_invalid(
            &BASE.replace("aes128gcm16", "aes256gcm16"),
            "peer[0].sa.key_in",
            "\"b.in\"",
        );
        assert_invalid(
            &BASE.replace("key_out = \"b.out\"", "key_out = \"missing\""),
            "peer[0].sa.key_out",
            "\"missing\"",
        );
        assert_invalid(
            &BASE.replace("spi_in = 0x1001", "spi_in = 7"),
            "peer[0].sa.spi_in",
            "7",
        );
        assert_invalid(
            &BASE.replace("port = 6080\n", ""),
            "network[1].port",
            "(missing)",
        );
        assert_invalid(
            &BASE.replace("port = 6080", "port = 4500"),
            "network[1].port",
            "4500",
        );
        assert_invalid(
            &BASE.replace("mtu = 1360", "mtu = 100"),
            "network[1].mtu",
            "100",
        );
        assert_invalid(
            &BASE.replace(
                "networks = [\"blue\", \"red\"]",
                "networks = [\"blue\", \"green\"]",
            ),
            "peer[0].networks[1]",
            "\"green\"",
        );
        assert_invalid(
            &BASE.replace("red = \"clear\"", "blue = \"clear\", pink = \"clear\""),
            "peer[0].policies.pink",
            "\"pink\"",
        );
        assert_invalid(
            &BASE.replace("peer = \"host-b\"", "peer = \"host-z\""),
            "network[1].fdb[0].peer",
            "\"host-z\"",
        );
        assert_invalid(
            &BASE.replace("02:00:00:00:00:0b", "01:00:5e:00:00:01"),
            "network[1].fdb[0].mac",
            "\"01:00:5e:00:00:01\"",
        );
        assert_invalid(
            &BASE.replace("name = \"red\"", "name = \"blue\""),
            "network[1].name",
            "\"blue\"",
        );
        assert_invalid(
            &BASE
                .replace("vni = 200", "vni = 100\nport = 4789")
                .replace("\"gue\"", "\"vxlan\"")
                .replace("port = 6080\n", ""),
            "network[1].vni",
            "100",
        );
        assert_invalid(
            &BASE.replace("name = \"host-a\"", "name = \"host a\""),
            "node.name",
            "\"host a\"",
        );
        // GUE on the VXLAN port: one port, one encapsulation.
        assert_invalid(
            &BASE.replace("port = 6080", "port = 4789"),
            "network[1].port",
            "4789",
        );
        assert_invalid(
            &format!("{BASE}\n[esp]\nreplay_window = 10\n"),
            "esp.replay_window",
            "10",
        );
        assert_invalid(
            &BASE.replace(
                "vni = 100",
                "vni = 100\ntap = \"a-very-long-interface-name\"",
            ),
            "network[0].tap",
            "\"a-very-long-interface-name\"",
        );
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 100\nbridge = \"br/blue\""),
            "network[0].bridge",
            "\"br/blue\"",
        );
        assert_invalid(
            &BASE.replace("vni = 100", "vni = 100\nbridge = \"ts-blue\""),
            "network[0].bridge",
            "\"ts-blue\"",
        );
        let bridged = parse(&BASE.replace("vni = 100", "vni = 100\nbridge = \"br-blue\"")).unwrap();
        assert_eq!(bridged.networks[0].bridge.as_deref(), Some("br-blue"));
        assert_eq!(parse(BASE).unwrap().networks[0].bridge, None);
    }

    const IKE_PEER: &str = "[peer.ike]\npsk_file = \"b.psk\"\n";

    /// The base config with `ike` in place of its manual SA.
    pub(super) fn ike_config(ike: &str) -> String {
        let start = BASE.find("[peer.sa]").unwrap();
        format!("{}{ike}", &BASE[..start])
    }

    fn parse_ike(text: &str, psk: &[u8]) -> Result<Config, ConfigError> {
        let dir = dir_with_keys();
        write_secret(dir.path().join("b.psk"), psk).unwrap();
        Config::parse(text, dir.path())
    }

    #[test]
    fn ike_peer_parses_with_defaults() {
        let c = parse_ike(&ike_config(IKE_PEER), b"  correct horse battery\n").unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert!(c.peers[0].sa.is_none());
        assert_eq!(ike.psk.expose(), b"correct horse battery");
        assert_eq!(ike.local_id, Identity::Ipv4("192.0.2.1".parse().unwrap()));
        assert_eq!(
            ike.remote_id,
            Some(Identity::Ipv4("192.0.2.2".parse().unwrap()))
        );
        assert_eq!(
            ike.ike_proposals,
            tunsec_ike::proposal::defaults(ProtocolId::Ike)
        );
        assert_eq!(
            ike.esp_proposals,
            tunsec_ike::proposal::defaults(ProtocolId::Esp)
        );
        assert!(
            !format!("{ike:?}").contains("horse"),
            "the PSK never prints"
        );

        let c = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}local_id = \"a.example\"\nremote_id = \"keyid:b\"\n\
                 ike_proposals = [\"aes256gcm16-prfsha384-ecp384\", \"aes128gcm16-prfsha256-x25519\"]\n\
                 esp_proposals = [\"aes256gcm16\"]\n"
            )),
            b"k",
        )
        .unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert_eq!(ike.local_id, Identity::Fqdn(b"a.example".to_vec()));
        assert_eq!(ike.remote_id, Some(Identity::KeyId(b"b".to_vec())));
        assert_eq!(ike.ike_proposals.len(), 2);
        assert_eq!(ike.ike_proposals[1].number, 2);
        assert_eq!(ike.esp_proposals.len(), 1);
    }

    fn assert_ike_invalid(text: &str, psk: &[u8], field: &str, value: &str) {
        match parse_ike(text, psk) {
            Err(ConfigError::Invalid {
                field: f, value: v, ..
            }) => assert_eq!((f.as_str(), v.as_str()), (field, value)),
            other => panic!("expected an error on {field}, got {other:?}"),
        }
    }

    #[test]
    fn ike_errors_name_the_field() {
        // Manual keys and IKE together.
        assert_ike_invalid(
            &format!("{BASE}{IKE_PEER}"),
            b"k",
            "peer[0].ike",
            "[peer.ike]",
        );
        assert_ike_invalid(
            &ike_config(IKE_PEER),
            b" \n",
            "peer[0].ike.psk_file",
            "\"b.psk\"",
        );
        assert_ike_invalid(
            &ike_config("[peer.ike]\npsk_file = \"nope.psk\"\n"),
            b"k",
            "peer[0].ike.psk_file",
            "\"nope.psk\"",
        );
        let err = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}ike_proposals = [\"aes256gcm16-prfsha384-ecp999\"]\n"
            )),
            b"k",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("peer[0].ike.ike_proposals[0]"), "{text}");
        assert!(text.contains("ecp999"), "{text}");
        let err = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}esp_proposals = [\"aes128gcm16\", \"rot13\"]\n"
            )),
            b"k",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("peer[0].ike.esp_proposals[1]"), "{text}");
        assert!(text.contains("rot13"), "{text}");
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}esp_proposals = []\n")),
            b"k",
            "peer[0].ike.esp_proposals",
            "[]",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}remote_id = \"two words\"\n")),
            b"k",
            "peer[0].ike.remote_id",
            "\"two words\"",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}nat_keepalive = 0\n")),
            b"k",
            "peer[0].ike.nat_keepalive",
            "0",
        );
        // Only for certificates, and at least a minute.
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}reauth_before_expiry = 86400\n")),
            b"k",
            "peer[0].ike.reauth_before_expiry",
            "86400",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}reauth_before_expiry = 5\n")),
            b"k",
            "peer[0].ike.reauth_before_expiry",
            "5",
        );
        for field in ["child_lifetime", "ike_lifetime"] {
            assert_ike_invalid(
                &ike_config(&format!("{IKE_PEER}{field} = 1\n")),
                b"k",
                &format!("peer[0].ike.{field}"),
                "1",
            );
        }
        let ike = parse_ike(
            &ike_config(&format!("{IKE_PEER}ike_lifetime = 3600\n")),
            b"k",
        )
        .unwrap()
        .peers[0]
            .ike
            .clone()
            .unwrap();
        assert_eq!(ike.ike_lifetime, Some(std::time::Duration::from_secs(3600)));
        // Keys are never inline.
        let err =
            parse_ike(&ike_config(&format!("{IKE_PEER}psk = \"secret\"\n")), b"k").unwrap_err();
        assert!(err.to_string().contains("psk"), "{err}");
    }

    /// IKE fragmentation (RFC 7383): on at 1280 bytes by default; off, or
    /// another size from 576 to 65535.
    #[test]
    fn ike_fragmentation_parses() {
        let ike = |extra: &str| {
            parse_ike(&ike_config(&format!("{IKE_PEER}{extra}")), b"k")
                .unwrap()
                .peers[0]
                .ike
                .clone()
                .unwrap()
        };
        let d = ike("");
        assert!(d.fragmentation);
        assert_eq!(d.fragment_size, 1280);
        let c = ike("fragmentation = false
fragment_size = 576
");
        assert!(!c.fragmentation);
        assert_eq!(c.fragment_size, 576);
        for bad in ["575", "65536", "0"] {
            assert_ike_invalid(
                &ike_config(&format!(
                    "{IKE_PEER}fragment_size = {bad}
"
                )),
                b"k",
                "peer[0].ike.fragment_size",
                bad,
            );
        }
    }

    #[test]
    fn ike_mode_parses() {
        let c = parse_ike(&ike_config(IKE_PEER), b"k").unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let c = parse_ike(&ike_config(&format!("{IKE_PEER}mode = \"tunnel\"\n")), b"k").unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Tunnel);
        let c = parse_ike(
            &ike_config(&format!("{IKE_PEER}mode = \"transport\"\n")),
            b"k",
        )
        .unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let err = parse_ike(&ike_config(&format!("{IKE_PEER}mode = \"beet\"\n")), b"k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("beet"), "{err}");
    }

    #[test]
    fn ike_selectors_parse() {
        let c = parse_ike(&ike_config(IKE_PEER), b"k").unwrap();
        let selectors = |c: &Config| c.peers[0].ike.as_ref().unwrap().selectors;
        assert_eq!(selectors(&c), ChildSelectors::Host);
        for (text, want) in [
            ("host", ChildSelectors::Host),
            ("ports", ChildSelectors::Ports),
        ] {
            let c = parse_ike(
                &ike_config(&format!("{IKE_PEER}selectors = \"{text}\"\n")),
                b"k",
            )
            .unwrap();
            assert_eq!(selectors(&c), want);
        }
        let err = parse_ike(
            &ike_config(&format!("{IKE_PEER}selectors = \"any\"\n")),
            b"k",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("selectors") && err.contains("any"), "{err}");
    }

    /// Parses with a fake environment that holds `vars`.
    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = dir_with_keys();
        write_secret(dir.path().join("b.psk"), b"from the file").unwrap();
        let env = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        };
        Config::parse_with_env(text, dir.path(), &env)
    }

    fn assert_env_invalid(text: &str, vars: &[(&str, &str)], field: &str, value: &str, why: &str) {
        match parse_env(text, vars) {
            Err(ConfigError::Invalid {
                field: f,
                value: v,
                reason,
            }) => {
                assert_eq!((f.as_str(), v.as_str()), (field, value));
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("expected an error on {field}, got {other:?}"),
        }
    }

    #[test]
    fn psk_from_the_environment() {
        let env_peer = ike_config("[peer.ike]\npsk_env = \"TS_PSK_B\"\n");
        let c = parse_env(&env_peer, &[("TS_PSK_B", "  battery staple\n")]).unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert_eq!(ike.psk.expose(), b"battery staple");
        assert!(!format!("{ike:?}").contains("staple"));
        // The file still works without the variable.
        let c = parse_env(&ike_config(IKE_PEER), &[]).unwrap();
        assert_eq!(
            c.peers[0].ike.as_ref().unwrap().psk.expose(),
            b"from the file"
        );
        // Not both.
        assert_env_invalid(
            &ike_config(&format!("{IKE_PEER}psk_env = \"TS_PSK_B\"\n")),
            &[("TS_PSK_B", "k")],
            "peer[0].ike.psk_env",
            "\"TS_PSK_B\"",
            "cannot be combined with psk_file",
        );
        // Not neither.
        assert_env_invalid(
            &ike_config("[peer.ike]\nmode = \"tunnel\"\n"),
            &[],
            "peer[0].ike.psk_file",
            "(missing)",
            "psk_env",
        );
        // Unset, empty, or blank.
        assert_env_invalid(
            &env_peer,
            &[("OTHER", "k")],
            "peer[0].ike.psk_env",
            "\"TS_PSK_B\"",
            "not set",
        );
        for blank in ["", " \n\t"] {
            assert_env_invalid(
                &env_peer,
                &[("TS_PSK_B", blank)],
                "peer[0].ike.psk_env",
                "\"TS_PSK_B\"",
                "empty",
            );
        }
        // Not a variable name.
        for name in ["", "A=B"] {
            assert_env_invalid(
                &ike_config(&format!("[peer.ike]\npsk_env = \"{name}\"\n")),
                &[],
                "peer[0].ike.psk_env",
                &format!("{name:?}"),
                "not an environment variable name",
            );
        }
    }

    /// Secret files (`psk_file`, `key_in`, `key_out`) that every user can
    /// read are refused, with the field, the file, its mode and the fix;
    /// the same files with mode 0600 load.
    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = dir_with_keys();
        write_secret(dir.path().join("b.psk"), "correct horse").unwrap();
        let ike = ike_config(IKE_PEER);
        for (text, file, field) in [
            (BASE, "b.in", "peer[0].sa.key_in"),
            (BASE, "b.out", "peer[0].sa.key_out"),
            (ike.as_str(), "b.psk", "peer[0].ike.psk_file"),
        ] {
            let path = dir.path().join(file);
            chmod(&path, 0o644);
            let err = Config::parse(text, dir.path()).unwrap_err();
            let ConfigError::Invalid {
                field: f,
                value,
                reason,
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(
                (f.as_str(), value.as_str()),
                (field, format!("{file:?}").as_str())
            );
            for part in [
                "readable by every user",
                "mode 0644",
                &format!("chmod 600 {}", path.display()),
            ] {
                assert!(reason.contains(part), "{field}: {reason}");
            }
            assert!(!err.to_string().contains("horse"), "{err}");
            chmod(&path, 0o600);
            Config::parse(text, dir.path()).unwrap();
        }
    }

    #[test]
    fn syntax_and_unknown_keys() {
        let err = parse(&BASE.replace("vni = 100", "vni = 100\ncolour = \"blue\"")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = parse(&BASE.replace("vni = 100", "vni = \"one hundred\"")).unwrap_err();
        assert!(err.to_string().contains("vni"), "{err}");
        let err = parse(&BASE.replace("encapsulation = \"vxlan\"", "encapsulation = \"nvgre\""))
            .unwrap_err();
        assert!(err.to_string().contains("nvgre"), "{err}");
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:00:00:0b"),
            Some(EthernetAddress([2, 0, 0, 0, 0, 0x0b]))
        );
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0b:0c"), None);
        assert_eq!(parse_mac("2:00:00:00:00:0b"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0b"), None);
    }
}
