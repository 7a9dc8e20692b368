//! What an [`super::IkeSa`] is given (its [`Config`], a source of
//! [`Random`] bytes) and what it hands back ([`Transmit`], [`Event`],
//! [`ChildSaParams`], [`Stats`]).

use core::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tunsec_esp::{Direction, Key, Mode, SaConfig, SaKeys, Suite};

use super::auth::CertAuth;
use super::ts;
use crate::cert::CertError;
use crate::error::{Error, Result};
use crate::message::{Identity, NotifyType, Proposal, ProtocolId, TrafficSelector};
use crate::proposal;

/// A source of random bytes: SPIs, nonces and ESP SPIs come from here, so
/// that tests can make them deterministic. (The key exchanges and the SK
/// payload IVs still draw from aws-lc-rs.)
pub trait Random {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<()>;
}

/// The system's random number generator, through aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
        aws_lc_rs::rand::fill(dest).map_err(|_| Error::Crypto("no randomness"))
    }
}

/// A deterministic generator (SplitMix64) for tests and simulations.
/// Never use it for real SAs: its output is predictable.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

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
    /// narrowed to the union of all of them.
    pub additional_children: Vec<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
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
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to: the peer's address (a responder answers the address a
    /// request came from, RFC 7296 section 2.11).
    pub dst: SocketAddr,
    /// The IKE message.
    pub bytes: Vec<u8>,
}

/// One direction of a Child SA, as negotiated: enough to build a
/// [`tunsec_esp::SaConfig`] with [`Self::sa_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSaParams {
    /// Inbound (we chose the SPI) or outbound (the peer did).
    pub direction: Direction,
    /// The SPI.
    pub spi: u32,
    /// The cipher suite.
    pub suite: Suite,
    /// Extended sequence numbers.
    pub esn: bool,
    /// Transport mode was agreed (USE_TRANSPORT_MODE); otherwise tunnel
    /// mode (RFC 7296 section 1.3.1), whose endpoints the caller sets in
    /// the [`SaConfig`] (tunsecd: the two underlay addresses).
    pub transport: bool,
    /// ESP travels in UDP (RFC 3948): NAT detection found a NAT, or one
    /// side forced it (RFC 7296 section 2.23).
    pub udp_encap: bool,
    /// The keys of this direction.
    pub keys: SaKeys,
    /// Our side's traffic selectors, as agreed.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's traffic selectors, as agreed.
    pub remote_ts: Vec<TrafficSelector>,
}

