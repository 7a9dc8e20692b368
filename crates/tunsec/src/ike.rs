//! The IKE driver: a plain thread that owns the IKE socket (UDP port 500
//! on the underlay address) and the sans-IO [`Endpoint`] of
//! `tunsec-ike`, feeds it datagrams and the clock, sends what it asks to
//! send, and turns its events into SAs in the data path's tables. IKE
//! that arrives on the ESP-in-UDP port behind the non-ESP marker comes
//! from the receive worker through the data plane's inbox
//! ([`SaStore::ike_inbox`]), and is answered from the ESP socket with the
//! marker.
//!
//! Who initiates: of two peers, the one with the lower underlay address
//! starts the IKE SA at start-up (and again after a failure, with
//! back-off). The other responds, and initiates only if nothing came from
//! the peer within `START_GRACE` of its own start: that is how a restarted
//! responder brings the tunnel back at once instead of waiting for the
//! survivor's liveness check to fail. When the two attempts cross (each
//! side's IKE_SA_INIT reaches the other while its own is unanswered), both
//! keep the one with the lower nonce, so they converge on one IKE SA.
//!
//! Restarts (RFC 7296 section 2.4): every IKE_AUTH we send carries
//! INITIAL_CONTACT, since we never hold two IKE SAs with one peer. A new
//! IKE SA from a peer with which we have an established one is kept
//! beside it until it is authenticated; then the old one, and all its
//! Child SAs, go (the peer restarted and lost them).
//!
//! NAT traversal (RFC 7296 section 2.23): with `[esp] encapsulation =
//! "udp"` the IKE SAs do NAT detection and force UDP encapsulation (our
//! data path sends ESP in UDP, so the peer must too: a peer such as
//! strongSwan then encapsulates as if behind a NAT); IKE moves to the
//! ESP-in-UDP port after IKE_SA_INIT, behind the non-ESP marker. A host
//! that finds itself behind a NAT sends a NAT keepalive every `nat_keepalive` (20 s; RFC
//! 3948 section 4). With raw ESP there is no NAT traversal.
//!
//! SA installation is read-copy-update, like every change of the tables:
//! the new inbound SA is published first, then the outbound one, so the
//! peer's first ESP packet never meets a host that cannot open it. Until a
//! Child SA is up, and as soon as it is gone, the peer has no outbound SA
//! and a `require` policy drops its traffic: fail closed.
//!
//! Child SA rekeys are make before break (RFC 7296 section 2.8): the new
//! inbound SA is published at once; outbound switches to the new SA when
//! the old pair is deleted, or after `SWITCH_WAIT`; the old inbound SA
//! keeps taking packets in flight for `INBOUND_GRACE` more.
//! Re-authentication (a new IKE SA beside the old one) is in `reload`.

mod hint;
mod reload;
mod renewal;
pub use reload::{ReloadPlan, plan as reload_plan};
pub(crate) use renewal::CertRenewal;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tunsec_datapath::io::socket::{Batch, DatagramSocket, Poller};
use tunsec_datapath::sa_store::{InboundEntry, SaStore, SaTables, SharedSa};
use tunsec_datapath::worker::Sockets;
use tunsec_esp::{Mode, Sa};
use tunsec_ike::message::TrafficSelector;
use tunsec_ike::sa::{
    ChildSaParams, Config as IkeConfig, DatagramEvent, Endpoint, Event, Incoming, Random, SaHandle,
    SystemRandom, ts,
};
use tunsec_wire::natt::NON_ESP_MARKER;

use crate::config::{ChildMode, ChildSelectors, Config, EspEncapsulation, IkePeer, PolicyKind};
use crate::status::{IkeStatus, nat_summary};
use tunsec_datapath::gateway::GatewaySelector;

/// The IKE port (RFC 7296 section 2).
pub const IKE_PORT: u16 = 500;
/// The first wait before an initiator tries again after a failure.
const RETRY_MIN: Duration = Duration::from_secs(2);
/// The longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often an established IKE SA checks that the peer is alive (an
/// empty INFORMATIONAL; after every retransmission unanswered, about 15 s,
/// the peer is dead and its SAs go).
const LIVENESS: Duration = Duration::from_secs(15);
/// How often the loop wakes without a timer, to check for shutdown.
const IDLE: Duration = Duration::from_millis(100);
/// After a rekey, how long an old inbound SA keeps accepting packets that
/// were already on their way when the old pair was deleted.
const INBOUND_GRACE: Duration = Duration::from_secs(2);
/// After a rekey, the longest the outbound SA waits for the old pair's
/// deletion before it switches to the new SA anyway.
const SWITCH_WAIT: Duration = Duration::from_secs(2);
/// The largest IKE datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// How long the designated responder waits at start-up for the peer to
/// initiate before it initiates itself.
const START_GRACE: Duration = Duration::from_secs(1);
/// A NAT keepalive: one byte, 0xFF (RFC 3948 section 2.3).
const KEEPALIVE_PACKET: [u8; 1] = [0xff];

/// The IKE state of every peer with `[peer.ike]`, by peer index, for
/// `tunsec status`.
pub type IkeStates = Arc<Mutex<HashMap<usize, IkeStatus>>>;

/// What the control socket asks of the IKE driver (`tunsec down PEER`,
/// `tunsec up PEER`), by peer index.
#[derive(Debug, Clone)]
pub enum IkeCommand {
    /// Delete the peer's IKE SA (and its Child SAs) and stay down: no new
    /// attempt until `Up`. Its `require` traffic is dropped meanwhile.
    Down(usize),
    /// Bring the peer up: initiate now (whichever side we are).
    Up(usize),
    /// Rekey the peer's Child SA now (RFC 7296 section 2.8), make before
    /// break.
    Rekey(usize),
    /// Rekey the peer's IKE SA now (RFC 7296 section 2.18).
    RekeyIke(usize),
    /// Re-authenticate the peer now: a new IKE SA with the current
    /// credentials beside the established one, which it replaces once up
    /// (RFC 7296 section 2.8.3).
    Reauth(usize),
    /// New `[peer.ike]` settings (credentials) for these peers, by index,
    /// from `tunsec reload` or SIGHUP: new IKE SAs use them; established
    /// ones are re-authenticated at their next IKE SA rekey. The driver
    /// answers on the channel once it has taken them up.
    Reload(Vec<(usize, Box<IkePeer>)>, mpsc::Sender<()>),
    /// The keys of every IKE SA, and of the rekeyed outbound ESP SAs
    /// that wait for their switch (they are in no table yet), for
    /// `tunsec keys export`. The driver answers on the channel.
    ExportKeys(mpsc::Sender<DriverKeys>),
}

/// The IKE driver's answer to [`IkeCommand::ExportKeys`].
#[derive(Debug, Default)]
pub struct DriverKeys {
    /// Every IKE SA with keys: each peer's current one and a new one
    /// beside it.
    pub ike: Vec<crate::keys::IkeSaExport>,
    /// The rekeyed outbound SAs not yet switched to.
    pub esp: Vec<crate::keys::EspSaExport>,
}

/// The sending end of the IKE driver's commands. Each command also wakes
/// the driver's poll (through the inbox's eventfd), so it is carried out
/// at once rather than at the driver's next timer.
#[derive(Clone)]
pub struct IkeCommands {
    tx: mpsc::Sender<IkeCommand>,
    shared: Arc<dyn SaStore>,
}

impl IkeCommands {
    /// A command channel for the driver of `shared`'s tables: the sender,
    /// and the receiver to hand to [`IkeDriver::new`].
    pub fn channel(shared: Arc<dyn SaStore>) -> (Self, mpsc::Receiver<IkeCommand>) {
        let (tx, rx) = mpsc::channel();
        (Self { tx, shared }, rx)
    }

    /// Sends `command` and wakes the driver; an error if it is gone.
    fn send(&self, command: IkeCommand) -> Result<(), mpsc::SendError<IkeCommand>> {
        self.tx.send(command)?;
        self.shared.ike_inbox().wake();
        Ok(())
    }
}

