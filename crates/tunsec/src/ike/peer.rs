//! One peer's IKE bookkeeping in the driver.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tunsec_esp::Sa;
use tunsec_ike::sa::SaHandle;

use std::net::IpAddr;

use super::{IKE_PORT, RETRY_MIN, START_GRACE};
use crate::config::{IkePeer, Peer};
use tunsec_datapath::gateway::GatewaySelector;

/// One peer's IKE bookkeeping.
pub(super) struct PeerIke {
    /// The index in the config's (and the tables') peers.
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) ike: IkePeer,
    /// The tunnel ports of the networks the peer carries, sorted, each
    /// once: what `selectors = "ports"` narrows the Child SA to.
    pub(super) tunnel_ports: Vec<u16>,
    /// The names of the networks the peer carries (keys per network).
    pub(super) networks: Vec<String>,
    /// Gateway mode: the peer's `[[peer.selector]]`s, which are then the
    /// Child SA's traffic selectors.
    pub(super) gateway_selectors: Vec<GatewaySelector>,
    /// Gateway mode: the peer's policies by VNI, whose keyed rules get
    /// labelled Child SAs of their own (keys per network).
    pub(super) gateway_vnis: Vec<tunsec_datapath::gateway::VniPolicy>,
    /// We are the designated initiator: our underlay address is the lower
    /// one, and the peer's `initiate` is not `false`. Not the role of the
    /// current IKE SA (`IkeSa::is_initiator`), which is whoever started it.
    pub(super) initiator: bool,
    /// The current IKE SA, if any.
    pub(super) handle: Option<SaHandle>,
    /// A second IKE SA beside the established `handle`, which it replaces
    /// (`drain_incoming`).
    pub(super) beside: Option<Beside>,
    /// The IKE SAs we answered IKE_SA_INIT requests from the peer's
    /// address for, not yet authenticated, oldest first: at most
    /// `HALF_OPEN_PER_PEER`. The first to authenticate becomes the
    /// peer's IKE SA (or, beside an established one, replaces it), and
    /// the others go (`drain_half_open`). A spoofed request from the
    /// peer's address adds one here and never displaces the real peer's.
    pub(super) half_open: Vec<SaHandle>,
    /// Half-open IKE SAs of the peer's address that never authenticated:
    /// no IKE_AUTH within `HALF_OPEN_TIMEOUT`, a failed one, or pushed
    /// out by newer ones.
    pub(super) handshakes_failed: u64,
    /// When to send the next NAT keepalive (we are behind a NAT).
    pub(super) keepalive_at: Option<Instant>,
    /// When an initiator tries again.
    pub(super) retry_at: Option<Instant>,
    pub(super) retry_wait: Duration,
    /// The last failure, for status.
    pub(super) last_error: Option<String>,
    /// Child SAs brought up so far.
    pub(super) child_sas: u64,
    /// IKE SA rekeys so far.
    pub(super) ike_rekeys: u64,
    /// When to check that the peer is alive.
    pub(super) liveness_at: Option<Instant>,
    /// Taken down by `tunsec down`: no attempts, and new IKE SAs from the
    /// peer are refused.
    pub(super) admin_down: bool,
    /// After rekeys: the new outbound SAs, each waiting for its old pair
    /// (whose outbound SPI is kept) to be deleted, or for a deadline.
    pub(super) pending_outbound: Vec<PendingOutbound>,
    /// How the next Child SA that comes up is installed.
    pub(super) next_child: NextChild,
    /// Old inbound SAs kept for in-flight packets, until their deadline.
    pub(super) expiring_inbound: Vec<(u32, Instant)>,
    /// Reloaded credentials: re-authenticate after the next IKE SA rekey.
    pub(super) reauth_on_rekey: bool,
    /// A re-authentication asked for while `beside` was on its way: it
    /// starts once that one is done.
    pub(super) reauth_pending: bool,
    /// A re-authentication under way: its Child SAs replace the old IKE
    /// SA's ones (`ike/reload.rs`).
    pub(super) replacement: Option<Replacement>,
    /// Inbound SAs of the IKE SA that just replaced the old one, already
    /// in the data path (`hold_events`): not among the old ones that
    /// `begin_replacement` retires.
    pub(super) early_inbound: Vec<u32>,
}

/// Whether we initiate to a peer at `remote` by ourselves: the lower
/// underlay address does, unless the peer's `initiate` is `false`.
pub(super) fn designated_initiator(ike: &IkePeer, local: IpAddr, remote: IpAddr) -> bool {
    ike.initiate && local < remote
}

