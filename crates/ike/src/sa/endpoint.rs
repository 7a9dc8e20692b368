//! [`Endpoint`]: many IKE SAs behind one socket, quinn-style. It hands
//! each datagram to the IKE SA its SPIs name, and creates a responder for
//! a new IKE_SA_INIT request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::{Config, IkeSa, Random, Transmit};
use crate::error::{Error, Result};
use crate::message::{ExchangeType, Header};

/// An IKE SA within an [`Endpoint`], named by our own first IKE SPI (the
/// initiator's SPI when we initiated, the responder's otherwise). The
/// handle stays when a rekey of the IKE SA changes the SPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaHandle(pub u64);

/// What became of a datagram handed to [`Endpoint::handle_datagram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Given to an IKE SA (a new one if `new`); poll it for transmits and
    /// events.
    Sa {
        /// The IKE SA.
        handle: SaHandle,
        /// A responder was created for this IKE_SA_INIT request.
        new: bool,
    },
    /// An IKE_SA_INIT request refused without keeping state (no
    /// configuration for the peer, or NO_PROPOSAL_CHOSEN /
    /// INVALID_KE_PAYLOAD, whose answer is in
    /// [`Endpoint::poll_transmit`]).
    Refused,
    /// Dropped: not an IKE header, or SPIs of no IKE SA here.
    Dropped,
}

/// Datagrams the endpoint itself dropped or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams without a valid IKE header.
    pub malformed: u64,
    /// Messages whose SPIs name no IKE SA here.
    pub unknown_spi: u64,
    /// IKE_SA_INIT requests refused without state.
    pub refused: u64,
}

/// Many IKE SAs, by SPI. The caller owns the socket and the clock: it
/// hands every IKE datagram to [`Self::handle_datagram`], then polls the
/// named IKE SA (and [`Self::poll_transmit`] for stateless refusals), and
/// drives each IKE SA's timer.
#[derive(Default)]
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
    /// An endpoint without IKE SAs.
    pub fn new() -> Self {
        Self::default()
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

    /// Hands a datagram to its IKE SA. A new IKE_SA_INIT request is offered
    /// to `accept`, which returns the configuration for that peer (and a
    /// random source), or `None` to ignore it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        bytes: &[u8],
        accept: impl FnOnce(SocketAddr) -> Option<(Config, Box<dyn Random + Send>)>,
    ) -> Incoming {
        let Ok(header) = Header::decode(bytes) else {
            self.stats.malformed += 1;
            return Incoming::Dropped;
        };
        // RFC 7296 section 3.1: the initiator's SPI "MUST NOT be zero"; no
        // exchange can belong to one.
        if header.initiator_spi == 0 {
            self.stats.malformed += 1;
            return Incoming::Dropped;
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
                    self.reindex(handle);
                    Incoming::Sa {
                        handle: SaHandle(handle),
                        new: false,
                    }
                }
                None => {
                    self.stats.unknown_spi += 1;
                    Incoming::Dropped
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
            return Incoming::Dropped;
        }
        let Some((config, rng)) = accept(remote) else {
            self.stats.refused += 1;
            return Incoming::Refused;
        };
        let mut sa = IkeSa::respond(config, rng);
        sa.handle_datagram(now, remote, bytes);
        let (spi_i, spi_r) = sa.spis();
        if spi_r == 0 || self.sas.contains_key(&spi_r) || self.by_spi.contains_key(&spi_r) {
            // Refused (or dropped) without state: only its answer remains.
            while let Some(t) = sa.poll_transmit() {
                self.transmits.push_back(t);
            }
            self.stats.refused += 1;
            return Incoming::Refused;
        }
        self.by_initiator_spi.insert((remote, spi_i), spi_r);
        self.sas.insert(spi_r, sa);
        self.reindex(spi_r);
        Incoming::Sa {
            handle: SaHandle(spi_r),
            new: true,
        }
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
