//! Cookies (RFC 7296 section 2.6): how a responder under load makes an
//! initiator prove that it receives at its address before any state is
//! kept, and how an initiator answers a cookie request.
//!
//! RFC 7296 section 2.6: "When the responder detects a large number of
//! half-open IKE SAs, it SHOULD reply to IKE_SA_INIT requests with a
//! response containing the COOKIE notification." The
//! [`Endpoint`](super::Endpoint) counts its half-open IKE SAs
//! ([`IkeSa::is_half_open`]); from [`DEFAULT_COOKIE_THRESHOLD`] of them
//! (see [`Endpoint::set_cookie_threshold`](super::Endpoint::set_cookie_threshold))
//! on, or from [`DEFAULT_PER_SOURCE_COOKIE_THRESHOLD`] of them from the
//! request's address, it answers every IKE_SA_INIT request that lacks a
//! valid cookie with `HDR(A,0), N(COOKIE)` and keeps nothing. The cookie is the section's
//! suggestion, `Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi |
//! <secret>)`: a 4-octet version, then SHA-256 over the initiator's nonce,
//! its IP address (4 or 16 octets), its SPI and a 32-octet secret drawn
//! from an injected [`Random`]. A secret is current for
//! [`COOKIE_SECRET_LIFETIME`], and the cookies it made are still accepted
//! for [`COOKIE_GRACE`] after that, so a cookie is good for at least the
//! grace period. A cookie that does not match is treated as "if no cookie
//! had been included" (a new cookie is sent), and counted.
//!
//! The initiator ([`IkeSa`]) answers a cookie request by sending its
//! IKE_SA_INIT request again "with a Notify payload of type COOKIE
//! containing the responder-supplied cookie data as the first payload and
//! all other payloads unchanged" (same SPI, nonce and KE), and keeps the
//! cookie if a later INVALID_KE_PAYLOAD makes it change its group (the
//! section's second example).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, digest};
use tunsec_esp::Key;
use zeroize::Zeroizing;

use super::event::{Event, Transmit};
use super::logging;
use super::payloads::Payloads;
use super::random::{Random, SystemRandom};
use super::state::{Discard, IkeSa, InitSent, State};
use crate::error::{Error, Result};
use crate::message::{
    ExchangeType, Header, MAJOR_VERSION, Message, Notify, NotifyType, Payload, PayloadType,
};

/// How many half-open IKE SAs an [`Endpoint`](super::Endpoint) keeps
/// before it asks new initiators for cookies.
pub const DEFAULT_COOKIE_THRESHOLD: usize = 64;

/// How many half-open IKE SAs from one address an
/// [`Endpoint`](super::Endpoint) keeps before it asks new initiators at
/// that address for cookies: one, since an honest initiator has one
/// IKE_SA_INIT under way at a time (its retransmissions go to the same
/// responder), and a second from the same address is either a restart,
/// which pays one round trip, or a spoofer, who cannot answer.
pub const DEFAULT_PER_SOURCE_COOKIE_THRESHOLD: usize = 1;
/// How long a cookie secret is the current one before a fresh one
/// replaces it.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long the cookies of a replaced secret are still accepted: longer
/// than an initiator's whole retransmission schedule (15.5 s).
pub const COOKIE_GRACE: Duration = Duration::from_secs(30);
/// RFC 7296 section 3.10.1: COOKIE data is 1 to 64 octets.
const MAX_COOKIE_LEN: usize = 64;
/// How many cookie requests an initiator follows in one IKE_SA_INIT.
const MAX_COOKIE_REQUESTS: u64 = 3;
/// The length of a secret.
const SECRET_LEN: usize = 32;
/// The length of the version that starts a cookie.
const VERSION_LEN: usize = 4;

/// One cookie secret.
struct Secret {
    version: u32,
    bytes: Key,
    /// When it became the current secret.
    created: Instant,
}