/// A second IKE SA with a peer, beside the established one.
#[derive(Debug)]
pub(super) struct Beside {
    /// The new IKE SA.
    pub(super) handle: SaHandle,
    /// Our own re-authentication (`ike/reload.rs`); else the peer's new
    /// IKE SA: it restarted (INITIAL_CONTACT) or re-authenticates.
    pub(super) ours: bool,
    /// When it was first seen established (`drain_incoming`): a peer's
    /// re-authentication waits for the peer to take it, at most
    /// `CONFIRM_WAIT` from then.
    pub(super) established_at: Option<Instant>,
    /// Its events while it waits, handled once it replaces the old one.
    pub(super) held: Vec<tunsec_ike::sa::Event>,
    /// The inbound SAs of its Child SAs, in the data path while it waits
    /// (the peer may send on them at once); removed if it fails.
    pub(super) early_inbound: Vec<u32>,
}

impl Beside {
    /// A new IKE SA beside the established one, `ours` or the peer's.
    pub(super) fn new(handle: SaHandle, ours: bool) -> Self {
        Self {
            handle,
            ours,
            established_at: None,
            held: Vec::new(),
            early_inbound: Vec::new(),
        }
    }
}

/// How the next Child SA of a peer is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextChild {
    /// Beside the ones there are (an additional Child SA, or a rekey).
    Join,
    /// It replaces every SA of the peer, and nothing of an older rekey
    /// carries over: the first Child SA of a fresh IKE SA.
    ReplaceAll,
    /// Make before break: the first Child SA of an IKE SA that replaced
    /// the old one without INITIAL_CONTACT (a re-authentication, `ours`
    /// or the peer's, RFC 7296 section 2.8.3).
    MakeBeforeBreak {
        /// We started the re-authentication.
        ours: bool,
    },
}

/// A rekeyed outbound SA not yet switched to.
pub(super) struct PendingOutbound {
    /// The SPI of the outbound SA it replaces.
    pub(super) old_spi: u32,
    /// Its own SPI.
    pub(super) spi: u32,
    pub(super) sa: Sa,
    pub(super) deadline: Instant,
}

impl PeerIke {
    /// Which pending switch (in `pending_outbound`) leaves the outbound
    /// SA `old_spi`.
    pub(super) fn switch_from(&self, old_spi: u32) -> Option<usize> {
        self.pending_outbound
            .iter()
            .position(|o| o.old_spi == old_spi)
    }

    /// Which pending switch (in `pending_outbound`) goes to the outbound
    /// SA `spi`.
    pub(super) fn switch_to(&self, spi: u32) -> Option<usize> {
        self.pending_outbound.iter().position(|o| o.spi == spi)
    }

    /// The bookkeeping of `peer` in slot `index`, if it uses IKE. Who
    /// initiates: the lower underlay address at once; the other after
    /// `START_GRACE` if the peer stays silent (it may hold an IKE SA from
    /// before our restart); neither with `initiate = false`.
    pub(super) fn new(
        index: usize,
        peer: &Peer,
        tunnel_ports: Vec<u16>,
        local: IpAddr,
        now: Instant,
    ) -> Option<Self> {
        let ike = peer.ike.as_ref()?;
        let initiator = designated_initiator(ike, local, peer.underlay);
        Some(Self {
            index,
            name: peer.name.clone(),
            addr: SocketAddr::new(peer.underlay, IKE_PORT),
            ike: ike.clone(),
            tunnel_ports,
            networks: peer.networks.iter().map(|(n, _)| n.clone()).collect(),
            gateway_selectors: peer.selectors.clone(),
            gateway_vnis: peer.vnis.clone(),
            initiator,
            handle: None,
            beside: None,
            half_open: Vec::new(),
            handshakes_failed: 0,
            keepalive_at: None,
            retry_at: match (ike.initiate, initiator) {
                (false, _) => None,
                (true, true) => Some(now),
                (true, false) => Some(now + START_GRACE),
            },
            retry_wait: RETRY_MIN,
            last_error: None,
            child_sas: 0,
            ike_rekeys: 0,
            liveness_at: None,
            admin_down: false,
            pending_outbound: Vec::new(),
            next_child: NextChild::Join,
            expiring_inbound: Vec::new(),
            reauth_on_rekey: false,
            reauth_pending: false,
            replacement: None,
            early_inbound: Vec::new(),
        })
    }
}

/// A re-authentication under way: which old outbound SAs its Child SAs
/// have still to replace, until when.
#[derive(Debug)]
pub(super) struct Replacement {
    /// The re-authentication is ours (we started the new IKE SA).
    pub(super) ours: bool,
    /// The old IKE SA's outbound SAs not replaced yet, by SPI.
    pub(super) old_out: Vec<u32>,
    /// When those that are left go.
    pub(super) until: Instant,
}

impl Replacement {
    /// When the old outbound SAs that are left go.
    pub(super) fn until(&self) -> Instant {
        self.until
    }
}
