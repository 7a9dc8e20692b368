//! Child SAs after IKE_AUTH (RFC 7296 sections 1.3, 2.8, 2.8.1, 2.17):
//! CREATE_CHILD_SA to create more of them and to rekey them, ours and the
//! peer's; PFS and INVALID_KE_PAYLOAD; colliding rekeys, settled by the
//! nonces; and the queue of our requests on an established IKE SA, which
//! go one at a time (a window of 1). The peer's requests are answered in
//! `peer_child.rs`; a CREATE_CHILD_SA that rekeys the IKE SA itself goes
//! to `ike_rekey.rs`.

use std::time::{Duration, Instant};

use tunsec_esp::Direction;

use super::event::{ChildSaParams, Event};
use super::followup::{self, Continue};
use super::ike_rekey::{self, IkeNext};
use super::labels;
use super::logging::Hex;
use super::payloads::{Payloads, first_group, offers_group};
use super::random::{random_esp_spi, random_nonce};
use super::state::{
    Child, ChildKeying, ChildOffer, ChildTarget, Collided, Established, IkeSa, KeSecrets,
    MAX_KE_RETRIES, NewPair, Queued, RekeySent, Rekeying, Request, Retired, Role, State,
    rekey_time,
};
use crate::crypto::{self, ChildKeys};
use crate::error::{Error, Result};
use crate::message::{
    DhGroup, ExchangeType, Message, Notify, NotifyType, Payload, ProtocolId, TrafficSelector,
};
use crate::proposal::{self, EspChoice};

impl IkeSa {
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

