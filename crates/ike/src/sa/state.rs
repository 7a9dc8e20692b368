//! What an IKE SA holds: [`IkeSa`] and its [`State`], rustls-style: each
//! state is a struct with what the next step needs, and that step consumes
//! it. The steps are `impl IkeSa` blocks in the files beside this one:
//!
//! - `exchange.rs` takes each message in, routes it by role and state, and
//!   owns the request/response machinery (message IDs, the response cache,
//!   retransmission, fragments);
//! - `initiator.rs` handles [`InitSent`] and [`AuthSent`], `responder.rs`
//!   `ExpectInit` and [`ExpectAuth`];
//! - [`Established`] is served by `informational.rs` (liveness, DELETE),
//!   `child.rs` (CREATE_CHILD_SA for Child SAs, collisions, the request
//!   queue), `followup.rs` (IKE_FOLLOWUP_KE, the additional key
//!   exchanges of a CREATE_CHILD_SA) and `ike_rekey.rs` (the IKE SA's own
//!   rekey, [`Retiring`]).
//!
//! This file holds the types and what only reads them, so that the other
//! files import from it and it imports from none of them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tunsec_esp::Key;

use super::config::Config;
use super::event::{ChildSaParams, ChildSummary, Event, Stats, Transmit};
use super::fragment;
use super::logging;
use super::nat::NatState;
use super::random::{Random, random_u64};
use crate::cert::HashAlgorithm;
use crate::crypto::{
    IkeKeys, IkeSuite, KeyExchange, SkCipher, int_auth, int_auth_octets, skeyseed,
};
use crate::error::{Error, Result};
use crate::message::DhGroup;
use crate::message::{
    ExchangeType, Header, MAJOR_VERSION, Payload, PayloadType, Proposal, SaPayload, TrafficSelector,
};
use crate::proposal;

/// How many INVALID_KE_PAYLOAD answers the initiator follows.
pub(super) const MAX_KE_RETRIES: u8 = 2;

/// Which end of the IKE SA we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Initiator,
    Responder,
}

impl Role {
    /// Our own SPI among an IKE SA's `spis` (initiator's, responder's).
    pub(super) fn own_spi(self, spis: (u64, u64)) -> u64 {
        match self {
            Self::Initiator => spis.0,
            Self::Responder => spis.1,
        }
    }
}

/// Why a datagram was dropped; each reason has a counter in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Discard {
    Malformed,
    WrongSpi,
    WrongMessageId,
    Integrity,
    Unexpected,
}

/// A message as it arrived: when, from where, its header (decoded first,
/// to route it) and all its bytes.
#[derive(Clone, Copy)]
pub(super) struct Received<'a> {
    pub(super) now: Instant,
    pub(super) remote: SocketAddr,
    pub(super) header: Header,
    pub(super) bytes: &'a [u8],
}

impl Received<'_> {
    /// Logs the message with its payloads, once decoded or opened
    /// ([`logging::message`]).
    pub(super) fn log(&self, payloads: &[Payload]) {
        logging::message(
            logging::Direction::Received,
            Some(self.remote),
            &self.header,
            payloads,
            1,
        );
    }
}

/// The keys and ciphers of an IKE SA once IKE_SA_INIT is done.
pub(super) struct Sk {
    pub(super) suite: IkeSuite,
    pub(super) keys: IkeKeys,
    /// Seals what we send.
    pub(super) outbound: SkCipher,
    /// Opens what we receive.
    pub(super) inbound: SkCipher,
}

/// Initiator: IKE_SA_INIT request sent (`initiator.rs`).
pub(super) struct InitSent {
    pub(super) kex: Box<dyn KeyExchange>,
    pub(super) ni: Vec<u8>,
    /// The request as sent: RealMessage1, which our AUTH covers.
    pub(super) request: Vec<u8>,
    pub(super) ke_retries: u8,
    /// The responder's cookie, sent first in `request` (section 2.6).
    pub(super) cookie: Option<Vec<u8>>,
}

/// Initiator: IKE_AUTH request sent (`initiator.rs`).
pub(super) struct AuthSent {
    pub(super) sk: Sk,
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// The responder's IKE_SA_INIT response as received: RealMessage2,
    /// which its AUTH covers.
    pub(super) init_response: Vec<u8>,
    /// The first Child SA, as offered.
    pub(super) offer: ChildOffer,
    /// What the responder's AUTH covers after its signed octets: the
    /// IntAuth of IKE_INTERMEDIATE exchanges, if there were any
    /// (`intermediate.rs`).
    pub(super) int_auth: Vec<u8>,
}

