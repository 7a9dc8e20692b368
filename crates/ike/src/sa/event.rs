//! What an [`super::IkeSa`] hands back: datagrams to send
//! ([`Transmit`]), [`Event`]s with the negotiated [`ChildSaParams`] and
//! the reasons of failures ([`AuthFailure`]), and its counters
//! ([`Stats`]).

use core::fmt;
use std::net::SocketAddr;

use tunsec_esp::{Direction, Mode, SaConfig, SaKeys, Suite};

use super::ts;
use crate::cert::CertError;
use crate::error::Error;
use crate::message::{DhGroup, Identity, NotifyType, TrafficSelector};

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
    /// The key exchanges whose secrets went into the keys, in order: the
    /// CREATE_CHILD_SA's KE (PFS, RFC 7296 section 1.3.1) and the
    /// additional ones of IKE_FOLLOWUP_KE (RFC 9370); empty for keys from
    /// SK_d alone (the Child SA of IKE_AUTH, a rekey without PFS).
    pub key_exchanges: Vec<DhGroup>,
    /// The label both sides agreed for the Child SA
    /// ([`super::Config::child_labels`]), or `None`: unlabelled.
    pub label: Option<Vec<u8>>,
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

/// A Child SA pair that is up, as [`super::IkeSa::child_sas`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSummary {
    /// Our SPI.
    pub inbound_spi: u32,
    /// The peer's SPI.
    pub outbound_spi: u32,
    /// The key exchanges its keys came from
    /// ([`ChildSaParams::key_exchanges`]).
    pub key_exchanges: Vec<DhGroup>,
    /// Its label ([`ChildSaParams::label`]).
    pub label: Option<Vec<u8>>,
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
