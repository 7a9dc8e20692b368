//! The IKE SA state machine (RFC 7296 sections 1 and 2): IKE_SA_INIT and
//! IKE_AUTH with a pre-shared key or certificates, then INFORMATIONAL and
//! CREATE_CHILD_SA exchanges.
//!
//! An [`IkeSa`] is one IKE SA with one peer, sans IO, in the style of
//! quinn-proto's `Connection`: datagrams and time go in
//! ([`IkeSa::handle_datagram`], [`IkeSa::handle_timeout`]); datagrams to
//! send, the next timer and events come out ([`IkeSa::poll_transmit`],
//! [`IkeSa::poll_timeout`], [`IkeSa::poll_event`]). It owns no socket, no
//! clock and no thread; SPIs and nonces come from an injected [`Random`].
//!
//! ```text
//! Initiator                         Responder
//! HDR, SAi1, KEi, Ni          -->                       (InitSent / ExpectInit)
//!                             <--   HDR, SAr1, KEr, Nr, [CERTREQ]
//!                                                       (AuthSent / ExpectAuth)
//! HDR, SK {IDi, [CERT+,]
//!   [CERTREQ,] [IDr,] AUTH,
//!   N(USE_TRANSPORT_MODE),
//!   SAi2, TSi, TSr}           -->
//!                             <--   HDR, SK {IDr, [CERT+,] AUTH,
//!                                     N(USE_TRANSPORT_MODE),
//!                                     SAr2, TSi, TSr}   (Established)
//! ```
//!
//! Once established, either side may send INFORMATIONAL requests: an
//! empty one checks liveness ([`IkeSa::check_liveness`]), a DELETE closes
//! the Child SA or the IKE SA ([`IkeSa::delete`]). CREATE_CHILD_SA rekeys
//! the Child SA ([`IkeSa::rekey_child`], or automatically with
//! [`Config::child_lifetime`]), make before break: [`Event::ChildSaRekeyed`]
//! for the new pair, then [`Event::ChildSaDown`] for the old one once the
//! rekey's initiator has deleted it; simultaneous rekeys are resolved by
//! the nonces (RFC 7296 section 2.8.1). CREATE_CHILD_SA also creates more
//! Child SAs (section 1.3.1): the IKE SA's initiator asks for
//! [`Config::additional_children`] after IKE_AUTH
//! ([`IkeSa::create_child`] on demand), and a responder accepts them
//! within its policy's selectors up to [`Config::max_child_sas`], with
//! NO_ADDITIONAL_SAS beyond.
//!
//! Reliability (section 2.1): each side retransmits its own outstanding
//! request (one at a time: a window of 1) with exponential back-off and
//! gives up with [`Event::PeerDead`]; a retransmitted request gets the
//! cached response. Anything that does not belong (other SPIs, other
//! message IDs, bytes that do not parse or decrypt) is dropped and counted
//! in [`Stats`], and changes nothing.
//!
//! NAT detection (section 2.23, `nat`) runs in IKE_SA_INIT when
//! [`Config::local_addr`] is set: on a NAT, or with
//! [`Config::force_udp_encap`], IKE moves to the NAT-T port and the Child
//! SAs are `udp_encap`. INITIAL_CONTACT (section 2.4) is sent when
//! [`Config::initial_contact`] says so, and reported by
//! [`IkeSa::peer_initial_contact`].
//!
//! The IKE SA itself is rekeyed with CREATE_CHILD_SA (section 2.18,
//! `ike_rekey`): [`IkeSa::rekey_ike`], or automatically with
//! [`Config::ike_lifetime`]; it goes on under new SPIs and keys with the
//! same Child SAs ([`Event::IkeSaRekeyed`]) and [`Endpoint`] follows the
//! new SPIs under the same [`SaHandle`].
//!
//! Cookies (section 2.6, `cookie.rs`): an [`Endpoint`] with many half-open
//! IKE SAs answers new IKE_SA_INIT requests statelessly with N(COOKIE); an
//! initiator resends with it. A request with an unknown payload whose
//! critical bit is set is answered UNSUPPORTED_CRITICAL_PAYLOAD (sections
//! 2.5 and 3.2, `critical.rs`); unknown payloads without it are skipped.
//!
//! Certificates and signatures (`auth.rs`) authenticate instead of the
//! PSK when [`Config::cert`] is set.
//!
//! IKE fragmentation (RFC 7383, `fragment.rs`): when both sides announce
//! it in IKE_SA_INIT ([`Config::fragmentation`]), encrypted messages too
//! long for [`Config::fragment_size`] go as Encrypted Fragment payloads,
//! and the peer's are reassembled.
//!
//! Not yet: answers to malformed requests
//! (INVALID_SYNTAX, INVALID_MAJOR_VERSION: they are dropped).
//!
//! [`Endpoint`] holds many IKE SAs behind one socket: it hands each
//! datagram to the IKE SA its SPIs name and creates responders for new
//! IKE_SA_INIT requests; with many half-open IKE SAs, only for requests
//! that return its cookie (section 2.6, `cookie.rs`), which an initiator
//! [`IkeSa`] does when asked.

mod auth;
mod config;
mod cookie;
mod critical;
mod endpoint;
mod event;
pub mod fragment;
mod ike_rekey;
mod logging;
mod nat;
mod random;
pub mod ts;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tunsec_esp::{Direction, Key};

pub use config::{CertAuth, Config, DEFAULT_MAX_CHILD_SAS, WallClock};
pub use cookie::{COOKIE_GRACE, COOKIE_SECRET_LIFETIME, DEFAULT_COOKIE_THRESHOLD};
pub use endpoint::{Endpoint, EndpointStats, Incoming, SaHandle};
pub use event::{AuthFailure, ChildSaParams, Event, Stats, Transmit};
pub use nat::{NATT_PORT, NatState};
pub use random::{Random, SeededRandom, SystemRandom};

use crate::cert::HashAlgorithm;
use crate::crypto::{self, IkeKeys, IkeSuite, KeyExchange, SkCipher, child_sa_keys, skeyseed};
use crate::error::{Error, Result};
use crate::message::{
    Auth, Delete, DhGroup, ExchangeType, Header, Identity, MAJOR_VERSION, Message, Notify,
    NotifyType, Payload, PayloadType, Proposal, ProtocolId, SaPayload, TrafficSelector,
    TransformId,
};
use crate::proposal;
use ike_rekey::{IkeRekeySent, Retiring};
use logging::{Direction as Dir, Hex, Peer, Proposals, Selectors};

/// The first retransmission timeout; each next one doubles it.
pub const RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(500);
/// How many times a request is sent before the peer is declared dead:
/// 0.5 + 1 + 2 + 4 + 8 = 15.5 s after the first transmission.
pub const MAX_TRANSMISSIONS: u32 = 5;
/// The length of our nonces: RFC 7296 section 2.10 asks for at least half
/// the key size of the negotiated prf, and at least 128 bits; 32 bytes
/// cover every prf here.
const NONCE_LEN: usize = 32;
/// How long a responder keeps a half-open IKE SA (IKE_SA_INIT answered,
/// no IKE_AUTH yet) before it gives up: longer than an initiator's whole
/// retransmission schedule.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many INVALID_KE_PAYLOAD answers the initiator follows.
const MAX_KE_RETRIES: u8 = 2;

/// Which end of the IKE SA we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

/// Why a datagram was dropped; each reason has a counter in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    Malformed,
    WrongSpi,
    WrongMessageId,
    Integrity,
    Unexpected,
}

/// The keys and ciphers of an IKE SA once IKE_SA_INIT is done.
struct Sk {
    suite: IkeSuite,
    keys: IkeKeys,
    /// Seals what we send.
    outbound: SkCipher,
    /// Opens what we receive.
    inbound: SkCipher,
}

/// Initiator: IKE_SA_INIT request sent.
struct InitSent {
    kex: Box<dyn KeyExchange>,
    ni: Vec<u8>,
    /// The request as sent: RealMessage1, which our AUTH covers.
    request: Vec<u8>,
    ke_retries: u8,
    /// The responder's cookie, sent first in `request` (section 2.6).
    cookie: Option<Vec<u8>>,
}

/// Initiator: IKE_AUTH request sent.
struct AuthSent {
    sk: Sk,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The responder's IKE_SA_INIT response as received: RealMessage2,
    /// which its AUTH covers.
    init_response: Vec<u8>,
    /// Our ESP SPI, inbound.
    esp_spi: u32,
    /// The ESP proposals as offered, with our SPI.
    esp_offer: Vec<Proposal>,
    tsi: Vec<TrafficSelector>,
    tsr: Vec<TrafficSelector>,
}

/// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
struct ExpectAuth {
    sk: Sk,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The initiator's IKE_SA_INIT request as received (RealMessage1).
    init_request: Vec<u8>,
    /// Our response as sent (RealMessage2).
    init_response: Vec<u8>,
    /// The initiator's SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4).
    peer_hashes: Option<Vec<HashAlgorithm>>,
}

/// Both sides authenticated.
struct Established {
    sk: Sk,
    /// The Child SAs that are up, the first one (from IKE_AUTH) first.
    children: Vec<Child>,
    /// Our DELETE of the IKE SA is on its way.
    deleting: bool,
    /// What our outstanding CREATE_CHILD_SA or child DELETE request is
    /// about (liveness checks and the IKE SA's DELETE leave it `None`).
    request: Option<Request>,
    /// Requests that wait for the outstanding one (window of 1).
    queue: VecDeque<Queued>,
    /// When the IKE SA is rekeyed automatically.
    ike_rekey_at: Option<Instant>,
    /// Replaced or redundant pairs that the peer deletes.
    retired: Vec<Retired>,
    /// The peer's rekey of the same Child SA, answered while ours was
    /// outstanding (RFC 7296 section 2.8.1), until ours is answered.
    collision: Option<Collided>,
}

/// One Child SA pair of an established IKE SA.
struct Child {
    /// Our SPI: the peer sends with it.
    inbound: u32,
    /// The peer's SPI: we send with it.
    outbound: u32,
    /// The selectors (ours, the peer's) that a rekey of ours proposes
    /// (RFC 7296 section 2.8: the same as the SA it replaces); `None`:
    /// the configured first Child SA's.
    ts: Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
    /// When it is rekeyed automatically.
    rekey_at: Option<Instant>,
}

impl Child {
    fn spis(&self) -> (u32, u32) {
        (self.inbound, self.outbound)
    }
}

/// What an outstanding request is about.
enum Request {
    /// A CREATE_CHILD_SA for a Child SA: a rekey or a new one.
    Rekey(Box<RekeySent>),
    IkeRekey(Box<IkeRekeySent>),
    DeleteChild(Retired),
}

/// A request that waits for the outstanding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Rekey the Child SA with this inbound SPI.
    Rekey(u32),
    /// Create the Child SA [`Config::additional_children`]`[i]`.
    CreateChild(usize),
    IkeRekey,
    DeleteChild(Retired),
}

/// What a CREATE_CHILD_SA request of ours for a Child SA is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildTarget {
    /// A rekey of the pair (inbound, outbound).
    Rekey((u32, u32)),
    /// A new Child SA: [`Config::additional_children`]`[i]`.
    Create(usize),
}

/// A Child SA pair on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retired {
    inbound: u32,
    outbound: u32,
    /// Whether the owner knows it (emit [`Event::ChildSaDown`] when it
    /// goes); a redundant pair of a collision never came up.
    announce: bool,
}

/// Our CREATE_CHILD_SA request that rekeys a Child SA or creates one.
struct RekeySent {
    /// What it is for.
    target: ChildTarget,
    ni: Vec<u8>,
    /// The PFS key exchange, if the ESP proposals name a group.
    kex: Option<Box<dyn KeyExchange>>,
    esp_spi: u32,
    esp_offer: Vec<Proposal>,
    tsi: Vec<TrafficSelector>,
    tsr: Vec<TrafficSelector>,
    /// How many INVALID_KE_PAYLOAD answers this rekey followed.
    ke_retries: u8,
}

/// The pair from the peer's colliding rekey, with its nonces.
struct Collided {
    /// The pair both sides rekey (inbound, outbound).
    old: (u32, u32),
    ni: Vec<u8>,
    nr: Vec<u8>,
    inbound: ChildSaParams,
    outbound: ChildSaParams,
}