/// What we offer for a Child SA, in IKE_AUTH or CREATE_CHILD_SA (RFC 7296
/// section 1.3.1), and check the responder's answer against.
pub(super) struct ChildOffer {
    /// Our ESP SPI, inbound.
    pub(super) esp_spi: u32,
    /// The ESP proposals as offered, with our SPI.
    pub(super) proposals: Vec<Proposal>,
    pub(super) tsi: Vec<TrafficSelector>,
    pub(super) tsr: Vec<TrafficSelector>,
    /// The label we send (`labels.rs`), and whether the answer must
    /// repeat it (a rekey of a labelled Child SA).
    pub(super) label: Option<Vec<u8>>,
    pub(super) label_required: bool,
}

impl ChildOffer {
    /// The offer of `proposals` under our SPI `esp_spi`, for the selectors
    /// `tsi` (ours) and `tsr` (the peer's).
    pub(super) fn new(
        esp_spi: u32,
        proposals: &[Proposal],
        tsi: Vec<TrafficSelector>,
        tsr: Vec<TrafficSelector>,
    ) -> Self {
        Self {
            esp_spi,
            proposals: proposal::with_spi(proposals, &esp_spi.to_be_bytes()),
            tsi,
            tsr,
            label: None,
            label_required: false,
        }
    }

    /// The offer with `label`, which the answer must repeat if
    /// `required`.
    pub(super) fn with_label(mut self, label: Option<Vec<u8>>, required: bool) -> Self {
        self.label = label;
        self.label_required = required;
        self
    }

    /// The SA payload of the offer.
    pub(super) fn sa(&self) -> Payload {
        Payload::Sa(SaPayload {
            proposals: self.proposals.clone(),
        })
    }

    /// Logs the offer (in IKE_AUTH or CREATE_CHILD_SA, `what`) to `peer`:
    /// the ESP proposals with our inbound SPI, and the traffic selectors.
    pub(super) fn log(&self, peer: Option<SocketAddr>, what: &str) {
        tracing::debug!(
            peer = %logging::Peer(peer),
            proposals = %logging::Proposals(&self.proposals),
            spi_in = %logging::Hex(self.esp_spi),
            "ESP proposals offered ({what})"
        );
        tracing::debug!(
            peer = %logging::Peer(peer),
            tsi = %logging::Selectors(&self.tsi),
            tsr = %logging::Selectors(&self.tsr),
            "traffic selectors offered ({what})"
        );
    }
}

/// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (`responder.rs`).
pub(super) struct ExpectAuth {
    pub(super) sk: Sk,
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// The initiator's IKE_SA_INIT request as received (RealMessage1).
    pub(super) init_request: Vec<u8>,
    /// Our response as sent (RealMessage2).
    pub(super) init_response: Vec<u8>,
    /// The initiator's SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4).
    pub(super) peer_hashes: Option<Vec<HashAlgorithm>>,
    /// The additional key exchanges still to run in IKE_INTERMEDIATE
    /// exchanges (RFC 9370), and the IntAuth chain so far
    /// (`intermediate.rs`).
    pub(super) pending: Vec<DhGroup>,
    pub(super) chain: IntAuthChain,
    /// The message ID of the initiator's next request: 1 after
    /// IKE_SA_INIT, one more after each IKE_INTERMEDIATE exchange.
    pub(super) next_id: u32,
}

/// Both sides authenticated (`informational.rs`, `child.rs`,
/// `ike_rekey.rs`).
pub(super) struct Established {
    pub(super) sk: Sk,
    /// The Child SAs that are up, the first one (from IKE_AUTH) first.
    pub(super) children: Vec<Child>,
    /// Our DELETE of the IKE SA is on its way.
    pub(super) deleting: bool,
    /// What our outstanding CREATE_CHILD_SA or child DELETE request is
    /// about (liveness checks and the IKE SA's DELETE leave it `None`).
    pub(super) request: Option<Request>,
    /// Requests that wait for the outstanding one (window of 1).
    pub(super) queue: VecDeque<Queued>,
    /// When the IKE SA is rekeyed automatically.
    pub(super) ike_rekey_at: Option<Instant>,
    /// Replaced or redundant pairs that the peer deletes.
    pub(super) retired: Vec<Retired>,
    /// The peer's rekey of the same Child SA, answered while ours was
    /// outstanding (RFC 7296 section 2.8.1), until ours is answered.
    pub(super) collision: Option<Collided>,
    /// Responder with [`super::Config::create_missing_children`]: when it
    /// creates the configured Child SAs that no Child SA covers yet.
    pub(super) complete_at: Option<Instant>,
    /// The peer's CREATE_CHILD_SA whose additional key exchanges are
    /// still to come (`followup.rs`).
    pub(super) followup: Option<FollowupPending>,
}

