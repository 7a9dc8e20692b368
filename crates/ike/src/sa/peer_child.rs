//! The peer's CREATE_CHILD_SA and IKE_FOLLOWUP_KE requests on an
//! established IKE SA (RFC 7296 sections 1.3, 2.8, 2.8.1): a new Child SA
//! or the rekey of one of ours, within our policy and `max_child_sas`,
//! with PFS, a label (`labels.rs`) and the additional key exchanges
//! (`followup.rs`); the IKE SA's own rekey goes to `ike_rekey.rs`. Our
//! side of Child SAs is `child.rs`.

use std::time::Instant;

use super::event::{ChildSaParams, Event};
use super::ike_rekey;
use super::logging::Hex;
use super::payloads::Payloads;
use super::random::random_nonce;
use super::state::{
    Child, ChildKeying, ChildTarget, Collided, Established, IkeSa, KeSecrets, NewIkeSa, Rekeying,
    Request, Retired, Role, State, rekey_time,
};
use crate::crypto;
use crate::error::Error;
use crate::message::{DhGroup, Header, Message, Notify, NotifyType, Payload};
use crate::proposal;

impl IkeSa {
    /// A CREATE_CHILD_SA request from the peer: the IKE SA's rekey
    /// (`ike_rekey.rs`), or a Child SA's rekey or a new one.
    pub(super) fn on_create_child_sa_request(
        &mut self,
        now: Instant,
        header: &Header,
        message: &Message,
    ) {
        if ike_rekey::is_ike_rekey(message) {
            return self.answer(now, header, |sa, st| {
                sa.on_ike_rekey_request(now, st, message)
            });
        }
        self.answer(now, header, |sa, st| {
            let (payloads, events) = sa.create_child_response(now, st, message);
            (payloads, events, None)
        });
    }

    /// An IKE_FOLLOWUP_KE request from the peer (`followup.rs`); once the
    /// chain is done, what waited for it goes.
    pub(super) fn on_followup_ke_request(
        &mut self,
        now: Instant,
        header: &Header,
        message: &Message,
    ) {
        self.answer(now, header, |sa, st| {
            sa.on_followup_request(now, st, message)
        });
        self.run_queue(now);
    }