impl Established {
    /// Queues a rekey unless the same one is queued or outstanding.
    fn enqueue(&mut self, q: Queued) {
        let outstanding = match (q, &self.request) {
            (Queued::Rekey(spi), Some(Request::Rekey(r))) => {
                matches!(r.target, ChildTarget::Rekey((i, _)) if i == spi)
            }
            (Queued::IkeRekey, Some(Request::IkeRekey(_))) => true,
            _ => false,
        };
        if !outstanding && !self.queue.contains(&q) {
            self.queue.push_back(q);
        }
    }

    /// Established with the first Child SA's SPIs `child` (inbound,
    /// outbound), if it came up, rekeyed at `rekey_at`.
    fn new(sk: Sk, child: Option<(u32, u32)>, rekey_at: Option<Instant>) -> Self {
        Self {
            sk,
            children: child
                .map(|(inbound, outbound)| Child {
                    inbound,
                    outbound,
                    ts: None,
                    rekey_at,
                })
                .into_iter()
                .collect(),
            deleting: false,
            request: None,
            queue: VecDeque::new(),
            ike_rekey_at: None,
            retired: Vec::new(),
            collision: None,
        }
    }

    /// The Child SA whose pair is (inbound, outbound).
    fn child(&self, pair: (u32, u32)) -> Option<usize> {
        self.children.iter().position(|c| c.spis() == pair)
    }

    /// The Child SA we send to the peer with SPI `outbound`.
    fn child_by_outbound(&self, outbound: &[u8]) -> Option<usize> {
        self.children
            .iter()
            .position(|c| outbound == c.outbound.to_be_bytes())
    }

    /// When the next Child SA is rekeyed automatically.
    fn next_child_rekey(&self) -> Option<Instant> {
        self.children.iter().filter_map(|c| c.rekey_at).min()
    }

    /// Forgets queued rekeys of the pair with inbound SPI `inbound`.
    fn unqueue_rekey(&mut self, inbound: u32) {
        self.queue.retain(|q| *q != Queued::Rekey(inbound));
    }
}

/// When a Child SA that comes up at `now` is rekeyed: at 90% of the
/// lifetime minus a random jitter of up to 10% of it.
fn rekey_time(lifetime: Option<Duration>, rng: &mut dyn Random, now: Instant) -> Option<Instant> {
    let lifetime = lifetime?;
    let range = (lifetime.as_nanos() / 10).max(1);
    let jitter = u128::from(random_u64(rng).unwrap_or(0)) % range;
    let soft = lifetime.as_nanos() * 9 / 10 - jitter;
    Some(now + Duration::from_nanos(u64::try_from(soft).unwrap_or(u64::MAX)))
}

/// The SPIs (inbound, outbound) of a [`Event::ChildSaUp`].
fn child_spis(event: &Event) -> Option<(u32, u32)> {
    match event {
        Event::ChildSaUp { inbound, outbound } => Some((inbound.spi, outbound.spi)),
        _ => None,
    }
}

/// The header of a message we send on the IKE SA with SPIs `spis`
/// (initiator's, responder's), in role `role` (RFC 7296 section 3.1: the
/// I flag marks the original initiator's messages).
fn header(
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

/// The states, rustls-style: each holds what the next step needs, and a
/// step consumes it.
enum State {
    InitSent(Box<InitSent>),
    AuthSent(Box<AuthSent>),
    ExpectInit,
    ExpectAuth(Box<ExpectAuth>),
    Established(Box<Established>),
    Closed,
}

/// A request waiting for its response.
struct Outstanding {
    message_id: u32,
    exchange: ExchangeType,
    /// The message, or its fragments (RFC 7383), all sent again on a
    /// retransmission.
    bytes: Vec<Vec<u8>>,
    transmissions: u32,
    timeout: Duration,
    deadline: Instant,
}

/// One IKE SA with one peer: a sans-IO state machine (see the module
/// documentation).
pub struct IkeSa {
    config: Config,
    role: Role,
    remote: Option<SocketAddr>,
    spi_i: u64,
    spi_r: u64,
    state: State,
    rng: Box<dyn Random + Send>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Initiator: the request waiting for a response.
    outstanding: Option<Outstanding>,
    /// Responder: the message ID and bytes of the last response (or its
    /// fragments), for retransmitted requests.
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// The longest encrypted message we send unfragmented, once both
    /// sides announced IKE fragmentation in IKE_SA_INIT (RFC 7383).
    fragment_limit: Option<usize>,
    /// The peer's fragmented messages being put together.
    reassembly: fragment::Reassembly,
    /// The message ID of the peer's next request (RFC 7296 section 2.2:
    /// each side numbers its own requests from 0).
    peer_next_id: u32,
    /// The message ID of our next request.
    next_request_id: u32,
    /// Responder: when a half-open IKE SA is given up.
    half_open_deadline: Option<Instant>,
    /// Our address as the peer should see it (NAT traversal on), moved to
    /// the NAT-T port when a NAT is found.
    local: Option<SocketAddr>,
    /// What NAT detection found; `None` until IKE_SA_INIT is done, or if
    /// either side does no NAT traversal.
    nat: Option<NatState>,
    /// The peer sent INITIAL_CONTACT in its IKE_AUTH request.
    peer_initial_contact: bool,
    /// The IKE SA a rekey replaced, until it is deleted.
    retiring: Option<Box<Retiring>>,
    /// When the current IKE SA (its current keys) came up.
    established_at: Option<Instant>,
    stats: Stats,
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

/// The empty IKEV2_FRAGMENTATION_SUPPORTED notify (RFC 7383 section 2.3).
fn fragmentation_supported() -> Payload {
    Payload::Notify(Notify::new(
        NotifyType::Ikev2FragmentationSupported,
        Vec::new(),
    ))
}

/// Why a message that does not open is dropped.
fn discard(e: Error) -> Discard {
    match e {
        Error::IntegrityCheckFailed => Discard::Integrity,
        _ => Discard::Malformed,
    }
}

fn random_u64(rng: &mut dyn Random) -> Result<u64> {
    let mut b = [0u8; 8];
    rng.fill(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// An IKE SPI: any value but zero (RFC 7296 section 3.1).
fn random_ike_spi(rng: &mut dyn Random) -> Result<u64> {
    loop {
        let spi = random_u64(rng)?;
        if spi != 0 {
            return Ok(spi);
        }
    }
}

/// An ESP SPI: RFC 4303 section 2.1 reserves 1 to 255 for IANA and 0 for
/// local use.
fn random_esp_spi(rng: &mut dyn Random) -> Result<u32> {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b)?;
        let spi = u32::from_be_bytes(b);
        if spi > 255 {
            return Ok(spi);
        }
    }
}

fn random_nonce(rng: &mut dyn Random) -> Result<Vec<u8>> {
    let mut n = vec![0u8; NONCE_LEN];
    rng.fill(&mut n)?;
    Ok(n)
}

/// The first D-H group of the first proposal: the one the initiator
/// guesses for its KE payload (RFC 7296 section 1.2).
fn first_group(proposals: &[Proposal]) -> Option<DhGroup> {
    proposals
        .iter()
        .flat_map(|p| &p.transforms)
        .find_map(|t| match t.id {
            TransformId::Dh(g) if g != DhGroup::None => Some(g),
            _ => None,
        })
}

fn offers_group(proposals: &[Proposal], group: DhGroup) -> bool {
    proposals
        .iter()
        .flat_map(|p| &p.transforms)
        .any(|t| t.id == TransformId::Dh(group))
}

fn encode_id(id: &Identity) -> Vec<u8> {
    let mut body = Vec::new();
    id.encode(&mut body);
    body
}

/// Logs what an initiator offers for a Child SA (in IKE_AUTH or
/// CREATE_CHILD_SA, `what`): the ESP proposals with our inbound SPI, and
/// the traffic selectors.
fn log_child_offer(
    peer: Option<SocketAddr>,
    what: &str,
    spi_in: u32,
    proposals: &[Proposal],
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
) {
    tracing::debug!(
        peer = %Peer(peer),
        proposals = %Proposals(proposals),
        spi_in = %Hex(spi_in),
        "ESP proposals offered ({what})"
    );
    tracing::debug!(
        peer = %Peer(peer),
        tsi = %Selectors(tsi),
        tsr = %Selectors(tsr),
        "traffic selectors offered ({what})"
    );
}

/// The payloads of a decoded message, by type.
struct Payloads<'a>(&'a [Payload]);

impl<'a> Payloads<'a> {
    fn sa(&self) -> Option<&'a SaPayload> {
        self.0.iter().find_map(|p| match p {
            Payload::Sa(sa) => Some(sa),
            _ => None,
        })
    }
    fn ke(&self) -> Option<&'a crate::message::KeyExchange> {
        self.0.iter().find_map(|p| match p {
            Payload::KeyExchange(ke) => Some(ke),
            _ => None,
        })
    }
    fn nonce(&self) -> Option<&'a [u8]> {
        self.0.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        })
    }
    fn idi(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdInitiator(id) => Some(id),
            _ => None,
        })
    }
    fn idr(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdResponder(id) => Some(id),
            _ => None,
        })
    }
    fn auth(&self) -> Option<&'a Auth> {
        self.0.iter().find_map(|p| match p {
            Payload::Auth(a) => Some(a),
            _ => None,
        })
    }
    fn tsi(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsInitiator(ts) => Some(ts.as_slice()),
            _ => None,
        })
    }
    fn tsr(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsResponder(ts) => Some(ts.as_slice()),
            _ => None,
        })
    }
    fn notify(&self, notify_type: NotifyType) -> Option<&'a Notify> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type == notify_type => Some(n),
            _ => None,
        })
    }
    /// The first error notify (RFC 7296 section 3.10.1: types below 16384).
    fn error(&self) -> Option<NotifyType> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
            _ => None,
        })
    }
}

impl IkeSa {
    /// Starts an IKE SA as the initiator: queues the IKE_SA_INIT request
    /// to `remote` and arms the retransmission timer.
    ///
    /// The KE payload is for the first D-H group of the first IKE
    /// proposal. Fails if the proposals name no supported group, or the
    /// random source or the key exchange fails.
    pub fn initiate(
        config: Config,
        remote: SocketAddr,
        now: Instant,
        mut rng: Box<dyn Random + Send>,
    ) -> Result<Self> {
        let spi_i = random_ike_spi(rng.as_mut())?;
        let ni = random_nonce(rng.as_mut())?;
        let group = first_group(&config.ike_proposals).ok_or(Error::InvalidValue {
            what: "IKE proposals: no Diffie-Hellman group",
            value: 0,
        })?;
        let mut sa = Self {
            config,
            role: Role::Initiator,
            remote: Some(remote),
            spi_i,
            spi_r: 0,
            state: State::Closed,
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
            local: None,
            nat: None,
            peer_initial_contact: false,
            retiring: None,
            established_at: None,
            stats: Stats::default(),
        };
        sa.local = sa.config.local_addr;
        let init = sa.init_request(group, ni, 0)?;
        sa.send_request(now, ExchangeType::IkeSaInit, 0, vec![init.request.clone()]);
        sa.state = State::InitSent(Box::new(init));
        Ok(sa)
    }