/// One Child SA pair of an established IKE SA.
pub(super) struct Child {
    /// Our SPI: the peer sends with it.
    pub(super) inbound: u32,
    /// The peer's SPI: we send with it.
    pub(super) outbound: u32,
    /// The selectors (ours, the peer's) that a rekey of ours proposes
    /// (RFC 7296 section 2.8: the same as the SA it replaces), as
    /// negotiated; `None`: the configured first Child SA's.
    pub(super) ts: Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
    /// When it is rekeyed automatically.
    pub(super) rekey_at: Option<Instant>,
    /// The key exchanges its keys came from
    /// ([`ChildSaParams::key_exchanges`]).
    pub(super) key_exchanges: Vec<DhGroup>,
    /// Its label ([`ChildSaParams::label`]), which its rekeys keep.
    pub(super) label: Option<Vec<u8>>,
}

impl Child {
    /// The Child SA that `inbound` and `outbound` bring up, rekeyed at
    /// `rekey_at`, with their selectors (which a rekey of ours proposes
    /// again, ours first).
    pub(super) fn new(
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
        rekey_at: Option<Instant>,
    ) -> Self {
        Self {
            inbound: inbound.spi,
            outbound: outbound.spi,
            ts: Some((inbound.local_ts.clone(), inbound.remote_ts.clone())),
            rekey_at,
            key_exchanges: inbound.key_exchanges.clone(),
            label: inbound.label.clone(),
        }
    }

    pub(super) fn spis(&self) -> (u32, u32) {
        (self.inbound, self.outbound)
    }
}

/// What an outstanding request is about.
pub(super) enum Request {
    /// A CREATE_CHILD_SA for a Child SA: a rekey or a new one.
    Rekey(Box<RekeySent>),
    /// An IKE_FOLLOWUP_KE that goes on with such a CREATE_CHILD_SA
    /// (`followup.rs`).
    Followup(Box<FollowupSent>),
    IkeRekey(Box<IkeRekeySent>),
    DeleteChild(Retired),
}

impl Request {
    /// Whether this request rekeys or creates the Child SA `target`, in
    /// its CREATE_CHILD_SA or in an IKE_FOLLOWUP_KE after it.
    pub(super) fn is_for(&self, target: ChildTarget) -> bool {
        match self {
            Self::Rekey(r) => r.target == target,
            Self::Followup(f) => f.target == Some(target),
            _ => false,
        }
    }
}

/// The shared secrets of a CREATE_CHILD_SA and of the IKE_FOLLOWUP_KE
/// exchanges after it so far (RFC 9370 section 2.2.2), and the methods of
/// those still to run.
pub(super) struct KeSecrets {
    /// SK(0), the shared secret of the CREATE_CHILD_SA's KE payloads.
    pub(super) first: Option<Key>,
    /// SK(1), SK(2)...: the shared secrets of the exchanges done.
    pub(super) done: Vec<Key>,
    /// The methods of the exchanges still to run, the next first.
    pub(super) remaining: VecDeque<DhGroup>,
}

/// A Child SA pair that a CREATE_CHILD_SA agreed on, while the additional
/// key exchanges of its proposal run in IKE_FOLLOWUP_KE exchanges (RFC
/// 9370 section 2.2.2). Its keys are derived once every exchange is done
/// ([`ChildKeying::finish`], in `followup.rs`); until then the pair is
/// known to nobody outside.
pub(super) struct ChildKeying {
    /// The nonces of the CREATE_CHILD_SA exchange.
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// The pair as agreed: SPIs, suite, selectors (keys not final).
    pub(super) inbound: ChildSaParams,
    pub(super) outbound: ChildSaParams,
    /// Whether we initiated the CREATE_CHILD_SA (which splits the keys,
    /// RFC 7296 section 2.17).
    pub(super) initiated: bool,
    pub(super) secrets: KeSecrets,
}

