//! [`Endpoint`]: many IKE SAs behind one socket, quinn-style. It hands
//! each datagram to the IKE SA its SPIs name. A new IKE_SA_INIT request
//! comes back as an [`Incoming`], which the caller accepts
//! ([`Endpoint::accept`], with the configuration for that peer) or
//! refuses ([`Endpoint::refuse`]); with many half-open IKE SAs, only a
//! request that carries a valid cookie gets that far (RFC 7296 section
//! 2.6, see `cookie.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::config::Config;
use super::cookie::{
    CookieJar, DEFAULT_COOKIE_THRESHOLD, DEFAULT_PER_SOURCE_COOKIE_THRESHOLD, Screen,
};
use super::event::Transmit;
use super::random::Random;
use super::state::IkeSa;
use crate::error::{Error, Result};
use crate::message::{ExchangeType, Header, Message};

/// An IKE SA within an [`Endpoint`], named by our own first IKE SPI (the
/// initiator's SPI when we initiated, the responder's otherwise). The
/// handle stays when a rekey of the IKE SA changes the SPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaHandle(pub u64);

/// What became of a datagram handed to [`Endpoint::handle_datagram`].
#[derive(Debug, PartialEq, Eq)]
pub enum DatagramEvent {
    /// Given to this IKE SA; poll it for transmits and events.
    Sa(SaHandle),
    /// A new IKE_SA_INIT request, for no IKE SA yet: the caller accepts it
    /// ([`Endpoint::accept`]) or refuses it ([`Endpoint::refuse`]). Nothing
    /// is kept for it until then.
    NewSa(Incoming),
    /// An IKE_SA_INIT request refused without keeping state: a cookie
    /// request (RFC 7296 section 2.6; the answer is in
    /// [`Endpoint::poll_transmit`]), or no cookie could be made.
    Refused,
    /// Dropped: not an IKE header, or SPIs of no IKE SA here.
    Dropped,
}

/// A new IKE_SA_INIT request (RFC 7296 section 1.2) that passed the
/// endpoint's checks (and its cookie check under load, section 2.6), for
/// the caller to accept or refuse, as quinn's `Incoming`: the caller
/// decides with what it knows of the peer, by its address and the
/// initiator's nonce, before any state is kept for it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "accept or refuse it"]
pub struct Incoming {
    remote: SocketAddr,
    initiator_spi: u64,
    nonce: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

impl Incoming {
    /// Where the request came from.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The initiator's SPI.
    pub fn initiator_spi(&self) -> u64 {
        self.initiator_spi
    }

    /// The initiator's nonce (Ni), if the request decodes and has one. A
    /// caller whose own attempt to the same peer is under way compares it
    /// with [`IkeSa::pending_init_nonce`] to settle the crossing.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }
}

/// Datagrams the endpoint itself dropped or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams without a valid IKE header.
    pub malformed: u64,
    /// Messages whose SPIs name no IKE SA here.
    pub unknown_spi: u64,
    /// IKE_SA_INIT requests refused without state (cookie requests
    /// included).
    pub refused: u64,
    /// IKE_SA_INIT requests answered with a cookie request (RFC 7296
    /// section 2.6).
    pub cookies_sent: u64,
    /// IKE_SA_INIT requests whose cookie did not match (forged, for
    /// another initiator, or from an expired secret); each got a fresh
    /// cookie request.
    pub bad_cookies: u64,
    /// Responders kept: each computed a Diffie-Hellman share for an
    /// IKE_SA_INIT request it answered.
    pub responders: u64,
}