/// How long `tunsec reload` waits for the IKE driver to take up new
/// settings (it looks at its commands every few milliseconds).
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Hands `command` for the peer named `peer` to the IKE driver over
/// `commands`, as the control socket's `down`, `up`, `rekey` and `reauth`
/// ask (both daemons, overlay and gateway mode): an error names a peer
/// that is not configured or has manual keys, or a driver that is gone.
pub(crate) fn send_command(
    config: &Config,
    commands: &IkeCommands,
    peer: &str,
    command: fn(usize) -> IkeCommand,
) -> crate::control::Response {
    use crate::control::Response;
    let Some(index) = config.peers.iter().position(|p| p.name == peer) else {
        return Response::Error {
            message: format!("peer: {peer:?} is not a configured peer"),
        };
    };
    if config.peers[index].ike.is_none() {
        return Response::Error {
            message: format!("peer: {peer:?} has no [peer.ike]: its keys are manual"),
        };
    }
    let command = command(index);
    let message = match command {
        IkeCommand::Down(_) => format!("peer {peer:?} going down"),
        IkeCommand::Up(_) => format!("peer {peer:?} coming up"),
        IkeCommand::Rekey(_) => format!("peer {peer:?}: rekeying its Child SAs"),
        IkeCommand::RekeyIke(_) => format!("peer {peer:?}: rekeying the IKE SA"),
        IkeCommand::Reauth(_) => format!("peer {peer:?}: re-authenticating (a new IKE SA)"),
        IkeCommand::Reload(..) => "reloading".to_owned(),
        IkeCommand::ExportKeys(_) => "exporting keys".to_owned(),
    };
    if commands.send(command).is_err() {
        return Response::Error {
            message: "the IKE driver is not running".to_owned(),
        };
    }
    Response::Done { message }
}

/// How long `tunsec keys export` waits for the IKE driver's keys.
const EXPORT_WAIT: Duration = Duration::from_secs(5);

/// Asks the IKE driver for the keys of its IKE SAs (and of the rekeyed
/// outbound SAs it holds), for `tunsec keys export`. Without a driver (no
/// peer has `[peer.ike]`) there are none; an error if the driver does not
/// answer within `EXPORT_WAIT`.
pub(crate) fn export_keys(commands: &IkeCommands) -> Result<DriverKeys, String> {
    let (tx, rx) = mpsc::channel();
    if commands.send(IkeCommand::ExportKeys(tx)).is_err() {
        // No driver: its receiver is gone with it.
        return Ok(DriverKeys::default());
    }
    rx.recv_timeout(EXPORT_WAIT).map_err(|_| {
        format!(
            "keys export: the IKE driver did not answer within {} s",
            EXPORT_WAIT.as_secs()
        )
    })
}

/// Reads the configuration file at `path` again and hands the IKE driver
/// the `[peer.ike]` settings that changed against `running` (credentials:
/// certificate, key, CA, CRL, PSK, identities; see [`reload_plan`]), as
/// `tunsec reload` and SIGHUP ask (both daemons). A configuration that
/// does not load changes nothing, and the answer names what is wrong.
pub(crate) fn reload(
    running: &Config,
    path: Option<&std::path::Path>,
    commands: &IkeCommands,
) -> crate::control::Response {
    use crate::control::Response;
    match reload_from(running, path, commands) {
        Ok(done) => Response::Done {
            message: done.message,
        },
        Err(message) => Response::Error { message },
    }
}

/// What [`reload_from`] did.
pub(crate) struct Reloaded {
    /// The configuration as the file has it now.
    pub(crate) config: Config,
    /// What `tunsec reload` answers.
    pub(crate) message: String,
}

/// [`reload`], with the new configuration and the peers it updated.
pub(crate) fn reload_from(
    running: &Config,
    path: Option<&std::path::Path>,
    commands: &IkeCommands,
) -> Result<Reloaded, String> {
    let _reloading = crate::systemd::reloading();
    let Some(path) = path else {
        return Err("reload: tunsecd was started without a configuration file".to_owned());
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("reload: {}: {e}; nothing changed", path.display());
            return Err(format!("reload: {}: {e}; nothing changed", path.display()));
        }
    };
    let plan = reload_plan(running, &new);
    for note in &plan.ignored {
        tracing::warn!("reload: {note}");
    }
    let names: Vec<String> = plan
        .updates
        .iter()
        .map(|(i, _)| new.peers[*i].name.clone())
        .collect();
    if !plan.updates.is_empty() {
        // Answer only once the driver has the new settings, so that an
        // IKE SA that the peer starts right after (`tunsec reauth` there)
        // meets them.
        let (done, taken) = mpsc::channel();
        if commands
            .send(IkeCommand::Reload(plan.updates, done))
            .is_err()
        {
            return Err("the IKE driver is not running".to_owned());
        }
        if taken.recv_timeout(RELOAD_WAIT).is_err() {
            return Err(format!(
                "reload: the IKE driver did not take up the new settings within {} s",
                RELOAD_WAIT.as_secs()
            ));
        }
    }
    tracing::info!(updated = ?names, unchanged = ?plan.unchanged, "reloaded {}", path.display());
    let mut message = if names.is_empty() {
        "reloaded: no IKE credentials changed".to_owned()
    } else {
        format!(
            "reloaded: new credentials for {} (new IKE SAs use them; established ones are re-authenticated at their next rekey, or now with tunsec reauth PEER)",
            names.join(", ")
        )
    };
    for note in plan.ignored {
        message.push_str(&format!("; ignored: {note}"));
    }
    Ok(Reloaded {
        config: new,
        message,
    })
}