/// A new IKE SA that a CREATE_CHILD_SA agreed on (RFC 7296 section 1.3.2),
/// while the additional key exchanges of its proposal run in
/// IKE_FOLLOWUP_KE exchanges on the old one (RFC 9370 section 2.2.2).
pub(super) struct IkeKeying {
    /// The new IKE SA's SPIs (initiator's, responder's): the initiator is
    /// the one that started the rekey.
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    pub(super) suite: IkeSuite,
    /// Whether we started the rekey.
    pub(super) initiated: bool,
    pub(super) secrets: KeSecrets,
}

/// What a chain of IKE_FOLLOWUP_KE exchanges makes.
pub(super) enum Rekeying {
    /// A Child SA.
    Child(Box<ChildKeying>),
    /// The IKE SA that replaces this one.
    Ike(IkeKeying),
}

impl Rekeying {
    pub(super) fn secrets(&mut self) -> &mut KeSecrets {
        match self {
            Self::Child(c) => &mut c.secrets,
            Self::Ike(i) => &mut i.secrets,
        }
    }
}

/// A new Child SA pair that our rekey made, with the nonces of the
/// CREATE_CHILD_SA that made it (which settle a collision, RFC 7296
/// section 2.8.1).
pub(super) struct NewPair {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    pub(super) inbound: ChildSaParams,
    pub(super) outbound: ChildSaParams,
}

/// The IKE SA that a rekey makes: its SPIs (initiator's, responder's) and
/// keys.
pub(super) struct NewIkeSa {
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) sk: Sk,
}

/// Initiator: an IKE_FOLLOWUP_KE request sent with the key share of the
/// next additional key exchange of a CREATE_CHILD_SA of ours.
pub(super) struct FollowupSent {
    /// What the CREATE_CHILD_SA was for: a Child SA (`Some`) or the IKE
    /// SA.
    pub(super) target: Option<ChildTarget>,
    pub(super) rekeying: Rekeying,
    pub(super) kex: Box<dyn KeyExchange>,
}

/// Responder: a peer's CREATE_CHILD_SA answered, its IKE_FOLLOWUP_KE
/// requests expected (RFC 9370 section 2.2.2).
pub(super) struct FollowupPending {
    /// For a Child SA, the pair it rekeys (`None` for a new one).
    pub(super) old: Option<(u32, u32)>,
    pub(super) rekeying: Rekeying,
    /// The ADDITIONAL_KEY_EXCHANGE data we gave the peer.
    pub(super) link: Vec<u8>,
    /// When it is forgotten if the peer has not gone on.
    pub(super) deadline: Instant,
}

/// A request that waits for the outstanding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Rekey the Child SA with this inbound SPI.
    Rekey(u32),
    /// Create the configured Child SA `k` ([`Config::child`]: 0 is the
    /// first, `k` is [`Config::additional_children`]`[k - 1]`).
    CreateChild(usize),
    IkeRekey,
    DeleteChild(Retired),
}

/// What a CREATE_CHILD_SA request of ours for a Child SA is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildTarget {
    /// A rekey of the pair (inbound, outbound).
    Rekey((u32, u32)),
    /// A new Child SA: the configured one `k` ([`Config::child`]).
    Create(usize),
}

/// A Child SA pair on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retired {
    pub(super) inbound: u32,
    pub(super) outbound: u32,
    /// Whether the owner knows it (emit [`Event::ChildSaDown`] when it
    /// goes); a redundant pair of a collision never came up.
    pub(super) announce: bool,
}

/// Our CREATE_CHILD_SA request that rekeys a Child SA or creates one.
pub(super) struct RekeySent {
    /// What it is for.
    pub(super) target: ChildTarget,
    pub(super) ni: Vec<u8>,
    /// The PFS key exchange, if the ESP proposals name a group.
    pub(super) kex: Option<Box<dyn KeyExchange>>,
    pub(super) offer: ChildOffer,
    /// How many INVALID_KE_PAYLOAD answers this rekey followed.
    pub(super) ke_retries: u8,
}

/// The pair from the peer's colliding rekey, with its nonces.
pub(super) struct Collided {
    /// The pair both sides rekey (inbound, outbound).
    pub(super) old: (u32, u32),
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    pub(super) inbound: ChildSaParams,
    pub(super) outbound: ChildSaParams,
}