impl Secret {
    /// `<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)`.
    fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        let mut hash = digest::Context::new(&digest::SHA256);
        hash.update(ni);
        match ip {
            IpAddr::V4(a) => hash.update(&a.octets()),
            IpAddr::V6(a) => hash.update(&a.octets()),
        }
        hash.update(&spi_i.to_be_bytes());
        hash.update(self.bytes.expose());
        let mut cookie = self.version.to_be_bytes().to_vec();
        cookie.extend_from_slice(hash.finish().as_ref());
        cookie
    }
}

/// The responder's cookie secrets: the current one and the one it
/// replaced, both drawn lazily from the random source.
pub(super) struct CookieJar {
    rng: Box<dyn Random + Send>,
    current: Option<Secret>,
    previous: Option<Secret>,
}

impl Default for CookieJar {
    fn default() -> Self {
        Self::new(Box::new(SystemRandom))
    }
}

/// What the responder does with an IKE_SA_INIT request while it asks for
/// cookies.
pub(super) enum Screen {
    /// It carries a valid cookie: go on.
    Valid,
    /// Answer with this cookie request, and keep nothing; `invalid` if the
    /// request carried a cookie that did not match.
    Ask {
        /// `HDR(A,0), N(COOKIE)`.
        transmit: Transmit,
        /// The request's cookie did not match.
        invalid: bool,
    },
    /// The request does not parse or has no nonce.
    Malformed,
    /// No cookie could be made (the random source failed).
    Unavailable,
}

impl CookieJar {
    /// A jar whose secrets come from `rng`.
    pub(super) fn new(rng: Box<dyn Random + Send>) -> Self {
        Self {
            rng,
            current: None,
            previous: None,
        }
    }

    /// Replaces the current secret when its lifetime is over.
    fn rotate(&mut self, now: Instant) -> Result<&Secret> {
        let due = self
            .current
            .as_ref()
            .is_none_or(|s| now >= s.created + COOKIE_SECRET_LIFETIME);
        if due {
            let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
            self.rng.fill(&mut bytes[..])?;
            // The first version is random, so that cookies from before a
            // restart rarely name a version in use.
            let version = match &self.current {
                Some(s) => s.version.wrapping_add(1),
                None => {
                    let mut v = [0u8; VERSION_LEN];
                    self.rng.fill(&mut v)?;
                    u32::from_be_bytes(v)
                }
            };
            let fresh = Secret {
                version,
                bytes: Key::from_slice(&bytes[..]),
                created: now,
            };
            self.previous = self.current.replace(fresh);
        }
        self.current
            .as_ref()
            .ok_or(Error::InvalidState("no cookie secret"))
    }