/// The tunnel ports of a peer's `networks` (by name), sorted, each once.
fn tunnel_ports(config: &Config, networks: &[(String, PolicyKind)]) -> Vec<u16> {
    let mut ports: Vec<u16> = networks
        .iter()
        .filter_map(|(name, _)| config.networks.iter().find(|n| &n.name == name))
        .map(|n| n.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// One Child SA's selectors: ours and the peer's.
type ChildTs = (Vec<TrafficSelector>, Vec<TrafficSelector>);

/// The Child SAs' selectors between the underlay addresses `local` and
/// `remote`: the first Child SA's (in IKE_AUTH), and those of the
/// additional ones (by CREATE_CHILD_SA, RFC 7296 section 1.3.1). As
/// responder, the peer's offers are narrowed to all of them together.
///
/// `Host`: one Child SA for UDP, any port, between the two hosts. `Ports`:
/// one Child SA per tunnel port P, `local[udp/P] <-> remote[udp/P]`, so
/// that each carries exactly its network's datagrams (a single Child SA
/// with several ports would admit a datagram from one tunnel port to
/// another: RFC 7296 section 2.9 makes TSi and TSr sets, and the SA covers
/// any entry of one with any entry of the other).
fn selectors(
    local: IpAddr,
    remote: IpAddr,
    kind: ChildSelectors,
    ports: &[u16],
) -> (ChildTs, Vec<ChildTs>) {
    let host = (
        vec![ts::host(local, 17, 0, u16::MAX)],
        vec![ts::host(remote, 17, 0, u16::MAX)],
    );
    match (kind, ports) {
        (ChildSelectors::Host, _) | (ChildSelectors::Ports, []) => (host, Vec::new()),
        (ChildSelectors::Ports, [first, rest @ ..]) => {
            let pair = |p: u16| {
                (
                    vec![ts::host(local, 17, p, p)],
                    vec![ts::host(remote, 17, p, p)],
                )
            };
            (pair(*first), rest.iter().map(|&p| pair(p)).collect())
        }
    }
}

/// The SPI of an installed SA.
fn spi_of(sa: &SharedSa) -> Option<u32> {
    sa.lock().ok().map(|sa| sa.spi())
}

/// Gateway mode's TSi and TSr: for each selector (a protocol and a port
/// range), `local[proto/range]` and `remote[proto/range]` (RFC 7296
/// section 2.9), as strongSwan writes `host/32[udp/4789]`. Like
/// `selectors = "ports"` in overlay mode, the SA then covers traffic
/// between the selector ports on both sides; a kernel tunnel whose source
/// port is another (a vxlan device's per-flow port) still goes through
/// the gateway's own selectors, which match either port, so tunsec
/// peers interoperate, while a strict peer (strongSwan) needs the
/// tunnel's source port pinned (`srcport 4789 4790` on a vxlan device).
fn gateway_selectors(
    local: IpAddr,
    remote: IpAddr,
    sel: &[GatewaySelector],
) -> (Vec<TrafficSelector>, Vec<TrafficSelector>) {
    let side = |addr| {
        sel.iter()
            .map(|s| ts::host(addr, s.protocol, *s.ports.start(), *s.ports.end()))
            .collect()
    };
    (side(local), side(remote))
}

/// One peer's IKE bookkeeping.
struct PeerIke {
    /// The index in the config's (and the tables') peers.
    index: usize,
    name: String,
    addr: SocketAddr,
    ike: IkePeer,
    /// The tunnel ports of the networks the peer carries, sorted, each
    /// once: what `selectors = "ports"` narrows the Child SA to.
    tunnel_ports: Vec<u16>,
    /// Gateway mode: the peer's `[[peer.selector]]`s, which are then the
    /// Child SA's traffic selectors.
    gateway_selectors: Vec<GatewaySelector>,
    /// We initiate (our underlay address is the lower one).
    initiator: bool,
    /// The current IKE SA, if any.
    handle: Option<SaHandle>,
    /// A new IKE SA the peer started while `handle` is established (the
    /// peer restarted): it replaces `handle` once authenticated.
    incoming: Option<SaHandle>,
    /// When to send the next NAT keepalive (we are behind a NAT).
    keepalive_at: Option<Instant>,
    /// When an initiator tries again.
    retry_at: Option<Instant>,
    retry_wait: Duration,
    /// The last failure, for status.
    last_error: Option<String>,
    /// Child SAs brought up so far.
    child_sas: u64,
    /// IKE SA rekeys so far.
    ike_rekeys: u64,
    /// When to check that the peer is alive.
    liveness_at: Option<Instant>,
    /// Taken down by `tunsec down`: no attempts, and new IKE SAs from the
    /// peer are refused.
    admin_down: bool,
    /// After rekeys: the new outbound SAs, each waiting for its old pair
    /// (whose outbound SPI is kept) to be deleted, or for a deadline.
    pending_outbound: Vec<PendingOutbound>,
    /// The current IKE SA came up and its first Child SA is not installed
    /// yet: that one replaces every SA of the peer; later ones join.
    fresh_ike_sa: bool,
    /// Old inbound SAs kept for in-flight packets, until their deadline.
    expiring_inbound: Vec<(u32, Instant)>,
    /// Reloaded credentials: re-authenticate after the next IKE SA rekey.
    reauth_on_rekey: bool,
    /// `incoming` is our own re-authentication (`ike/reload.rs`).
    reauthing: bool,
    /// A new IKE SA replaced the old one without INITIAL_CONTACT (a
    /// re-authentication, ours if `true`): its Child SA is installed make
    /// before break.
    replacing: Option<bool>,
    /// A re-authentication under way: its Child SAs replace the old IKE
    /// SA's ones (`ike/reload.rs`).
    replacement: Option<reload::Replacement>,
}

/// A rekeyed outbound SA not yet switched to.
struct PendingOutbound {
    /// The SPI of the outbound SA it replaces.
    old_spi: u32,
    /// Its own SPI.
    spi: u32,
    sa: Sa,
    deadline: Instant,
}

/// The IKE driver thread's state.
pub struct IkeDriver {
    /// The data plane's tables (overlay or gateway mode).
    shared: Arc<dyn SaStore>,
    socket: DatagramSocket,
    /// The data path's sockets: replies to a peer that spoke on the
    /// ESP-in-UDP port leave from that port, behind the non-ESP marker.
    sockets: Arc<Sockets>,
    /// The ESP-in-UDP port, when ESP travels in UDP.
    esp_port: Option<u16>,
    endpoint: Endpoint,
    peers: Vec<PeerIke>,
    local: IpAddr,
    replay_window: u32,
    states: IkeStates,
    commands: mpsc::Receiver<IkeCommand>,
    /// Gateway mode: the ESP mode every Child SA must have (its tables
    /// have one mode for all peers).
    gateway_mode: Option<ChildMode>,
}

impl IkeDriver {
    /// The driver for `config`'s IKE peers, or `None` if no peer uses
    /// IKE (then no socket is opened).
    pub fn new(
        config: &Config,
        shared: Arc<dyn SaStore>,
        sockets: Arc<Sockets>,
        states: IkeStates,
        commands: mpsc::Receiver<IkeCommand>,
    ) -> anyhow::Result<Option<Self>> {
        let local = config.node.underlay;
        let peers: Vec<PeerIke> = config
            .peers
            .iter()
            .enumerate()
            .filter_map(|(index, p)| {
                p.ike.as_ref().map(|ike| PeerIke {
                    index,
                    name: p.name.clone(),
                    addr: SocketAddr::new(p.underlay, IKE_PORT),
                    ike: ike.clone(),
                    tunnel_ports: tunnel_ports(config, &p.networks),
                    gateway_selectors: p.selectors.clone(),
                    initiator: local < p.underlay,
                    handle: None,
                    incoming: None,
                    keepalive_at: None,
                    // The designated responder initiates too if the peer
                    // stays silent (it may hold an IKE SA from before our
                    // restart).
                    retry_at: Some(if local < p.underlay {
                        Instant::now()
                    } else {
                        Instant::now() + START_GRACE
                    }),
                    retry_wait: RETRY_MIN,
                    last_error: None,
                    child_sas: 0,
                    ike_rekeys: 0,
                    liveness_at: None,
                    admin_down: false,
                    pending_outbound: Vec::new(),
                    fresh_ike_sa: false,
                    expiring_inbound: Vec::new(),
                    reauth_on_rekey: false,
                    reauthing: false,
                    replacing: None,
                    replacement: None,
                })
            })
            .collect();
        if peers.is_empty() {
            return Ok(None);
        }
        let socket = DatagramSocket::udp(SocketAddr::new(local, IKE_PORT))
            .with_context(|| format!("IKE: cannot bind {local} port {IKE_PORT}"))?;
        // From now on IKE on the ESP-in-UDP port comes to us.
        shared
            .ike_inbox()
            .open()
            .context("IKE: cannot make the inbox's eventfd")?;
        let mut driver = Self {
            shared,
            socket,
            sockets,
            esp_port: (config.esp.encapsulation == EspEncapsulation::Udp)
                .then_some(config.esp.port),
            endpoint: Endpoint::new(),
            peers,
            local,
            replay_window: config.esp.replay_window,
            states,
            commands,
            gateway_mode: None,
        };
        driver.publish_status();
        Ok(Some(driver))
    }

    /// Gateway mode: every Child SA must be in `mode` (one installed in
    /// the other is refused, and counted in the peer's last error), and
    /// the IKE socket carries the steering's bypass `mark`.
    pub fn for_gateway(mut self, mode: ChildMode, mark: u32) -> anyhow::Result<Self> {
        self.gateway_mode = Some(mode);
        self.socket
            .set_mark(mark)
            .with_context(|| format!("gateway.fwmark: cannot mark the IKE socket {mark:#x}"))?;
        Ok(self)
    }

    fn ike_config(local: IpAddr, peer: &PeerIke, esp_port: Option<u16>) -> IkeConfig {
        // The overlay's tunnel datagrams between the two underlay
        // addresses (`selectors`), in transport mode unless the config
        // asks for tunnel mode. RFC 7296 section 1.3.1: an initiator asks
        // for transport mode with USE_TRANSPORT_MODE; a responder that
        // allows it follows the request, and one without it answers in
        // tunnel mode.
        let ((local_ts, remote_ts), additional) = if peer.gateway_selectors.is_empty() {
            selectors(
                local,
                peer.addr.ip(),
                peer.ike.selectors,
                &peer.tunnel_ports,
            )
        } else {
            (
                gateway_selectors(local, peer.addr.ip(), &peer.gateway_selectors),
                Vec::new(),
            )
        };
        let mut c = IkeConfig::new(
            peer.ike.local_id.clone(),
            peer.ike.remote_id.clone(),
            peer.ike.psk.clone(),
        )
        .with_selectors(local_ts, remote_ts);
        c.additional_children = additional;
        c.cert = peer.ike.cert.clone();
        c.ike_proposals = peer.ike.ike_proposals.clone();
        c.esp_proposals = peer.ike.esp_proposals.clone();
        c.transport_mode = peer.ike.mode == ChildMode::Transport;
        c.child_lifetime = peer.ike.child_lifetime;
        c.ike_lifetime = peer.ike.ike_lifetime;
        c.fragmentation = peer.ike.fragmentation;
        c.fragment_size = peer.ike.fragment_size;
        // Our data path sends ESP in UDP: NAT detection, and forced
        // encapsulation so that the peer sends ESP in UDP too. With raw
        // ESP, no NAT traversal (IKE could not move to a port we serve).
        if let Some(port) = esp_port {
            c.local_addr = Some(SocketAddr::new(local, IKE_PORT));
            c.natt_port = port;
            c.force_udp_encap = true;
        }
        // We hold at most one IKE SA per peer, and none when we initiate.
        c.initial_contact = true;
        c
    }

    /// Runs until `shared.stop` is set, then deletes every IKE SA.
    pub fn run(mut self) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        // The inbox of IKE from the ESP-in-UDP port: readable when the
        // receive worker queued a message (opened in `new`).
        let inbox = match self.shared.ike_inbox().open() {
            Ok(wake) => std::os::fd::AsRawFd::as_raw_fd(&wake),
            Err(e) => {
                tracing::error!("IKE: the inbox has no eventfd: {e}");
                return;
            }
        };
        let mut poller = Poller::new(&[fd, inbox]);
        let mut batch = Batch::new(8);
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
        let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); 8];
        while !self.shared.stopping() {
            let now = Instant::now();
            let next = [
                self.endpoint.poll_timeout(),
                self.peers.iter().filter_map(|p| p.retry_at).min(),
                self.peers.iter().filter_map(|p| p.liveness_at).min(),
                self.peers.iter().filter_map(|p| p.keepalive_at).min(),
                self.peers
                    .iter()
                    .flat_map(|p| p.pending_outbound.iter().map(|o| o.deadline))
                    .min(),
                self.peers
                    .iter()
                    .flat_map(|p| p.expiring_inbound.iter().map(|&(_, t)| t))
                    .min(),
                self.peers
                    .iter()
                    .filter_map(|p| p.replacement.as_ref().map(reload::Replacement::until))
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(IDLE)
                .min(IDLE);
            if poller.wait(wait.as_millis() as i32).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            loop {
                let n = batch.recv(&self.socket, &mut bufs, &mut meta).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for (buf, &(len, src)) in bufs.iter().zip(&meta[..n]) {
                    self.handle_datagram(now, src, &buf[..len]);
                }
            }
            // IKE that came on the ESP-in-UDP port: the receive worker
            // queued it and woke the poll. Cleared before popping, so a
            // message queued meanwhile wakes the next poll.
            if poller.is_ready(1) {
                self.shared.ike_inbox().clear_wake();
            }
            while let Some((src, message)) = self.shared.ike_inbox().pop() {
                self.handle_datagram(Instant::now(), src, &message);
            }
            while let Ok(command) = self.commands.try_recv() {
                self.command(Instant::now(), command);
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.start_due(now);
            self.check_liveness(now);
            self.send_keepalives(now);
            self.rekey_housekeeping(now);
            self.drain(&mut batch);
        }
        self.shutdown(&mut batch);
    }

    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        let incoming = match self.endpoint.handle_datagram(now, src, bytes) {
            DatagramEvent::NewSa(incoming) => incoming,
            DatagramEvent::Refused => {
                tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
                return;
            }
            DatagramEvent::Sa(_) | DatagramEvent::Dropped => return,
        };
        let Some(i) = self.accepts(&incoming) else {
            self.endpoint.refuse(incoming);
            tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
            return;
        };
        let config = Self::ike_config(self.local, &self.peers[i], self.esp_port);
        let rng: Box<dyn Random + Send> = Box::new(SystemRandom);
        match self.endpoint.accept(incoming, now, config, rng) {
            Some(handle) => {
                let Some(p) = self.peers.iter_mut().find(|p| p.addr.ip() == src.ip()) else {
                    return;
                };
                p.retry_at = None;
                let established = p
                    .handle
                    .and_then(|h| self.endpoint.sa_mut(h))
                    .is_some_and(|sa| sa.is_established());
                if established {
                    // The peer restarted, lost its IKE SA or re-authenticates:
                    // the old one stays until the new one is authenticated.
                    // A re-authentication of our own gives way to it (the
                    // peer has the lower address, see `accepts`).
                    if let Some(older) = p.incoming.replace(handle) {
                        self.endpoint.remove(older);
                    }
                    if std::mem::take(&mut p.reauthing) {
                        tracing::info!(peer = %p.name, "IKE: both sides re-authenticate: ours gives way to the peer's");
                    }
                    tracing::info!(peer = %p.name, "IKE: the peer starts a new IKE SA");
                } else {
                    // Our own attempt, if any, gives way to the peer's
                    // (its nonce is lower, see `accepts`).
                    if let Some(old) = p.handle.replace(handle) {
                        self.endpoint.remove(old);
                    }
                    tracing::info!(peer = %p.name, "IKE: responding to IKE_SA_INIT");
                }
            }
            None => {
                tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
            }
        }
    }

    /// Whether to answer a new IKE_SA_INIT request, and for which peer:
    /// known peers only, by underlay address, unless down; not when our
    /// own attempt crosses it with a lower nonce, nor when we
    /// re-authenticate as the designated initiator.
    fn accepts(&mut self, incoming: &Incoming) -> Option<usize> {
        let remote = incoming.remote();
        let peers = &self.peers;
        let i = peers
            .iter()
            .position(|p| p.addr.ip() == remote.ip() && !p.admin_down)?;
        // The peer's attempt crosses ours: both sides keep the attempt
        // with the lower nonce (as RFC 7296 section 2.8.1 settles
        // colliding rekeys), so exactly one gives way and the two
        // converge on one IKE SA, whoever started first.
        let ours = peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
        if let Some(sa) = ours {
            if let (Some(ours), Some(theirs)) = (sa.pending_init_nonce(), incoming.nonce()) {
                if ours < theirs {
                    tracing::debug!(peer = %peers[i].name, "IKE: the peer's IKE_SA_INIT crosses ours, whose nonce is lower: ours goes on");
                    // The peer gives its attempt up when it sees ours:
                    // now, not at our next retransmission.
                    sa.send_init_again();
                    return None;
                }
            }
        }
        // Both sides re-authenticate at once (each reloaded, and the
        // IKE SA rekey set both off): the designated initiator's new
        // IKE SA is the one both keep, so it refuses the peer's, and
        // the peer gives up its own for ours (in handle_datagram).
        let p = &peers[i];
        if p.initiator && p.reauthing && p.incoming.is_some() {
            return None;
        }
        Some(i)
    }
}

