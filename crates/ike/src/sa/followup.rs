//! IKE_FOLLOWUP_KE (RFC 9370 section 2.2.2): the additional key exchanges
//! of a CREATE_CHILD_SA that creates or rekeys a Child SA, or rekeys the
//! IKE SA, one exchange each, linked by the ADDITIONAL_KEY_EXCHANGE
//! notify.
//!
//! ```text
//! Initiator                                  Responder
//! HDR(CREATE_CHILD_SA), SK {SA, Ni, KEi, [TSi, TSr]}  -->
//!            <--  HDR(CREATE_CHILD_SA), SK {SA, Nr, KEr, [TSi, TSr,]
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
//! What the chain makes comes up only after the last exchange: a Child
//! SA with `KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))`
//! ([`ChildKeying::finish`]), or the new IKE SA with `SKEYSEED =
//! prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))`
//! ([`IkeKeying::finish`], in `ike_rekey.rs`). Until then neither side
//! installs anything, and the exchanges run on the current IKE SA.
//!
//! Collisions: a responder that is rekeying the same Child SA itself
//! answers a rekey with additional key exchanges TEMPORARY_FAILURE (RFC
//! 7296 section 2.25), and both sides try again after a random pause, as
//! strongSwan 6 does once its IKE_FOLLOWUP_KE is under way (IKE SA rekeys
//! collide the same way, `ike_rekey.rs`). While a peer's exchanges are
//! pending, we start no rekey of that Child SA nor of the IKE SA, and
//! during the IKE SA's rekey no request at all.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tunsec_esp::Key;

use super::event::{ChildSaParams, Event};
use super::logging::{self, Hex};
use super::payloads::Payloads;
use super::random::random_u64;
use super::state::{
    ChildKeying, ChildTarget, Established, FollowupPending, FollowupSent, IkeSa, KeSecrets,
    NewIkeSa, NewPair, Queued, Rekeying, Request, Retired, Sk, State,
};
use crate::crypto::{self, child_sa_keys};
use crate::error::{Error, Result};
use crate::message::{DhGroup, ExchangeType, KeyExchange, Message, Notify, NotifyType, Payload};

/// How long a responder keeps a CREATE_CHILD_SA whose IKE_FOLLOWUP_KE
/// requests do not come: longer than the initiator retransmits one.
pub(super) const FOLLOWUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What comes after an answer with a link: the next IKE_FOLLOWUP_KE
/// request of the chain.
pub(super) struct Continue {
    /// What our CREATE_CHILD_SA was for: a Child SA, or (`None`) the IKE
    /// SA.
    pub(super) target: Option<ChildTarget>,
    pub(super) rekeying: Rekeying,
    /// The responder's ADDITIONAL_KEY_EXCHANGE data, to copy.
    pub(super) link: Vec<u8>,
}

impl KeSecrets {
    /// SK(0) of a CREATE_CHILD_SA, if it had KE payloads, and the
    /// additional key exchanges still to run, in order.
    pub(super) fn new(first: Option<Key>, additional: &[DhGroup]) -> Self {
        Self {
            first,
            done: Vec::new(),
            remaining: additional.iter().copied().collect::<VecDeque<_>>(),
        }
    }

    /// SK(1) to SK(n), as the key derivation takes them.
    pub(super) fn additional(&self) -> Vec<&[u8]> {
        self.done.iter().map(|k| k.expose()).collect()
    }
}

impl ChildKeying {
    /// The pair agreed in a CREATE_CHILD_SA (we `initiated` it, or not),
    /// with its secrets.
    pub(super) fn new(
        (ni, nr): (Vec<u8>, Vec<u8>),
        (inbound, outbound): (ChildSaParams, ChildSaParams),
        initiated: bool,
        secrets: KeSecrets,
    ) -> Self {
        Self {
            ni,
            nr,
            inbound,
            outbound,
            initiated,
            secrets,
        }
    }

