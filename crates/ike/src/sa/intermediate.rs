//! The IKE_INTERMEDIATE exchange (RFC 9242) between IKE_SA_INIT and
//! IKE_AUTH, carrying the additional key exchanges of the chosen proposal
//! (RFC 9370 section 2.2.1), one per exchange in the order of their
//! transform types. After each, both sides update the IKE SA's keys
//! (section 2.2.2), and AUTH covers the IntAuth chain of every
//! IKE_INTERMEDIATE message (RFC 9242 section 3.3).
//!
//! The initiator sends `HDR, SK {KEi(n)}`, the responder answers `HDR, SK
//! {KEr(n)}`; the IKE_AUTH request then has the next message ID.

use std::time::Instant;

use super::event::Event;
use super::state::{
    Discard, ExpectAuth, Handshake, IkeSa, IntAuthChain, IntermediateSent, Sk, State,
};
use crate::crypto::{self, Key, skeyseed_rekey};
use crate::error::Result;
use crate::message::{
    DhGroup, ExchangeType, KeyExchange as KePayload, Message, Notify, NotifyType, Payload,
};

/// Whether `proposals` name an additional key exchange other than NONE:
/// then we announce IKE_INTERMEDIATE (RFC 9242 section 3).
pub(super) fn wants_intermediate(proposals: &[crate::message::Proposal]) -> bool {
    proposals.iter().flat_map(|p| &p.transforms).any(|t| {
        matches!(t.id, crate::message::TransformId::AddKe { group, .. } if group != DhGroup::None)
    })
}

/// The INTERMEDIATE_EXCHANGE_SUPPORTED notify of IKE_SA_INIT.
pub(super) fn intermediate_supported() -> Payload {
    Payload::Notify(Notify::empty(NotifyType::IntermediateExchangeSupported))
}

impl IkeSa {
    /// The IKE SA's keys after an additional key exchange with `secret`
    /// (RFC 9370 section 2.2.2): `SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni |
    /// Nr)`, the seven keys from it as from SKEYSEED, with the same SPIs.
    pub(super) fn updated_keys(&self, sk: &Sk, secret: &Key, ni: &[u8], nr: &[u8]) -> Result<Sk> {
        let seed = skeyseed_rekey(sk.suite.prf, &sk.keys.sk_d, secret.expose(), ni, nr, &[]);
        self.keys_from_seed(sk.suite, &seed, ni, nr)
    }

    /// Initiator: sends the IKE_INTERMEDIATE request of the first of
    /// `groups` (the additional key exchanges still to run).
    pub(super) fn send_intermediate(
        &mut self,
        now: Instant,
        sk: Sk,
        handshake: Handshake,
        mut groups: Vec<DhGroup>,
        mut chain: IntAuthChain,
    ) -> Result<()> {
        let group = groups.remove(0);
        let kex = crypto::start(group)?;
        let payloads = [Payload::KeyExchange(KePayload {
            group,
            data: kex.public_value().to_vec(),
        })];
        let id = self.next_request_id;
        let header = self.header(ExchangeType::IkeIntermediate, false, id);
        chain.add(true, &sk, &header, &payloads)?;
        let bytes = self.seal(&sk, &header, &payloads)?;
        self.next_request_id = id.wrapping_add(1);
        self.send_request(now, ExchangeType::IkeIntermediate, id, bytes);
        self.state = State::IntermediateSent(Box::new(IntermediateSent {
            sk,
            handshake,
            kex,
            remaining: groups,
            chain,
        }));
        Ok(())
    }

