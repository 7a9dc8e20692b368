//! IKE_FOLLOWUP_KE (RFC 9370 section 2.2.2): the additional key exchanges
//! of a CREATE_CHILD_SA that creates or rekeys a Child SA, one exchange
//! each, linked by the ADDITIONAL_KEY_EXCHANGE notify.
//!
//! ```text
//! Initiator                                  Responder
//! HDR(CREATE_CHILD_SA), SK {SA, Ni, KEi, TSi, TSr}  -->
//!            <--  HDR(CREATE_CHILD_SA), SK {SA, Nr, KEr, TSi, TSr,
//!                                           N(ADDITIONAL_KEY_EXCHANGE)(link1)}
//! HDR(IKE_FOLLOWUP_KE), SK {KEi(1), N(ADDITIONAL_KEY_EXCHANGE)(link1)}  -->
//!            <--  HDR(IKE_FOLLOWUP_KE), SK {KEr(1), N(ADDITIONAL_KEY_EXCHANGE)(link2)}
//! ...
//!            <--  HDR(IKE_FOLLOWUP_KE), SK {KEr(n)}
//! ```
//!
//! > The responder MUST include the ADDITIONAL_KEY_EXCHANGE notification
//! > in its response to the CREATE_CHILD_SA request [...] The initiator
//! > MUST copy the received link data into the Additional Key Exchange
//! > Notify [...] If the responder receives an IKE_FOLLOWUP_KE request
//! > with link data it does not recognize, it MUST respond with
//! > STATE_NOT_FOUND.
//!
//! The Child SA comes up only after the last exchange, with `KEYMAT =
//! prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))`
//! ([`ChildKeying::finish`]). Until then neither side installs anything.
//!
//! Collisions: a responder that is rekeying the same Child SA itself
//! answers a rekey with additional key exchanges TEMPORARY_FAILURE (RFC
//! 7296 section 2.25), and both sides try again after a random pause, as
//! strongSwan 6 does once its IKE_FOLLOWUP_KE is under way. While a peer's
//! exchanges are pending, we start no rekey of our own of that Child SA
//! nor of the IKE SA.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tunsec_esp::Key;

use super::event::{ChildSaParams, Event};
use super::logging::{self, Hex};
use super::payloads::Payloads;
use super::random::random_u64;
use super::state::{
    ChildKeying, ChildTarget, Established, FollowupPending, FollowupSent, IkeSa, NewPair, Queued,
    Request, Retired, Sk, State,
};
use crate::crypto::{self, child_sa_keys};
use crate::error::{Error, Result};
use crate::message::{DhGroup, ExchangeType, KeyExchange, Message, Notify, NotifyType, Payload};

/// How long a responder keeps a CREATE_CHILD_SA whose IKE_FOLLOWUP_KE
/// requests do not come: longer than the initiator retransmits one.
pub(super) const FOLLOWUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What comes after an IKE_FOLLOWUP_KE response: the next request of
/// the chain, with the responder's link.
pub(super) struct Continue {
    pub(super) target: ChildTarget,
    pub(super) keying: ChildKeying,
    pub(super) link: Vec<u8>,
}

impl ChildKeying {
    /// A pair agreed in a CREATE_CHILD_SA exchange whose proposal names
    /// the additional key exchanges `additional`, in the order they run.
    pub(super) fn new(
        ni: Vec<u8>,
        nr: Vec<u8>,
        (inbound, outbound): (ChildSaParams, ChildSaParams),
        initiated: bool,
        first: Option<Key>,
        additional: &[DhGroup],
    ) -> Self {
        Self {
            ni,
            nr,
            inbound,
            outbound,
            initiated,
            first,
            done: Vec::new(),
            remaining: additional.iter().copied().collect::<VecDeque<_>>(),
        }
    }

    /// The pair with its keys from every exchange (RFC 9370 section
    /// 2.2.2): `KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... |
    /// SK(n))`, split by the CREATE_CHILD_SA's roles (RFC 7296 section
    /// 2.17).
    pub(super) fn finish(self, sk: &Sk) -> Result<(ChildSaParams, ChildSaParams)> {
        let done: Vec<&[u8]> = self.done.iter().map(|k| k.expose()).collect();
        let keys = child_sa_keys(
            sk.suite.prf,
            &sk.keys.sk_d,
            self.first.as_ref().map(|k| k.expose()),
            &self.ni,
            &self.nr,
            &done,
            self.inbound.suite,
        )?;
        let (inbound_keys, outbound_keys) = if self.initiated {
            (keys.responder_to_initiator, keys.initiator_to_responder)
        } else {
            (keys.initiator_to_responder, keys.responder_to_initiator)
        };
        let (mut inbound, mut outbound) = (self.inbound, self.outbound);
        inbound.keys = inbound_keys;
        outbound.keys = outbound_keys;
        Ok((inbound, outbound))
    }