impl ChildSaParams {
    /// The ESP engine's configuration for this direction: transport mode
    /// (the caller sets `mode` to [`Mode::Tunnel`] with the endpoints when
    /// `transport` is false), ESP in UDP on port 4500 (the caller changes
    /// `encapsulation` for raw ESP), the negotiated ESN, and the selectors
    /// that are prefixes.
    pub fn sa_config(&self) -> SaConfig {
        let mut config = SaConfig::new(self.spi, self.direction, self.suite, self.keys.clone());
        config.mode = Mode::Transport;
        config.esn = self.esn;
        config.selectors = ts::to_esp_selectors(&self.local_ts, &self.remote_ts);
        config
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The peer answered AUTHENTICATION_FAILED: it did not accept our AUTH
    /// (most likely the pre-shared keys differ) or our identity.
    RejectedByPeer,
    /// The peer's AUTH payload does not verify with our pre-shared key.
    BadAuth,
    /// The peer's identity (its ID payload) is not the one configured
    /// (`remote_id`). With certificates this is
    /// [`CertError::UnexpectedIdentity`] instead.
    IdentityMismatch {
        /// The identity the peer sent.
        presented: Identity,
        /// The identity the configuration expects of the peer.
        expected: Identity,
    },
    /// Responder: the initiator asked for us (IDr, RFC 7296 section 3.5)
    /// by an identity that is neither our `local_id` nor, with a
    /// certificate, a name the certificate holds.
    NotOurIdentity {
        /// The identity the initiator asked for.
        asked: Identity,
        /// Our configured identity.
        ours: Identity,
    },
    /// The peer used an authentication method other than the one
    /// configured (a shared key, or a signature).
    UnsupportedMethod,
    /// The peer's message has no ID or no AUTH payload.
    MissingPayload,
    /// The peer's certificate, its identity in it, or its signature was
    /// refused (expired, unknown issuer, revoked, not pinned, identity
    /// mismatch, malformed CERT payload, bad signature...).
    Certificate(CertError),
}

impl AuthFailure {
    /// When the peer proved (or, with a PSK, named) an identity other than
    /// the configured `remote_id`: the identity it presented and the one
    /// expected. Both sides' configurations are then out of step: one
    /// side's `local_id` must be the other side's `remote_id`.
    pub fn unexpected_identity(&self) -> Option<(&Identity, &Identity)> {
        match self {
            Self::IdentityMismatch {
                presented,
                expected,
            }
            | Self::Certificate(CertError::UnexpectedIdentity {
                presented,
                expected,
            }) => Some((presented, expected)),
            _ => None,
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Certificate(e) => {
                return write!(f, "the peer's certificate or signature was refused: {e}");
            }
            Self::IdentityMismatch {
                presented,
                expected,
            } => {
                return write!(
                    f,
                    "the peer's identity is {}, the configuration expects {}",
                    crate::cert::describe_identity(presented),
                    crate::cert::describe_identity(expected)
                );
            }
            Self::NotOurIdentity { asked, ours } => {
                return write!(
                    f,
                    "the peer asked for {} (IDr), but we are {}",
                    crate::cert::describe_identity(asked),
                    crate::cert::describe_identity(ours)
                );
            }
            Self::RejectedByPeer => {
                "the peer answered AUTHENTICATION_FAILED (our credentials or identity not accepted)"
            }
            Self::BadAuth => {
                "the peer's AUTH does not verify with our pre-shared key (the keys differ)"
            }
            Self::UnsupportedMethod => {
                "the peer's AUTH method is not the configured one (shared key or signature)"
            }
            Self::MissingPayload => "the peer's IKE_AUTH message has no ID or no AUTH payload",
        };
        f.write_str(text)
    }
}

/// Something the owner of an IKE SA must know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Both sides authenticated each other: the IKE SA is up.
    IkeSaEstablished,
    /// A Child SA pair is up: install `inbound` before sending with
    /// `outbound`.
    ChildSaUp {
        /// The SA the peer sends to us with.
        inbound: ChildSaParams,
        /// The SA we send to the peer with.
        outbound: ChildSaParams,
    },
    /// A Child SA was rekeyed (RFC 7296 section 2.8): make before break.
    /// Install `inbound` at once and send with `outbound` from now on;
    /// keep the old inbound SA (`old_inbound_spi`) until the
    /// [`Event::ChildSaDown`] for the old pair, which follows when the old
    /// SAs are deleted. In a rekey collision (section 2.8.1) only the
    /// surviving new pair is reported.
    ChildSaRekeyed {
        /// Our inbound SPI of the replaced pair.
        old_inbound_spi: u32,
        /// Our outbound SPI of the replaced pair.
        old_outbound_spi: u32,
        /// The new SA the peer sends to us with.
        inbound: ChildSaParams,
        /// The new SA we send to the peer with.
        outbound: ChildSaParams,
    },
    /// Authentication failed; the IKE SA is closed.
    AuthFailed {
        /// What failed.
        reason: AuthFailure,
    },
    /// An exchange failed with an error notify. Unless the IKE SA was
    /// already established (a Child SA refused with NO_PROPOSAL_CHOSEN or
    /// TS_UNACCEPTABLE in IKE_AUTH), the IKE SA is closed; a responder
    /// that refused an IKE_SA_INIT keeps waiting for another.
    Failed {
        /// The notify type.
        notify: NotifyType,
        /// The peer sent it (`true`), or we did / would have (`false`).
        by_peer: bool,
    },
    /// The peer did not answer a request after every retransmission; the
    /// IKE SA is closed.
    PeerDead,
    /// The peer deleted the IKE SA (and with it the Child SAs); it is
    /// closed.
    IkeSaDeleted,
    /// The Child SA was deleted (by the peer, or after a rekey by either
    /// side): remove both SAs from the data plane.
    ChildSaDown {
        /// Our inbound SPI.
        inbound_spi: u32,
        /// The peer's (our outbound) SPI.
        outbound_spi: u32,
    },
    /// The IKE SA was rekeyed (RFC 7296 section 2.18): it goes on under
    /// new SPIs and keys, with the same Child SAs; the old one is deleted.
    IkeSaRekeyed {
        /// The old IKE SA's SPIs (initiator's, responder's).
        old_spis: (u64, u64),
        /// The new IKE SA's SPIs.
        spis: (u64, u64),
    },
    /// A local failure (the crypto library, the random source); the IKE SA
    /// is closed.
    LocalError(Error),
}

/// Messages dropped without a change of state, by reason, and
/// retransmissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that do not parse, or lack a payload they need.
    pub malformed: u64,
    /// Messages for another IKE SA (SPIs that are not ours).
    pub wrong_spi: u64,
    /// Messages with a message ID we do not expect.
    pub wrong_message_id: u64,
    /// SK payloads whose integrity check failed.
    pub integrity: u64,
    /// Messages that make no sense in the current state (a request to the
    /// initiator, another exchange type, anything after closing).
    pub unexpected: u64,
    /// Requests we sent again after a timeout.
    pub retransmits: u64,
    /// Retransmitted requests answered with the cached response.
    pub cached_responses: u64,
    /// Cookie requests (RFC 7296 section 2.6) the responder sent us, each
    /// followed by our IKE_SA_INIT request again with the cookie.
    pub cookies: u64,
    /// Requests with an unknown critical payload, answered
    /// UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 section 2.5).
    pub unsupported_critical: u64,
    /// Authentic IKE fragments (RFC 7383) received and kept.
    pub fragments_received: u64,
    /// Authentic IKE fragments dropped: duplicates, or over a bound.
    pub fragments_dropped: u64,
    /// IKE fragments sent, retransmissions included.
    pub fragments_sent: u64,
}