impl IkeDriver {
    /// Initiates to every peer whose retry time has come.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if p.admin_down || p.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            if p.handle.is_some() {
                // The peer initiated first (the responder's start-up grace).
                self.peers[i].retry_at = None;
                continue;
            }
            let config = Self::ike_config(self.local, p, self.esp_port);
            let addr = p.addr;
            let result = self
                .endpoint
                .connect(config, addr, now, Box::new(SystemRandom));
            let p = &mut self.peers[i];
            match result {
                Ok(handle) => {
                    p.handle = Some(handle);
                    p.retry_at = None;
                    tracing::info!(peer = %p.name, "IKE: initiating");
                }
                Err(e) => {
                    p.last_error = Some(format!("cannot initiate: {e}"));
                    p.retry_at = Some(now + p.retry_wait);
                    p.retry_wait = (p.retry_wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Sends an empty INFORMATIONAL on every established IKE SA whose
    /// liveness check is due (skipped while another request is out).
    fn check_liveness(&mut self, now: Instant) {
        for p in &mut self.peers {
            if p.liveness_at.is_none_or(|t| t > now) {
                continue;
            }
            p.liveness_at = Some(now + LIVENESS);
            if let Some(sa) = p.handle.and_then(|h| self.endpoint.sa_mut(h)) {
                if sa.is_established() {
                    let _ = sa.check_liveness(now);
                }
            }
        }
    }

    /// Sends a NAT keepalive (RFC 3948 section 2.3) from the ESP-in-UDP
    /// socket to every peer whose IKE SA found us behind a NAT.
    fn send_keepalives(&mut self, now: Instant) {
        for p in &mut self.peers {
            if p.keepalive_at.is_none_or(|t| t > now) {
                continue;
            }
            p.keepalive_at = Some(now + p.ike.nat_keepalive);
            let dst = p
                .handle
                .and_then(|h| self.endpoint.sa_mut(h))
                .and_then(|sa| sa.remote());
            if let Some(dst) = dst {
                let sent = Batch::new(1).send(&self.sockets.esp, [(&KEEPALIVE_PACKET[..], dst)]);
                if sent.refused > 0 {
                    tracing::debug!(peer = %p.name, "NAT keepalive not sent");
                }
            }
        }
    }

    /// Carries out a command from the control socket.
    fn command(&mut self, now: Instant, command: IkeCommand) {
        let index = match command {
            IkeCommand::Reload(updates, done) => {
                self.reload(updates);
                // The control thread may have given up waiting.
                let _ = done.send(());
                return;
            }
            IkeCommand::Reauth(index) => return self.reauth(now, index),
            IkeCommand::ExportKeys(reply) => {
                // The control thread may have given up waiting.
                let _ = reply.send(self.export_keys());
                return;
            }
            IkeCommand::Down(index)
            | IkeCommand::Up(index)
            | IkeCommand::Rekey(index)
            | IkeCommand::RekeyIke(index) => index,
        };
        let Some(i) = self.peers.iter().position(|p| p.index == index) else {
            return;
        };
        match command {
            IkeCommand::Down(_) => {
                let p = &mut self.peers[i];
                p.admin_down = true;
                p.retry_at = None;
                p.liveness_at = None;
                p.last_error = Some("down by request".to_owned());
                // Tell the peer (one DELETE of the IKE SA, which takes its
                // Child SAs with it), then forget the SA: its SAs leave the
                // tables at once, so nothing waits on the peer's answer.
                if let Some(incoming) = p.incoming.take() {
                    self.endpoint.remove(incoming);
                }
                if let Some(handle) = p.handle.take() {
                    if let Some(sa) = self.endpoint.sa_mut(handle) {
                        if sa.is_established() {
                            let _ = sa.delete(now);
                        }
                        let mut out = Vec::new();
                        while let Some(t) = sa.poll_transmit() {
                            out.push(t);
                        }
                        self.send(&mut Batch::new(4), &out);
                    }
                    self.endpoint.remove(handle);
                }
                let name = self.peers[i].name.clone();
                self.remove_all(i, index, &name);
                tracing::warn!(peer = %name, "IKE: down by request");
            }
            IkeCommand::Up(_) => {
                let p = &mut self.peers[i];
                p.admin_down = false;
                p.last_error = None;
                p.retry_wait = RETRY_MIN;
                if p.handle.is_none() {
                    p.retry_at = Some(now);
                }
                tracing::info!(peer = %p.name, "IKE: up by request");
            }
            IkeCommand::Reload(..) | IkeCommand::Reauth(_) | IkeCommand::ExportKeys(_) => {}
            IkeCommand::Rekey(_) | IkeCommand::RekeyIke(_) => {
                let p = &self.peers[i];
                let ike = matches!(command, IkeCommand::RekeyIke(_));
                let result = p.handle.and_then(|h| self.endpoint.sa_mut(h)).map(|sa| {
                    if ike {
                        sa.rekey_ike(now)
                    } else {
                        sa.rekey_child(now)
                    }
                });
                match result {
                    Some(Ok(())) => tracing::info!(peer = %p.name, "IKE: rekeying by request"),
                    Some(Err(e)) => {
                        tracing::warn!(peer = %p.name, "IKE: cannot rekey: {e}");
                    }
                    None => tracing::warn!(peer = %p.name, "IKE: cannot rekey: no IKE SA"),
                }
            }
        }
        self.publish_status();
    }

    /// The keys of every IKE SA (each peer's current one, and a new one
    /// beside it), and the rekeyed outbound SAs that wait for their
    /// switch: for `tunsec keys export` only.
    fn export_keys(&mut self) -> DriverKeys {
        use crate::keys::{EspSaExport, HexKey, IkeSaExport};
        let mut out = DriverKeys::default();
        for p in &self.peers {
            for handle in [p.handle, p.incoming].into_iter().flatten() {
                let Some(k) = self.endpoint.sa_mut(handle).and_then(|sa| sa.export_keys()) else {
                    continue;
                };
                let (encryption, integrity) = transform_names(&k.suite);
                out.ike.push(IkeSaExport {
                    peer: p.name.clone(),
                    spi_i: k.spi_i,
                    spi_r: k.spi_r,
                    encryption: encryption.to_owned(),
                    integrity: integrity.map(str::to_owned),
                    sk_ei: HexKey::new(k.keys.sk_ei.expose()),
                    sk_er: HexKey::new(k.keys.sk_er.expose()),
                    sk_ai: HexKey::new(k.keys.sk_ai.expose()),
                    sk_ar: HexKey::new(k.keys.sk_ar.expose()),
                });
            }
            for pending in &p.pending_outbound {
                out.esp.push(EspSaExport::of(
                    &p.name,
                    self.local,
                    p.addr.ip(),
                    &pending.sa,
                ));
            }
        }
        out
    }

    /// Sends every pending datagram and handles every pending event.
    fn drain(&mut self, batch: &mut Batch) {
        let mut out = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            out.push(t);
        }
        let now = Instant::now();
        for i in 0..self.peers.len() {
            self.drain_incoming(i, &mut out);
            let Some(handle) = self.peers[i].handle else {
                continue;
            };
            let mut events = Vec::new();
            let closed = match self.endpoint.sa_mut(handle) {
                Some(sa) => {
                    while let Some(t) = sa.poll_transmit() {
                        out.push(t);
                    }
                    while let Some(e) = sa.poll_event() {
                        events.push(e);
                    }
                    sa.is_closed()
                }
                None => true,
            };
            for e in events {
                self.handle_event(i, e);
            }
            if closed {
                self.endpoint.remove(handle);
                self.peers[i].handle = None;
                self.peers[i].liveness_at = None;
                self.peers[i].keepalive_at = None;
                let (index, name) = (self.peers[i].index, self.peers[i].name.clone());
                self.remove_all(i, index, &name);
                let p = &mut self.peers[i];
                if p.initiator && !p.admin_down {
                    p.retry_at = Some(now + p.retry_wait);
                    p.retry_wait = (p.retry_wait * 2).min(RETRY_MAX);
                }
            }
        }
        self.send(batch, &out);
        self.publish_status();
    }

    /// Polls a peer's new IKE SA that waits beside the established one:
    /// once authenticated it replaces the old one, whose Child SAs go with
    /// it (the peer restarted: RFC 7296 section 2.4); if it fails, the old
    /// one stays.
    fn drain_incoming(&mut self, i: usize, out: &mut Vec<tunsec_ike::sa::Transmit>) {
        let Some(incoming) = self.peers[i].incoming else {
            return;
        };
        let Some(sa) = self.endpoint.sa_mut(incoming) else {
            self.peers[i].incoming = None;
            return;
        };
        while let Some(t) = sa.poll_transmit() {
            out.push(t);
        }
        if sa.is_closed() {
            let mut events = Vec::new();
            while let Some(e) = sa.poll_event() {
                events.push(e);
            }
            let why = reload::describe_events(&events);
            tracing::warn!(peer = %self.peers[i].name, "IKE: the new IKE SA failed ({why}); the old one stays");
            self.peers[i].last_error =
                Some(format!("a new IKE SA failed ({why}); the old one stays"));
            self.endpoint.remove(incoming);
            self.peers[i].incoming = None;
            return;
        }
        if !sa.is_established() {
            return;
        }
        let initial_contact = sa.peer_initial_contact();
        let p = &mut self.peers[i];
        p.incoming = None;
        let ours = std::mem::take(&mut p.reauthing);
        let old = p.handle.replace(incoming);
        let (index, name) = (p.index, p.name.clone());
        tracing::info!(peer = %name, initial_contact, "IKE: a new IKE SA replaces the old one and its Child SAs");
        if !initial_contact {
            // A re-authentication: make before break (ike/reload.rs).
            return self.retire_replaced(i, old, ours, out);
        }
        if let Some(old) = old {
            self.endpoint.remove(old);
        }
        self.remove_all(i, index, &name);
        // Its events (IkeSaEstablished, ChildSaUp) are handled with the
        // current IKE SA's, below.
    }

    fn handle_event(&mut self, i: usize, event: Event) {
        let (index, name) = (self.peers[i].index, self.peers[i].name.clone());
        match event {
            Event::IkeSaEstablished => {
                let sa = self.peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
                let (spis, suite, remote) = sa.map_or((None, None, None), |sa| {
                    (Some(sa.spis()), sa.ike_suite(), sa.remote())
                });
                let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
                tracing::info!(
                    peer = %name,
                    addr = %or_dash(remote.map(|r| r.to_string())),
                    role = %if self.peers[i].initiator { "initiator" } else { "responder" },
                    spi_i = %or_dash(spis.map(|s| format!("{:#018x}", s.0))),
                    spi_r = %or_dash(spis.map(|s| format!("{:#018x}", s.1))),
                    suite = %or_dash(suite.as_ref().map(suite_name)),
                    "IKE SA established"
                );
                let p = &mut self.peers[i];
                p.fresh_ike_sa = true;
                p.last_error = None;
                p.retry_wait = RETRY_MIN;
                p.liveness_at = Some(Instant::now() + LIVENESS);
                let nat = p
                    .handle
                    .and_then(|h| self.endpoint.sa_mut(h))
                    .and_then(|sa| sa.nat());
                if let Some(nat) = nat {
                    tracing::info!(
                        peer = %name,
                        local_behind_nat = nat.local_behind_nat,
                        remote_behind_nat = nat.remote_behind_nat,
                        forced = nat.forced,
                        "IKE: NAT detection"
                    );
                }
                let p = &mut self.peers[i];
                p.keepalive_at = nat
                    .filter(|n| n.local_behind_nat)
                    .map(|_| Instant::now() + p.ike.nat_keepalive);
            }
            Event::ChildSaUp { inbound, outbound } => {
                // A re-authentication's Child SAs replace the old IKE SA's
                // ones, make before break (ike/reload.rs).
                if let Some(ours) = self.peers[i].replacing.take() {
                    self.peers[i].fresh_ike_sa = false;
                    self.begin_replacement(i, ours);
                }
                if self.peers[i].replacement.is_some() && self.replace_child(i, &inbound, &outbound)
                {
                    return;
                }
                // A fresh IKE SA's first Child SA: nothing of an older
                // rekey carries over, and the older SAs go. An additional
                // Child SA joins the ones there are.
                let fresh = std::mem::take(&mut self.peers[i].fresh_ike_sa);
                if fresh {
                    self.peers[i].pending_outbound.clear();
                    self.peers[i].expiring_inbound.clear();
                }
                match self.install(index, &inbound, &outbound, fresh) {
                    Ok(()) => {
                        self.peers[i].child_sas += 1;
                        log_child(
                            &name,
                            self.peers[i].addr.ip(),
                            "Child SA installed",
                            &inbound,
                            &outbound,
                        );
                    }
                    Err(e) => {
                        tracing::warn!(peer = %name, "Child SA not installed: {e:#}");
                        self.peers[i].last_error = Some(format!("Child SA not installed: {e:#}"));
                    }
                }
            }
            Event::ChildSaRekeyed {
                old_inbound_spi,
                old_outbound_spi,
                inbound,
                outbound,
            } => match self.install_rekeyed(i, old_outbound_spi, &inbound, &outbound) {
                Ok(()) => {
                    self.peers[i].child_sas += 1;
                    tracing::info!(
                        peer = %name,
                        old_spi_in = format_args!("{old_inbound_spi:#010x}"),
                        old_spi_out = format_args!("{old_outbound_spi:#010x}"),
                        spi_in = format_args!("{:#010x}", inbound.spi),
                        spi_out = format_args!("{:#010x}", outbound.spi),
                        "Child SA rekeyed"
                    );
                    log_child(
                        &name,
                        self.peers[i].addr.ip(),
                        "Child SA installed (rekey)",
                        &inbound,
                        &outbound,
                    );
                }
                Err(e) => {
                    tracing::warn!(peer = %name, "rekeyed Child SA not installed: {e:#}");
                    self.peers[i].last_error =
                        Some(format!("rekeyed Child SA not installed: {e:#}"));
                }
            },
            Event::ChildSaDown {
                inbound_spi,
                outbound_spi,
            } => {
                tracing::info!(
                    peer = %name,
                    spi_in = format_args!("{inbound_spi:#010x}"),
                    spi_out = format_args!("{outbound_spi:#010x}"),
                    "Child SA deleted"
                );
                let rekeyed = self.peers[i]
                    .pending_outbound
                    .iter()
                    .position(|o| o.old_spi == outbound_spi);
                if let Some(k) = rekeyed {
                    // The old pair of a rekey: both sides have the new one
                    // now. Switch outbound, and let the old inbound SA take
                    // the packets still in flight for a little while.
                    self.switch_outbound(i, k);
                    self.peers[i]
                        .expiring_inbound
                        .push((inbound_spi, Instant::now() + INBOUND_GRACE));
                } else {
                    self.remove_pair(index, inbound_spi, outbound_spi);
                }
            }
            Event::AuthFailed { reason } => {
                let cert = self.peers[i].ike.cert.is_some();
                let reason = hint::auth_failure(&name, &reason, cert);
                tracing::warn!(peer = %name, "IKE authentication failed: {reason}");
                self.peers[i].last_error = Some(format!("authentication failed: {reason}"));
                self.remove_all(i, index, &name);
            }
            Event::Failed { notify, by_peer } => {
                let who = if by_peer { "the peer sent" } else { "we sent" };
                tracing::warn!(peer = %name, "IKE exchange failed: {who} {notify:?}");
                self.peers[i].last_error = Some(format!("{who} {notify:?}"));
            }
            Event::IkeSaRekeyed { old_spis, spis } => {
                tracing::info!(
                    peer = %name,
                    old_spi_i = format_args!("{:#018x}", old_spis.0),
                    spi_i = format_args!("{:#018x}", spis.0),
                    spi_r = format_args!("{:#018x}", spis.1),
                    "IKE SA rekeyed"
                );
                self.peers[i].ike_rekeys += 1;
                // Reloaded credentials: the rekeyed IKE SA still stands on
                // the old ones; a new IKE SA takes them up.
                if std::mem::take(&mut self.peers[i].reauth_on_rekey) {
                    self.reauth(Instant::now(), index);
                }
            }
            Event::PeerDead => {
                tracing::warn!(peer = %name, "IKE: peer dead (no answer)");
                self.peers[i].last_error = Some("peer dead: no answer".to_owned());
                self.remove_all(i, index, &name);
            }
            Event::IkeSaDeleted => {
                tracing::info!(peer = %name, "IKE SA deleted by the peer");
                self.peers[i].last_error = Some("deleted by the peer".to_owned());
                self.remove_all(i, index, &name);
            }
            Event::LocalError(e) => {
                tracing::warn!(peer = %name, "IKE: local error: {e}");
                self.peers[i].last_error = Some(format!("local error: {e}"));
                self.remove_all(i, index, &name);
            }
            other => tracing::debug!(peer = %name, ?other, "IKE event"),
        }
    }

    /// Publishes the inbound SA, then the outbound one: with `replace`
    /// (a fresh IKE SA's first Child SA), instead of all of this peer's
    /// older SAs; else beside them (an additional Child SA).
    fn install(
        &self,
        index: usize,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
        replace: bool,
    ) -> anyhow::Result<()> {
        let (remote, lifetime) = self
            .peers
            .iter()
            .find(|p| p.index == index)
            .map(|p| (p.addr.ip(), p.ike.child_lifetime))
            .context("no such IKE peer")?;
        let (sa_in, sa_out) = self.new_pair(remote, lifetime, inbound, outbound)?;
        self.publish_inbound(index, inbound.spi, sa_in);

        let sa_out = Arc::new(Mutex::new(sa_out));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(outbound) = t.outbound_mut(index) {
                if replace {
                    *outbound = vec![sa_out.clone()];
                } else {
                    outbound.push(sa_out.clone());
                }
            }
            if replace {
                // The peer's older inbound SAs go at once.
                t.inbound_mut()
                    .retain(|spi, e| e.peer != index || *spi == inbound.spi);
            }
        });
        Ok(())
    }

    /// Make before break (RFC 7296 section 2.8). The new inbound SA joins
    /// the old one at once. Outbound switches to the new SA only when the
    /// old pair is deleted (by the rekey's initiator, once it has the new
    /// keys: so the peer can open what we send), or after `SWITCH_WAIT`.
    /// The old inbound SA then lingers for `INBOUND_GRACE`.
    fn install_rekeyed(
        &mut self,
        i: usize,
        old_outbound_spi: u32,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) -> anyhow::Result<()> {
        let index = self.peers[i].index;
        let (sa_in, sa_out) = self.new_pair(
            self.peers[i].addr.ip(),
            self.peers[i].ike.child_lifetime,
            inbound,
            outbound,
        )?;
        self.publish_inbound(index, inbound.spi, sa_in);
        // A pending switch of an earlier rekey of this Child SA (whose new
        // SA is now the old one) happens now.
        let earlier = self.peers[i]
            .pending_outbound
            .iter()
            .position(|o| o.spi == old_outbound_spi);
        if let Some(k) = earlier {
            self.switch_outbound(i, k);
        }
        self.peers[i].pending_outbound.push(PendingOutbound {
            old_spi: old_outbound_spi,
            spi: outbound.spi,
            sa: sa_out,
            deadline: Instant::now() + SWITCH_WAIT,
        });
        Ok(())
    }

    /// The data plane's SAs for a negotiated Child SA pair with the peer
    /// at `remote` (the inbound one with the configured replay window):
    /// in transport mode, or, when USE_TRANSPORT_MODE was not agreed
    /// (RFC 7296 section 1.3.1), in tunnel mode between the two underlay
    /// addresses.
    ///
    /// With a `child_lifetime`, both SAs stop at its end (their hard time
    /// limit, RFC 4301 section 4.4.2.1): the IKE SA rekeys them at 80 to
    /// 90% of it, and a pair that was not rekeyed in time carries nothing
    /// more. The soft limit stays unset: the IKE SA's own timer asks for
    /// the rekey.
    fn new_pair(
        &self,
        remote: IpAddr,
        child_lifetime: Option<Duration>,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) -> anyhow::Result<(Sa, Sa)> {
        let now = Instant::now();
        if let Some(want) = self.gateway_mode {
            let transport = want == ChildMode::Transport;
            anyhow::ensure!(
                inbound.transport == transport && outbound.transport == transport,
                "the Child SA is in {} mode, gateway.mode is {want:?}",
                if inbound.transport {
                    "transport"
                } else {
                    "tunnel"
                }
            );
        }
        let mode = |p: &ChildSaParams| {
            if p.transport {
                Mode::Transport
            } else {
                Mode::Tunnel {
                    local: self.local,
                    remote,
                }
            }
        };
        let mut cin = inbound.sa_config();
        cin.mode = mode(inbound);
        cin.replay_window = self.replay_window;
        cin.lifetime.hard.time = child_lifetime;
        let sa_in = Sa::new(cin, now).context("inbound SA")?;
        let mut cout = outbound.sa_config();
        cout.mode = mode(outbound);
        cout.lifetime.hard.time = child_lifetime;
        let sa_out = Sa::new(cout, now).context("outbound SA")?;
        Ok((sa_in, sa_out))
    }

    /// Publishes new tables with an inbound SA added for peer `index`.
    fn publish_inbound(&self, index: usize, spi: u32, sa: Sa) {
        let sa = Arc::new(Mutex::new(sa));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            t.inbound_mut().insert(
                spi,
                InboundEntry {
                    peer: index,
                    sa: sa.clone(),
                },
            );
        });
    }

    /// Publishes the pending rekeyed outbound SA `k` in place of the one
    /// it replaces (or beside the others, if that one is gone).
    fn switch_outbound(&mut self, i: usize, k: usize) {
        let pending = self.peers[i].pending_outbound.remove(k);
        let index = self.peers[i].index;
        tracing::debug!(
            peer = %self.peers[i].name,
            old_spi_out = format_args!("{:#010x}", pending.old_spi),
            spi_out = format_args!("{:#010x}", pending.spi),
            "outbound SA switched to the rekeyed one"
        );
        let sa = Arc::new(Mutex::new(pending.sa));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(outbound) = t.outbound_mut(index) {
                match outbound
                    .iter()
                    .position(|o| spi_of(o) == Some(pending.old_spi))
                {
                    Some(at) => outbound[at] = sa.clone(),
                    None => outbound.push(sa.clone()),
                }
            }
        });
    }

    /// Switches outbound SAs whose wait is over, and removes old inbound
    /// SAs whose grace period is over.
    fn rekey_housekeeping(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            self.end_replacement(i, now);
            while let Some(k) = self.peers[i]
                .pending_outbound
                .iter()
                .position(|o| o.deadline <= now)
            {
                self.switch_outbound(i, k);
            }
            let (due, keep): (Vec<_>, Vec<_>) = self.peers[i]
                .expiring_inbound
                .iter()
                .partition(|&&(_, t)| t <= now);
            if due.is_empty() {
                continue;
            }
            self.peers[i].expiring_inbound = keep;
            let index = self.peers[i].index;
            for (spi, _) in &due {
                tracing::debug!(
                    peer = %self.peers[i].name,
                    spi_in = format_args!("{spi:#010x}"),
                    "old inbound SA removed after its grace period"
                );
            }
            self.shared.edit(&mut |t: &mut dyn SaTables| {
                t.inbound_mut()
                    .retain(|spi, e| !(e.peer == index && due.iter().any(|&(d, _)| d == *spi)));
            });
        }
    }

    /// Removes one Child SA pair: the inbound SA, and the outbound one if
    /// it is still installed (after a rekey it no longer is).
    fn remove_pair(&self, index: usize, inbound_spi: u32, outbound_spi: u32) {
        tracing::debug!(
            peer = %self
                .peers
                .iter()
                .find(|p| p.index == index)
                .map_or("?", |p| p.name.as_str()),
            spi_in = format_args!("{inbound_spi:#010x}"),
            spi_out = format_args!("{outbound_spi:#010x}"),
            "Child SA removed"
        );
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            t.inbound_mut()
                .retain(|spi, e| !(e.peer == index && *spi == inbound_spi));
            if let Some(outbound) = t.outbound_mut(index) {
                outbound.retain(|sa| spi_of(sa) != Some(outbound_spi));
            }
        });
    }

    /// Removes every SA of a peer, and forgets its rekeys in progress.
    fn remove_all(&mut self, i: usize, index: usize, name: &str) {
        self.peers[i].pending_outbound.clear();
        self.peers[i].replacement = None;
        self.peers[i].expiring_inbound.clear();
        self.remove_sas(index, name);
    }

    /// Removes every SA of a peer: its `require` traffic is dropped.
    fn remove_sas(&self, index: usize, name: &str) {
        let mut spis_in = Vec::new();
        let mut spis_out = Vec::new();
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            spis_out.clear();
            spis_in.clear();
            if let Some(slot) = t.outbound_mut(index) {
                spis_out.extend(slot.iter().filter_map(spi_of));
                slot.clear();
            }
            t.inbound_mut().retain(|spi, e| {
                if e.peer == index {
                    spis_in.push(*spi);
                }
                e.peer != index
            });
        });
        if !spis_in.is_empty() || !spis_out.is_empty() {
            let hex = |spis: &[u32]| {
                spis.iter()
                    .map(|s| format!("{s:#010x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::warn!(
                peer = %name,
                spis_in = %hex(&spis_in),
                spis_out = %hex(&spis_out),
                "SAs removed"
            );
        }
    }

    fn publish_status(&mut self) {
        let now = Instant::now();
        let mut map = HashMap::new();
        for i in 0..self.peers.len() {
            let sa = self.peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
            let secs_since =
                |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs());
            let secs_until =
                |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now).as_secs());
            let (ike_rekey, child_rekey) = sa.as_ref().map_or((None, None), |sa| sa.rekey_times());
            let age = sa.as_ref().and_then(|sa| sa.established_at());
            let nat_state = sa.as_ref().and_then(|sa| sa.nat());
            let nat =
                nat_state.map(|n| nat_summary(n.local_behind_nat, n.remote_behind_nat, n.forced));
            let stats = sa.as_ref().map(|sa| sa.stats()).unwrap_or_default();
            let sa = sa.map(|sa| {
                (
                    sa.is_established(),
                    sa.spis(),
                    sa.ike_suite().map(|s| suite_name(&s)),
                )
            });
            let p = &self.peers[i];
            let (state, spis, suite) = match sa {
                Some((established, spis, suite)) => (
                    if established {
                        "established".to_owned()
                    } else {
                        "connecting".to_owned()
                    },
                    Some(spis),
                    suite,
                ),
                None => match (&p.last_error, p.initiator) {
                    (Some(e), _) => (format!("failed: {e}"), None, None),
                    (None, true) => ("connecting".to_owned(), None, None),
                    (None, false) => ("waiting".to_owned(), None, None),
                },
            };
            map.insert(
                p.index,
                IkeStatus {
                    age_secs: secs_since(age),
                    rekey_in_secs: secs_until(ike_rekey),
                    child_rekey_in_secs: secs_until(child_rekey),
                    nat,
                    nat_local: nat_state.map(|n| n.local_behind_nat),
                    nat_peer_mismatch: nat_state.map(|n| n.remote_behind_nat),
                    udp_encap_forced: nat_state.map(|n| n.forced),
                    retransmits: stats.retransmits,
                    dropped: stats.malformed
                        + stats.wrong_spi
                        + stats.wrong_message_id
                        + stats.integrity
                        + stats.unexpected,
                    fragments_sent: stats.fragments_sent,
                    fragments_received: stats.fragments_received,
                    state,
                    role: if p.initiator {
                        "initiator"
                    } else {
                        "responder"
                    }
                    .to_owned(),
                    spi_i: spis.map(|s| format!("{:#018x}", s.0)),
                    spi_r: spis.map(|s| format!("{:#018x}", s.1)),
                    suite,
                    last_error: p.last_error.clone(),
                    child_sas: p.child_sas,
                    ike_rekeys: p.ike_rekeys,
                    auth: Some(reload::auth_summary(&p.ike)),
                },
            );
        }
        if let Ok(mut states) = self.states.lock() {
            *states = map;
        }
    }

    /// Deletes every IKE SA (one DELETE each, not retransmitted) and
    /// removes the SAs from the tables.
    fn shutdown(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            let Some(handle) = self.peers[i].handle else {
                continue;
            };
            if let Some(sa) = self.endpoint.sa_mut(handle) {
                if sa.is_established() && sa.delete(now).is_ok() {
                    while let Some(t) = sa.poll_transmit() {
                        out.push(t);
                    }
                    tracing::info!(peer = %self.peers[i].name, "IKE SA deleted on shutdown");
                }
            }
        }
        self.send(batch, &out);
    }

    /// Sends IKE messages: from port 500, or from the ESP-in-UDP port with
    /// the non-ESP marker to a peer that spoke to us there.
    fn send(&self, batch: &mut Batch, out: &[tunsec_ike::sa::Transmit]) {
        if out.is_empty() {
            return;
        }
        let on_esp = |t: &&tunsec_ike::sa::Transmit| Some(t.dst.port()) == self.esp_port;
        let marked: Vec<(Vec<u8>, SocketAddr)> = out
            .iter()
            .filter(on_esp)
            .map(|t| ([&NON_ESP_MARKER[..], &t.bytes].concat(), t.dst))
            .collect();
        let plain = batch.send(
            &self.socket,
            out.iter()
                .filter(|t| !on_esp(t))
                .map(|t| (&t.bytes[..], t.dst)),
        );
        let on_esp_port = if marked.is_empty() {
            Default::default()
        } else {
            batch.send(
                &self.sockets.esp,
                marked.iter().map(|(b, dst)| (&b[..], *dst)),
            )
        };
        for (port, r) in [("500", plain), ("ESP", on_esp_port)] {
            if r.refused > 0 {
                let dsts: Vec<SocketAddr> = out.iter().map(|t| t.dst).collect();
                tracing::debug!(
                    refused = r.refused,
                    port,
                    error = ?r.error.map(std::io::Error::from_raw_os_error),
                    ?dsts,
                    "IKE: datagrams not sent"
                );
            }
        }
    }
}