/// Our CREATE_CHILD_SA request that rekeys the IKE SA.
pub(super) struct IkeRekeySent {
    /// Our SPI of the new IKE SA (we are its initiator).
    pub(super) spi_i: u64,
    pub(super) ni: Vec<u8>,
    pub(super) kex: Box<dyn KeyExchange>,
    pub(super) offer: Vec<Proposal>,
    pub(super) ke_retries: u8,
}

/// The IKE SA that a rekey replaced, until it is deleted.
pub(super) struct Retiring {
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) role: Role,
    pub(super) sk: Sk,
    /// Our DELETE of it, while unanswered.
    pub(super) outstanding: Option<Outstanding>,
    /// The last response we sent on it, for retransmitted requests.
    pub(super) last_response: Option<(u32, Vec<Vec<u8>>)>,
    pub(super) peer_next_id: u32,
    pub(super) next_request_id: u32,
    /// When it goes without further ado.
    pub(super) deadline: Instant,
}

/// The IntAuth chains of both sides (RFC 9242 section 3.3.1), empty
/// until the first IKE_INTERMEDIATE exchange.
#[derive(Default)]
pub(super) struct IntAuthChain {
    i: Option<Key>,
    r: Option<Key>,
}

impl IntAuthChain {
    /// Adds an IKE_INTERMEDIATE message (its header and inner payloads)
    /// to its sender's chain, under the SK_pi or SK_pr of `sk`, the keys
    /// that protect the exchange.
    pub(super) fn add(
        &mut self,
        from_initiator: bool,
        sk: &Sk,
        header: &Header,
        payloads: &[Payload],
    ) -> Result<()> {
        let octets = int_auth_octets(header, payloads)?;
        let (link, sk_p) = if from_initiator {
            (&mut self.i, &sk.keys.sk_pi)
        } else {
            (&mut self.r, &sk.keys.sk_pr)
        };
        let previous = link
            .as_ref()
            .map(|k| k.expose().to_vec())
            .unwrap_or_default();
        *link = Some(int_auth(sk.suite.prf, sk_p, &previous, &octets));
        Ok(())
    }

    /// What AUTH covers after the signed octets (RFC 9242 section 3.3.2):
    /// `IntAuth_iN | IntAuth_rN | IKE_AUTH_MID`, or nothing without an
    /// IKE_INTERMEDIATE exchange.
    pub(super) fn suffix(&self, ike_auth_message_id: u32) -> Vec<u8> {
        match (&self.i, &self.r) {
            (Some(i), Some(r)) => {
                [i.expose(), r.expose(), &ike_auth_message_id.to_be_bytes()].concat()
            }
            _ => Vec::new(),
        }
    }
}

/// What the initiator keeps from IKE_SA_INIT for IKE_AUTH.
pub(super) struct Handshake {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    /// Our IKE_SA_INIT request (RealMessage1).
    pub(super) init_request: Vec<u8>,
    /// The responder's IKE_SA_INIT response (RealMessage2).
    pub(super) init_response: Vec<u8>,
    pub(super) peer_hashes: Option<Vec<HashAlgorithm>>,
}

/// Initiator: an IKE_INTERMEDIATE request sent with the key share of the
/// next additional key exchange.
pub(super) struct IntermediateSent {
    pub(super) sk: Sk,
    pub(super) handshake: Handshake,
    pub(super) kex: Box<dyn KeyExchange>,
    /// The additional key exchanges after this one.
    pub(super) remaining: Vec<DhGroup>,
    pub(super) chain: IntAuthChain,
}

/// The states, rustls-style: each holds what the next step needs, and a
/// step consumes it.
pub(super) enum State {
    InitSent(Box<InitSent>),
    /// Initiator: an IKE_INTERMEDIATE request sent (`intermediate.rs`).
    IntermediateSent(Box<IntermediateSent>),
    AuthSent(Box<AuthSent>),
    /// Responder: waiting for an IKE_SA_INIT request (`responder.rs`).
    ExpectInit,
    ExpectAuth(Box<ExpectAuth>),
    Established(Box<Established>),
    Closed,
}

impl State {
    /// The keys of the IKE SA, once IKE_SA_INIT is done (and until it
    /// closes).
    pub(super) fn sk(&self) -> Option<&Sk> {
        match self {
            Self::IntermediateSent(st) => Some(&st.sk),
            Self::AuthSent(st) => Some(&st.sk),
            Self::ExpectAuth(st) => Some(&st.sk),
            Self::Established(st) => Some(&st.sk),
            _ => None,
        }
    }
}