    /// Initiator: the responder's answer to our IKE_INTERMEDIATE request.
    /// Its key share completes the exchange, the keys are updated, and the
    /// next IKE_INTERMEDIATE request or the IKE_AUTH request goes out.
    pub(super) fn on_intermediate_response(&mut self, now: Instant, message: &Message) {
        let State::IntermediateSent(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let IntermediateSent {
            sk,
            handshake,
            kex,
            remaining,
            mut chain,
        } = *st;
        let ke = message.payloads.iter().find_map(|p| match p {
            Payload::KeyExchange(ke) => Some(ke),
            _ => None,
        });
        let fail = |sa: &mut Self, notify| {
            sa.close(Event::Failed {
                notify,
                by_peer: false,
            })
        };
        let Some(ke) = ke.filter(|ke| ke.group == kex.group()) else {
            let notify = message
                .payloads
                .iter()
                .find_map(|p| match p {
                    Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
                    _ => None,
                })
                .unwrap_or(NotifyType::InvalidSyntax);
            return fail(self, notify);
        };
        if chain
            .add(false, &sk, &message.header, &message.payloads)
            .is_err()
        {
            return fail(self, NotifyType::InvalidSyntax);
        }
        let Ok(secret) = kex.complete(&ke.data) else {
            return fail(self, NotifyType::InvalidSyntax);
        };
        let sk = match self.updated_keys(&sk, &secret, &handshake.ni, &handshake.nr) {
            Ok(sk) => sk,
            Err(e) => return self.local_error(e),
        };
        let result = if remaining.is_empty() {
            self.send_auth(now, sk, handshake, &chain)
        } else {
            self.send_intermediate(now, sk, handshake, remaining, chain)
        };
        if let Err(e) = result {
            self.local_error(e);
        }
    }

    /// Responder: an IKE_INTERMEDIATE request with the initiator's key
    /// share of the next additional key exchange. We answer with ours,
    /// then update the keys; the IKE_AUTH request uses the new ones.
    pub(super) fn on_intermediate_request(&mut self, message: &Message) -> Result<(), Discard> {
        let State::ExpectAuth(st) = &mut self.state else {
            return Err(Discard::Unexpected);
        };
        let id = message.header.message_id;
        let group = st.pending[0];
        let ke = message.payloads.iter().find_map(|p| match p {
            Payload::KeyExchange(ke) if ke.group == group => Some(ke),
            _ => None,
        });
        let answer = ke.map(|ke| crypto::respond(group, &ke.data));
        let Some(Ok((public, secret))) = answer else {
            // RFC 7296 section 2.21.2: a wrong key share is answered
            // INVALID_SYNTAX, and the IKE SA is not created.
            let header = self.header(ExchangeType::IkeIntermediate, true, id);
            let notify = [Payload::Notify(Notify::empty(NotifyType::InvalidSyntax))];
            if let State::ExpectAuth(st) = &self.state {
                if let Ok(bytes) = self.seal(&st.sk, &header, &notify) {
                    self.send_response(id, bytes);
                }
            }
            self.close(Event::Failed {
                notify: NotifyType::InvalidSyntax,
                by_peer: false,
            });
            return Ok(());
        };
        let header = self.header(ExchangeType::IkeIntermediate, true, id);
        let payloads = [Payload::KeyExchange(KePayload {
            group,
            data: public,
        })];
        let State::ExpectAuth(st) = &mut self.state else {
            return Err(Discard::Unexpected);
        };
        let chained = st
            .chain
            .add(true, &st.sk, &message.header, &message.payloads)
            .and_then(|()| st.chain.add(false, &st.sk, &header, &payloads));
        if let Err(e) = chained {
            self.local_error(e);
            return Ok(());
        }
        let sealed = match &self.state {
            State::ExpectAuth(st) => self.seal(&st.sk, &header, &payloads),
            _ => return Err(Discard::Unexpected),
        };
        let bytes = match sealed {
            Ok(bytes) => bytes,
            Err(e) => {
                self.local_error(e);
                return Ok(());
            }
        };
        self.send_response(id, bytes);
        let updated = match &self.state {
            State::ExpectAuth(st) => self.updated_keys(&st.sk, &secret, &st.ni, &st.nr),
            _ => return Err(Discard::Unexpected),
        };
        match (updated, &mut self.state) {
            (Ok(sk), State::ExpectAuth(st)) => {
                st.sk = sk;
                st.pending.remove(0);
                st.next_id = id.wrapping_add(1);
            }
            (Err(e), _) => self.local_error(e),
            _ => {}
        }
        Ok(())
    }
}

/// The state a responder keeps between IKE_SA_INIT and IKE_AUTH, with the
/// additional key exchanges still to run.
impl ExpectAuth {
    /// Whether an IKE_INTERMEDIATE exchange is still due.
    pub(super) fn intermediate_due(&self) -> bool {
        !self.pending.is_empty()
    }
}