/// Many IKE SAs, by SPI. The caller owns the socket and the clock: it
/// hands every IKE datagram to [`Self::handle_datagram`], then polls the
/// named IKE SA (and [`Self::poll_transmit`] for stateless refusals), and
/// drives each IKE SA's timer.
pub struct Endpoint {
    /// The IKE SAs by handle.
    sas: HashMap<u64, IkeSa>,
    /// Our current SPIs (and, after an IKE SA rekey, the old one until it
    /// is deleted) to handles.
    by_spi: HashMap<u64, u64>,
    /// The SPIs `by_spi` holds for each handle.
    spis_of: HashMap<u64, Vec<u64>>,
    /// Responders by (peer address, initiator SPI), for IKE_SA_INIT
    /// requests retransmitted before they learnt our SPI.
    by_initiator_spi: HashMap<(SocketAddr, u64), u64>,
    transmits: VecDeque<Transmit>,
    stats: EndpointStats,
    /// Our SPIs of responders that may still be half open (pruned when
    /// the count matters).
    half_open: HashSet<u64>,
    /// From this many half-open IKE SAs on, new initiators need cookies.
    cookie_threshold: usize,
    /// From this many half-open IKE SAs from one address on, new
    /// initiators at that address need cookies.
    per_source_threshold: usize,
    cookies: CookieJar,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            sas: HashMap::new(),
            by_spi: HashMap::new(),
            spis_of: HashMap::new(),
            by_initiator_spi: HashMap::new(),
            transmits: VecDeque::new(),
            stats: EndpointStats::default(),
            half_open: HashSet::new(),
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            per_source_threshold: DEFAULT_PER_SOURCE_COOKIE_THRESHOLD,
            cookies: CookieJar::default(),
        }
    }
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sas", &self.sas.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint without IKE SAs. It asks for cookies from
    /// [`DEFAULT_COOKIE_THRESHOLD`] half-open IKE SAs on, with secrets
    /// from the system's random number generator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks new initiators for cookies (RFC 7296 section 2.6) once
    /// `threshold` IKE SAs are half open; 0 asks always, `usize::MAX`
    /// never.
    pub fn set_cookie_threshold(&mut self, threshold: usize) {
        self.cookie_threshold = threshold;
    }

    /// Asks new initiators at an address for cookies once `threshold` IKE
    /// SAs from that address are half open (default
    /// [`DEFAULT_PER_SOURCE_COOKIE_THRESHOLD`]); `usize::MAX` never.
    pub fn set_per_source_cookie_threshold(&mut self, threshold: usize) {
        self.per_source_threshold = threshold;
    }

    /// Draws the cookie secrets from `rng` from now on (cookies already
    /// given out stop being valid).
    pub fn set_cookie_random(&mut self, rng: Box<dyn Random + Send>) {
        self.cookies = CookieJar::new(rng);
    }

    /// How many responders answered IKE_SA_INIT and wait for IKE_AUTH.
    pub fn half_open(&self) -> usize {
        self.half_open
            .iter()
            .filter(|spi| self.sas.get(spi).is_some_and(IkeSa::is_half_open))
            .count()
    }

    /// Whether a new initiator at `remote` needs a cookie now: the
    /// endpoint as a whole has `cookie_threshold` half-open IKE SAs, or
    /// that address has `per_source_threshold` of them. The second keeps
    /// a spoofer who sends IKE_SA_INIT requests with a peer's address
    /// from costing a Diffie-Hellman each, and from crowding out the
    /// peer's own attempt: an off-path spoofer never sees the cookie.
    fn cookies_required(&mut self, remote: SocketAddr) -> bool {
        let threshold = self.cookie_threshold.min(self.per_source_threshold);
        if self.half_open.len() < threshold {
            return false;
        }
        let sas = &self.sas;
        self.half_open
            .retain(|spi| sas.get(spi).is_some_and(IkeSa::is_half_open));
        if self.half_open.len() >= self.cookie_threshold {
            return true;
        }
        let from_source = self
            .half_open
            .iter()
            .filter_map(|spi| sas.get(spi)?.remote())
            .filter(|r| r.ip() == remote.ip())
            .count();
        from_source >= self.per_source_threshold
    }

    /// Starts an IKE SA as the initiator (see [`IkeSa::initiate`]).
    pub fn connect(
        &mut self,
        config: Config,
        remote: SocketAddr,
        now: Instant,
        rng: Box<dyn Random + Send>,
    ) -> Result<SaHandle> {
        let sa = IkeSa::initiate(config, remote, now, rng)?;
        let spi = sa.spis().0;
        if self.sas.contains_key(&spi) || self.by_spi.contains_key(&spi) {
            return Err(Error::InvalidValue {
                what: "IKE SPI already in use",
                value: spi,
            });
        }
        self.sas.insert(spi, sa);
        self.reindex(spi);
        Ok(SaHandle(spi))
    }

    /// Hands a datagram to its IKE SA. A new IKE_SA_INIT request comes
    /// back as [`DatagramEvent::NewSa`], for [`Self::accept`] or
    /// [`Self::refuse`]; under load, only once it carries our cookie.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        bytes: &[u8],
    ) -> DatagramEvent {
        let Ok(header) = Header::decode(bytes) else {
            self.stats.malformed += 1;
            return DatagramEvent::Dropped;
        };
        // RFC 7296 section 3.1: the initiator's SPI "MUST NOT be zero"; no
        // exchange can belong to one.
        if header.initiator_spi == 0 {
            self.stats.malformed += 1;
            return DatagramEvent::Dropped;
        }
        // RFC 7296 section 3.1: the I flag marks messages from the original
        // initiator, so our SPI is the responder's in those and the
        // initiator's in the others.
        let ours = if header.initiator {
            header.responder_spi
        } else {
            header.initiator_spi
        };
        let ours = match ours {
            0 if header.initiator => self
                .by_initiator_spi
                .get(&(remote, header.initiator_spi))
                .copied(),
            0 => None,
            spi => Some(spi),
        };
        if let Some(spi) = ours {
            let handle = self.by_spi.get(&spi).copied();
            return match handle.and_then(|h| self.sas.get_mut(&h).map(|sa| (h, sa))) {
                Some((handle, sa)) => {
                    sa.handle_datagram(now, remote, bytes);
                    if !sa.is_half_open() {
                        self.half_open.remove(&handle);
                    }
                    self.reindex(handle);
                    DatagramEvent::Sa(SaHandle(handle))
                }
                None => {
                    self.stats.unknown_spi += 1;
                    tracing::debug!(peer = %remote, spi = %super::logging::Hex(spi), exchange = ?header.exchange_type, "IKE dropped a message: no IKE SA with its SPI");
                    DatagramEvent::Dropped
                }
            };
        }
        let new_request = header.initiator
            && !header.response
            && header.responder_spi == 0
            && header.message_id == 0
            && header.exchange_type == ExchangeType::IkeSaInit;
        if !new_request {
            self.stats.unknown_spi += 1;
            tracing::debug!(peer = %remote, exchange = ?header.exchange_type, message_id = header.message_id, "IKE dropped a message: no IKE SA, and not a new IKE_SA_INIT request");
            return DatagramEvent::Dropped;
        }
        // RFC 7296 section 2.6: under load, no state (not even a look at
        // the configuration) before the initiator returns our cookie.
        if self.cookies_required(remote) {
            match self.cookies.screen(now, remote, bytes) {
                Screen::Valid => {}
                Screen::Ask { transmit, invalid } => {
                    self.stats.cookies_sent += 1;
                    self.stats.bad_cookies += u64::from(invalid);
                    self.stats.refused += 1;
                    self.transmits.push_back(transmit);
                    return DatagramEvent::Refused;
                }
                Screen::Malformed => {
                    self.stats.malformed += 1;
                    return DatagramEvent::Dropped;
                }
                Screen::Unavailable => {
                    self.stats.refused += 1;
                    return DatagramEvent::Refused;
                }
            }
        }
        let nonce = Message::decode(bytes)
            .ok()
            .and_then(|m| m.init_request_nonce().map(<[u8]>::to_vec));
        DatagramEvent::NewSa(Incoming {
            remote,
            initiator_spi: header.initiator_spi,
            nonce,
            bytes: bytes.to_vec(),
        })
    }

    /// Accepts a new IKE_SA_INIT request with the configuration for its
    /// peer: a responder is created and answers it. `None` if it refused
    /// the request without keeping state (NO_PROPOSAL_CHOSEN,
    /// INVALID_KE_PAYLOAD, an unknown critical payload...; the answer is
    /// in [`Self::poll_transmit`]), or if a responder for the same
    /// initiator (address and SPI) came up meanwhile, which then gets the
    /// request.
    pub fn accept(
        &mut self,
        incoming: Incoming,
        now: Instant,
        config: Config,
        rng: Box<dyn Random + Send>,
    ) -> Option<SaHandle> {
        let Incoming {
            remote,
            initiator_spi,
            bytes,
            ..
        } = incoming;
        if let Some(&handle) = self.by_initiator_spi.get(&(remote, initiator_spi)) {
            if let Some(sa) = self.sas.get_mut(&handle) {
                sa.handle_datagram(now, remote, &bytes);
                return None;
            }
        }
        let mut sa = IkeSa::respond(config, rng);
        sa.handle_datagram(now, remote, &bytes);
        let (spi_i, spi_r) = sa.spis();
        if spi_r == 0 || self.sas.contains_key(&spi_r) || self.by_spi.contains_key(&spi_r) {
            // Refused (or dropped) without state: only its answer remains.
            while let Some(t) = sa.poll_transmit() {
                self.transmits.push_back(t);
            }
            self.stats.refused += 1;
            return None;
        }
        self.stats.responders += 1;
        self.by_initiator_spi.insert((remote, spi_i), spi_r);
        if sa.is_half_open() {
            self.half_open.insert(spi_r);
        }
        self.sas.insert(spi_r, sa);
        self.reindex(spi_r);
        Some(SaHandle(spi_r))
    }

    /// Refuses a new IKE_SA_INIT request: nothing is kept and nothing is
    /// sent (an unknown peer, one that is down, or our own attempt to it
    /// goes first). Counted in [`EndpointStats::refused`].
    pub fn refuse(&mut self, incoming: Incoming) {
        tracing::debug!(peer = %incoming.remote, "IKE_SA_INIT request not accepted (unknown peer, down, or our own attempt goes first)");
        self.stats.refused += 1;
    }

    /// The next answer to a refused IKE_SA_INIT request.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// An IKE SA.
    pub fn sa_mut(&mut self, handle: SaHandle) -> Option<&mut IkeSa> {
        self.sas.get_mut(&handle.0)
    }

    /// Forgets an IKE SA (once it is closed, for example).
    pub fn remove(&mut self, handle: SaHandle) -> Option<IkeSa> {
        let sa = self.sas.remove(&handle.0)?;
        self.half_open.remove(&handle.0);
        self.by_initiator_spi.retain(|_, spi| *spi != handle.0);
        for spi in self.spis_of.remove(&handle.0).unwrap_or_default() {
            self.by_spi.remove(&spi);
        }
        Some(sa)
    }

    /// The IKE SAs.
    pub fn handles(&self) -> impl Iterator<Item = SaHandle> + '_ {
        self.sas.keys().copied().map(SaHandle)
    }

    /// The earliest timer of any IKE SA.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas.values().filter_map(IkeSa::poll_timeout).min()
    }

    /// Runs every IKE SA's timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut handles = Vec::new();
        for (&handle, sa) in self.sas.iter_mut() {
            if sa.poll_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(now);
                handles.push(handle);
            }
        }
        let sas = &self.sas;
        self.half_open
            .retain(|spi| sas.get(spi).is_some_and(IkeSa::is_half_open));
        for handle in handles {
            self.reindex(handle);
        }
    }

    /// Brings `by_spi` up to date with an IKE SA's SPIs, which change when
    /// the IKE SA is rekeyed (RFC 7296 section 2.18).
    fn reindex(&mut self, handle: u64) {
        let Some(sa) = self.sas.get(&handle) else {
            return;
        };
        let spis: Vec<u64> = sa.local_spis().filter(|s| *s != 0).collect();
        if self.spis_of.get(&handle) == Some(&spis) {
            return;
        }
        for old in self.spis_of.remove(&handle).unwrap_or_default() {
            self.by_spi.remove(&old);
        }
        for &spi in &spis {
            self.by_spi.insert(spi, handle);
        }
        self.spis_of.insert(handle, spis);
    }

    /// Drop counters of the endpoint itself.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }
}