/// A request waiting for its response.
pub(super) struct Outstanding {
    pub(super) message_id: u32,
    pub(super) exchange: ExchangeType,
    /// The message, or its fragments (RFC 7383), all sent again on a
    /// retransmission.
    pub(super) bytes: Vec<Vec<u8>>,
    pub(super) transmissions: u32,
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// An authenticated request of the peer's came since the last
    /// transmission: it is alive (`exchange::MAX_EXTRA_TRANSMISSIONS`).
    pub(super) heard: bool,
}

/// One IKE SA with one peer: a sans-IO state machine (see the
/// [`sa`](super) module).
pub struct IkeSa {
    pub(super) config: Config,
    pub(super) role: Role,
    pub(super) remote: Option<SocketAddr>,
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) state: State,
    pub(super) rng: Box<dyn Random + Send>,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    /// Initiator: the request waiting for a response.
    pub(super) outstanding: Option<Outstanding>,
    /// Responder: the message ID and bytes of the last response (or its
    /// fragments), for retransmitted requests.
    pub(super) last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// The longest encrypted message we send unfragmented, once both
    /// sides announced IKE fragmentation in IKE_SA_INIT (RFC 7383).
    pub(super) fragment_limit: Option<usize>,
    /// The peer's fragmented messages being put together.
    pub(super) reassembly: fragment::Reassembly,
    /// The message ID of the peer's next request (RFC 7296 section 2.2:
    /// each side numbers its own requests from 0).
    pub(super) peer_next_id: u32,
    /// The message ID of our next request.
    pub(super) next_request_id: u32,
    /// Responder: when a half-open IKE SA is given up.
    pub(super) half_open_deadline: Option<Instant>,
    /// Our address as the peer should see it (NAT traversal on), moved to
    /// the NAT-T port when a NAT is found.
    pub(super) local: Option<SocketAddr>,
    /// What NAT detection found; `None` until IKE_SA_INIT is done, or if
    /// either side does no NAT traversal.
    pub(super) nat: Option<NatState>,
    /// The peer sent INITIAL_CONTACT in its IKE_AUTH request.
    pub(super) peer_initial_contact: bool,
    /// The IKE SA a rekey replaced, until it is deleted.
    pub(super) retiring: Option<Box<Retiring>>,
    /// The peer did not repeat the label of our first Child SA: it does
    /// not know labels (`labels.rs`).
    pub(super) peer_lacks_labels: bool,
    /// When the current IKE SA (its current keys) came up.
    pub(super) established_at: Option<Instant>,
    pub(super) stats: Stats,
}

impl core::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSa")
            .field("role", &self.role)
            .field("state", &self.state_name())
            .field("spi_i", &format_args!("{:016x}", self.spi_i))
            .field("spi_r", &format_args!("{:016x}", self.spi_r))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Established {
    /// Queues a request unless the same one is queued or outstanding.
    pub(super) fn enqueue(&mut self, q: Queued) {
        let outstanding = match (q, &self.request) {
            (Queued::Rekey(spi), Some(Request::Rekey(r))) => {
                matches!(r.target, ChildTarget::Rekey((i, _)) if i == spi)
            }
            (Queued::CreateChild(k), Some(Request::Rekey(r))) => r.target == ChildTarget::Create(k),
            (Queued::IkeRekey, Some(Request::IkeRekey(_))) => true,
            _ => false,
        };
        if !outstanding && !self.queue.contains(&q) {
            self.queue.push_back(q);
        }
    }

    /// Established with the first Child SA, if IKE_AUTH's `event` brought
    /// it up, rekeyed at `rekey_at`.
    pub(super) fn new(sk: Sk, event: &Event, rekey_at: Option<Instant>) -> Self {
        let child = match event {
            Event::ChildSaUp { inbound, outbound } => Some(Child::new(inbound, outbound, rekey_at)),
            _ => None,
        };
        Self {
            sk,
            children: child.into_iter().collect(),
            deleting: false,
            request: None,
            queue: VecDeque::new(),
            ike_rekey_at: None,
            retired: Vec::new(),
            collision: None,
            complete_at: None,
            followup: None,
        }
    }

    /// The Child SA whose pair is (inbound, outbound).
    pub(super) fn child(&self, pair: (u32, u32)) -> Option<usize> {
        self.children.iter().position(|c| c.spis() == pair)
    }

    /// The Child SA we send to the peer with SPI `outbound`.
    pub(super) fn child_by_outbound(&self, outbound: &[u8]) -> Option<usize> {
        self.children
            .iter()
            .position(|c| outbound == c.outbound.to_be_bytes())
    }

    /// When the next Child SA is rekeyed automatically.
    pub(super) fn next_child_rekey(&self) -> Option<Instant> {
        self.children.iter().filter_map(|c| c.rekey_at).min()
    }

    /// Forgets queued rekeys of the pair with inbound SPI `inbound`.
    pub(super) fn unqueue_rekey(&mut self, inbound: u32) {
        self.queue.retain(|q| *q != Queued::Rekey(inbound));
    }
}

