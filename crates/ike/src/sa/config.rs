//! What an [`super::IkeSa`] is given: its [`Config`], with the
//! certificates and the clock it authenticates with ([`CertAuth`],
//! [`WallClock`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunsec_esp::Key;

use crate::cert::{Credentials, Trust, UnixTime};
use crate::error::Result;
use crate::message::{Identity, Proposal, ProtocolId, TrafficSelector};
use crate::proposal;

/// The configuration of one IKE SA with one peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our identity, sent in IDi or IDr.
    pub local_id: Identity,
    /// The identity the peer must prove; `None` accepts any identity that
    /// knows the PSK. An initiator also sends it as IDr.
    pub remote_id: Option<Identity>,
    /// The pre-shared key (RFC 7296 section 2.15); unused when
    /// [`Self::cert`] is set.
    pub psk: Key,
    /// Authenticate with certificates and signatures instead of the PSK
    /// (see `sa::auth`). `None` (the default): the PSK.
    pub cert: Option<Arc<CertAuth>>,
    /// The IKE proposals, most preferred first, numbered from 1.
    pub ike_proposals: Vec<Proposal>,
    /// The ESP proposals of the Child SA, most preferred first, numbered
    /// from 1, without SPIs (the state machine fills them in).
    pub esp_proposals: Vec<Proposal>,
    /// Our side of the Child SA's traffic (TSi for an initiator, TSr for a
    /// responder): what we offer, or what we narrow the peer's offer to.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side of the Child SA's traffic.
    pub remote_ts: Vec<TrafficSelector>,
    /// Ask for (initiator) or accept (responder) transport mode with the
    /// USE_TRANSPORT_MODE notify (RFC 7296 section 1.3.1). On by default.
    pub transport_mode: bool,
    /// The lifetime of a Child SA: it is rekeyed (RFC 7296 section 2.8)
    /// at 90% of it, minus a random jitter of up to another 10% so that
    /// both peers rarely start at once, and at least a second before its
    /// end. `None` (the default): no automatic rekeying;
    /// [`super::IkeSa::rekey_child`] still works. The hard end is the
    /// caller's to enforce (tunsecd gives its ESP SAs this hard
    /// lifetime).
    pub child_lifetime: Option<Duration>,
    /// The lifetime of the IKE SA: it is rekeyed (RFC 7296 section 2.18)
    /// at 90% of it minus a jitter of up to another 10%, like Child SAs.
    /// `None` (the default): no automatic rekeying;
    /// [`super::IkeSa::rekey_ike`] still works.
    pub ike_lifetime: Option<Duration>,
    /// Our IKE address and port as the peer should see them: turns on NAT
    /// detection (RFC 7296 section 2.23) and, when a NAT is found, ESP in
    /// UDP and the move of IKE to [`Self::natt_port`]. `None` (the
    /// default): no NAT traversal.
    pub local_addr: Option<SocketAddr>,
    /// The port IKE moves to, and ESP in UDP uses, when a NAT is detected
    /// or UDP encapsulation is forced: [`super::nat::NATT_PORT`] (4500)
    /// unless the deployment says otherwise.
    pub natt_port: u16,
    /// Force UDP encapsulation even without a NAT (strongSwan's `encap =
    /// yes`): our NAT_DETECTION_SOURCE_IP never matches, so both sides
    /// encapsulate. Needs [`Self::local_addr`].
    pub force_udp_encap: bool,
    /// Send INITIAL_CONTACT in IKE_AUTH (RFC 7296 section 2.4): we have no
    /// other IKE SA with this peer (we just started), so the peer deletes
    /// any it still holds with us.
    pub initial_contact: bool,
    /// More Child SAs that the initiator of the IKE SA creates with
    /// CREATE_CHILD_SA once IKE_AUTH is done (RFC 7296 section 1.3.1),
    /// each as our side's and the peer's traffic selectors. The first
    /// Child SA, in IKE_AUTH, is [`Self::local_ts`] and
    /// [`Self::remote_ts`].
    ///
    /// As responder, the peer's Child SAs (in IKE_AUTH or later) are
    /// narrowed to the union of all of them ([`Self::policy_ts`]), or to
    /// one of them with [`Self::narrow_to_one_child`].
    pub additional_children: Vec<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
    /// As responder of the IKE SA too, create the configured Child SAs
    /// (the first and [`Self::additional_children`]) that no Child SA
    /// covers [`CHILD_COMPLETION_DELAY`] after IKE_AUTH. This is the
    /// layout where each direction of a tunnel's traffic has a Child SA
    /// of its own and each side creates the one it sends with, as
    /// strongSwan does with `auto=route` and the connections that
    /// `ovs-monitor-ipsec` writes: a peer that initiates only its own
    /// would otherwise leave ours missing. The delay lets an initiator
    /// that creates them all (tunsecd) do so first. Off by default.
    pub create_missing_children: bool,
    /// As responder, narrow each of the peer's Child SAs to one
    /// configured Child SA ([`Self::children`], [`super::ts::narrow_to_child`])
    /// instead of to the union of all of them ([`Self::policy_ts`]). The
    /// union lets a host-to-host offer become one Child SA for every
    /// tunnel port (`selectors = "ports"`); with ovs-monitor-ipsec's
    /// `[udp/P] === [udp]` and `[udp] === [udp/P]` it would make a wide
    /// offer cover all of UDP both ways, which neither allows. Off by
    /// default.
    pub narrow_to_one_child: bool,
    /// A label for each configured Child SA ([`Self::children`], in
    /// order), which binds it to what the owner names (tunsecd: a virtual
    /// network), in a private-use notify (`labels.rs`): sent for ours, and
    /// as responder the labels we take. Empty (the default): none sent,
    /// and a peer's label is ignored.
    pub child_labels: Vec<Vec<u8>>,
    /// The most Child SAs this IKE SA carries at once, rekeys aside; a
    /// request for another is answered NO_ADDITIONAL_SAS (RFC 7296
    /// section 3.10.1). [`DEFAULT_MAX_CHILD_SAS`] by default.
    pub max_child_sas: usize,
    /// Offer IKE fragmentation (RFC 7383) in IKE_SA_INIT, and use it when
    /// the peer offers it too: encrypted messages longer than
    /// [`Self::fragment_size`] allows go as several SKF messages instead of
    /// IP fragments. On by default.
    pub fragmentation: bool,
    /// The largest IP datagram (IP and UDP headers included) an IKE
    /// fragment may make: [`super::fragment::DEFAULT_FRAGMENT_SIZE`]
    /// (1280) unless the deployment says otherwise; like strongSwan's
    /// `charon.fragment_size`.
    pub fragment_size: usize,
}