    /// The pair's SPIs (inbound, outbound).
    fn spis(&self) -> (u32, u32) {
        (self.inbound.spi, self.outbound.spi)
    }
}

/// The ADDITIONAL_KEY_EXCHANGE data of a message, if it has the notify.
pub(super) fn link_of(p: &Payloads<'_>) -> Option<Vec<u8>> {
    p.notify(NotifyType::AdditionalKeyExchange)
        .map(|n| n.data.clone())
}

/// The ADDITIONAL_KEY_EXCHANGE notify with `link`.
pub(super) fn link_notify(link: &[u8]) -> Payload {
    Payload::Notify(Notify::new(
        NotifyType::AdditionalKeyExchange,
        link.to_vec(),
    ))
}

impl IkeSa {
    /// Initiator: the next IKE_FOLLOWUP_KE request of the chain, with
    /// the key share of the next additional key exchange and the link the
    /// responder gave.
    pub(super) fn send_followup(&mut self, now: Instant, next: Continue) -> Result<()> {
        let Continue {
            target,
            mut keying,
            link,
        } = next;
        let Some(group) = keying.remaining.pop_front() else {
            return Err(Error::InvalidState("no additional key exchange left"));
        };
        let kex = crypto::start(group)?;
        let payloads = [
            Payload::KeyExchange(KeyExchange {
                group,
                data: kex.public_value().to_vec(),
            }),
            link_notify(&link),
        ];
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            method = ?group,
            child = %Hex(keying.inbound.spi),
            left = keying.remaining.len(),
            "IKE_FOLLOWUP_KE: additional key exchange sent"
        );
        let request = Request::Followup(Box::new(FollowupSent {
            target,
            keying,
            kex,
        }));
        self.send_sealed_request(now, ExchangeType::IkeFollowupKe, &payloads, Some(request))
    }

    /// Initiator: the answer to an IKE_FOLLOWUP_KE request. The next
    /// request of the chain, if more exchanges are due; otherwise the
    /// Child SA is concluded here (up, rekeyed, or failed).
    pub(super) fn on_followup_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        sent: FollowupSent,
        message: &Message,
    ) -> Option<Continue> {
        let p = Payloads(&message.payloads);
        let FollowupSent {
            target,
            mut keying,
            kex,
        } = sent;
        let failed = |notify, by_peer| Box::new(Event::Failed { notify, by_peer });
        let step = (|| {
            if let Some(notify) = p.error() {
                return Err(failed(notify, true));
            }
            let ke = p
                .ke()
                .filter(|ke| ke.group == kex.group())
                .ok_or_else(|| failed(NotifyType::InvalidSyntax, false))?;
            let secret = kex
                .complete(&ke.data)
                .map_err(|_| failed(NotifyType::InvalidSyntax, false))?;
            keying.done.push(secret);
            if keying.remaining.is_empty() {
                return Ok(None);
            }
            link_of(&p)
                .map(Some)
                .ok_or_else(|| failed(NotifyType::InvalidSyntax, false))
        })();
        let last = keying.remaining.is_empty();
        let spis = keying.spis();
        let nonces = (keying.ni.clone(), keying.nr.clone());
        let result = match step {
            Ok(Some(link)) => {
                return Some(Continue {
                    target,
                    keying,
                    link,
                });
            }
            Ok(None) => keying
                .finish(&st.sk)
                .map_err(|e| Box::new(Event::LocalError(e))),
            Err(event) => {
                // The responder sent its last answer without an error, so
                // it has the pair up: it goes again (RFC 7296 section
                // 1.4.1).
                if last && p.error().is_none() {
                    st.queue.push_back(Queued::DeleteChild(Retired {
                        inbound: spis.0,
                        outbound: spis.1,
                        announce: false,
                    }));
                }
                Err(event)
            }
        };
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            child = %Hex(spis.0),
            ok = result.is_ok(),
            "IKE_FOLLOWUP_KE: the last additional key exchange answered"
        );
        match target {
            ChildTarget::Rekey(old) => {
                let (ni, nr) = nonces;
                let ours = result.map(|(inbound, outbound)| NewPair {
                    ni,
                    nr,
                    inbound,
                    outbound,
                });
                self.conclude_rekey(now, st, old, ours, None);
            }
            ChildTarget::Create(_) => self.conclude_create(now, st, result),
        }
        None
    }

    /// Responder: a CREATE_CHILD_SA whose chosen proposal has additional
    /// key exchanges was answered with `payloads` (the pair in
    /// `keying`); the answer gets the link, and the pair waits for the
    /// IKE_FOLLOWUP_KE requests.
    pub(super) fn await_followups(
        &mut self,
        now: Instant,
        st: &mut Established,
        old: Option<(u32, u32)>,
        keying: ChildKeying,
        payloads: &mut Vec<Payload>,
    ) {
        let link = random_u64(self.rng.as_mut())
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec();
        payloads.push(link_notify(&link));
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            child = %Hex(keying.inbound.spi),
            exchanges = keying.remaining.len(),
            "IKE_FOLLOWUP_KE: additional key exchanges expected"
        );
        if let Some(dropped) = st.followup.replace(FollowupPending {
            old,
            keying,
            link,
            deadline: now + FOLLOWUP_TIMEOUT,
        }) {
            tracing::debug!(
                peer = %logging::Peer(self.remote),
                child = %Hex(dropped.keying.inbound.spi),
                "IKE_FOLLOWUP_KE: the peer left an earlier chain unfinished"
            );
        }
    }

    /// Responder: an IKE_FOLLOWUP_KE request (RFC 9370 section 2.2.2).
    pub(super) fn on_followup_request(
        &mut self,
        now: Instant,
        st: &mut Established,
        message: &Message,
    ) -> (Vec<Payload>, Vec<Event>) {
        let p = Payloads(&message.payloads);
        let refuse = |notify| {
            (
                vec![Payload::Notify(Notify::empty(notify))],
                vec![Event::Failed {
                    notify,
                    by_peer: false,
                }],
            )
        };
        let Some(mut pending) = st
            .followup
            .take_if(|f| link_of(&p).is_some_and(|l| l == f.link))
        else {
            tracing::debug!(
                peer = %logging::Peer(self.remote),
                "IKE_FOLLOWUP_KE for no exchange of ours: STATE_NOT_FOUND"
            );
            return refuse(NotifyType::StateNotFound);
        };
        let Some(group) = pending.keying.remaining.pop_front() else {
            return refuse(NotifyType::StateNotFound);
        };
        let Some(ke) = p.ke().filter(|ke| ke.group == group) else {
            return refuse(NotifyType::InvalidSyntax);
        };
        let Ok((public, secret)) = crypto::respond(group, &ke.data) else {
            return refuse(NotifyType::InvalidSyntax);
        };
        pending.keying.done.push(secret);
        let mut payloads = vec![Payload::KeyExchange(KeyExchange {
            group,
            data: public,
        })];
        if !pending.keying.remaining.is_empty() {
            payloads.push(link_notify(&pending.link));
            pending.deadline = now + FOLLOWUP_TIMEOUT;
            st.followup = Some(pending);
            return (payloads, Vec::new());
        }
        let FollowupPending { old, keying, .. } = pending;
        let (ni, nr) = (keying.ni.clone(), keying.nr.clone());
        let Ok((inbound, outbound)) = keying.finish(&st.sk) else {
            return refuse(NotifyType::TemporaryFailure);
        };
        match self.conclude_peer_child(now, st, old, ni, nr, inbound, outbound) {
            Ok(events) => (payloads, events),
            Err(notify) => refuse(notify),
        }
    }

    /// Responder: forgets a pending chain whose next request did not
    /// come in time.
    pub(super) fn followup_timeout(&mut self, now: Instant) {
        let State::Established(st) = &mut self.state else {
            return;
        };
        if let Some(f) = st.followup.take_if(|f| now >= f.deadline) {
            tracing::debug!(
                peer = %logging::Peer(self.remote),
                child = %Hex(f.keying.inbound.spi),
                "IKE_FOLLOWUP_KE: the peer did not go on; its Child SA is forgotten"
            );
        }
    }
}