    /// Answers the request `header` on the established IKE SA with what
    /// `respond` makes of it: the payloads, the events that follow once
    /// the answer is sent, and the new IKE SA to switch to then (after a
    /// rekey of the IKE SA; the answer goes on the old one).
    fn answer(
        &mut self,
        now: Instant,
        header: &Header,
        respond: impl FnOnce(
            &mut Self,
            &mut Established,
        ) -> (Vec<Payload>, Vec<Event>, Option<NewIkeSa>),
    ) {
        let response = self.header(header.exchange_type, true, header.message_id);
        let id = header.message_id;
        let State::Established(mut st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let (reply, events, switch) = respond(self, &mut st);
        let sealed = self.seal(&st.sk, &response, &reply);
        self.peer_next_id = id.wrapping_add(1);
        match sealed {
            Ok(bytes) => self.send_response(id, bytes),
            Err(e) => {
                self.state = State::Established(st);
                return self.local_error(e);
            }
        }
        if let Some(new) = switch {
            self.switch_ike_sa(now, &mut st, new.spi_i, new.spi_r, Role::Responder, new.sk);
        }
        self.state = State::Established(st);
        self.events.extend(events);
    }

    /// Answers the peer's CREATE_CHILD_SA request for a Child SA: a rekey
    /// of one of ours (N(REKEY_SA) names the SPI we send with), or a new
    /// one (RFC 7296 section 1.3.1), within our policy's selectors and up
    /// to [`Config::max_child_sas`] (NO_ADDITIONAL_SAS beyond, section
    /// 3.10.1). The IKE SA's rekey is handled in `ike_rekey`. With
    /// additional key exchanges (RFC 9370) the pair waits for the peer's
    /// IKE_FOLLOWUP_KE requests (`followup.rs`).
    ///
    /// [`Config::max_child_sas`]: super::Config::max_child_sas
    fn create_child_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        message: &Message,
    ) -> (Vec<Payload>, Vec<Event>) {
        let p = Payloads(&message.payloads);
        let notify = |n| vec![Payload::Notify(Notify::empty(n))];
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
        let choice = p
            .sa()
            .and_then(|sa| proposal::select(&self.config.esp_proposals, &sa.proposals))
            .and_then(|sel| proposal::esp_choice(&sel.proposal).ok());
        let additional = choice
            .as_ref()
            .map(|c| c.additional.clone())
            .unwrap_or_default();
        // A rekey with additional key exchanges while ours of the same
        // pair is under way: the peer tries again later (followup.rs).
        if let Some(old) = old.filter(|_| !additional.is_empty()) {
            if st
                .request
                .as_ref()
                .is_some_and(|r| r.is_for(ChildTarget::Rekey(old)))
            {
                tracing::debug!(
                    peer = %super::logging::Peer(self.remote),
                    child = %Hex(old.0),
                    "peer's rekey with additional key exchanges collides with ours: TEMPORARY_FAILURE"
                );
                return (notify(NotifyType::TemporaryFailure), Vec::new());
            }
        }
        let result = (|| {
            let ni = p.nonce().ok_or(Notify::empty(NotifyType::InvalidSyntax))?;
            // PFS (RFC 7296 section 1.3.3): the KE payload must be of the
            // group of the proposal we choose; INVALID_KE_PAYLOAD names it.
            let group = choice
                .as_ref()
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
                    let (public, g_ir) = crypto::respond(g, &ke.data).map_err(|e| match e {
                        Error::InvalidPublicValue { .. } => {
                            Notify::empty(NotifyType::InvalidSyntax)
                        }
                        _ => Notify::empty(NotifyType::TemporaryFailure),
                    })?;
                    let ke = crate::message::KeyExchange {
                        group: g,
                        data: public,
                    };
                    (Some(ke), Some(g_ir))
                }
            };
            let nr = random_nonce(self.rng.as_mut())
                .map_err(|_| Notify::empty(NotifyType::TemporaryFailure))?;
            let g = g_ir.as_ref().map(|k| k.expose());
            let (mut payloads, event) = self
                .responder_child(false, &p, &st.sk, ni, &nr, g)
                .map_err(Notify::empty)?;
            payloads.push(Payload::Nonce(nr.clone()));
            if let Some(ke) = ke {
                payloads.push(Payload::KeyExchange(ke));
            }
            let Event::ChildSaUp { inbound, outbound } = event else {
                return Err(Notify::empty(NotifyType::TemporaryFailure));
            };
            Ok((payloads, ni.to_vec(), nr, inbound, outbound, g_ir))
        })();
        let (mut payloads, ni, nr, inbound, outbound, g_ir) = match result {
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
        // A rekey keeps the label of the Child SA it replaces.
        if let Some(old) = old {
            let want = st.child(old).and_then(|i| st.children[i].label.clone());
            if inbound.label != want {
                return (
                    notify(NotifyType::NoProposalChosen),
                    vec![Event::Failed {
                        notify: NotifyType::NoProposalChosen,
                        by_peer: false,
                    }],
                );
            }
        }
        if !additional.is_empty() {
            let keying = ChildKeying::new(
                (ni, nr),
                (inbound, outbound),
                false,
                KeSecrets::new(g_ir, &additional),
            );
            self.await_followups(
                now,
                st,
                old,
                Rekeying::Child(Box::new(keying)),
                &mut payloads,
            );
            return (payloads, Vec::new());
        }
        match self.conclude_peer_child(now, st, old, ni, nr, inbound, outbound) {
            Ok(events) => (payloads, events),
            Err(n) => (notify(n), Vec::new()),
        }
    }

    /// The peer's Child SA is agreed (in its CREATE_CHILD_SA, or in its
    /// last IKE_FOLLOWUP_KE): a new one, or the rekey of the pair `old`,
    /// which the peer deletes once it has our answer. Against a rekey of
    /// ours of the same pair (RFC 7296 section 2.8.1), which new pair
    /// stays is known when ours is answered. Fails with the notify to
    /// answer with if `old` went away meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conclude_peer_child(
        &mut self,
        now: Instant,
        st: &mut Established,
        old: Option<(u32, u32)>,
        ni: Vec<u8>,
        nr: Vec<u8>,
        inbound: ChildSaParams,
        outbound: ChildSaParams,
    ) -> Result<Vec<Event>, NotifyType> {
        let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        let Some(old) = old else {
            // A new Child SA. A rekey of ours proposes what it narrowed
            // to, ours first.
            st.children.push(Child::new(&inbound, &outbound, rekey_at));
            return Ok(vec![Event::ChildSaUp { inbound, outbound }]);
        };
        let Some(i) = st.child(old) else {
            return Err(NotifyType::ChildSaNotFound);
        };
        if matches!(&st.request, Some(Request::Rekey(r)) if r.target == ChildTarget::Rekey(old)) {
            // A collision: both sides rekey this Child SA.
            st.collision = Some(Collided {
                old,
                ni,
                nr,
                inbound,
                outbound,
            });
            return Ok(Vec::new());
        }
        st.retired.push(Retired {
            inbound: old.0,
            outbound: old.1,
            announce: true,
        });
        st.children[i].inbound = inbound.spi;
        st.children[i].outbound = outbound.spi;
        st.children[i]
            .key_exchanges
            .clone_from(&inbound.key_exchanges);
        st.children[i].rekey_at = rekey_at;
        st.unqueue_rekey(old.0);
        Ok(vec![Event::ChildSaRekeyed {
            old_inbound_spi: old.0,
            old_outbound_spi: old.1,
            inbound,
            outbound,
        }])
    }
}