/// How many Child SAs an IKE SA carries at most unless
/// [`Config::max_child_sas`] says otherwise: a bound on what a peer can
/// make us hold.
pub const DEFAULT_MAX_CHILD_SAS: usize = 16;

/// How long the responder of an IKE SA with
/// [`Config::create_missing_children`] waits after IKE_AUTH before it
/// creates the configured Child SAs that the initiator did not.
pub const CHILD_COMPLETION_DELAY: Duration = Duration::from_secs(1);

impl Config {
    /// A configuration with the default proposals
    /// ([`proposal::DEFAULT_IKE`], [`proposal::DEFAULT_ESP`]), transport
    /// mode, IKE fragmentation at 1280 bytes, and selectors that cover all
    /// IPv4 traffic.
    pub fn new(local_id: Identity, remote_id: Option<Identity>, psk: Key) -> Self {
        Self {
            local_id,
            remote_id,
            psk,
            cert: None,
            ike_proposals: proposal::defaults(ProtocolId::Ike),
            esp_proposals: proposal::defaults(ProtocolId::Esp),
            local_ts: vec![TrafficSelector::any_ipv4()],
            remote_ts: vec![TrafficSelector::any_ipv4()],
            transport_mode: true,
            child_lifetime: None,
            ike_lifetime: None,
            local_addr: None,
            natt_port: super::nat::NATT_PORT,
            force_udp_encap: false,
            initial_contact: false,
            additional_children: Vec::new(),
            child_labels: Vec::new(),
            create_missing_children: false,
            narrow_to_one_child: false,
            max_child_sas: DEFAULT_MAX_CHILD_SAS,
            fragmentation: true,
            fragment_size: super::fragment::DEFAULT_FRAGMENT_SIZE,
        }
    }