    /// Rekeys only the Child SAs with `label` ([`super::Config::child_labels`]:
    /// one network's, with keys per network), as [`Self::rekey_child`]
    /// does all of them. Fails with [`Error::InvalidState`] unless the IKE
    /// SA is established with such a Child SA.
    pub fn rekey_child_labelled(&mut self, now: Instant, label: &[u8]) -> Result<()> {
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        let spis: Vec<u32> = st
            .children
            .iter()
            .filter(|c| c.label.as_deref() == Some(label))
            .map(|c| c.inbound)
            .collect();
        if spis.is_empty() {
            return Err(Error::InvalidState("no Child SA with that label"));
        }
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
    ///
    /// [`Config::additional_children`]: super::Config::additional_children
    pub fn create_child(&mut self, now: Instant, i: usize) -> Result<()> {
        if i >= self.config.additional_children.len() {
            return Err(Error::InvalidState("no such additional Child SA"));
        }
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        st.enqueue(Queued::CreateChild(i + 1));
        self.run_queue(now);
        Ok(())
    }

    /// The initiator of a fresh IKE SA asks for the additional Child SAs
    /// (RFC 7296 section 1.3.1) once IKE_AUTH is done.
    pub(super) fn queue_additional_children(&mut self, now: Instant) {
        let count = self.config.additional_children.len();
        let State::Established(st) = &mut self.state else {
            return;
        };
        if self.role != Role::Initiator {
            return;
        }
        // With a peer that does not know labels, labelled Child SAs of
        // the same selectors would all be the same: only those whose
        // selectors differ from every earlier one's are created (labels.rs).
        let children = self.config.children();
        for k in 1..=count {
            if self.peer_lacks_labels && children[..k].contains(&children[k]) {
                continue;
            }
            st.enqueue(Queued::CreateChild(k));
        }
        self.run_queue(now);
    }

    /// The responder of an IKE SA with [`Config::create_missing_children`]
    /// creates the configured Child SAs that no Child SA covers: those
    /// the initiator did not create because it creates only its own (a
    /// strongSwan with `auto=route` creates the Child SA its traffic
    /// needs).
    ///
    /// [`Config::create_missing_children`]: super::Config::create_missing_children
    pub(super) fn queue_missing_children(&mut self, now: Instant) {
        if !self.config.child_labels.is_empty() {
            // Labelled Child SAs are each side's own to create.
            return;
        }
        let children = self.config.children();
        let State::Established(st) = &mut self.state else {
            return;
        };
        for (k, (ours, theirs)) in children.iter().enumerate() {
            let covered = st.children.iter().any(|c| {
                c.ts.as_ref().is_some_and(|(l, r)| {
                    super::ts::is_subset(ours, l) && super::ts::is_subset(theirs, r)
                })
            });
            if !covered {
                tracing::debug!(
                    peer = %super::logging::Peer(self.remote),
                    child = k,
                    "IKE responder creates the configured Child SA the initiator did not"
                );
                st.enqueue(Queued::CreateChild(k));
            }
        }
        self.run_queue(now);
    }

    /// Sends the next queued request, if none is outstanding.
    pub(super) fn run_queue(&mut self, now: Instant) {
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
            // While the peer's additional key exchanges are under way
            // (followup.rs), what waits for them is looked at again each
            // second (or once they are done).
            if followup::waits(st, next) {
                let again = Some(now + Duration::from_secs(1));
                match next {
                    Queued::Rekey(spi) => {
                        if let Some(c) = st.children.iter_mut().find(|c| c.inbound == spi) {
                            c.rekey_at = again;
                        }
                    }
                    Queued::IkeRekey => st.ike_rekey_at = again,
                    other => {
                        st.queue.push_front(other);
                        return;
                    }
                }
                continue;
            }
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
            ChildTarget::Create(k) => match self.config.child(k) {
                Some(ts) => ts,
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
        // A rekey keeps the Child SA's label, which the answer must
        // repeat; a new Child SA has its configured one (labels.rs).
        let (label, required) = match target {
            ChildTarget::Rekey(old) => {
                let label = st.child(old).and_then(|i| st.children[i].label.clone());
                let required = label.is_some();
                (label, required)
            }
            ChildTarget::Create(_) if self.peer_lacks_labels => (None, false),
            ChildTarget::Create(k) => (c.child_labels.get(k).cloned(), false),
        };
        let offer =
            ChildOffer::new(esp_spi, &c.esp_proposals, tsi, tsr).with_label(label, required);
        let mut payloads = Vec::new();
        if let Some(label) = &offer.label {
            payloads.push(labels::notify(label));
        }
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
            payloads.push(Payload::Notify(Notify::empty(NotifyType::UseTransportMode)));
        }
        payloads.push(offer.sa());
        payloads.push(Payload::Nonce(ni.clone()));
        if let Some(kex) = &kex {
            payloads.push(Payload::KeyExchange(crate::message::KeyExchange {
                group: kex.group(),
                data: kex.public_value().to_vec(),
            }));
        }
        payloads.push(Payload::TsInitiator(offer.tsi.clone()));
        payloads.push(Payload::TsResponder(offer.tsr.clone()));
        let what = match target {
            ChildTarget::Rekey((inbound, _)) => format!("rekey of {}", Hex(inbound)),
            ChildTarget::Create(k) => format!("configured Child SA {k}"),
        };
        offer.log(self.remote, &what);
        let rekey = RekeySent {
            target,
            ni,
            kex,
            offer,
            ke_retries,
        };
        let request = Some(Request::Rekey(Box::new(rekey)));
        self.send_sealed_request(now, ExchangeType::CreateChildSa, &payloads, request)
    }

    /// The answer to our CREATE_CHILD_SA, IKE_FOLLOWUP_KE or child
    /// DELETE request.
    pub(super) fn on_established_response(&mut self, now: Instant, message: &Message) {
        let State::Established(mut st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let mut next = None;
        let mut ike_retry = None;
        match st.request.take() {
            Some(Request::DeleteChild(r)) if r.announce => {
                self.events.push_back(Event::ChildSaDown {
                    inbound_spi: r.inbound,
                    outbound_spi: r.outbound,
                });
            }
            Some(Request::Rekey(rekey)) => {
                next = self.on_rekey_response(now, &mut st, *rekey, message);
            }
            Some(Request::Followup(sent)) => {
                next = self
                    .on_followup_response(now, &mut st, *sent, message)
                    .map(|c| Next::Followup(Box::new(c)));
            }
            Some(Request::IkeRekey(rekey)) => {
                ike_retry = self.on_ike_rekey_response(now, &mut st, *rekey, message);
            }
            _ => {}
        }
        self.state = State::Established(st);
        let sent = match next {
            Some(Next::Retry(target, group, retries)) => {
                self.start_rekey(now, target, Some(group), retries)
            }
            Some(Next::Followup(next)) => self.send_followup(now, *next),
            None => Ok(()),
        };
        if let Err(e) = sent {
            self.local_error(e);
        }
        let sent = match ike_retry {
            Some(IkeNext::Retry(group, retries)) => self.start_ike_rekey(now, Some(group), retries),
            Some(IkeNext::Followup(next)) => self.send_followup(now, *next),
            None => Ok(()),
        };
        if let Err(e) = sent {
            self.local_error(e);
        }
    }

    fn on_rekey_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        mut rekey: RekeySent,
        message: &Message,
    ) -> Option<Next> {
        let p = Payloads(&message.payloads);
        let old = match rekey.target {
            ChildTarget::Rekey(old) => old,
            ChildTarget::Create(_) => return self.on_create_response(now, st, rekey, &p),
        };
        if st.child(old).is_none() {
            // The Child SA was replaced meanwhile (the peer's colliding
            // rekey won and its DELETE of the old pair came first): a pair
            // we got now is redundant, and we delete it. One that needs
            // IKE_FOLLOWUP_KE is not up at the peer yet: we just stop.
            if let Some(nr) = p.nonce().filter(|_| p.error().is_none()) {
                if let Ok(agreed) = self.rekey_initiator_child(&p, st, &mut rekey, nr) {
                    if agreed.additional.is_empty() {
                        st.queue.push_back(Queued::DeleteChild(Retired {
                            inbound: agreed.inbound.spi,
                            outbound: agreed.outbound.spi,
                            announce: false,
                        }));
                    }
                }
            }
            return None;
        }
        let collided = st.collision.as_ref().is_some_and(|c| c.old == old);
        if let Some((target, group, retries)) = self.ke_retry(&p, &rekey).filter(|_| !collided) {
            return Some(Next::Retry(target, group, retries));
        }
        let collision = st.collision.take_if(|c| c.old == old);
        let ours = match p.nonce() {
            Some(nr) if p.error().is_none() => {
                let nr = nr.to_vec();
                self.rekey_initiator_child(&p, st, &mut rekey, &nr)
                    .map(|agreed| (nr, agreed))
            }
            _ => Err(Box::new(Event::Failed {
                notify: p.error().unwrap_or(NotifyType::InvalidSyntax),
                by_peer: p.error().is_some(),
            })),
        };
        let ours = match ours {
            Ok((nr, agreed)) if !agreed.additional.is_empty() => {
                // RFC 9370 section 2.2.2: the pair needs the additional key
                // exchanges first. Against a colliding rekey of the peer
                // that is done already, ours gives way.
                match (collision.is_none(), followup::link_of(&p)) {
                    (true, Some(link)) => {
                        return Some(agreed.followup(rekey.target, (rekey.ni, nr), link));
                    }
                    (collision_free, _) => Err(Box::new(Event::Failed {
                        notify: if collision_free {
                            NotifyType::InvalidSyntax
                        } else {
                            NotifyType::TemporaryFailure
                        },
                        by_peer: false,
                    })),
                }
            }
            Ok((nr, agreed)) => Ok(NewPair {
                ni: rekey.ni,
                nr,
                inbound: agreed.inbound,
                outbound: agreed.outbound,
            }),
            Err(e) => Err(e),
        };
        self.conclude_rekey(now, st, old, ours, collision);
        None
    }

    /// Our rekey of the pair `old` is answered (in CREATE_CHILD_SA, or in
    /// the last IKE_FOLLOWUP_KE): the new pair replaces it, or, against
    /// the peer's colliding rekey (RFC 7296 section 2.8.1), the pair made
    /// with the highest nonces does; a failed rekey leaves the old pair
    /// to be tried again later.
    pub(super) fn conclude_rekey(
        &mut self,
        now: Instant,
        st: &mut Established,
        old: (u32, u32),
        ours: Result<NewPair, Box<Event>>,
        collision: Option<Collided>,
    ) {
        let Some(index) = st.child(old) else {
            // Replaced meanwhile: a pair we got now is redundant.
            if let Ok(pair) = ours {
                st.queue.push_back(Queued::DeleteChild(Retired {
                    inbound: pair.inbound.spi,
                    outbound: pair.outbound.spi,
                    announce: false,
                }));
            }
            return;
        };
        let (inbound, outbound) = match (ours, collision) {
            (
                Ok(NewPair {
                    ni,
                    nr,
                    inbound,
                    outbound,
                }),
                Some(c),
            ) => {
                // RFC 7296 section 2.8.1: the SA created with the lowest of
                // the four nonces is closed by the endpoint that created it.
                let ours_lowest = ni.min(nr) < c.ni.clone().min(c.nr.clone());
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
            (
                Ok(NewPair {
                    inbound, outbound, ..
                }),
                None,
            ) => {
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
                // The old Child SA stays; try again later, after a random
                // pause if the peer was busy (rekeying it too, say).
                let busy = matches!(
                    *event,
                    Event::Failed {
                        notify: NotifyType::TemporaryFailure,
                        ..
                    }
                );
                self.events.push_back(*event);
                let pause = if busy {
                    Some(ike_rekey::retry_pause(self))
                } else {
                    self.config
                        .child_lifetime
                        .map(|l| (l / 20).max(Duration::from_secs(1)))
                };
                st.children[index].rekey_at = pause.map(|p| now + p);
                return;
            }
        };
        let child = &mut st.children[index];
        child.inbound = inbound.spi;
        child.outbound = outbound.spi;
        child.key_exchanges.clone_from(&inbound.key_exchanges);
        child.rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        st.unqueue_rekey(old.0);
        self.events.push_back(Event::ChildSaRekeyed {
            old_inbound_spi: old.0,
            old_outbound_spi: old.1,
            inbound,
            outbound,
        });
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

    /// The answer to our CREATE_CHILD_SA request for a new Child SA (RFC
    /// 7296 section 1.3.1): it is up, with the selectors the peer narrowed
    /// to (which a rekey of ours proposes again), or refused with an error
    /// notify, which leaves the IKE SA and the other Child SAs as they
    /// are; or it goes on in IKE_FOLLOWUP_KE.
    fn on_create_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        mut rekey: RekeySent,
        p: &Payloads<'_>,
    ) -> Option<Next> {
        if let Some((target, group, retries)) = self.ke_retry(p, &rekey) {
            return Some(Next::Retry(target, group, retries));
        }
        let made = match p.nonce() {
            Some(nr) if p.error().is_none() => {
                let nr = nr.to_vec();
                self.rekey_initiator_child(p, st, &mut rekey, &nr)
                    .map(|agreed| (nr, agreed))
            }
            _ => Err(Box::new(Event::Failed {
                notify: p.error().unwrap_or(NotifyType::InvalidSyntax),
                by_peer: p.error().is_some(),
            })),
        };
        let made = match made {
            Ok((nr, agreed)) if !agreed.additional.is_empty() => match followup::link_of(p) {
                Some(link) => return Some(agreed.followup(rekey.target, (rekey.ni, nr), link)),
                None => Err(Box::new(Event::Failed {
                    notify: NotifyType::InvalidSyntax,
                    by_peer: false,
                })),
            },
            Ok((_, agreed)) => Ok((agreed.inbound, agreed.outbound)),
            Err(e) => Err(e),
        };
        self.conclude_create(now, st, made);
        None
    }

    /// Our new Child SA is answered (in CREATE_CHILD_SA, or in the last
    /// IKE_FOLLOWUP_KE): up, or refused.
    pub(super) fn conclude_create(
        &mut self,
        now: Instant,
        st: &mut Established,
        made: Result<(ChildSaParams, ChildSaParams), Box<Event>>,
    ) {
        match made {
            Ok((inbound, outbound)) => {
                let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
                st.children.push(Child::new(&inbound, &outbound, rekey_at));
                self.events
                    .push_back(Event::ChildSaUp { inbound, outbound });
            }
            Err(event) => self.events.push_back(*event),
        }
    }

    /// The new pair from the responder's CREATE_CHILD_SA answer, with the
    /// PFS shared secret if a group was chosen (RFC 7296 section 2.17),
    /// and the additional key exchanges of the chosen proposal (RFC 9370),
    /// which the pair's keys must wait for.
    fn rekey_initiator_child(
        &self,
        p: &Payloads<'_>,
        st: &Established,
        rekey: &mut RekeySent,
        nr: &[u8],
    ) -> Result<Agreed, Box<Event>> {
        let failed = |notify| {
            Box::new(Event::Failed {
                notify,
                by_peer: false,
            })
        };
        let choice = p
            .sa()
            .and_then(|sa| sa.proposals.first())
            .and_then(|c| proposal::esp_choice(c).ok());
        let group = choice
            .as_ref()
            .and_then(|c| c.group)
            .filter(|g| *g != DhGroup::None);
        let RekeySent { ni, kex, offer, .. } = rekey;
        let g_ir = match (group, kex.take(), p.ke()) {
            (None, _, _) => None,
            (Some(g), Some(kex), Some(ke)) if kex.group() == g && ke.group == g => Some(
                kex.complete(&ke.data)
                    .map_err(|_| failed(NotifyType::InvalidSyntax))?,
            ),
            _ => return Err(failed(NotifyType::InvalidKePayload)),
        };
        let event =
            self.initiator_child(p, &st.sk, ni, nr, offer, g_ir.as_ref().map(|k| k.expose()))?;
        match event {
            Event::ChildSaUp { inbound, outbound } => Ok(Agreed {
                inbound,
                outbound,
                first: g_ir,
                additional: choice.map(|c| c.additional).unwrap_or_default(),
            }),
            other => Err(Box::new(other)),
        }
    }
}

impl IkeSa {
    /// [`Event::ChildSaUp`] for a Child SA that an exchange we initiated
    /// (`initiated`) or answered has agreed on: `spis` are ours (inbound)
    /// and the peer's (outbound), `keys` are split by the exchange's roles
    /// (RFC 7296 section 2.17), and `ts` are our side's selectors and the
    /// peer's.
    pub(super) fn child_sa_up(
        &self,
        initiated: bool,
        choice: &EspChoice,
        transport: bool,
        spis: (u32, u32),
        keys: ChildKeys,
        ts: (&[TrafficSelector], &[TrafficSelector]),
    ) -> Event {
        let (inbound_keys, outbound_keys) = if initiated {
            (keys.responder_to_initiator, keys.initiator_to_responder)
        } else {
            (keys.initiator_to_responder, keys.responder_to_initiator)
        };
        let params = |direction, spi, keys| ChildSaParams {
            direction,
            spi,
            suite: choice.suite,
            esn: choice.esn,
            transport,
            udp_encap: self.nat.is_some_and(|n| n.udp_encap()),
            keys,
            key_exchanges: choice
                .group
                .iter()
                .chain(&choice.additional)
                .copied()
                .collect(),
            label: None,
            local_ts: ts.0.to_vec(),
            remote_ts: ts.1.to_vec(),
        };
        Event::ChildSaUp {
            inbound: params(Direction::Inbound, spis.0, inbound_keys),
            outbound: params(Direction::Outbound, spis.1, outbound_keys),
        }
    }
}

/// A pair the responder's CREATE_CHILD_SA answer agreed on.
struct Agreed {
    inbound: ChildSaParams,
    outbound: ChildSaParams,
    /// SK(0): the shared secret of the KE payloads, if there were any.
    first: Option<tunsec_esp::Key>,
    /// The additional key exchanges of the chosen proposal (RFC 9370),
    /// still to run.
    additional: Vec<DhGroup>,
}

impl Agreed {
    /// On to the IKE_FOLLOWUP_KE exchanges of our CREATE_CHILD_SA for
    /// `target` (its nonces), with the responder's `link`.
    fn followup(self, target: ChildTarget, nonces: (Vec<u8>, Vec<u8>), link: Vec<u8>) -> Next {
        let keying = ChildKeying::new(
            nonces,
            (self.inbound, self.outbound),
            true,
            KeSecrets::new(self.first, &self.additional),
        );
        Next::Followup(Box::new(Continue {
            target: Some(target),
            rekeying: Rekeying::Child(Box::new(keying)),
            link,
        }))
    }
}

/// What an answer to a Child SA request of ours leads to.
enum Next {
    /// The request again with the group the peer asked for
    /// (INVALID_KE_PAYLOAD), and how many times that happened.
    Retry(ChildTarget, DhGroup, u8),
    /// The next IKE_FOLLOWUP_KE request.
    Followup(Box<Continue>),
}