/// How long before the end of its lifetime an SA is rekeyed at the
/// latest, for short lifetimes (the driver stops a Child SA at the end,
/// and a rekey takes a round trip, or a few with retransmissions).
const REKEY_MARGIN: Duration = Duration::from_secs(1);

/// When an SA that comes up at `now` is rekeyed: at 90% of the lifetime
/// minus a random jitter of up to 10% of it, and at least
/// [`REKEY_MARGIN`] before its end (but not before half of it).
pub(super) fn rekey_time(
    lifetime: Option<Duration>,
    rng: &mut dyn Random,
    now: Instant,
) -> Option<Instant> {
    let lifetime = lifetime?;
    let range = (lifetime.as_nanos() / 10).max(1);
    let jitter = u128::from(random_u64(rng).unwrap_or(0)) % range;
    let soft = lifetime.as_nanos() * 9 / 10 - jitter;
    let latest = lifetime
        .saturating_sub(REKEY_MARGIN)
        .max(lifetime / 2)
        .as_nanos();
    let at = soft.min(latest);
    Some(now + Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX)))
}

/// The header of a message we send on the IKE SA with SPIs `spis`
/// (initiator's, responder's), in role `role` (RFC 7296 section 3.1: the
/// I flag marks the original initiator's messages).
pub(super) fn header(
    spis: (u64, u64),
    role: Role,
    exchange: ExchangeType,
    response: bool,
    message_id: u32,
) -> Header {
    Header {
        initiator_spi: spis.0,
        responder_spi: spis.1,
        next_payload: PayloadType::None,
        major_version: MAJOR_VERSION,
        minor_version: 0,
        exchange_type: exchange,
        response,
        version: false,
        initiator: role == Role::Initiator,
        message_id,
        length: 0,
    }
}

impl IkeSa {
    /// An IKE SA in `state` with nothing exchanged yet: no SPIs, no peer
    /// address, no request or response, the local address from `config`.
    pub(super) fn fresh(
        config: Config,
        role: Role,
        state: State,
        rng: Box<dyn Random + Send>,
    ) -> Self {
        let local = config.local_addr;
        Self {
            config,
            role,
            remote: None,
            spi_i: 0,
            spi_r: 0,
            state,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            outstanding: None,
            last_response: None,
            fragment_limit: None,
            reassembly: fragment::Reassembly::default(),
            peer_next_id: 0,
            next_request_id: 0,
            half_open_deadline: None,
            local,
            nat: None,
            peer_initial_contact: false,
            peer_lacks_labels: false,
            retiring: None,
            established_at: None,
            stats: Stats::default(),
        }
    }

