//! The IKE driver: a plain thread that owns the IKE socket (UDP port 500
//! on the underlay address) and the sans-IO [`Endpoint`](tunsec_ike::sa::Endpoint) of
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

mod command;
mod driver;
mod events;
mod hint;
mod install;
mod logging;
mod networks;
mod peer;
mod reload;
mod renewal;
mod selectors;
mod status;
pub use driver::IkeDriver;
use peer::{PeerIke, PendingOutbound};
pub(crate) use reload::{same_auth, same_negotiation};
pub(crate) use renewal::CertRenewal;
pub(crate) use selectors::tunnel_ports;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tunsec_datapath::sa_store::SaStore;

use crate::config::{Config, IkePeer, Peer};
use crate::keys::{EspSaExport, IkeSaExport, KeyExport};
use crate::status::{IkeEndpointStatus, IkeStatus};

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

/// How long a peer's re-authentication waits for the peer to take the new
/// IKE SA (delete the old one) before it replaces the old one anyway:
/// a refusal of our AUTH (RFC 7296 section 2.21.2) comes well within it.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// The largest IKE datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// How long the designated responder waits at start-up for the peer to
/// initiate before it initiates itself.
const START_GRACE: Duration = Duration::from_secs(1);
/// How many half-open IKE SAs (IKE_SA_INIT answered, no IKE_AUTH yet)
/// one peer's address may have at once. More than one, so that a
/// request spoofed with the peer's address cannot displace the real
/// peer's handshake (issue 20); few, because the endpoint's cookies
/// (RFC 7296 section 2.6, from the first half-open SA of a source) keep
/// an off-path spoofer at one; the oldest goes when a new one comes.
const HALF_OPEN_PER_PEER: usize = 4;
/// A NAT keepalive: one byte, 0xFF (RFC 3948 section 2.3).
const KEEPALIVE_PACKET: [u8; 1] = [0xff];

/// The IKE driver's view for `tunsec status`: every peer with
/// `[peer.ike]` by slot, and the endpoint's counters.
#[derive(Debug, Clone, Default)]
pub struct IkeView {
    /// The IKE state of each peer, by slot.
    pub peers: HashMap<usize, IkeStatus>,
    /// What the endpoint refused or answered before any IKE SA.
    pub endpoint: Option<IkeEndpointStatus>,
}

/// The IKE driver's view, as it publishes it.
pub type IkeStates = Arc<Mutex<IkeView>>;

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
    /// Rekey only the Child SA of one network now (keys per network):
    /// its name in overlay mode, its label (`vxlan/100`) in gateway mode.
    RekeyNetwork(usize, String),
    /// Re-authenticate the peer now: a new IKE SA with the current
    /// credentials beside the established one, which it replaces once up
    /// (RFC 7296 section 2.8.3).
    Reauth(usize),
    /// New `[peer.ike]` settings (credentials) for these peers, by index,
    /// from `tunsec reload` or SIGHUP: new IKE SAs use them; established
    /// ones are re-authenticated at their next IKE SA rekey. The driver
    /// answers on the channel once it has taken them up.
    Reload(Vec<(usize, Box<IkePeer>)>, mpsc::Sender<()>),
    /// A peer configured at run time, in slot `.0` (the tables' slot,
    /// already set up), with the tunnel ports of its networks (overlay
    /// mode's `selectors = "ports"`; none in gateway mode): it starts like
    /// a peer of the configuration file. The driver answers on the
    /// channel once it has taken it up.
    AddPeer(usize, Box<Peer>, Vec<u16>, mpsc::Sender<()>),
    /// A peer removed at run time: its IKE SA is deleted (one DELETE to
    /// the peer, which takes its Child SAs with it), its SAs leave the
    /// tables, and the driver forgets it. The driver answers on the
    /// channel once the SAs are gone.
    RemovePeer(usize, mpsc::Sender<()>),
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
    pub ike: Vec<IkeSaExport>,
    /// The rekeyed outbound SAs not yet switched to.
    pub esp: Vec<EspSaExport>,
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

    /// Sends the command that `make` builds around an answer channel,
    /// and waits for the driver's answer.
    fn send_and_wait(
        &self,
        what: &str,
        make: impl FnOnce(mpsc::Sender<()>) -> IkeCommand,
    ) -> Result<(), String> {
        let (done, taken) = mpsc::channel();
        self.send(make(done))
            .map_err(|_| "the IKE driver is not running".to_owned())?;
        taken.recv_timeout(RELOAD_WAIT).map_err(|_| {
            format!(
                "{what}: the IKE driver did not answer within {} s",
                RELOAD_WAIT.as_secs()
            )
        })
    }

    /// Hands the driver a peer configured at run time, in `slot`, and
    /// waits until it has taken it up.
    pub(crate) fn add_peer(
        &self,
        slot: usize,
        peer: &Peer,
        tunnel_ports: Vec<u16>,
    ) -> Result<(), String> {
        let what = format!("adding peer {:?}", peer.name);
        self.send_and_wait(&what, |done| {
            IkeCommand::AddPeer(slot, Box::new(peer.clone()), tunnel_ports, done)
        })
    }

    /// Has the driver delete the IKE SA of the peer in `slot` and forget
    /// it, and waits until its SAs are gone.
    pub(crate) fn remove_peer(&self, slot: usize) -> Result<(), String> {
        self.send_and_wait("removing a peer", |done| IkeCommand::RemovePeer(slot, done))
    }

    /// Hands the driver new `[peer.ike]` settings by slot, and waits
    /// until it has taken them up; with `now`, it re-authenticates those
    /// peers at once (else at their next IKE SA rekey).
    pub(crate) fn update_peers(
        &self,
        updates: Vec<(usize, Box<IkePeer>)>,
        now: bool,
    ) -> Result<(), String> {
        let slots: Vec<usize> = updates.iter().map(|(i, _)| *i).collect();
        self.send_and_wait("new IKE settings", |done| IkeCommand::Reload(updates, done))?;
        if now {
            for slot in slots {
                self.send(IkeCommand::Reauth(slot))
                    .map_err(|_| "the IKE driver is not running".to_owned())?;
            }
        }
        Ok(())
    }
}