    /// An IKE SA that waits, as the responder, for an IKE_SA_INIT request.
    ///
    /// It answers the first acceptable one; one it refuses
    /// (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD) leaves it waiting, without
    /// state, as RFC 7296 section 2.6 wants of a responder before it has
    /// committed to an SA.
    pub fn respond(config: Config, rng: Box<dyn Random + Send>) -> Self {
        let local = config.local_addr;
        Self {
            config,
            role: Role::Responder,
            remote: None,
            spi_i: 0,
            spi_r: 0,
            state: State::ExpectInit,
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
            retiring: None,
            established_at: None,
            stats: Stats::default(),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self.outstanding.as_ref().map(|o| o.deadline);
        let (rekey, ike_rekey) = match &self.state {
            State::Established(st) => (st.next_child_rekey(), st.ike_rekey_at),
            _ => (None, None),
        };
        let retiring = self.retiring.as_ref().map(|r| r.timeout());
        [
            retransmit,
            self.half_open_deadline,
            rekey,
            ike_rekey,
            retiring,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Rekeys every Child SA (RFC 7296 section 2.8): for each, a
    /// CREATE_CHILD_SA request with N(REKEY_SA), a fresh SPI and nonce,
    /// and a KE payload for PFS if the ESP proposals name a Diffie-Hellman
    /// group. The requests go one at a time, after any outstanding one.
    /// [`Event::ChildSaRekeyed`] follows for each, then
    /// [`Event::ChildSaDown`] for the old pair once it is deleted.
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established
    /// with a Child SA.
    pub fn rekey_child(&mut self, now: Instant) -> Result<()> {
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        if st.children.is_empty() {
            return Err(Error::InvalidState("no Child SA"));
        }
        let spis: Vec<u32> = st.children.iter().map(|c| c.inbound).collect();
        for spi in spis {
            st.enqueue(Queued::Rekey(spi));
        }
        self.run_queue(now);
        Ok(())
    }

    /// Creates another Child SA with [`Config::additional_children`]`[i]`
    /// (RFC 7296 section 1.3.1): a CREATE_CHILD_SA request without
    /// N(REKEY_SA), sent after any outstanding request.
    /// [`Event::ChildSaUp`] follows, or [`Event::Failed`] if the peer
    /// refuses it (the IKE SA and its other Child SAs stand).
    ///
    /// The initiator of an IKE SA creates them all by itself once
    /// IKE_AUTH is done; this is for doing it again (after the peer
    /// deleted one, say). Fails with [`Error::InvalidState`] unless the
    /// IKE SA is established and `i` names an additional Child SA.
    pub fn create_child(&mut self, now: Instant, i: usize) -> Result<()> {
        if i >= self.config.additional_children.len() {
            return Err(Error::InvalidState("no such additional Child SA"));
        }
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        st.enqueue(Queued::CreateChild(i));
        self.run_queue(now);
        Ok(())
    }

    /// The initiator of a fresh IKE SA asks for the additional Child SAs
    /// (RFC 7296 section 1.3.1) once IKE_AUTH is done.
    fn queue_additional_children(&mut self, now: Instant) {
        let count = self.config.additional_children.len();
        let State::Established(st) = &mut self.state else {
            return;
        };
        if self.role != Role::Initiator {
            return;
        }
        for i in 0..count {
            st.enqueue(Queued::CreateChild(i));
        }
        self.run_queue(now);
    }

    /// The number of Child SAs that are up.
    pub fn child_sa_count(&self) -> usize {
        match &self.state {
            State::Established(st) => st.children.len(),
            _ => 0,
        }
    }

    /// Deletes the IKE SA (and its Child SA): sends an INFORMATIONAL
    /// request with a DELETE payload. The IKE SA closes with
    /// [`Event::IkeSaDeleted`] when the peer answers, or with
    /// [`Event::PeerDead`] if it never does (RFC 7296 section 1.4.1).
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established
    /// and no request of ours is outstanding.
    pub fn delete(&mut self, now: Instant) -> Result<()> {
        self.send_informational(now, &[Payload::Delete(Delete::ike())])?;
        if let State::Established(st) = &mut self.state {
            st.deleting = true;
        }
        Ok(())
    }

    /// Checks that the peer is alive: sends an empty INFORMATIONAL request
    /// (RFC 7296 section 2.4), retransmitted like any other; no answer
    /// ends in [`Event::PeerDead`].
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established
    /// and no request of ours is outstanding.
    pub fn check_liveness(&mut self, now: Instant) -> Result<()> {
        self.send_informational(now, &[])
    }

    fn send_informational(&mut self, now: Instant, payloads: &[Payload]) -> Result<()> {
        if self.outstanding.is_some() {
            return Err(Error::InvalidState("a request is outstanding"));
        }
        let State::Established(st) = &self.state else {
            return Err(Error::InvalidState("not established"));
        };
        let id = self.next_request_id;
        let header = self.header(ExchangeType::Informational, false, id);
        let bytes = logging::seal(
            self.remote,
            &st.sk.outbound,
            self.fragment_limit,
            &header,
            payloads,
        )?;
        self.next_request_id = id.wrapping_add(1);
        self.send_request(now, ExchangeType::Informational, id, bytes);
        Ok(())
    }

    /// Drop and retransmission counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Our own IKE SPIs: of the current IKE SA, and of the one a rekey
    /// replaced while it is being deleted. [`Endpoint`] finds the IKE SA
    /// by either.
    pub fn local_spis(&self) -> impl Iterator<Item = u64> + '_ {
        let current = match self.role {
            Role::Initiator => self.spi_i,
            Role::Responder => self.spi_r,
        };
        core::iter::once(current).chain(self.retiring.as_ref().map(|r| r.local_spi()))
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

    /// Sends our IKE_SA_INIT request again at once while it is
    /// unanswered: when the peer's attempt crosses ours and ours is the
    /// one both keep, the peer gives its own up only once it sees ours.
    /// The retransmission timer stays as it is.
    pub fn send_init_again(&mut self) {
        if !matches!(self.state, State::InitSent(_)) {
            return;
        }
        if let Some(out) = &self.outstanding {
            let bytes = out.bytes.clone();
            self.transmit_all(bytes);
        }
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
        match &self.state {
            State::AuthSent(st) => Some(st.sk.suite),
            State::ExpectAuth(st) => Some(st.sk.suite),
            State::Established(st) => Some(st.sk.suite),
            _ => None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::InitSent(_) => "InitSent",
            State::AuthSent(_) => "AuthSent",
            State::ExpectInit => "ExpectInit",
            State::ExpectAuth(_) => "ExpectAuth",
            State::Established(_) => "Established",
            State::Closed => "Closed",
        }
    }

    /// Retransmits the outstanding request when its timer expires, or
    /// gives up after [`MAX_TRANSMISSIONS`].
    ///
    /// RFC 7296 section 2.1: the sender of a request retransmits it until
    /// it gets the response or deems the IKE SA to have failed; responses
    /// are only sent again when their request is.
    ///
    /// A responder that answered IKE_SA_INIT but got no IKE_AUTH within
    /// [`HALF_OPEN_TIMEOUT`] gives up too ([`Event::PeerDead`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.half_open_deadline.is_some_and(|d| now >= d) {
            self.half_open_deadline = None;
            self.close(Event::PeerDead);
            return;
        }
        self.retiring_timeout(now);
        if let State::Established(st) = &mut self.state {
            let ike_due = st.ike_rekey_at.is_some_and(|t| now >= t);
            if ike_due {
                st.ike_rekey_at = None;
                st.enqueue(Queued::IkeRekey);
            }
            let mut child_due = false;
            for i in 0..st.children.len() {
                if st.children[i].rekey_at.is_some_and(|t| now >= t) {
                    st.children[i].rekey_at = None;
                    child_due = true;
                    let spi = st.children[i].inbound;
                    st.enqueue(Queued::Rekey(spi));
                }
            }
            if ike_due || child_due {
                self.run_queue(now);
            }
        }
        let Some(out) = self.outstanding.as_mut() else {
            return;
        };
        if now < out.deadline {
            return;
        }
        if out.transmissions >= MAX_TRANSMISSIONS {
            self.outstanding = None;
            self.close(Event::PeerDead);
            return;
        }
        out.transmissions += 1;
        out.timeout *= 2;
        out.deadline = now + out.timeout;
        tracing::debug!(
            peer = %Peer(self.remote),
            transmission = out.transmissions,
            of = MAX_TRANSMISSIONS,
            "IKE retransmitting {} request {}",
            logging::rfc_name(&format!("{:?}", out.exchange)),
            out.message_id
        );
        let bytes = out.bytes.clone();
        self.stats.retransmits += 1;
        self.transmit_all(bytes);
    }

    /// Handles one received datagram (an IKE message without the non-ESP
    /// marker) from `remote`. Anything that does not fit the current state
    /// is dropped and counted in [`Self::stats`]; nothing panics.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, bytes: &[u8]) {
        if let Err(discard) = self.handle(now, remote, bytes) {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let what = Header::decode(bytes).map_or_else(
                    |_| "an undecodable message".to_owned(),
                    |h| {
                        format!(
                            "{} {} {}",
                            logging::rfc_name(&format!("{:?}", h.exchange_type)),
                            if h.response { "response" } else { "request" },
                            h.message_id
                        )
                    },
                );
                tracing::debug!(peer = %remote, reason = ?discard, state = self.state_name(), "IKE dropped {what}");
            }
            let counter = match discard {
                Discard::Malformed => &mut self.stats.malformed,
                Discard::WrongSpi => &mut self.stats.wrong_spi,
                Discard::WrongMessageId => &mut self.stats.wrong_message_id,
                Discard::Integrity => &mut self.stats.integrity,
                Discard::Unexpected => &mut self.stats.unexpected,
            };
            *counter += 1;
        }
    }

    fn handle(&mut self, now: Instant, remote: SocketAddr, bytes: &[u8]) -> Result<(), Discard> {
        let header = Header::decode(bytes).map_err(|_| Discard::Malformed)?;
        // RFC 7296 section 3.1: a message with a major version above 2 is
        // rejected (INVALID_MAJOR_VERSION is not sent yet).
        if header.major_version != MAJOR_VERSION {
            return Err(Discard::Malformed);
        }
        if self.is_for_retiring(&header) {
            return self.handle_retiring(now, remote, &header, bytes);
        }
        match (self.role, header.response) {
            (_, true) => self.handle_response(now, remote, &header, bytes),
            (_, false) => self.handle_request(now, remote, &header, bytes),
        }
    }

    // ---- sending ----

    fn transmit(&mut self, bytes: Vec<u8>) {
        if let Some(dst) = self.remote {
            self.transmits.push_back(Transmit { dst, bytes });
        }
    }

    /// Sends a message, or all the fragments of one.
    fn transmit_all(&mut self, messages: Vec<Vec<u8>>) {
        if messages.len() > 1 {
            self.stats.fragments_sent += messages.len() as u64;
        }
        for bytes in messages {
            self.transmit(bytes);
        }
    }

    /// Logs what we send in the clear (IKE_SA_INIT): an encrypted message
    /// was logged when it was sealed ([`logging::seal`]).
    fn log_plain(&self, bytes: &[Vec<u8>]) {
        for b in bytes {
            let encrypted = Header::decode(b).is_ok_and(|h| {
                matches!(
                    h.next_payload,
                    PayloadType::Encrypted | PayloadType::EncryptedFragment
                )
            });
            if !encrypted {
                logging::sent_plain(self.remote, b);
            }
        }
    }

    /// Sends a request (or its fragments) and keeps it for retransmission.
    fn send_request(&mut self, now: Instant, exchange: ExchangeType, id: u32, bytes: Vec<Vec<u8>>) {
        self.log_plain(&bytes);
        self.outstanding = Some(Outstanding {
            message_id: id,
            exchange,
            bytes: bytes.clone(),
            transmissions: 1,
            timeout: RETRANSMIT_TIMEOUT,
            deadline: now + RETRANSMIT_TIMEOUT,
        });
        self.transmit_all(bytes);
    }

    /// Sends a response (or its fragments) and keeps it for retransmitted
    /// requests.
    fn send_response(&mut self, id: u32, bytes: Vec<Vec<u8>>) {
        self.log_plain(&bytes);
        self.last_response = Some((id, bytes.clone()));
        self.transmit_all(bytes);
    }

    fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> Header {
        header(
            (self.spi_i, self.spi_r),
            self.role,
            exchange,
            response,
            message_id,
        )
    }

    fn close(&mut self, event: Event) {
        self.state = State::Closed;
        self.outstanding = None;
        self.events.push_back(event);
    }

    fn local_error(&mut self, error: Error) {
        self.close(Event::LocalError(error));
    }

    // ---- initiator ----

    /// Builds the IKE_SA_INIT request: HDR, SAi1, KEi, Ni.
    fn init_request(&mut self, group: DhGroup, ni: Vec<u8>, ke_retries: u8) -> Result<InitSent> {
        let kex = crypto::start(group)?;
        let message = Message {
            header: self.header(ExchangeType::IkeSaInit, false, 0),
            payloads: vec![
                Payload::Sa(SaPayload {
                    proposals: self.config.ike_proposals.clone(),
                }),
                Payload::KeyExchange(crate::message::KeyExchange {
                    group,
                    data: kex.public_value().to_vec(),
                }),
                Payload::Nonce(ni.clone()),
            ],
        };
        let mut message = message;
        message
            .payloads
            .extend(auth::hash_algorithms_notify(&self.config));
        // RFC 7383 section 2.3: the initiator announces IKE fragmentation
        // with an empty IKEV2_FRAGMENTATION_SUPPORTED notify in its
        // IKE_SA_INIT request.
        if self.config.fragmentation {
            message.payloads.push(fragmentation_supported());
        }
        if let (Some(local), Some(remote)) = (self.local, self.remote) {
            message.payloads.extend(nat::notifies(
                self.spi_i,
                0,
                local,
                remote,
                self.config.force_udp_encap,
                self.rng.as_mut(),
            )?);
        }
        tracing::debug!(
            peer = %Peer(self.remote),
            proposals = %Proposals(&self.config.ike_proposals),
            ke = ?group,
            spi_i = %Hex(self.spi_i),
            "IKE proposals offered"
        );
        Ok(InitSent {
            kex,
            ni,
            request: message.encode()?,
            ke_retries,
            cookie: None,
        })
    }

    fn handle_response(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: &Header,
        bytes: &[u8],
    ) -> Result<(), Discard> {
        let Some(out) = &self.outstanding else {
            return Err(Discard::Unexpected);
        };
        if header.initiator_spi != self.spi_i {
            return Err(Discard::WrongSpi);
        }
        if header.message_id != out.message_id {
            return Err(Discard::WrongMessageId);
        }
        // RFC 7296 section 3.1: the I flag is set by the original
        // initiator, in its requests and in its responses.
        if header.exchange_type != out.exchange
            || header.initiator != (self.role == Role::Responder)
        {
            return Err(Discard::Unexpected);
        }
        match &self.state {
            State::InitSent(_) => return self.on_init_response(now, remote, header, bytes),
            State::AuthSent(_) | State::Established(_) => {}
            _ => return Err(Discard::Unexpected),
        }
        if header.responder_spi != self.spi_r {
            return Err(Discard::WrongSpi);
        }
        let Some(message) = self.open_response(now, bytes)? else {
            return Ok(());
        };
        logging::message(Dir::Received, Some(remote), header, &message.payloads, 1);
        self.outstanding = None;
        match &self.state {
            State::AuthSent(_) => self.on_auth_response(now, &message),
            State::Established(st) => {
                // The answer to our DELETE closes the IKE SA (RFC 7296
                // section 1.4.1); the answer to a liveness check only
                // proves the peer is alive.
                if st.deleting {
                    self.close(Event::IkeSaDeleted);
                    return Ok(());
                }
                self.on_established_response(now, &message);
                self.run_queue(now);
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens a response with the IKE SA's inbound keys, as `open_request`
    /// does a request: `None` while a fragmented one is still incomplete
    /// (RFC 7383).
    fn open_response(&mut self, now: Instant, bytes: &[u8]) -> Result<Option<Message>, Discard> {
        let sk = match &self.state {
            State::AuthSent(st) => &st.sk.inbound,
            State::Established(st) => &st.sk.inbound,
            _ => return Err(Discard::Unexpected),
        };
        fragment::open(
            sk,
            &mut self.reassembly,
            self.fragment_limit.is_some(),
            now,
            &mut self.stats,
            bytes,
        )
        .map_err(discard)
    }

    fn on_init_response(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: &Header,
        bytes: &[u8],
    ) -> Result<(), Discard> {
        let message = Message::decode(bytes).map_err(|_| Discard::Malformed)?;
        logging::message(Dir::Received, Some(remote), header, &message.payloads, 1);
        let p = Payloads(&message.payloads);
        // RFC 7296 section 2.6: a responder under load asks for a cookie
        // first (see cookie.rs).
        if let (Some(n), None) = (p.notify(NotifyType::Cookie), p.sa()) {
            return self.on_cookie_request(now, &n.data);
        }
        // RFC 7296 section 1.2: INVALID_KE_PAYLOAD names the group the
        // responder wants; the initiator retries IKE_SA_INIT with a KE payload
        // of that group.
        if let Some(n) = p.notify(NotifyType::InvalidKePayload) {
            let group = <[u8; 2]>::try_from(n.data.as_slice())
                .map(|b| DhGroup::from(u16::from_be_bytes(b)))
                .map_err(|_| Discard::Malformed)?;
            let State::InitSent(st) = &self.state else {
                return Err(Discard::Unexpected);
            };
            if st.ke_retries >= MAX_KE_RETRIES
                || group == st.kex.group()
                || !offers_group(&self.config.ike_proposals, group)
            {
                self.close(Event::Failed {
                    notify: NotifyType::InvalidKePayload,
                    by_peer: true,
                });
                return Ok(());
            }
            let (ni, retries) = (st.ni.clone(), st.ke_retries + 1);
            // Section 2.6: the cookie stays when the group changes.
            let cookie = st.cookie.clone();
            match self
                .init_request(group, ni, retries)
                .and_then(|init| init.with_cookie(cookie))
            {
                Ok(init) => {
                    let request = vec![init.request.clone()];
                    self.send_request(now, ExchangeType::IkeSaInit, 0, request);
                    self.state = State::InitSent(Box::new(init));
                }
                Err(e) => self.local_error(e),
            }
            return Ok(());
        }
        // An error notify ends the attempt (RFC 7296 section 2.21.1). It is not
        // authenticated; a later slice may keep waiting for a while.
        if let Some(notify) = p.error() {
            self.close(Event::Failed {
                notify,
                by_peer: true,
            });
            return Ok(());
        }
        let (Some(sa), Some(ke), Some(nr)) = (p.sa(), p.ke(), p.nonce()) else {
            return Err(Discard::Malformed);
        };
        if header.responder_spi == 0 {
            return Err(Discard::Malformed);
        }
        let State::InitSent(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return Err(Discard::Unexpected);
        };
        self.outstanding = None;
        self.spi_r = header.responder_spi;
        self.detect_nat(&message.payloads, remote);
        // RFC 7296 section 2.7: the responder accepts one proposal, which must
        // be one we offered, with one transform of each type.
        let suite = match sa.proposals.as_slice() {
            [chosen] => proposal::check_chosen(&self.config.ike_proposals, chosen)
                .and_then(|_| IkeSuite::from_proposal(chosen)),
            _ => Err(Error::InvalidValue {
                what: "IKE_SA_INIT response: not one proposal",
                value: sa.proposals.len() as u64,
            }),
        };
        let Ok(suite) = suite else {
            tracing::debug!(
                peer = %remote,
                chosen = %Proposals(&sa.proposals),
                offered = %Proposals(&self.config.ike_proposals),
                "IKE proposal of the peer refused: not exactly one of ours"
            );
            self.close(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        };
        tracing::debug!(
            peer = %remote,
            chosen = %Proposals(&sa.proposals),
            spi_i = %Hex(self.spi_i),
            spi_r = %Hex(self.spi_r),
            "IKE proposal chosen by the peer"
        );
        if suite.group != st.kex.group() || ke.group != suite.group {
            self.close(Event::Failed {
                notify: NotifyType::InvalidKePayload,
                by_peer: false,
            });
            return Ok(());
        }
        let InitSent {
            kex, ni, request, ..
        } = *st;
        let Ok(g_ir) = kex.complete(&ke.data) else {
            self.close(Event::Failed {
                notify: NotifyType::InvalidSyntax,
                by_peer: false,
            });
            return Ok(());
        };
        let nr = nr.to_vec();
        // RFC 7383 section 2.3: fragmentation is used only if both sides
        // sent IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT.
        if self.config.fragmentation && p.notify(NotifyType::Ikev2FragmentationSupported).is_some()
        {
            self.fragment_limit = Some(fragment::message_limit(self.config.fragment_size, remote));
        }
        let peer_hashes = auth::peer_hash_algorithms(&message.payloads);
        let result = self
            .derive(suite, &g_ir, &ni, &nr)
            .and_then(|sk| self.auth_request(sk, ni, nr, &request, bytes.to_vec(), peer_hashes));
        match result {
            Ok((st, bytes)) => {
                self.send_request(now, ExchangeType::IkeAuth, 1, bytes);
                self.next_request_id = 2;
                self.state = State::AuthSent(Box::new(st));
            }
            Err(e) => self.local_error(e),
        }
        Ok(())
    }

    /// Initiator: NAT detection in the IKE_SA_INIT response that came from
    /// `remote`; on a NAT (or forced encapsulation) IKE moves to the NAT-T
    /// port from IKE_AUTH on (RFC 7296 section 2.23).
    fn detect_nat(&mut self, payloads: &[Payload], remote: SocketAddr) {
        let Some(local) = self.local else {
            return;
        };
        self.nat = nat::detect(
            payloads,
            self.spi_i,
            self.spi_r,
            local,
            remote,
            self.config.force_udp_encap,
        );
        if self.nat.is_some_and(|n| n.udp_encap()) {
            let port = self.config.natt_port;
            if let Some(r) = self.remote.as_mut() {
                r.set_port(port);
            }
            if let Some(l) = self.local.as_mut() {
                l.set_port(port);
            }
        }
    }

    /// SKEYSEED and the SK_* keys (RFC 7296 section 2.14), and the ciphers.
    fn derive(&self, suite: IkeSuite, g_ir: &Key, ni: &[u8], nr: &[u8]) -> Result<Sk> {
        let seed = skeyseed(suite.prf, ni, nr, g_ir.expose());
        let keys = IkeKeys::derive(&suite, &seed, ni, nr, self.spi_i, self.spi_r)?;
        let (outbound, inbound) = SkCipher::pair(&suite, &keys, self.role == Role::Initiator)?;
        Ok(Sk {
            suite,
            keys,
            outbound,
            inbound,
        })
    }

    /// Builds the IKE_AUTH request: HDR, SK {IDi, [CERT+,] [CERTREQ,]
    /// [IDr,] AUTH, [N(USE_TRANSPORT_MODE),] SAi2, TSi, TSr}.
    fn auth_request(
        &mut self,
        sk: Sk,
        ni: Vec<u8>,
        nr: Vec<u8>,
        init_request: &[u8],
        init_response: Vec<u8>,
        peer_hashes: Option<Vec<HashAlgorithm>>,
    ) -> Result<(AuthSent, Vec<Vec<u8>>)> {
        let c = &self.config;
        // RFC 7296 section 2.15: InitiatorSignedOctets = RealMessage1 |
        // NonceRData | MACedIDForI; a PSK's MAC or a signature (auth.rs).
        let auth = auth::local_auth(
            c,
            &c.local_id,
            &sk.suite,
            init_request,
            &nr,
            &sk.keys.sk_pi,
            peer_hashes.as_deref(),
        )?;
        let mut payloads = vec![Payload::IdInitiator(c.local_id.clone())];
        // RFC 7296 sections 3.6 and 3.7: our certificates, and the CAs we
        // trust for the responder's.
        payloads.extend(auth::cert_payloads(c));
        payloads.extend(auth::certreq(c));
        if let Some(idr) = &c.remote_id {
            payloads.push(Payload::IdResponder(idr.clone()));
        }
        // RFC 7296 section 2.4: INITIAL_CONTACT tells the peer that we hold
        // no other IKE SA with it, so it may delete what it has with us.
        if c.initial_contact {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::InitialContact,
                Vec::new(),
            )));
        }
        payloads.push(Payload::Auth(auth));
        // RFC 7296 section 1.3.1: USE_TRANSPORT_MODE asks for a transport-mode
        // Child SA.
        if c.transport_mode {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::UseTransportMode,
                Vec::new(),
            )));
        }
        let esp_spi = random_esp_spi(self.rng.as_mut())?;
        let c = &self.config;
        // RFC 7296 section 1.2: no D-H transform in IKE_AUTH (PFS applies
        // to rekeys only).
        let esp_offer: Vec<Proposal> = proposal::without_ke(&c.esp_proposals)
            .into_iter()
            .map(|mut p| {
                p.spi = esp_spi.to_be_bytes().to_vec();
                p
            })
            .collect();
        payloads.push(Payload::Sa(SaPayload {
            proposals: esp_offer.clone(),
        }));
        payloads.push(Payload::TsInitiator(c.local_ts.clone()));
        payloads.push(Payload::TsResponder(c.remote_ts.clone()));
        log_child_offer(
            self.remote,
            "IKE_AUTH",
            esp_spi,
            &esp_offer,
            &c.local_ts,
            &c.remote_ts,
        );
        let bytes = logging::seal(
            self.remote,
            &sk.outbound,
            self.fragment_limit,
            &self.header(ExchangeType::IkeAuth, false, 1),
            &payloads,
        )?;
        let st = AuthSent {
            sk,
            ni,
            nr,
            init_response,
            esp_spi,
            esp_offer,
            tsi: c.local_ts.clone(),
            tsr: c.remote_ts.clone(),
        };
        Ok((st, bytes))
    }

    fn on_auth_response(&mut self, now: Instant, message: &Message) {
        let State::AuthSent(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let p = Payloads(&message.payloads);
        // RFC 7296 section 2.21.2: a responder that rejects our AUTH answers
        // AUTHENTICATION_FAILED in the (encrypted) IKE_AUTH response.
        if p.notify(NotifyType::AuthenticationFailed).is_some() {
            self.close(Event::AuthFailed {
                reason: AuthFailure::RejectedByPeer,
            });
            return;
        }
        let (Some(idr), Some(auth)) = (p.idr(), p.auth()) else {
            match p.error() {
                Some(notify) => self.close(Event::Failed {
                    notify,
                    by_peer: true,
                }),
                None => self.close(Event::AuthFailed {
                    reason: AuthFailure::MissingPayload,
                }),
            }
            return;
        };
        let verified = self.verify_peer(
            now,
            &message.payloads,
            idr,
            auth,
            &st.sk,
            &st.init_response,
            &st.ni,
        );
        if let Err(reason) = verified {
            // Section 2.21.2: the responder hears it in an INFORMATIONAL.
            self.refuse_responder(&st.sk, reason);
            return;
        }
        let AuthSent {
            sk,
            ni,
            nr,
            esp_spi,
            esp_offer,
            tsi,
            tsr,
            ..
        } = *st;
        self.events.push_back(Event::IkeSaEstablished);
        let child = self.initiator_child(&p, &sk, &ni, &nr, esp_spi, &esp_offer, &tsi, &tsr, None);
        let event = child.unwrap_or_else(|event| *event);
        let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        let mut established = Established::new(sk, child_spis(&event), rekey_at);
        established.ike_rekey_at = rekey_time(self.config.ike_lifetime, self.rng.as_mut(), now);
        self.established_at = Some(now);
        self.state = State::Established(Box::new(established));
        self.events.push_back(event);
        self.queue_additional_children(now);
    }

    /// Checks the peer's identity and AUTH payload: against our PSK, or
    /// its certificate against our trust and its signature (auth.rs).
    #[allow(clippy::too_many_arguments)]
    fn verify_peer(
        &self,
        now: Instant,
        payloads: &[Payload],
        id: &Identity,
        auth: &Auth,
        sk: &Sk,
        peer_real_message: &[u8],
        our_nonce: &[u8],
    ) -> Result<(), AuthFailure> {
        let sk_p = match self.role {
            Role::Initiator => &sk.keys.sk_pr,
            Role::Responder => &sk.keys.sk_pi,
        };
        auth::verify_peer_auth(
            &self.config,
            now,
            payloads,
            id,
            auth,
            &sk.suite,
            peer_real_message,
            our_nonce,
            sk_p,
        )
    }

    /// The Child SA from the responder's IKE_AUTH answer, or the event
    /// that says why there is none.
    #[allow(clippy::too_many_arguments)]
    fn initiator_child(
        &self,
        p: &Payloads<'_>,
        sk: &Sk,
        ni: &[u8],
        nr: &[u8],
        esp_spi: u32,
        esp_offer: &[Proposal],
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
        g_ir: Option<&[u8]>,
    ) -> Result<Event, Box<Event>> {
        let failed = |notify| {
            Box::new(Event::Failed {
                notify,
                by_peer: false,
            })
        };
        // NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE...: the IKE SA stands, the Child
        // SA was refused (RFC 7296 section 1.2).
        if let Some(notify) = p.error() {
            return Err(Box::new(Event::Failed {
                notify,
                by_peer: true,
            }));
        }
        let (Some(sa), Some(rtsi), Some(rtsr)) = (p.sa(), p.tsi(), p.tsr()) else {
            return Err(failed(NotifyType::InvalidSyntax));
        };
        let [chosen] = sa.proposals.as_slice() else {
            tracing::debug!(peer = %Peer(self.remote), chosen = %Proposals(&sa.proposals), "ESP proposal of the peer refused: not exactly one");
            return Err(failed(NotifyType::NoProposalChosen));
        };
        let mut check = chosen.clone();
        check.spi = esp_spi.to_be_bytes().to_vec();
        let choice = proposal::check_chosen(esp_offer, &check)
            .and_then(|_| proposal::esp_choice(chosen))
            .map_err(|_| {
                tracing::debug!(
                    peer = %Peer(self.remote),
                    chosen = %Proposals(core::slice::from_ref(chosen)),
                    offered = %Proposals(esp_offer),
                    "ESP proposal of the peer refused: not one we offered"
                );
                failed(NotifyType::NoProposalChosen)
            })?;
        tracing::debug!(
            peer = %Peer(self.remote),
            chosen = %Proposals(core::slice::from_ref(chosen)),
            spi_out = %logging::proposal_spi(chosen),
            "ESP proposal chosen by the peer"
        );
        let peer_spi = <[u8; 4]>::try_from(chosen.spi.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| failed(NotifyType::InvalidSyntax))?;
        let transport =
            self.config.transport_mode && p.notify(NotifyType::UseTransportMode).is_some();
        // RFC 7296 section 2.23.1: in transport mode behind a NAT the
        // responder replaces our (private) address in TSi with the NAT's;
        // our side of the SA stays our own address.
        let behind_nat = transport && self.nat.is_some_and(|n| n.local_behind_nat);
        // RFC 7296 section 2.9: the responder may narrow, never widen, what we
        // proposed.
        let acceptable = !rtsi.is_empty()
            && !rtsr.is_empty()
            && (behind_nat || ts::is_subset(rtsi, tsi))
            && ts::is_subset(rtsr, tsr);
        tracing::debug!(
            peer = %Peer(self.remote),
            tsi = %Selectors(rtsi),
            tsr = %Selectors(rtsr),
            offered_tsi = %Selectors(tsi),
            offered_tsr = %Selectors(tsr),
            transport,
            "traffic selectors {} by the peer",
            if acceptable {
                "narrowed"
            } else {
                "refused: widened"
            }
        );
        if !acceptable {
            return Err(failed(NotifyType::TsUnacceptable));
        }
        let rtsi = if behind_nat { tsi } else { rtsi };
        let keys = child_sa_keys(sk.suite.prf, &sk.keys.sk_d, g_ir, ni, nr, choice.suite)
            .map_err(|e| Box::new(Event::LocalError(e)))?;
        let params = |direction, spi, keys| ChildSaParams {
            direction,
            spi,
            suite: choice.suite,
            esn: choice.esn,
            transport,
            udp_encap: self.nat.is_some_and(|n| n.udp_encap()),
            keys,
            local_ts: rtsi.to_vec(),
            remote_ts: rtsr.to_vec(),
        };
        Ok(Event::ChildSaUp {
            inbound: params(Direction::Inbound, esp_spi, keys.responder_to_initiator),
            outbound: params(Direction::Outbound, peer_spi, keys.initiator_to_responder),
        })
    }

    // ---- responder ----

    fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: &Header,
        bytes: &[u8],
    ) -> Result<(), Discard> {
        // RFC 7296 section 3.1: the I flag is set in messages sent by the
        // original initiator.
        if header.initiator != (self.role == Role::Responder) {
            return Err(Discard::Unexpected);
        }
        if let State::ExpectInit = self.state {
            if header.exchange_type != ExchangeType::IkeSaInit
                || header.message_id != 0
                || header.responder_spi != 0
            {
                return Err(Discard::Unexpected);
            }
            return self.on_init_request(now, remote, header, bytes);
        }
        let init_retransmit =
            self.role == Role::Responder && header.message_id == 0 && header.responder_spi == 0;
        if header.initiator_spi != self.spi_i
            || (header.responder_spi != self.spi_r && !init_retransmit)
        {
            return Err(Discard::WrongSpi);
        }
        // RFC 7296 section 2.1: a retransmitted request (same message ID) gets
        // the cached response again, and is not processed a second time.
        if let Some((id, response)) = &self.last_response {
            if header.message_id == *id {
                // RFC 7383 section 2.6.1: a fragmented request sent again
                // makes the responder resend its response (every fragment
                // of it) once, on the request's fragment 1; its other
                // fragments are ignored.
                if fragment::fragment_number(bytes).is_some_and(|n| n != 1) {
                    return Ok(());
                }
                let response = response.clone();
                tracing::debug!(
                    peer = %remote,
                    "IKE request {} received again: its response sent again",
                    header.message_id
                );
                self.stats.cached_responses += 1;
                self.remote = Some(remote);
                self.transmit_all(response);
                return Ok(());
            }
        }
        match &self.state {
            State::ExpectAuth(_) => {
                if header.message_id != 1 {
                    return Err(Discard::WrongMessageId);
                }
                if header.exchange_type != ExchangeType::IkeAuth {
                    return Err(Discard::Unexpected);
                }
                // An unknown critical payload is answered (critical.rs).
                let Some(message) = self.open_request(now, remote, header, bytes)? else {
                    return Ok(());
                };
                self.remote = Some(remote);
                self.on_auth_request(now, &message);
                Ok(())
            }
            State::Established(_) => {
                if header.message_id != self.peer_next_id {
                    return Err(Discard::WrongMessageId);
                }
                let Some(message) = self.open_request(now, remote, header, bytes)? else {
                    return Ok(());
                };
                self.remote = Some(remote);
                // RFC 7296 section 2.21.2: the initiator refused our AUTH.
                if self.on_auth_failed_informational(header, &message) {
                    return Ok(());
                }
                self.on_established_request(now, header, &message);
                Ok(())
            }
            _ => Err(Discard::Unexpected),
        }
    }

    /// A request from the peer once the IKE SA is up: INFORMATIONAL (an
    /// empty one is a liveness check; DELETE closes the Child SA or the
    /// IKE SA), or CREATE_CHILD_SA, which this slice declines.
    fn on_established_request(&mut self, now: Instant, header: &Header, message: &Message) {
        if header.exchange_type == ExchangeType::CreateChildSa && ike_rekey::is_ike_rekey(message) {
            return self.on_ike_rekey_request(now, header, message);
        }
        let response = self.header(header.exchange_type, true, header.message_id);
        let id = header.message_id;
        if header.exchange_type == ExchangeType::CreateChildSa {
            let State::Established(mut st) = core::mem::replace(&mut self.state, State::Closed)
            else {
                return;
            };
            let (reply, events) = self.create_child_response(now, &mut st, message);
            let sealed = logging::seal(
                self.remote,
                &st.sk.outbound,
                self.fragment_limit,
                &response,
                &reply,
            );
            self.state = State::Established(st);
            self.peer_next_id = id.wrapping_add(1);
            match sealed {
                Ok(bytes) => self.send_response(id, bytes),
                Err(e) => return self.local_error(e),
            }
            self.events.extend(events);
            return;
        }
        let State::Established(st) = &mut self.state else {
            return;
        };
        let mut reply = Vec::new();
        let mut events = Vec::new();
        let mut delete_ike = false;
        match header.exchange_type {
            ExchangeType::Informational => {
                for payload in &message.payloads {
                    let Payload::Delete(d) = payload else {
                        continue;
                    };
                    match d.protocol {
                        ProtocolId::Ike => delete_ike = true,
                        ProtocolId::Esp => {
                            // RFC 7296 section 1.4.1: the answer to a
                            // DELETE of ESP SAs deletes the SAs of the other
                            // direction, by our own (inbound) SPIs.
                            let mut gone = Vec::new();
                            for spi in &d.spis {
                                if let Some(i) = st.child_by_outbound(spi) {
                                    gone.push(st.children.remove(i));
                                }
                            }
                            for child in gone {
                                let (inbound, outbound) = child.spis();
                                reply.push(Payload::Delete(Delete::esp(&[inbound])));
                                st.unqueue_rekey(inbound);
                                let collided =
                                    st.collision.take_if(|c| c.old == (inbound, outbound));
                                if let Some(c) = collided {
                                    // Colliding rekeys, and the peer deletes
                                    // the old pair before our request is
                                    // answered: its rekey (the one we
                                    // answered) won (section 2.8.1).
                                    st.children.push(Child {
                                        inbound: c.inbound.spi,
                                        outbound: c.outbound.spi,
                                        ts: child.ts,
                                        rekey_at: rekey_time(
                                            self.config.child_lifetime,
                                            self.rng.as_mut(),
                                            now,
                                        ),
                                    });
                                    events.push(Event::ChildSaRekeyed {
                                        old_inbound_spi: inbound,
                                        old_outbound_spi: outbound,
                                        inbound: c.inbound,
                                        outbound: c.outbound,
                                    });
                                }
                                events.push(Event::ChildSaDown {
                                    inbound_spi: inbound,
                                    outbound_spi: outbound,
                                });
                            }
                            // A pair replaced by a rekey, or the redundant
                            // pair of a collision (section 2.8.1).
                            let (gone, kept): (Vec<Retired>, Vec<Retired>) =
                                st.retired.iter().partition(|r| {
                                    d.spis.iter().any(|spi| spi[..] == r.outbound.to_be_bytes())
                                });
                            st.retired = kept;
                            for r in gone {
                                reply.push(Payload::Delete(Delete::esp(&[r.inbound])));
                                if r.announce {
                                    events.push(Event::ChildSaDown {
                                        inbound_spi: r.inbound,
                                        outbound_spi: r.outbound,
                                    });
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                self.stats.unexpected += 1;
                return;
            }
        }
        if delete_ike {
            // RFC 7296 section 1.4.1: deleting the IKE SA deletes its Child
            // SAs; the response is an empty INFORMATIONAL message.
            reply.clear();
            events = vec![Event::IkeSaDeleted];
        }
        let sealed = logging::seal(
            self.remote,
            &st.sk.outbound,
            self.fragment_limit,
            &response,
            &reply,
        );
        self.peer_next_id = id.wrapping_add(1);
        match sealed {
            Ok(bytes) => self.send_response(id, bytes),
            Err(e) => return self.local_error(e),
        }
        if delete_ike {
            self.state = State::Closed;
        }
        self.events.extend(events);
    }

    /// Answers an error notify to an IKE_SA_INIT request, without keeping
    /// state (the responder SPI is zero).
    fn refuse_init(&mut self, remote: SocketAddr, header: &Header, notify: Notify) {
        let message = Message {
            header: Header {
                initiator_spi: header.initiator_spi,
                responder_spi: 0,
                response: true,
                initiator: false,
                ..self.header(ExchangeType::IkeSaInit, true, 0)
            },
            payloads: vec![Payload::Notify(notify)],
        };
        if let Ok(bytes) = message.encode() {
            logging::message(
                Dir::Sent,
                Some(remote),
                &message.header,
                &message.payloads,
                1,
            );
            self.transmits.push_back(Transmit { dst: remote, bytes });
        }
    }

    fn on_init_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: &Header,
        bytes: &[u8],
    ) -> Result<(), Discard> {
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            // An unknown critical payload is answered (critical.rs).
            Err(e) => return self.undecodable_init(remote, header, e),
        };
        logging::message(Dir::Received, Some(remote), header, &message.payloads, 1);
        let p = Payloads(&message.payloads);
        let (Some(sa), Some(ke), Some(ni)) = (p.sa(), p.ke(), p.nonce()) else {
            return Err(Discard::Malformed);
        };
        // RFC 7296 section 2.7: the responder picks one proposal, or answers
        // NO_PROPOSAL_CHOSEN.
        let chosen = proposal::select(&self.config.ike_proposals, &sa.proposals);
        let chosen = chosen.and_then(|c| {
            IkeSuite::from_proposal(&c.proposal)
                .ok()
                .map(|s| (c.proposal, s))
        });
        tracing::debug!(
            peer = %remote,
            offered = %Proposals(&sa.proposals),
            ours = %Proposals(&self.config.ike_proposals),
            chosen = %chosen.as_ref().map_or_else(
                || "none: NO_PROPOSAL_CHOSEN".to_owned(),
                |(c, _)| proposal::to_strongswan(c)
            ),
            "IKE proposal chosen"
        );
        let Some((chosen, suite)) = chosen else {
            self.refuse_init(
                remote,
                header,
                Notify::new(NotifyType::NoProposalChosen, Vec::new()),
            );
            self.events.push_back(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        };
        // RFC 7296 section 1.2: a KE payload of another group than the chosen
        // one is answered with INVALID_KE_PAYLOAD, which names the group we
        // want.
        if ke.group != suite.group {
            self.refuse_init(
                remote,
                header,
                Notify::new(
                    NotifyType::InvalidKePayload,
                    suite.group.value().to_be_bytes().to_vec(),
                ),
            );
            return Ok(());
        }
        let kex = match crypto::start(suite.group) {
            Ok(k) => k,
            Err(e) => {
                self.local_error(e);
                return Ok(());
            }
        };
        let public = kex.public_value().to_vec();
        let Ok(g_ir) = kex.complete(&ke.data) else {
            self.refuse_init(
                remote,
                header,
                Notify::new(NotifyType::InvalidSyntax, Vec::new()),
            );
            return Ok(());
        };
        let peer_hashes = auth::peer_hash_algorithms(&message.payloads);
        // RFC 7383 section 2.3: the responder announces fragmentation only
        // if the initiator did, and then both use it.
        let fragmentation = self.config.fragmentation
            && p.notify(NotifyType::Ikev2FragmentationSupported).is_some();
        if fragmentation {
            self.fragment_limit = Some(fragment::message_limit(self.config.fragment_size, remote));
        }
        let result = (|| {
            let spi_r = random_ike_spi(self.rng.as_mut())?;
            let nr = random_nonce(self.rng.as_mut())?;
            self.spi_i = header.initiator_spi;
            self.spi_r = spi_r;
            self.remote = Some(remote);
            // RFC 7296 section 2.23: the request's digests cover SPIr = 0.
            let nat = self.local.and_then(|local| {
                nat::detect(
                    &message.payloads,
                    header.initiator_spi,
                    0,
                    local,
                    remote,
                    self.config.force_udp_encap,
                )
            });
            let nat_notifies = match (nat, self.local) {
                (Some(_), Some(local)) => Some(nat::notifies(
                    self.spi_i,
                    spi_r,
                    local,
                    remote,
                    self.config.force_udp_encap,
                    self.rng.as_mut(),
                )?),
                _ => None,
            };
            self.nat = nat;
            let response = Message {
                header: self.header(ExchangeType::IkeSaInit, true, 0),
                payloads: vec![
                    Payload::Sa(SaPayload {
                        proposals: vec![chosen],
                    }),
                    Payload::KeyExchange(crate::message::KeyExchange {
                        group: suite.group,
                        data: public,
                    }),
                    Payload::Nonce(nr.clone()),
                ]
                .into_iter()
                .chain(nat_notifies.into_iter().flatten())
                .chain(fragmentation.then(fragmentation_supported))
                // RFC 7427 section 4 and RFC 7296 section 3.7: our hash
                // algorithms if the initiator announced its own, and the
                // CAs we trust.
                .chain(
                    peer_hashes
                        .is_some()
                        .then(|| auth::hash_algorithms_notify(&self.config))
                        .flatten(),
                )
                .chain(auth::certreq(&self.config))
                .collect(),
            }
            .encode()?;
            let sk = self.derive(suite, &g_ir, ni, &nr)?;
            Ok::<_, Error>((sk, nr, response))
        })();
        match result {
            Ok((sk, nr, response)) => {
                self.remote = Some(remote);
                self.half_open_deadline = Some(now + HALF_OPEN_TIMEOUT);
                self.send_response(0, vec![response.clone()]);
                self.state = State::ExpectAuth(Box::new(ExpectAuth {
                    sk,
                    ni: ni.to_vec(),
                    nr,
                    init_request: bytes.to_vec(),
                    init_response: response,
                    peer_hashes,
                }));
            }
            Err(e) => self.local_error(e),
        }
        Ok(())
    }

    fn on_auth_request(&mut self, now: Instant, message: &Message) {
        self.half_open_deadline = None;
        let State::ExpectAuth(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let p = Payloads(&message.payloads);
        let header = self.header(ExchangeType::IkeAuth, true, 1);
        let verified = match (p.idi(), p.auth()) {
            (Some(idi), Some(auth)) => self.verify_peer(
                now,
                &message.payloads,
                idi,
                auth,
                &st.sk,
                &st.init_request,
                &st.nr,
            ),
            _ => Err(AuthFailure::MissingPayload),
        };
        // IDr, if sent, names the identity the initiator expects of us
        // (with a certificate: any identity in it, which we answer as).
        let our_id = verified.and_then(|()| auth::responder_identity(&self.config, p.idr()));
        let verified = our_id.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(reason) = verified {
            // RFC 7296 section 2.21.2: if the responder's AUTH check fails, it
            // answers with an AUTHENTICATION_FAILED notify in the encrypted
            // IKE_AUTH response, and the IKE SA is not created.
            let notify = [Payload::Notify(Notify::new(
                NotifyType::AuthenticationFailed,
                Vec::new(),
            ))];
            match logging::seal(
                self.remote,
                &st.sk.outbound,
                self.fragment_limit,
                &header,
                &notify,
            ) {
                Ok(bytes) => {
                    self.send_response(1, bytes);
                    self.close(Event::AuthFailed { reason });
                }
                Err(e) => self.local_error(e),
            }
            return;
        }
        self.peer_initial_contact = p.notify(NotifyType::InitialContact).is_some();
        let ExpectAuth {
            sk,
            ni,
            nr,
            init_response,
            peer_hashes,
            ..
        } = *st;
        // RFC 7296 section 2.15: responderSignedOctets = RealMessage2 |
        // NonceIData | MACedIDForR; a PSK's MAC or a signature (auth.rs).
        let c = &self.config;
        let our_id = our_id.unwrap_or_else(|_| c.local_id.clone());
        let auth = match auth::local_auth(
            c,
            &our_id,
            &sk.suite,
            &init_response,
            &ni,
            &sk.keys.sk_pr,
            peer_hashes.as_deref(),
        ) {
            Ok(auth) => auth,
            Err(e) => {
                self.local_error(e);
                return;
            }
        };
        // HDR, SK {IDr, [CERT+,] AUTH, ...} (RFC 7296 section 1.2).
        let mut payloads = vec![Payload::IdResponder(our_id)];
        payloads.extend(auth::cert_payloads(c));
        payloads.push(Payload::Auth(auth));
        let child = self.responder_child(true, &p, &sk, &ni, &nr, None);
        let child_event = match child {
            Ok((child_payloads, event)) => {
                payloads.extend(child_payloads);
                event
            }
            Err(notify) => {
                payloads.push(Payload::Notify(Notify::new(notify, Vec::new())));
                Event::Failed {
                    notify,
                    by_peer: false,
                }
            }
        };
        match logging::seal(
            self.remote,
            &sk.outbound,
            self.fragment_limit,
            &header,
            &payloads,
        ) {
            Ok(bytes) => {
                self.send_response(1, bytes);
                self.peer_next_id = 2;
                self.next_request_id = 0;
                let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
                let mut established = Established::new(sk, child_spis(&child_event), rekey_at);
                established.ike_rekey_at =
                    rekey_time(self.config.ike_lifetime, self.rng.as_mut(), now);
                self.established_at = Some(now);
                self.state = State::Established(Box::new(established));
                self.events.push_back(Event::IkeSaEstablished);
                self.events.push_back(child_event);
            }
            Err(e) => self.local_error(e),
        }
    }

    /// The responder's half of a Child SA, the first (`ike_auth`) or a
    /// rekey's: the chosen proposal with our SPI, the narrowed selectors,
    /// and the keys; or the error notify that refuses it (the IKE SA
    /// stands either way).
    fn responder_child(
        &mut self,
        ike_auth: bool,
        p: &Payloads<'_>,
        sk: &Sk,
        ni: &[u8],
        nr: &[u8],
        g_ir: Option<&[u8]>,
    ) -> Result<(Vec<Payload>, Event), NotifyType> {
        let (Some(sa), Some(tsi), Some(tsr)) = (p.sa(), p.tsi(), p.tsr()) else {
            return Err(NotifyType::InvalidSyntax);
        };
        // RFC 7296 section 1.2: IKE_AUTH's SA payloads carry no D-H
        // transform; a group in our ESP proposals is for rekeys (PFS). An
        // IKE_AUTH offer that has one anyway is read without it.
        let selected = if ike_auth {
            proposal::select(
                &proposal::without_ke(&self.config.esp_proposals),
                &proposal::without_ke(&sa.proposals),
            )
        } else {
            proposal::select(&self.config.esp_proposals, &sa.proposals)
        };
        tracing::debug!(
            peer = %Peer(self.remote),
            offered = %Proposals(&sa.proposals),
            ours = %Proposals(&self.config.esp_proposals),
            chosen = %selected.as_ref().map_or_else(
                || "none: NO_PROPOSAL_CHOSEN".to_owned(),
                |c| proposal::to_strongswan(&c.proposal)
            ),
            spi_out = %selected.as_ref().map(|c| logging::proposal_spi(&c.proposal)).unwrap_or_default(),
            "ESP proposal chosen"
        );
        let selected = selected.ok_or(NotifyType::NoProposalChosen)?;
        let choice =
            proposal::esp_choice(&selected.proposal).map_err(|_| NotifyType::NoProposalChosen)?;
        let peer_spi = <[u8; 4]>::try_from(selected.proposal.spi.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| NotifyType::InvalidSyntax)?;
        // RFC 7296 section 1.3.1: the responder that agrees to transport mode
        // includes USE_TRANSPORT_MODE in its answer; without it the SA is in
        // tunnel mode.
        let transport =
            self.config.transport_mode && p.notify(NotifyType::UseTransportMode).is_some();
        // RFC 7296 section 2.23.1: in transport mode, an initiator behind a
        // NAT names its private address in TSi; the traffic comes from the
        // address the IKE SA comes from, which replaces it.
        let translated;
        let tsi = match (transport, self.nat, self.remote) {
            (true, Some(n), Some(remote)) if n.remote_behind_nat => {
                translated = ts::with_address(tsi, remote.ip());
                &translated[..]
            }
            _ => tsi,
        };
        // RFC 7296 section 2.9: the responder narrows TSi and TSr to its
        // policy; if nothing is left it answers TS_UNACCEPTABLE.
        let (local_policy, remote_policy) = self.config.policy_ts();
        let narrowed_tsi = ts::narrow(tsi, &remote_policy);
        let narrowed_tsr = ts::narrow(tsr, &local_policy);
        let acceptable = !narrowed_tsi.is_empty() && !narrowed_tsr.is_empty();
        tracing::debug!(
            peer = %Peer(self.remote),
            offered_tsi = %Selectors(tsi),
            offered_tsr = %Selectors(tsr),
            ours_local = %Selectors(&local_policy),
            ours_remote = %Selectors(&remote_policy),
            tsi = %Selectors(&narrowed_tsi),
            tsr = %Selectors(&narrowed_tsr),
            transport,
            "traffic selectors {}",
            if acceptable {
                "narrowed"
            } else {
                "unacceptable: TS_UNACCEPTABLE"
            }
        );
        let (tsi, tsr) = (narrowed_tsi, narrowed_tsr);
        if !acceptable {
            return Err(NotifyType::TsUnacceptable);
        }
        let our_spi =
            random_esp_spi(self.rng.as_mut()).map_err(|_| NotifyType::TemporaryFailure)?;
        let keys = child_sa_keys(sk.suite.prf, &sk.keys.sk_d, g_ir, ni, nr, choice.suite)
            .map_err(|_| NotifyType::TemporaryFailure)?;
        let mut chosen = selected.proposal;
        chosen.spi = our_spi.to_be_bytes().to_vec();
        let mut payloads = Vec::new();
        if transport {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::UseTransportMode,
                Vec::new(),
            )));
        }
        payloads.push(Payload::Sa(SaPayload {
            proposals: vec![chosen],
        }));
        payloads.push(Payload::TsInitiator(tsi.clone()));
        payloads.push(Payload::TsResponder(tsr.clone()));
        let params = |direction, spi, keys| ChildSaParams {
            direction,
            spi,
            suite: choice.suite,
            esn: choice.esn,
            transport,
            udp_encap: self.nat.is_some_and(|n| n.udp_encap()),
            keys,
            local_ts: tsr.clone(),
            remote_ts: tsi.clone(),
        };
        let event = Event::ChildSaUp {
            inbound: params(Direction::Inbound, our_spi, keys.initiator_to_responder),
            outbound: params(Direction::Outbound, peer_spi, keys.responder_to_initiator),
        };
        Ok((payloads, event))
    }
}

// ---- rekeying (RFC 7296 sections 1.3.3, 2.8, 2.8.1, 2.17) ----

impl IkeSa {
    /// Sends the next queued request, if none is outstanding.
    fn run_queue(&mut self, now: Instant) {
        if self.outstanding.is_some() {
            return;
        }
        let State::Established(st) = &mut self.state else {
            return;
        };
        if st.deleting {
            return;
        }
        // A queued rekey of a Child SA that went away meanwhile sends
        // nothing: go on to the next.
        while self.outstanding.is_none() {
            let State::Established(st) = &mut self.state else {
                return;
            };
            let Some(next) = st.queue.pop_front() else {
                return;
            };
            let result = match next {
                Queued::Rekey(spi) => {
                    match st
                        .children
                        .iter()
                        .find(|c| c.inbound == spi)
                        .map(Child::spis)
                    {
                        Some(pair) => self.start_rekey(now, ChildTarget::Rekey(pair), None, 0),
                        None => Ok(()),
                    }
                }
                Queued::CreateChild(i) => self.start_rekey(now, ChildTarget::Create(i), None, 0),
                Queued::IkeRekey => self.start_ike_rekey(now, None, 0),
                Queued::DeleteChild(r) => self.send_delete_child(now, r),
            };
            if let Err(e) = result {
                self.local_error(e);
                return;
            }
        }
    }

    /// DELETE of one Child SA pair, by our inbound SPI (RFC 7296 section
    /// 1.4.1).
    fn send_delete_child(&mut self, now: Instant, r: Retired) -> Result<()> {
        self.send_informational(now, &[Payload::Delete(Delete::esp(&[r.inbound]))])?;
        if let State::Established(st) = &mut self.state {
            st.request = Some(Request::DeleteChild(r));
        }
        Ok(())
    }

    /// Builds and sends the CREATE_CHILD_SA request for `target`: SK
    /// {[N(REKEY_SA),] [N(USE_TRANSPORT_MODE),] SA, Ni, [KEi,] TSi, TSr}
    /// (RFC 7296 sections 1.3.1 and 1.3.3). A rekey proposes the old
    /// pair's selectors (section 2.8); a new Child SA its configured ones.
    ///
    /// The KE payload is for `group`, or else for the first group of the
    /// ESP proposals.
    fn start_rekey(
        &mut self,
        now: Instant,
        target: ChildTarget,
        group: Option<DhGroup>,
        ke_retries: u8,
    ) -> Result<()> {
        let State::Established(st) = &self.state else {
            return Ok(());
        };
        let (tsi, tsr) = match target {
            ChildTarget::Rekey(old) => match st.child(old) {
                Some(i) => st.children[i].ts.clone().unwrap_or_else(|| {
                    (self.config.local_ts.clone(), self.config.remote_ts.clone())
                }),
                // The Child SA went away meanwhile: nothing to rekey.
                None => return Ok(()),
            },
            ChildTarget::Create(i) => match self.config.additional_children.get(i) {
                Some(ts) => ts.clone(),
                None => return Ok(()),
            },
        };
        let esp_spi = random_esp_spi(self.rng.as_mut())?;
        let ni = random_nonce(self.rng.as_mut())?;
        let c = &self.config;
        let kex = group
            .or_else(|| first_group(&c.esp_proposals))
            .map(crypto::start)
            .transpose()?;
        let esp_offer: Vec<Proposal> = c
            .esp_proposals
            .iter()
            .cloned()
            .map(|mut p| {
                p.spi = esp_spi.to_be_bytes().to_vec();
                p
            })
            .collect();
        let mut payloads = Vec::new();
        if let ChildTarget::Rekey(old) = target {
            // RFC 7296 section 3.10.1: REKEY_SA names the SA being rekeyed
            // by the SPI the peer expects to receive on, ours.
            payloads.push(Payload::Notify(Notify {
                protocol: Some(ProtocolId::Esp),
                spi: old.0.to_be_bytes().to_vec(),
                notify_type: NotifyType::RekeySa,
                data: Vec::new(),
            }));
        }
        if c.transport_mode {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::UseTransportMode,
                Vec::new(),
            )));
        }
        payloads.push(Payload::Sa(SaPayload {
            proposals: esp_offer.clone(),
        }));
        payloads.push(Payload::Nonce(ni.clone()));
        if let Some(kex) = &kex {
            payloads.push(Payload::KeyExchange(crate::message::KeyExchange {
                group: kex.group(),
                data: kex.public_value().to_vec(),
            }));
        }
        payloads.push(Payload::TsInitiator(tsi.clone()));
        payloads.push(Payload::TsResponder(tsr.clone()));
        let what = match target {
            ChildTarget::Rekey((inbound, _)) => format!("rekey of {}", Hex(inbound)),
            ChildTarget::Create(i) => format!("additional Child SA {i}"),
        };
        log_child_offer(self.remote, &what, esp_spi, &esp_offer, &tsi, &tsr);
        let rekey = RekeySent {
            target,
            ni,
            kex,
            esp_spi,
            esp_offer,
            tsi,
            tsr,
            ke_retries,
        };
        let id = self.next_request_id;
        let header = self.header(ExchangeType::CreateChildSa, false, id);
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        let bytes = logging::seal(
            self.remote,
            &st.sk.outbound,
            self.fragment_limit,
            &header,
            &payloads,
        )?;
        st.request = Some(Request::Rekey(Box::new(rekey)));
        self.next_request_id = id.wrapping_add(1);
        self.send_request(now, ExchangeType::CreateChildSa, id, bytes);
        Ok(())
    }

    /// The answer to our CREATE_CHILD_SA or child DELETE request.
    fn on_established_response(&mut self, now: Instant, message: &Message) {
        let State::Established(mut st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let mut retry = None;
        let mut ike_retry = None;
        match st.request.take() {
            Some(Request::DeleteChild(r)) if r.announce => {
                self.events.push_back(Event::ChildSaDown {
                    inbound_spi: r.inbound,
                    outbound_spi: r.outbound,
                });
            }
            Some(Request::Rekey(rekey)) => {
                retry = self.on_rekey_response(now, &mut st, *rekey, message);
            }
            Some(Request::IkeRekey(rekey)) => {
                ike_retry = self.on_ike_rekey_response(now, &mut st, *rekey, message);
            }
            _ => {}
        }
        self.state = State::Established(st);
        if let Some((target, group, retries)) = retry {
            if let Err(e) = self.start_rekey(now, target, Some(group), retries) {
                self.local_error(e);
            }
        }
        if let Some((group, retries)) = ike_retry {
            if let Err(e) = self.start_ike_rekey(now, Some(group), retries) {
                self.local_error(e);
            }
        }
    }

    fn on_rekey_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        mut rekey: RekeySent,
        message: &Message,
    ) -> Option<(ChildTarget, DhGroup, u8)> {
        let p = Payloads(&message.payloads);
        let old = match rekey.target {
            ChildTarget::Rekey(old) => old,
            ChildTarget::Create(i) => return self.on_create_response(now, st, rekey, i, &p),
        };
        let Some(index) = st.child(old) else {
            // The Child SA was replaced meanwhile (the peer's colliding
            // rekey won and its DELETE of the old pair came first): a pair
            // we got now is redundant, and we delete it.
            if let Some(nr) = p.nonce().filter(|_| p.error().is_none()) {
                if let Ok((i, o)) = self.rekey_initiator_child(&p, st, &mut rekey, nr) {
                    st.queue.push_back(Queued::DeleteChild(Retired {
                        inbound: i.spi,
                        outbound: o.spi,
                        announce: false,
                    }));
                }
            }
            return None;
        };
        let collided = st.collision.as_ref().is_some_and(|c| c.old == old);
        if let Some(retry) = self.ke_retry(&p, &rekey).filter(|_| !collided) {
            return Some(retry);
        }
        let collision = st.collision.take_if(|c| c.old == old);
        let ours = match p.nonce() {
            Some(nr) if p.error().is_none() => {
                let nr = nr.to_vec();
                self.rekey_initiator_child(&p, st, &mut rekey, &nr)
                    .map(|(inbound, outbound)| (nr, inbound, outbound))
            }
            _ => Err(Box::new(Event::Failed {
                notify: p.error().unwrap_or(NotifyType::InvalidSyntax),
                by_peer: p.error().is_some(),
            })),
        };
        let (inbound, outbound) = match (ours, collision) {
            (Ok((nr, inbound, outbound)), Some(c)) => {
                // RFC 7296 section 2.8.1: the SA created with the lowest of
                // the four nonces is closed by the endpoint that created it.
                let ours_lowest = rekey.ni.min(nr) < c.ni.clone().min(c.nr.clone());
                let mine = Retired {
                    inbound: inbound.spi,
                    outbound: outbound.spi,
                    announce: false,
                };
                let theirs = Retired {
                    inbound: c.inbound.spi,
                    outbound: c.outbound.spi,
                    announce: false,
                };
                let old = Retired {
                    inbound: old.0,
                    outbound: old.1,
                    announce: true,
                };
                if ours_lowest {
                    // We lost: delete our redundant pair; the peer, whose
                    // SA survives, deletes the old one.
                    st.queue.push_back(Queued::DeleteChild(mine));
                    st.retired.push(old);
                    (c.inbound, c.outbound)
                } else {
                    st.queue.push_back(Queued::DeleteChild(old));
                    st.retired.push(theirs);
                    (inbound, outbound)
                }
            }
            (Ok((_, inbound, outbound)), None) => {
                st.queue.push_back(Queued::DeleteChild(Retired {
                    inbound: old.0,
                    outbound: old.1,
                    announce: true,
                }));
                (inbound, outbound)
            }
            (Err(_), Some(c)) => {
                // Our rekey failed (most likely the peer had finished its
                // own already): the peer's new pair stands, and the peer
                // deletes the old one.
                st.retired.push(Retired {
                    inbound: old.0,
                    outbound: old.1,
                    announce: true,
                });
                (c.inbound, c.outbound)
            }
            (Err(event), None) => {
                // The old Child SA stays; try again later.
                self.events.push_back(*event);
                st.children[index].rekey_at = self
                    .config
                    .child_lifetime
                    .map(|l| now + (l / 20).max(Duration::from_secs(1)));
                return None;
            }
        };
        let child = &mut st.children[index];
        child.inbound = inbound.spi;
        child.outbound = outbound.spi;
        child.rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        st.unqueue_rekey(old.0);
        self.events.push_back(Event::ChildSaRekeyed {
            old_inbound_spi: old.0,
            old_outbound_spi: old.1,
            inbound,
            outbound,
        });
        None
    }

    /// RFC 7296 section 1.3.3 (as section 1.2 for IKE_SA_INIT):
    /// INVALID_KE_PAYLOAD names the group the responder wants; the caller
    /// retries `rekey` with it (the window is free again), unless it
    /// already did so too often or the group is not ours to offer.
    fn ke_retry(&self, p: &Payloads<'_>, rekey: &RekeySent) -> Option<(ChildTarget, DhGroup, u8)> {
        let group = p
            .notify(NotifyType::InvalidKePayload)
            .and_then(|n| <[u8; 2]>::try_from(n.data.as_slice()).ok())
            .map(|b| DhGroup::from(u16::from_be_bytes(b)))?;
        (rekey.ke_retries < MAX_KE_RETRIES
            && rekey.kex.as_ref().is_none_or(|k| k.group() != group)
            && offers_group(&self.config.esp_proposals, group))
        .then_some((rekey.target, group, rekey.ke_retries + 1))
    }

    /// The answer to our CREATE_CHILD_SA request for the additional Child
    /// SA `i` (RFC 7296 section 1.3.1): it is up, or refused with an error
    /// notify, which leaves the IKE SA and the other Child SAs as they
    /// are.
    fn on_create_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        mut rekey: RekeySent,
        i: usize,
        p: &Payloads<'_>,
    ) -> Option<(ChildTarget, DhGroup, u8)> {
        if let Some(retry) = self.ke_retry(p, &rekey) {
            return Some(retry);
        }
        let made = match p.nonce() {
            Some(nr) if p.error().is_none() => {
                let nr = nr.to_vec();
                self.rekey_initiator_child(p, st, &mut rekey, &nr)
            }
            _ => Err(Box::new(Event::Failed {
                notify: p.error().unwrap_or(NotifyType::InvalidSyntax),
                by_peer: p.error().is_some(),
            })),
        };
        match made {
            Ok((inbound, outbound)) => {
                st.children.push(Child {
                    inbound: inbound.spi,
                    outbound: outbound.spi,
                    ts: self.config.additional_children.get(i).cloned(),
                    rekey_at: rekey_time(self.config.child_lifetime, self.rng.as_mut(), now),
                });
                self.events
                    .push_back(Event::ChildSaUp { inbound, outbound });
            }
            Err(event) => self.events.push_back(*event),
        }
        None
    }

    /// The new pair from the responder's CREATE_CHILD_SA answer, with the
    /// PFS shared secret if a group was chosen (RFC 7296 section 2.17).
    fn rekey_initiator_child(
        &self,
        p: &Payloads<'_>,
        st: &Established,
        rekey: &mut RekeySent,
        nr: &[u8],
    ) -> Result<(ChildSaParams, ChildSaParams), Box<Event>> {
        let failed = |notify| {
            Box::new(Event::Failed {
                notify,
                by_peer: false,
            })
        };
        let group = p
            .sa()
            .and_then(|sa| sa.proposals.first())
            .and_then(|c| proposal::esp_choice(c).ok())
            .and_then(|c| c.group)
            .filter(|g| *g != DhGroup::None);
        let RekeySent {
            ni,
            kex,
            esp_spi,
            esp_offer,
            tsi,
            tsr,
            ..
        } = rekey;
        let g_ir = match (group, kex.take(), p.ke()) {
            (None, _, _) => None,
            (Some(g), Some(kex), Some(ke)) if kex.group() == g && ke.group == g => Some(
                kex.complete(&ke.data)
                    .map_err(|_| failed(NotifyType::InvalidSyntax))?,
            ),
            _ => return Err(failed(NotifyType::InvalidKePayload)),
        };
        let g_ir = g_ir.as_ref().map(|k| k.expose());
        let event = self.initiator_child(p, &st.sk, ni, nr, *esp_spi, esp_offer, tsi, tsr, g_ir)?;
        match event {
            Event::ChildSaUp { inbound, outbound } => Ok((inbound, outbound)),
            other => Err(Box::new(other)),
        }
    }

    /// Answers the peer's CREATE_CHILD_SA request for a Child SA: a rekey
    /// of one of ours (N(REKEY_SA) names the SPI we send with), or a new
    /// one (RFC 7296 section 1.3.1), within our policy's selectors and up
    /// to [`Config::max_child_sas`] (NO_ADDITIONAL_SAS beyond, section
    /// 3.10.1). The IKE SA's rekey is handled in `ike_rekey`.
    fn create_child_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        message: &Message,
    ) -> (Vec<Payload>, Vec<Event>) {
        let p = Payloads(&message.payloads);
        let notify = |n| vec![Payload::Notify(Notify::new(n, Vec::new()))];
        let old = match p.notify(NotifyType::RekeySa) {
            // RFC 7296 section 2.25: a rekey of an SA we do not have (any
            // more) is answered CHILD_SA_NOT_FOUND.
            Some(rekey) => match st.child_by_outbound(&rekey.spi) {
                Some(i) => Some(st.children[i].spis()),
                None => return (notify(NotifyType::ChildSaNotFound), Vec::new()),
            },
            None if st.children.len() >= self.config.max_child_sas => {
                return (notify(NotifyType::NoAdditionalSas), Vec::new());
            }
            None => None,
        };
        let result = (|| {
            let ni = p
                .nonce()
                .ok_or(Notify::new(NotifyType::InvalidSyntax, Vec::new()))?;
            // PFS (RFC 7296 section 1.3.3): the KE payload must be of the
            // group of the proposal we choose; INVALID_KE_PAYLOAD names it.
            let group = p
                .sa()
                .and_then(|sa| proposal::select(&self.config.esp_proposals, &sa.proposals))
                .and_then(|sel| proposal::esp_choice(&sel.proposal).ok())
                .and_then(|c| c.group)
                .filter(|g| *g != DhGroup::None);
            let (ke, g_ir) = match group {
                None => (None, None),
                Some(g) => {
                    let Some(ke) = p.ke().filter(|ke| ke.group == g) else {
                        return Err(Notify::new(
                            NotifyType::InvalidKePayload,
                            g.value().to_be_bytes().to_vec(),
                        ));
                    };
                    let temporary = |_| Notify::new(NotifyType::TemporaryFailure, Vec::new());
                    let kex = crypto::start(g).map_err(temporary)?;
                    let public = kex.public_value().to_vec();
                    let g_ir = kex
                        .complete(&ke.data)
                        .map_err(|_| Notify::new(NotifyType::InvalidSyntax, Vec::new()))?;
                    let ke = crate::message::KeyExchange {
                        group: g,
                        data: public,
                    };
                    (Some(ke), Some(g_ir))
                }
            };
            let nr = random_nonce(self.rng.as_mut())
                .map_err(|_| Notify::new(NotifyType::TemporaryFailure, Vec::new()))?;
            let g = g_ir.as_ref().map(|k| k.expose());
            let (mut payloads, event) = self
                .responder_child(false, &p, &st.sk, ni, &nr, g)
                .map_err(|n| Notify::new(n, Vec::new()))?;
            payloads.push(Payload::Nonce(nr.clone()));
            if let Some(ke) = ke {
                payloads.push(Payload::KeyExchange(ke));
            }
            let Event::ChildSaUp { inbound, outbound } = event else {
                return Err(Notify::new(NotifyType::TemporaryFailure, Vec::new()));
            };
            Ok((payloads, ni.to_vec(), nr, inbound, outbound))
        })();
        let (payloads, ni, nr, inbound, outbound) = match result {
            Ok(r) => r,
            Err(n) => {
                // INVALID_KE_PAYLOAD is a step of the negotiation (the peer
                // retries with the group it names), not a failure.
                let events = match n.notify_type {
                    NotifyType::InvalidKePayload => Vec::new(),
                    notify => vec![Event::Failed {
                        notify,
                        by_peer: false,
                    }],
                };
                return (vec![Payload::Notify(n)], events);
            }
        };
        let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        let Some(old) = old else {
            // A new Child SA. A rekey of ours proposes what it narrowed
            // to, ours first.
            st.children.push(Child {
                inbound: inbound.spi,
                outbound: outbound.spi,
                ts: Some((inbound.local_ts.clone(), inbound.remote_ts.clone())),
                rekey_at,
            });
            return (payloads, vec![Event::ChildSaUp { inbound, outbound }]);
        };
        if matches!(&st.request, Some(Request::Rekey(r)) if r.target == ChildTarget::Rekey(old)) {
            // A collision (RFC 7296 section 2.8.1): both sides rekey this
            // Child SA. Which new pair stays is known when our own request
            // is answered.
            st.collision = Some(Collided {
                old,
                ni,
                nr,
                inbound,
                outbound,
            });
            return (payloads, Vec::new());
        }
        // The peer deletes the old pair once it has our answer.
        st.retired.push(Retired {
            inbound: old.0,
            outbound: old.1,
            announce: true,
        });
        if let Some(i) = st.child(old) {
            st.children[i].inbound = inbound.spi;
            st.children[i].outbound = outbound.spi;
            st.children[i].rekey_at = rekey_at;
        }
        st.unqueue_rekey(old.0);
        let event = Event::ChildSaRekeyed {
            old_inbound_spi: old.0,
            old_outbound_spi: old.1,
            inbound,
            outbound,
        };
        (payloads, vec![event])
    }
}