    /// Authenticates with a certificate (RFC 7296 section 2.15 with
    /// signatures) instead of the PSK.
    pub fn with_cert(mut self, cert: Arc<CertAuth>) -> Self {
        self.cert = Some(cert);
        self
    }

    /// Replaces the proposals with comma-separated lists in strongSwan's
    /// syntax (`"aes256gcm16-prfsha384-ecp384"`, `"aes256gcm16,aes128gcm16"`).
    pub fn with_proposals(mut self, ike: &str, esp: &str) -> Result<Self> {
        self.ike_proposals = proposal::parse_list(ike, ProtocolId::Ike)?;
        self.esp_proposals = proposal::parse_list(esp, ProtocolId::Esp)?;
        Ok(self)
    }

    /// Replaces the traffic selectors (seen from this host).
    pub fn with_selectors(
        mut self,
        local: Vec<TrafficSelector>,
        remote: Vec<TrafficSelector>,
    ) -> Self {
        self.local_ts = local;
        self.remote_ts = remote;
        self
    }

    /// What the peer's Child SAs are narrowed to (RFC 7296 section 2.9):
    /// the union of the first Child SA's selectors and those of
    /// [`Self::additional_children`], as (ours, the peer's).
    pub fn policy_ts(&self) -> (Vec<TrafficSelector>, Vec<TrafficSelector>) {
        let mut local = self.local_ts.clone();
        let mut remote = self.remote_ts.clone();
        for (l, r) in &self.additional_children {
            local.extend(
                l.iter()
                    .filter(|t| !local.contains(t))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            remote.extend(
                r.iter()
                    .filter(|t| !remote.contains(t))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        (local, remote)
    }

    /// The configured Child SAs, as (ours, the peer's) selectors: the
    /// first (in IKE_AUTH), then [`Self::additional_children`]. A peer's
    /// Child SA is narrowed to one of them (RFC 7296 section 2.9).
    pub fn children(&self) -> Vec<(Vec<TrafficSelector>, Vec<TrafficSelector>)> {
        let first = (self.local_ts.clone(), self.remote_ts.clone());
        core::iter::once(first)
            .chain(self.additional_children.iter().cloned())
            .collect()
    }

    /// The configured Child SA `k` (0: the first), as (ours, the peer's).
    pub(super) fn child(&self, k: usize) -> Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)> {
        match k {
            0 => Some((self.local_ts.clone(), self.remote_ts.clone())),
            k => self.additional_children.get(k - 1).cloned(),
        }
    }
}

/// Where the wall-clock time for certificate validity comes from. The
/// state machine is otherwise driven by a monotonic `now: Instant`; X.509
/// validity needs the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WallClock {
    /// The system clock (`SystemTime::now()`), for real SAs.
    System,
    /// A calendar time tied to an instant of the driven clock: at `now` it
    /// is `unix + (now - instant)`. Deterministic, for tests and
    /// simulations.
    Anchored {
        /// An instant of the driven clock.
        instant: Instant,
        /// The calendar time at `instant`.
        unix: UnixTime,
    },
}

impl WallClock {
    /// The calendar time at `now`.
    pub fn at(&self, now: Instant) -> UnixTime {
        match *self {
            Self::System => UnixTime::now(),
            Self::Anchored { instant, unix } => {
                let secs = Duration::from_secs(unix.as_secs());
                let elapsed = now.saturating_duration_since(instant);
                UnixTime::since_unix_epoch(secs + elapsed)
            }
        }
    }
}

/// Certificate authentication for one peer: our key and chain, whom we
/// trust to vouch for the peer, and the clock to check validity with.
#[derive(Debug)]
pub struct CertAuth {
    /// Our private key and certificate chain (end entity first).
    pub credentials: Credentials,
    /// The peer's trust model: CAs with CRLs, or pins.
    pub trust: Trust,
    /// The calendar for validity periods.
    pub clock: WallClock,
}

impl CertAuth {
    /// Certificate authentication with the system clock.
    pub fn new(credentials: Credentials, trust: Trust) -> Self {
        Self {
            credentials,
            trust,
            clock: WallClock::System,
        }
    }
}
