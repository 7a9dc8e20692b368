//! The request/response machinery of an IKE SA (RFC 7296 sections 2.1,
//! 2.2; RFC 7383): datagrams and time in ([`IkeSa::handle_datagram`],
//! [`IkeSa::handle_timeout`]), datagrams, events and the next timer out
//! (`poll_*`). Each message is routed by role and state to its handler
//! (`initiator.rs`, `responder.rs`, `informational.rs`, `child.rs`,
//! `ike_rekey.rs`) after the checks every exchange shares: SPIs, message
//! IDs, the I and R flags, the cached response to a retransmitted request,
//! and the opening of SK and SKF payloads. Our own request is kept and
//! retransmitted with exponential back-off (a window of 1) until it is
//! answered or the peer is declared dead.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::event::{Event, Transmit};
use super::fragment;
use super::logging::{self, Peer};
use super::state::{Discard, IkeSa, Outstanding, Queued, Received, Request, Role, Sk, State};
use crate::error::Error;
use crate::message::{ExchangeType, Header, MAJOR_VERSION, Message, Payload, PayloadType};

/// The first retransmission timeout; each next one doubles it, up to
/// [`RETRANSMIT_TIMEOUT_LIMIT`].
pub const RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest retransmission timeout (strongSwan's `retransmit_limit`):
/// after a link outage, a request goes again at most this long after the
/// link is back, so the exchange completes within it.
pub const RETRANSMIT_TIMEOUT_LIMIT: Duration = Duration::from_secs(4);

/// How many times a request is sent before the peer is declared dead:
/// at 0, 0.5, 1.5, 3.5, 7.5 and 11.5 s, and given up on at 15.5 s.
pub const MAX_TRANSMISSIONS: u32 = 6;

/// How many more times a request is sent, each after the longest timeout,
/// when the peer showed itself alive after its last transmission: RFC
/// 7296 section 2.4, "If no cryptographically protected messages have
/// been received on an IKE SA or any of its Child SAs recently, the
/// system needs to perform a liveness check". An authenticated request of
/// the peer's is such a message: the peer is not dead, our request (or
/// its response) was lost, for example sent while a link was down that
/// has come back. Bounded, so that a peer that sends requests but never
/// answers ours is still given up on.
pub const MAX_EXTRA_TRANSMISSIONS: u32 = 3;

/// Why a message that does not open is dropped.
pub(super) fn discard(e: Error) -> Discard {
    match e {
        Error::IntegrityCheckFailed => Discard::Integrity,
        _ => Discard::Malformed,
    }
}

/// What a request's retransmission timer says ([`Outstanding::timer`]).
pub(super) enum Timer {
    /// Not expired: wait on.
    Running,
    /// Expired after [`MAX_TRANSMISSIONS`]: no answer will come.
    GiveUp,
    /// Expired: send these bytes (the request, or its fragments) again.
    Retransmit(Vec<Vec<u8>>),
}

impl Outstanding {
    /// A request of `exchange` with message ID `id`, sent for the first
    /// time at `now`.
    pub(super) fn new(now: Instant, exchange: ExchangeType, id: u32, bytes: Vec<Vec<u8>>) -> Self {
        Self {
            message_id: id,
            exchange,
            bytes,
            transmissions: 1,
            timeout: RETRANSMIT_TIMEOUT,
            deadline: now + RETRANSMIT_TIMEOUT,
            heard: false,
        }
    }

    /// Checks the retransmission timer at `now` (RFC 7296 section 2.1):
    /// once it expires, the request is sent again with the timeout doubled
    /// (exponential back-off, up to [`RETRANSMIT_TIMEOUT_LIMIT`]), until it
    /// has gone [`MAX_TRANSMISSIONS`] times; then up to
    /// [`MAX_EXTRA_TRANSMISSIONS`] more, each after the longest timeout,
    /// while the peer is heard from between them.
    pub(super) fn timer(&mut self, now: Instant) -> Timer {
        if now < self.deadline {
            return Timer::Running;
        }
        if self.transmissions >= MAX_TRANSMISSIONS {
            if !self.heard || self.transmissions >= MAX_TRANSMISSIONS + MAX_EXTRA_TRANSMISSIONS {
                return Timer::GiveUp;
            }
        } else {
            self.timeout = (self.timeout * 2).min(RETRANSMIT_TIMEOUT_LIMIT);
        }
        self.transmissions += 1;
        self.heard = false;
        self.deadline = now + self.timeout;
        Timer::Retransmit(self.bytes.clone())
    }

    /// The peer was heard from at `now`: an authenticated request of its
    /// own came (RFC 7296 section 2.4), so it is alive and the path works.
    /// A request of ours that has been retransmitted (something was lost)
    /// and last went at least [`RETRANSMIT_TIMEOUT`] ago goes again at
    /// once, not at its timer: after a link outage the exchange completes
    /// as soon as the peer speaks. The bytes to send, if so.
    pub(super) fn heard(&mut self, now: Instant) -> Option<Vec<Vec<u8>>> {
        self.heard = true;
        let last_sent = self.deadline.checked_sub(self.timeout)?;
        if self.transmissions < 2 || now < last_sent + RETRANSMIT_TIMEOUT {
            return None;
        }
        self.deadline = now + self.timeout;
        Some(self.bytes.clone())
    }
}

impl IkeSa {
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
        let (rekey, ike_rekey, complete) = match &self.state {
            State::Established(st) => (
                st.next_child_rekey(),
                st.ike_rekey_at,
                st.complete_at
                    .into_iter()
                    .chain(st.followup.as_ref().map(|f| f.deadline))
                    .min(),
            ),
            _ => (None, None, None),
        };
        let retiring = self.retiring.as_ref().map(|r| r.timeout());
        [
            retransmit,
            self.half_open_deadline,
            rekey,
            ike_rekey,
            complete,
            retiring,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmits the outstanding request when its timer expires, or
    /// gives up after [`MAX_TRANSMISSIONS`].
    ///
    /// RFC 7296 section 2.1: the sender of a request retransmits it until
    /// it gets the response or deems the IKE SA to have failed; responses
    /// are only sent again when their request is.
    ///
    /// A responder that answered IKE_SA_INIT but got no IKE_AUTH within
    /// [`HALF_OPEN_TIMEOUT`](super::HALF_OPEN_TIMEOUT) gives up too ([`Event::PeerDead`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.half_open_deadline.is_some_and(|d| now >= d) {
            self.half_open_deadline = None;
            self.close(Event::PeerDead);
            return;
        }
        self.retiring_timeout(now);
        self.followup_timeout(now);
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
        if let State::Established(st) = &mut self.state {
            if st.complete_at.is_some_and(|t| now >= t) {
                st.complete_at = None;
                self.queue_missing_children(now);
            }
        }
        let Some(out) = self.outstanding.as_mut() else {
            return;
        };
        match out.timer(now) {
            Timer::Running => {}
            Timer::GiveUp => {
                self.outstanding = None;
                self.close(Event::PeerDead);
            }
            Timer::Retransmit(bytes) => {
                tracing::debug!(
                    peer = %Peer(self.remote),
                    transmission = out.transmissions,
                    of = MAX_TRANSMISSIONS,
                    "IKE retransmitting {} request {}",
                    logging::rfc_name(&format!("{:?}", out.exchange)),
                    out.message_id
                );
                self.retransmit(bytes);
            }
        }
    }

    /// Sends a request (or its fragments) again.
    pub(super) fn retransmit(&mut self, bytes: Vec<Vec<u8>>) {
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
        let msg = Received {
            now,
            remote,
            header,
            bytes,
        };
        if self.is_for_retiring(&header) {
            return self.handle_retiring(msg);
        }
        match (self.role, header.response) {
            (_, true) => self.handle_response(msg),
            (_, false) => self.handle_request(msg),
        }
    }

    pub(super) fn transmit(&mut self, bytes: Vec<u8>) {
        if let Some(dst) = self.remote {
            self.transmits.push_back(Transmit { dst, bytes });
        }
    }

    /// Sends a message, or all the fragments of one.
    pub(super) fn transmit_all(&mut self, messages: Vec<Vec<u8>>) {
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
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        exchange: ExchangeType,
        id: u32,
        bytes: Vec<Vec<u8>>,
    ) {
        self.log_plain(&bytes);
        self.outstanding = Some(Outstanding::new(now, exchange, id, bytes.clone()));
        self.transmit_all(bytes);
    }

    /// Seals `payloads` under `sk` for our peer, in fragments once they are
    /// agreed, and logs them ([`logging::seal`]).
    pub(super) fn seal(
        &self,
        sk: &Sk,
        header: &Header,
        payloads: &[Payload],
    ) -> Result<Vec<Vec<u8>>, Error> {
        logging::seal(
            self.remote,
            &sk.outbound,
            self.fragment_limit,
            header,
            payloads,
        )
    }

    /// Seals `payloads` under the established IKE SA as our next request of
    /// `exchange` and sends it (see [`Self::send_request`]). `request`, if
    /// any, is what the answer will be read against.
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established.
    pub(super) fn send_sealed_request(
        &mut self,
        now: Instant,
        exchange: ExchangeType,
        payloads: &[Payload],
        request: Option<Request>,
    ) -> Result<(), Error> {
        let id = self.next_request_id;
        let header = self.header(exchange, false, id);
        let State::Established(st) = &self.state else {
            return Err(Error::InvalidState("not established"));
        };
        let bytes = self.seal(&st.sk, &header, payloads)?;
        if let (Some(request), State::Established(st)) = (request, &mut self.state) {
            st.request = Some(request);
        }
        self.next_request_id = id.wrapping_add(1);
        self.send_request(now, exchange, id, bytes);
        Ok(())
    }

    /// Sends a response (or its fragments) and keeps it for retransmitted
    /// requests.
    pub(super) fn send_response(&mut self, id: u32, bytes: Vec<Vec<u8>>) {
        self.log_plain(&bytes);
        self.last_response = Some((id, bytes.clone()));
        self.transmit_all(bytes);
    }

    fn handle_response(&mut self, msg: Received<'_>) -> Result<(), Discard> {
        let (now, header) = (msg.now, &msg.header);
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
            State::InitSent(_) => return self.on_init_response(msg),
            State::IntermediateSent(_) | State::AuthSent(_) | State::Established(_) => {}
            _ => return Err(Discard::Unexpected),
        }
        if header.responder_spi != self.spi_r {
            return Err(Discard::WrongSpi);
        }
        let Some(message) = self.open(&msg).map_err(discard)? else {
            return Ok(());
        };
        self.outstanding = None;
        match &self.state {
            State::IntermediateSent(_) => self.on_intermediate_response(now, &message),
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

    /// Opens an encrypted message with the IKE SA's inbound keys and logs
    /// it: `None` while a fragmented one is still incomplete (RFC 7383).
    /// The caller has checked that the state has keys
    /// ([`State::sk`]).
    pub(super) fn open(&mut self, msg: &Received<'_>) -> Result<Option<Message>, Error> {
        let Some(sk) = self.state.sk() else {
            return Err(Error::InvalidState("no IKE SA keys"));
        };
        let opened = fragment::open(
            &sk.inbound,
            &mut self.reassembly,
            self.fragment_limit.is_some(),
            msg.now,
            &mut self.stats,
            msg.bytes,
        )?;
        if let Some(message) = &opened {
            msg.log(&message.payloads);
        }
        Ok(opened)
    }

    fn handle_request(&mut self, msg: Received<'_>) -> Result<(), Discard> {
        let (now, remote, header, bytes) = (msg.now, msg.remote, &msg.header, msg.bytes);
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
            return self.on_init_request(msg);
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
            // The same request again: its message ID and exchange (a
            // corrupted message that only shares the ID is not it).
            let same_exchange = response
                .first()
                .and_then(|r| Header::decode(r).ok())
                .is_some_and(|r| r.exchange_type == header.exchange_type);
            if header.message_id == *id && same_exchange {
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
            State::ExpectAuth(st) => {
                if header.message_id != st.next_id {
                    return Err(Discard::WrongMessageId);
                }
                // RFC 9242 section 3: IKE_INTERMEDIATE while additional
                // key exchanges are due (intermediate.rs), then IKE_AUTH.
                let intermediate = st.intermediate_due();
                let expected = if intermediate {
                    ExchangeType::IkeIntermediate
                } else {
                    ExchangeType::IkeAuth
                };
                if header.exchange_type != expected {
                    return Err(Discard::Unexpected);
                }
                // An unknown critical payload is answered (critical.rs).
                let Some(message) = self.open_request(&msg)? else {
                    return Ok(());
                };
                self.remote = Some(remote);
                if intermediate {
                    return self.on_intermediate_request(&message);
                }
                self.on_auth_request(now, &message);
                Ok(())
            }
            State::Established(_) => {
                if header.message_id != self.peer_next_id {
                    return Err(Discard::WrongMessageId);
                }
                let Some(message) = self.open_request(&msg)? else {
                    return Ok(());
                };
                self.remote = Some(remote);
                // The peer is alive (MAX_EXTRA_TRANSMISSIONS): a request
                // of ours that was lost goes again now.
                if let Some(bytes) = self.outstanding.as_mut().and_then(|o| o.heard(now)) {
                    tracing::debug!(
                        peer = %Peer(Some(remote)),
                        "IKE: the peer is heard from; our request goes again now"
                    );
                    self.retransmit(bytes);
                }
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

    /// A request from the peer once the IKE SA is up: CREATE_CHILD_SA
    /// (`child.rs`, and `ike_rekey.rs` for the IKE SA), IKE_FOLLOWUP_KE
    /// (`followup.rs`) or INFORMATIONAL (`informational.rs`).
    fn on_established_request(&mut self, now: Instant, header: &Header, message: &Message) {
        match header.exchange_type {
            ExchangeType::CreateChildSa => self.on_create_child_sa_request(now, header, message),
            ExchangeType::IkeFollowupKe => self.on_followup_ke_request(now, header, message),
            ExchangeType::Informational => self.on_informational_request(now, header, message),
            _ => self.stats.unexpected += 1,
        }
    }
}