/// Logs a Child SA pair that was installed: the peer, its SPIs in hex,
/// the mode, the suite, and the traffic selectors (ours, the peer's).
/// Never its keys.
fn log_child(
    name: &str,
    addr: IpAddr,
    what: &str,
    inbound: &ChildSaParams,
    outbound: &ChildSaParams,
) {
    let list = |ts: &[TrafficSelector]| {
        ts.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        peer = %name,
        addr = %addr,
        spi_in = format_args!("{:#010x}", inbound.spi),
        spi_out = format_args!("{:#010x}", outbound.spi),
        mode = %if inbound.transport { "transport" } else { "tunnel" },
        suite = %inbound.suite,
        esn = inbound.esn,
        udp_encap = inbound.udp_encap,
        local_ts = %list(&inbound.local_ts),
        remote_ts = %list(&inbound.remote_ts),
        "{what}"
    );
}

/// An IKE suite in strongSwan's proposal syntax, as the config writes it
/// (`aes128gcm16-prfsha256-x25519`, `aes256-sha256-prfsha256-modp2048`).
fn suite_name(s: &tunsec_ike::crypto::IkeSuite) -> String {
    use tunsec_ike::crypto::Prf;
    use tunsec_ike::message::DhGroup;
    let (encr, integ) = transform_names(s);
    let prf = match s.prf {
        Prf::HmacSha2_256 => "prfsha256",
        Prf::HmacSha2_384 => "prfsha384",
        Prf::HmacSha2_512 => "prfsha512",
    };
    let group = match s.group {
        DhGroup::Curve25519 => "x25519".to_owned(),
        DhGroup::Ecp256 => "ecp256".to_owned(),
        DhGroup::Ecp384 => "ecp384".to_owned(),
        DhGroup::Modp2048 => "modp2048".to_owned(),
        other => format!("group{}", u16::from(other)),
    };
    [Some(encr), integ, Some(prf), Some(group.as_str())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("-")
}

/// An IKE suite's cipher and integrity algorithm in strongSwan's
/// proposal syntax (`aes128gcm16`, `aes256` and `sha256`); no integrity
/// algorithm with an AEAD cipher.
fn transform_names(s: &tunsec_ike::crypto::IkeSuite) -> (&'static str, Option<&'static str>) {
    use tunsec_ike::crypto::{Encr, Integ};
    let encr = match s.encr {
        Encr::AesCbc128 => "aes128",
        Encr::AesCbc256 => "aes256",
        Encr::AesGcm128 => "aes128gcm16",
        Encr::AesGcm256 => "aes256gcm16",
        Encr::ChaCha20Poly1305 => "chacha20poly1305",
    };
    let integ = s.integ.map(|i| match i {
        Integ::HmacSha2_256_128 => "sha256",
        Integ::HmacSha2_384_192 => "sha384",
        Integ::HmacSha2_512_256 => "sha512",
    });
    (encr, integ)
}

#[cfg(test)]
mod test {
    use tunsec_ike::crypto::{Encr, IkeSuite, Integ, Prf};
    use tunsec_ike::message::DhGroup;

    #[test]
    fn suite_names_are_strongswan_syntax() {
        let gcm = IkeSuite {
            encr: Encr::AesGcm128,
            integ: None,
            prf: Prf::HmacSha2_256,
            group: DhGroup::Curve25519,
        };
        assert_eq!(super::suite_name(&gcm), "aes128gcm16-prfsha256-x25519");
        let cbc = IkeSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha2_256_128),
            prf: Prf::HmacSha2_256,
            group: DhGroup::Modp2048,
        };
        assert_eq!(super::suite_name(&cbc), "aes256-sha256-prfsha256-modp2048");
    }

    #[test]
    fn selectors_host_and_ports() {
        use super::{ChildSelectors, selectors, ts};
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let ((l, r), more) = selectors(a, b, ChildSelectors::Host, &[4789, 6081]);
        assert_eq!(l, vec![ts::host(a, 17, 0, u16::MAX)]);
        assert_eq!(r, vec![ts::host(b, 17, 0, u16::MAX)]);
        assert!(more.is_empty());
        // One Child SA per port: the first in IKE_AUTH, then the others.
        let ((l, r), more) = selectors(a, b, ChildSelectors::Ports, &[4789, 6081, 6635]);
        assert_eq!(l, vec![ts::host(a, 17, 4789, 4789)]);
        assert_eq!(r, vec![ts::host(b, 17, 4789, 4789)]);
        let port = |p| (vec![ts::host(a, 17, p, p)], vec![ts::host(b, 17, p, p)]);
        assert_eq!(more, vec![port(6081), port(6635)]);
        // No tunnel port (no network carried): host to host.
        let ((l, _), more) = selectors(a, b, ChildSelectors::Ports, &[]);
        assert_eq!(l, vec![ts::host(a, 17, 0, u16::MAX)]);
        assert!(more.is_empty());
    }

    #[test]
    fn gateway_selectors_are_the_ts() {
        use super::{gateway_selectors, ts};
        use tunsec_datapath::gateway::GatewaySelector;
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let sel = [
            GatewaySelector {
                protocol: 17,
                ports: 4789..=4789,
            },
            GatewaySelector {
                protocol: 6,
                ports: 16385..=16390,
            },
        ];
        let (l, r) = gateway_selectors(a, b, &sel);
        assert_eq!(
            l,
            vec![ts::host(a, 17, 4789, 4789), ts::host(a, 6, 16385, 16390)]
        );
        assert_eq!(
            r,
            vec![ts::host(b, 17, 4789, 4789), ts::host(b, 6, 16385, 16390)]
        );
    }
}
