//! Requests with an unknown critical payload (RFC 7296 sections 2.5 and
//! 3.2).
//!
//! The codec skips a payload of unknown type unless its critical bit is
//! set; then it fails with [`Error::UnsupportedCriticalPayload`]. RFC 7296
//! section 2.5 says what a responder does with such a request: "If the
//! critical flag is set and the payload type is unrecognized, the message
//! MUST be rejected and the response to the IKE request containing that
//! payload MUST include a Notify payload UNSUPPORTED_CRITICAL_PAYLOAD,
//! indicating an unsupported critical payload was included. In that
//! Notify payload, the Notification Data contains the one-octet payload
//! type."
//!
//! - An IKE_SA_INIT request is answered in the clear, without state (as
//!   NO_PROPOSAL_CHOSEN is); the responder keeps waiting. An
//!   [`Endpoint`](super::Endpoint) that asks for cookies drops such a
//!   request instead: under load it decodes nothing it need not.
//! - An encrypted request (IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL) whose
//!   integrity checks is answered in an encrypted response with its
//!   message ID, which is then used up and cached like any response. An
//!   IKE_AUTH rejected so authenticates nobody: the half-open IKE SA
//!   closes ([`Event::Failed`]). An established IKE SA is unchanged.
//!
//! Each such answer is counted in [`super::Stats::unsupported_critical`].

use std::net::SocketAddr;

use super::event::Event;
use super::exchange::discard;
use super::state::{Discard, IkeSa, Received, State};
use crate::error::Error;
use crate::message::{Header, Message, Notify, NotifyType, Payload};

/// The notify that names the unsupported critical payload type.
fn unsupported(payload_type: u8) -> Notify {
    Notify::new(NotifyType::UnsupportedCriticalPayload, vec![payload_type])
}

impl IkeSa {
    /// An IKE_SA_INIT request that did not decode: answered if it has an
    /// unknown critical payload, dropped as malformed otherwise.
    pub(super) fn undecodable_init(
        &mut self,
        remote: SocketAddr,
        header: &Header,
        error: Error,
    ) -> Result<(), Discard> {
        let Error::UnsupportedCriticalPayload(payload_type) = error else {
            return Err(Discard::Malformed);
        };
        self.stats.unsupported_critical += 1;
        self.refuse_init(remote, header, unsupported(payload_type));
        Ok(())
    }

    /// Checks and decrypts the peer's request; `None` if it had an unknown
    /// critical payload and was answered.
    pub(super) fn open_request(&mut self, msg: &Received<'_>) -> Result<Option<Message>, Discard> {
        if !matches!(self.state, State::ExpectAuth(_) | State::Established(_)) {
            return Err(Discard::Unexpected);
        }
        let payload_type = match self.open(msg) {
            Ok(message) => return Ok(message),
            Err(Error::UnsupportedCriticalPayload(t)) => t,
            Err(e) => return Err(discard(e)),
        };
        let id = msg.header.message_id;
        let response = self.header(msg.header.exchange_type, true, id);
        let payloads = [Payload::Notify(unsupported(payload_type))];
        self.remote = Some(msg.remote);
        let sealed = match self.state.sk() {
            Some(sk) => self.seal(sk, &response, &payloads),
            None => return Err(Discard::Unexpected),
        };
        self.stats.unsupported_critical += 1;
        match sealed {
            Ok(bytes) => self.send_response(id, bytes),
            Err(e) => {
                self.local_error(e);
                return Ok(None);
            }
        }
        if self.is_half_open() {
            // The IKE_AUTH request is rejected: nobody is authenticated.
            self.half_open_deadline = None;
            self.close(Event::Failed {
                notify: NotifyType::UnsupportedCriticalPayload,
                by_peer: false,
            });
        } else {
            self.peer_next_id = id.wrapping_add(1);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