    /// Drop and retransmission counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Our own IKE SPIs: of the current IKE SA, and of the one a rekey
    /// replaced while it is being deleted. [`Endpoint`](super::Endpoint) finds the IKE SA
    /// by either.
    pub fn local_spis(&self) -> impl Iterator<Item = u64> + '_ {
        core::iter::once(self.role.own_spi(self.spis()))
            .chain(self.retiring.as_ref().map(|r| r.local_spi()))
    }

    /// The IKE SPIs (initiator's, responder's); the responder's is zero
    /// until IKE_SA_INIT is answered. After a rekey of the IKE SA, the new
    /// one's.
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// Where the peer is now: its IKE address and port (the NAT-T port
    /// after a move, RFC 7296 section 2.23; a responder follows the address
    /// of the last authenticated request).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// What NAT detection found in IKE_SA_INIT: `None` before, or when
    /// either side does no NAT traversal.
    pub fn nat(&self) -> Option<NatState> {
        self.nat
    }

    /// Whether the peer's IKE_AUTH request carried INITIAL_CONTACT (RFC
    /// 7296 section 2.4): it has no other IKE SA with us any more, so any
    /// older IKE SA with it (and its Child SAs) is stale and should go.
    pub fn peer_initial_contact(&self) -> bool {
        self.peer_initial_contact
    }

    /// When the IKE SA came up, or was last rekeyed (its keys' age).
    pub fn established_at(&self) -> Option<Instant> {
        self.established_at
    }

    /// When the IKE SA and the next of its Child SAs are rekeyed
    /// automatically (`None`: no lifetime configured, not established, or
    /// a rekey is under way).
    pub fn rekey_times(&self) -> (Option<Instant>, Option<Instant>) {
        match &self.state {
            State::Established(st) => (st.ike_rekey_at, st.next_child_rekey()),
            _ => (None, None),
        }
    }

    /// Our nonce (Ni) while we initiate this IKE SA and it is not up
    /// yet (IKE_SA_INIT or IKE_AUTH sent); `None` otherwise. A driver
    /// whose attempt crosses the peer's uses it to pick one of the two,
    /// as both sides can: see `tunsec`'s IKE driver.
    pub fn pending_init_nonce(&self) -> Option<&[u8]> {
        match &self.state {
            State::InitSent(st) => Some(&st.ni),
            State::AuthSent(st) => Some(&st.ni),
            _ => None,
        }
    }

    /// Whether we are this IKE SA's original initiator (RFC 7296 section
    /// 3.1, the Initiator flag): the side that sent its IKE_SA_INIT, or,
    /// after a rekey of the IKE SA, the side that started the rekey
    /// (section 2.18: the new IKE SA's initiator is the rekey's).
    pub fn is_initiator(&self) -> bool {
        self.role == Role::Initiator
    }

    /// Whether both sides are authenticated and the IKE SA is up.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Whether the IKE SA is gone (failed, or the peer is dead).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The negotiated IKE transforms, once IKE_SA_INIT is done (and until
    /// the IKE SA closes).
    pub fn ike_suite(&self) -> Option<IkeSuite> {
        self.state.sk().map(|sk| sk.suite)
    }

    /// The Child SA pairs that are up, the first one first.
    pub fn child_sas(&self) -> Vec<ChildSummary> {
        match &self.state {
            State::Established(st) => st
                .children
                .iter()
                .map(|c| ChildSummary {
                    inbound_spi: c.inbound,
                    outbound_spi: c.outbound,
                    key_exchanges: c.key_exchanges.clone(),
                    label: c.label.clone(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The number of Child SAs that are up.
    pub fn child_sa_count(&self) -> usize {
        match &self.state {
            State::Established(st) => st.children.len(),
            _ => 0,
        }
    }

    pub(super) fn state_name(&self) -> &'static str {
        match self.state {
            State::InitSent(_) => "InitSent",
            State::IntermediateSent(_) => "IntermediateSent",
            State::AuthSent(_) => "AuthSent",
            State::ExpectInit => "ExpectInit",
            State::ExpectAuth(_) => "ExpectAuth",
            State::Established(_) => "Established",
            State::Closed => "Closed",
        }
    }

    pub(super) fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> Header {
        header(self.spis(), self.role, exchange, response, message_id)
    }

    pub(super) fn close(&mut self, event: Event) {
        self.state = State::Closed;
        self.outstanding = None;
        self.events.push_back(event);
    }

    pub(super) fn local_error(&mut self, error: Error) {
        self.close(Event::LocalError(error));
    }

    /// SKEYSEED and the SK_* keys (RFC 7296 section 2.14), and the ciphers.
    pub(super) fn derive(&self, suite: IkeSuite, g_ir: &Key, ni: &[u8], nr: &[u8]) -> Result<Sk> {
        let seed = skeyseed(suite.prf, ni, nr, g_ir.expose());
        self.keys_from_seed(suite, &seed, ni, nr)
    }

    /// The SK_* keys from `seed` with this IKE SA's SPIs, and the ciphers.
    pub(super) fn keys_from_seed(
        &self,
        suite: IkeSuite,
        seed: &Key,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<Sk> {
        let keys = IkeKeys::derive(&suite, seed, ni, nr, self.spi_i, self.spi_r)?;
        let (outbound, inbound) = SkCipher::pair(&suite, &keys, self.role == Role::Initiator)?;
        Ok(Sk {
            suite,
            keys,
            outbound,
            inbound,
        })
    }
}