    /// A cookie for an initiator, from the current secret.
    pub(super) fn make(
        &mut self,
        now: Instant,
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> Result<Vec<u8>> {
        Ok(self.rotate(now)?.cookie(ni, ip, spi_i))
    }

    /// Whether `cookie` is one we made for this initiator, from the
    /// current secret or from the previous one within its grace period.
    pub(super) fn check(
        &mut self,
        now: Instant,
        cookie: &[u8],
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> bool {
        if self.rotate(now).is_err() {
            return false;
        }
        let Some(version) = cookie
            .get(..VERSION_LEN)
            .and_then(|v| <[u8; VERSION_LEN]>::try_from(v).ok())
            .map(u32::from_be_bytes)
        else {
            return false;
        };
        let previous = self
            .previous
            .as_ref()
            .filter(|s| now < s.created + COOKIE_SECRET_LIFETIME + COOKIE_GRACE);
        [self.current.as_ref(), previous]
            .into_iter()
            .flatten()
            .filter(|s| s.version == version)
            .any(|s| {
                constant_time::verify_slices_are_equal(&s.cookie(ni, ip, spi_i), cookie).is_ok()
            })
    }

    /// Screens a new IKE_SA_INIT request while cookies are required: a
    /// valid cookie lets it through, anything else gets a fresh cookie
    /// request (RFC 7296 section 2.6).
    pub(super) fn screen(&mut self, now: Instant, remote: SocketAddr, bytes: &[u8]) -> Screen {
        let Ok(message) = Message::decode(bytes) else {
            return Screen::Malformed;
        };
        let p = Payloads(&message.payloads);
        let Some(ni) = p.nonce() else {
            return Screen::Malformed;
        };
        let (ip, spi_i) = (remote.ip(), message.header.initiator_spi);
        let presented = p.notify(NotifyType::Cookie);
        if let Some(n) = presented {
            if self.check(now, &n.data, ni, ip, spi_i) {
                return Screen::Valid;
            }
        }
        let Ok(cookie) = self.make(now, ni, ip, spi_i) else {
            return Screen::Unavailable;
        };
        let answer = Message {
            header: Header {
                initiator_spi: spi_i,
                responder_spi: 0,
                next_payload: PayloadType::None,
                major_version: MAJOR_VERSION,
                minor_version: 0,
                exchange_type: ExchangeType::IkeSaInit,
                response: true,
                version: false,
                initiator: false,
                message_id: 0,
                length: 0,
            },
            payloads: vec![Payload::Notify(Notify::new(NotifyType::Cookie, cookie))],
        };
        match answer.encode() {
            Ok(bytes) => Screen::Ask {
                transmit: {
                    logging::message(
                        logging::Direction::Sent,
                        Some(remote),
                        &answer.header,
                        &answer.payloads,
                        1,
                    );
                    Transmit { dst: remote, bytes }
                },
                invalid: presented.is_some(),
            },
            Err(_) => Screen::Unavailable,
        }
    }
}

/// Our IKE_SA_INIT request with `cookie` as its first payload (replacing
/// any earlier cookie), all other payloads unchanged.
fn with_cookie(request: &[u8], cookie: &[u8]) -> Result<Vec<u8>> {
    let mut message = Message::decode(request)?;
    message
        .payloads
        .retain(|p| !matches!(p, Payload::Notify(n) if n.notify_type == NotifyType::Cookie));
    let notify = Notify::new(NotifyType::Cookie, cookie.to_vec());
    message.payloads.insert(0, Payload::Notify(notify));
    message.encode()
}

impl InitSent {
    /// The same request carrying `cookie` (if any) as its first payload:
    /// a request rebuilt for another group keeps the cookie the responder
    /// gave (RFC 7296 section 2.6).
    pub(super) fn with_cookie(mut self, cookie: Option<Vec<u8>>) -> Result<Self> {
        if let Some(cookie) = cookie {
            self.request = with_cookie(&self.request, &cookie)?;
            self.cookie = Some(cookie);
        }
        Ok(self)
    }
}

impl IkeSa {
    /// Whether this is a half-open responder: it answered IKE_SA_INIT and
    /// waits for IKE_AUTH. RFC 7296 section 2.6 counts these to detect a
    /// flood of IKE_SA_INIT requests from forged addresses.
    pub fn is_half_open(&self) -> bool {
        matches!(self.state, State::ExpectAuth(_))
    }

    /// The responder answered our IKE_SA_INIT with `N(COOKIE)` (RFC 7296
    /// section 2.6): send the request again with the cookie as its first
    /// payload and everything else unchanged (same SPI, nonce and KE).
    /// After [`MAX_COOKIE_REQUESTS`] the IKE SA closes with
    /// [`Event::Failed`] naming COOKIE: the responder takes none of our
    /// cookies back.
    pub(super) fn on_cookie_request(&mut self, now: Instant, cookie: &[u8]) -> Result<(), Discard> {
        if cookie.is_empty() || cookie.len() > MAX_COOKIE_LEN {
            return Err(Discard::Malformed);
        }
        if self.stats.cookies >= MAX_COOKIE_REQUESTS {
            self.close(Event::Failed {
                notify: NotifyType::Cookie,
                by_peer: true,
            });
            return Ok(());
        }
        let State::InitSent(st) = &mut self.state else {
            return Err(Discard::Unexpected);
        };
        match with_cookie(&st.request, cookie) {
            Ok(request) => {
                st.request = request.clone();
                st.cookie = Some(cookie.to_vec());
                self.stats.cookies += 1;
                self.send_request(now, ExchangeType::IkeSaInit, 0, vec![request]);
            }
            Err(e) => self.local_error(e),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