    /// The pair with its keys from every exchange (RFC 9370 section
    /// 2.2.2): `KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... |
    /// SK(n))`, split by the CREATE_CHILD_SA's roles (RFC 7296 section
    /// 2.17).
    pub(super) fn finish(self, sk: &Sk) -> Result<(ChildSaParams, ChildSaParams)> {
        let keys = child_sa_keys(
            sk.suite.prf,
            &sk.keys.sk_d,
            self.secrets.first.as_ref().map(|k| k.expose()),
            &self.ni,
            &self.nr,
            &self.secrets.additional(),
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
}

impl Rekeying {
    /// Our SPI of what it makes, for the logs.
    fn spi(&self) -> u64 {
        match self {
            Self::Child(c) => u64::from(c.inbound.spi),
            Self::Ike(i) => {
                if i.initiated {
                    i.spi_i
                } else {
                    i.spi_r
                }
            }
        }
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
            mut rekeying,
            link,
        } = next;
        let Some(group) = rekeying.secrets().remaining.pop_front() else {
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
            sa = %Hex(rekeying.spi()),
            left = rekeying.secrets().remaining.len(),
            "IKE_FOLLOWUP_KE: additional key exchange sent"
        );
        let request = Request::Followup(Box::new(FollowupSent {
            target,
            rekeying,
            kex,
        }));
        self.send_sealed_request(now, ExchangeType::IkeFollowupKe, &payloads, Some(request))
    }

    /// Initiator: the answer to an IKE_FOLLOWUP_KE request. The next
    /// request of the chain, if more exchanges are due; otherwise what
    /// the chain makes is concluded here (up, rekeyed, or failed).
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
            mut rekeying,
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
            let secrets = rekeying.secrets();
            secrets.done.push(secret);
            if secrets.remaining.is_empty() {
                return Ok(None);
            }
            link_of(&p)
                .map(Some)
                .ok_or_else(|| failed(NotifyType::InvalidSyntax, false))
        })();
        let last = rekeying.secrets().remaining.is_empty();
        let step = match step {
            Ok(Some(link)) => {
                return Some(Continue {
                    target,
                    rekeying,
                    link,
                });
            }
            Ok(None) => Ok(()),
            Err(event) => Err(event),
        };
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            sa = %Hex(rekeying.spi()),
            ok = step.is_ok(),
            "IKE_FOLLOWUP_KE: the last additional key exchange answered"
        );
        match (rekeying, target) {
            (Rekeying::Child(keying), Some(target)) => {
                let spis = (keying.inbound.spi, keying.outbound.spi);
                let (ni, nr) = (keying.ni.clone(), keying.nr.clone());
                let result = step.and_then(|()| {
                    (*keying)
                        .finish(&st.sk)
                        .map_err(|e| Box::new(Event::LocalError(e)))
                });
                if result.is_err() && last && p.error().is_none() {
                    // The responder sent its last answer without an
                    // error, so it has the pair up: it goes again (RFC
                    // 7296 section 1.4.1).
                    st.queue.push_back(Queued::DeleteChild(Retired {
                        inbound: spis.0,
                        outbound: spis.1,
                        announce: false,
                    }));
                }
                match target {
                    ChildTarget::Rekey(old) => {
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
            }
            (Rekeying::Ike(keying), _) => {
                let result = step.and_then(|()| {
                    keying
                        .finish(&st.sk)
                        .map_err(|e| Box::new(Event::LocalError(e)))
                });
                self.conclude_ike_rekey(now, st, result);
            }
            (Rekeying::Child(_), None) => {}
        }
        None
    }

    /// Responder: a CREATE_CHILD_SA whose chosen proposal has additional
    /// key exchanges was answered with `payloads`; the answer gets the
    /// link, and what it agreed on waits for the IKE_FOLLOWUP_KE
    /// requests. `old` is the Child SA pair it rekeys, if any.
    pub(super) fn await_followups(
        &mut self,
        now: Instant,
        st: &mut Established,
        old: Option<(u32, u32)>,
        rekeying: Rekeying,
        payloads: &mut Vec<Payload>,
    ) {
        let link = random_u64(self.rng.as_mut())
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec();
        payloads.push(link_notify(&link));
        let mut rekeying = rekeying;
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            sa = %Hex(rekeying.spi()),
            exchanges = rekeying.secrets().remaining.len(),
            "IKE_FOLLOWUP_KE: additional key exchanges expected"
        );
        if let Some(mut dropped) = st.followup.replace(FollowupPending {
            old,
            rekeying,
            link,
            deadline: now + FOLLOWUP_TIMEOUT,
        }) {
            tracing::debug!(
                peer = %logging::Peer(self.remote),
                sa = %Hex(dropped.rekeying.spi()),
                left = dropped.rekeying.secrets().remaining.len(),
                "IKE_FOLLOWUP_KE: the peer left an earlier chain unfinished"
            );
        }
    }

    /// Responder: an IKE_FOLLOWUP_KE request (RFC 9370 section 2.2.2):
    /// the answer, the events once it is sent, and the new IKE SA to
    /// switch to once it is sent (the last exchange of an IKE SA rekey).
    pub(super) fn on_followup_request(
        &mut self,
        now: Instant,
        st: &mut Established,
        message: &Message,
    ) -> (Vec<Payload>, Vec<Event>, Option<NewIkeSa>) {
        let p = Payloads(&message.payloads);
        let refuse = |notify| {
            (
                vec![Payload::Notify(Notify::empty(notify))],
                vec![Event::Failed {
                    notify,
                    by_peer: false,
                }],
                None,
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
        let secrets = pending.rekeying.secrets();
        let Some(group) = secrets.remaining.pop_front() else {
            return refuse(NotifyType::StateNotFound);
        };
        let Some(ke) = p.ke().filter(|ke| ke.group == group) else {
            return refuse(NotifyType::InvalidSyntax);
        };
        let Ok((public, secret)) = crypto::respond(group, &ke.data) else {
            return refuse(NotifyType::InvalidSyntax);
        };
        secrets.done.push(secret);
        let mut payloads = vec![Payload::KeyExchange(KeyExchange {
            group,
            data: public,
        })];
        if !secrets.remaining.is_empty() {
            payloads.push(link_notify(&pending.link));
            pending.deadline = now + FOLLOWUP_TIMEOUT;
            st.followup = Some(pending);
            return (payloads, Vec::new(), None);
        }
        let FollowupPending { old, rekeying, .. } = pending;
        match rekeying {
            Rekeying::Child(keying) => {
                let (ni, nr) = (keying.ni.clone(), keying.nr.clone());
                let Ok((inbound, outbound)) = (*keying).finish(&st.sk) else {
                    return refuse(NotifyType::TemporaryFailure);
                };
                match self.conclude_peer_child(now, st, old, ni, nr, inbound, outbound) {
                    Ok(events) => (payloads, events, None),
                    Err(notify) => refuse(notify),
                }
            }
            Rekeying::Ike(keying) => match keying.finish(&st.sk) {
                Ok(new) => (payloads, Vec::new(), Some(new)),
                Err(_) => refuse(NotifyType::TemporaryFailure),
            },
        }
    }

    /// Responder: forgets a pending chain whose next request did not
    /// come in time, and sends what waited for it.
    pub(super) fn followup_timeout(&mut self, now: Instant) {
        let State::Established(st) = &mut self.state else {
            return;
        };
        if let Some(f) = st.followup.take_if(|f| now >= f.deadline) {
            tracing::debug!(
                peer = %logging::Peer(self.remote),
                sa = %Hex(f.rekeying.spi()),
                "IKE_FOLLOWUP_KE: the peer did not go on; what it was for is forgotten"
            );
            self.run_queue(now);
        }
    }
}

/// Whether a queued request of ours waits for the peer's pending chain:
/// during an IKE SA rekey everything does; during a Child SA's the rekey
/// of that pair and of the IKE SA.
pub(super) fn waits(st: &Established, next: Queued) -> bool {
    let Some(f) = &st.followup else {
        return false;
    };
    match (&f.rekeying, next) {
        (Rekeying::Ike(_), _) | (_, Queued::IkeRekey) => true,
        (Rekeying::Child(_), Queued::Rekey(spi)) => {
            f.old.is_some_and(|(inbound, _)| inbound == spi)
        }
        _ => false,
    }
}