/// How long `tunsec reload` waits for the IKE driver to take up new
/// settings (it looks at its commands every few milliseconds).
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Hands `command` for the peer named `peer` to the IKE driver over
/// `commands`, as the control socket's `down`, `up`, `rekey` and `reauth`
/// ask (both daemons, overlay and gateway mode): what happened, or an
/// error that names a peer that is not configured or has manual keys, or
/// a driver that is gone.
pub(crate) fn send_command(
    found: Option<(usize, &Peer)>,
    commands: &IkeCommands,
    peer: &str,
    command: &dyn Fn(usize) -> IkeCommand,
) -> Result<String, String> {
    let Some((index, configured)) = found else {
        return Err(format!("peer: {peer:?} is not a configured peer"));
    };
    if configured.ike.is_none() {
        return Err(format!(
            "peer: {peer:?} has no [peer.ike]: its keys are manual"
        ));
    }
    let command = command(index);
    if let IkeCommand::RekeyNetwork(_, network) = &command {
        let labels: Vec<String> = configured
            .vnis
            .iter()
            .flat_map(|p| {
                p.rules
                    .iter()
                    .filter(|r| r.binding().is_some())
                    .map(|r| p.label(r))
            })
            .collect();
        let known =
            configured.networks.iter().any(|(n, _)| n == network) || labels.contains(network);
        let per_network = configured
            .ike
            .as_ref()
            .is_some_and(|ike| ike.keys == crate::config::ChildKeys::PerNetwork);
        if !known || !per_network {
            return Err(format!(
                "network: {network:?} has no Child SA of its own with peer {peer:?} (keys per network, and a network the peer carries{})",
                if labels.is_empty() {
                    String::new()
                } else {
                    format!(": {}", labels.join(", "))
                }
            ));
        }
    }
    let message = match &command {
        IkeCommand::Down(_) => format!("peer {peer:?} going down"),
        IkeCommand::Up(_) => format!("peer {peer:?} coming up"),
        IkeCommand::Rekey(_) => format!("peer {peer:?}: rekeying its Child SAs"),
        IkeCommand::RekeyIke(_) => format!("peer {peer:?}: rekeying the IKE SA"),
        IkeCommand::RekeyNetwork(_, n) => {
            format!("peer {peer:?}: rekeying the Child SA of network {n:?}")
        }
        IkeCommand::Reauth(_) => format!("peer {peer:?}: re-authenticating (a new IKE SA)"),
        IkeCommand::Reload(..) => "reloading".to_owned(),
        IkeCommand::ExportKeys(_) => "exporting keys".to_owned(),
        IkeCommand::AddPeer(..) | IkeCommand::RemovePeer(..) => "changing peers".to_owned(),
    };
    commands
        .send(command)
        .map_err(|_| "the IKE driver is not running".to_owned())?;
    Ok(message)
}

/// How long `tunsec keys export` waits for the IKE driver's keys.
const EXPORT_WAIT: Duration = Duration::from_secs(5);

/// Answers `tunsec keys export`: the ESP SAs of the data path (`esp`)
/// and, from the IKE driver, the IKE SAs and the rekeyed outbound SAs
/// that wait for their switch. Without a driver (no peer has
/// `[peer.ike]`) there are no IKE SAs; an error if the driver does not
/// answer within `EXPORT_WAIT`. Logs a warning that names what left the
/// daemon, never a key.
pub(crate) fn export_keys(
    commands: &IkeCommands,
    mut esp: Vec<EspSaExport>,
) -> Result<KeyExport, String> {
    let (tx, rx) = mpsc::channel();
    let from_driver = if commands.send(IkeCommand::ExportKeys(tx)).is_err() {
        // No driver: its receiver is gone with it.
        DriverKeys::default()
    } else {
        rx.recv_timeout(EXPORT_WAIT).map_err(|_| {
            format!(
                "keys export: the IKE driver did not answer within {} s",
                EXPORT_WAIT.as_secs()
            )
        })?
    };
    esp.extend(from_driver.esp);
    let export = KeyExport {
        ike: from_driver.ike,
        esp,
    };
    let ike_spis: Vec<String> = export
        .ike
        .iter()
        .map(|s| format!("{}:{:016x}_i/{:016x}_r", s.peer, s.spi_i, s.spi_r))
        .collect();
    let esp_spis: Vec<String> = export
        .esp
        .iter()
        .map(|s| format!("{}:{}:{:#010x}", s.peer, s.direction, s.spi))
        .collect();
    tracing::warn!(
        ike_sas = ?ike_spis,
        esp_sas = ?esp_spis,
        "KEYS EXPORTED: the keys of {} IKE SAs and {} ESP SAs were handed out over the control socket (tunsec keys export); whoever holds them can decrypt this host's traffic",
        export.ike.len(),
        export.esp.len()
    );
    Ok(export)
}

/// What a daemon's reload did: the configuration as the file has it
/// now, and the answer (certificate renewal reloads through it).
pub(crate) struct Reloaded {
    /// The configuration as the file has it now.
    pub(crate) config: Config,
    /// What `tunsec reload` answers.
    pub(crate) message: String,
}
