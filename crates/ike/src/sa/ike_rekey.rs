//! Rekeying the IKE SA itself (RFC 7296 sections 1.3.2 and 2.18).
//!
//! ```text
//! Initiator                                  Responder
//! HDR, SK {SA, Ni, KEi}               -->
//!                                     <--    HDR, SK {SA, Nr, KEr}
//! ```
//!
//! > New initiator and responder SPIs are supplied in the SPI fields in
//! > the Proposal structures inside the Security Association (SA)
//! > payloads [...] The TS payloads are omitted when rekeying an IKE SA.
//! > SKEYSEED for the new IKE SA is computed using SK_d from the existing
//! > IKE SA as follows: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
//!
//! The new IKE SA starts its message IDs at zero, inherits the Child SAs,
//! and the peer that started the rekey is its original initiator. The
//! old IKE SA lingers as [`Retiring`]: the rekey's initiator deletes it
//! with an INFORMATIONAL DELETE (sealed with the old keys, on the old
//! SPIs); both sides answer what still arrives on it (a retransmitted
//! request gets its cached response) until it is deleted or times out.
//!
//! One exchange at a time: a side with a request of its own outstanding
//! answers a rekey of the IKE SA with TEMPORARY_FAILURE (RFC 7296 section
//! 2.25: "the responder is in the middle of an operation"), and the
//! initiator tries again after a random pause. So simultaneous rekeys of
//! the IKE SA never both succeed, and no request of ours is left on an
//! IKE SA that is going away.

use std::time::{Duration, Instant};

use super::event::{Event, Transmit};
use super::exchange::{self, Timer};
use super::followup::{self, Continue};
use super::logging;
use super::payloads::{Payloads, offers_group};
use super::random::{random_ike_spi, random_nonce, random_u64};
use super::state::{
    Discard, Established, IkeKeying, IkeRekeySent, IkeSa, KeSecrets, MAX_KE_RETRIES, NewIkeSa,
    Outstanding, Queued, Received, Rekeying, Request, Retiring, Role, Sk, State, header,
    rekey_time,
};
use crate::crypto::{self, IkeKeys, IkeSuite, SkCipher, skeyseed_rekey};
use crate::error::{Error, Result};
use crate::message::{
    Delete, DhGroup, ExchangeType, Header, Message, Notify, NotifyType, Payload, ProtocolId,
    SaPayload,
};
use crate::proposal;

/// How long a replaced IKE SA waits for its DELETE exchange before it is
/// dropped without one.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(20);

impl Retiring {
    fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> Header {
        header(self.spis(), self.role, exchange, response, message_id)
    }

    /// The SPIs of the old IKE SA (initiator's, responder's).
    fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// Our own SPI of the old IKE SA.
    pub(super) fn local_spi(&self) -> u64 {
        self.role.own_spi(self.spis())
    }

    pub(super) fn timeout(&self) -> Instant {
        self.outstanding
            .as_ref()
            .map_or(self.deadline, |o| o.deadline.min(self.deadline))
    }
}

/// Whether a CREATE_CHILD_SA request rekeys the IKE SA: an SA payload
/// whose proposals are for IKE (and no REKEY_SA, which names a Child SA).
pub(super) fn is_ike_rekey(message: &Message) -> bool {
    let p = Payloads(&message.payloads);
    p.notify(NotifyType::RekeySa).is_none()
        && p.sa()
            .is_some_and(|sa| sa.proposals.iter().any(|p| p.protocol == ProtocolId::Ike))
}

/// A random pause of 1 to 3 s before trying a refused rekey again.
pub(super) fn retry_pause(sa: &mut IkeSa) -> Duration {
    let jitter = random_u64(sa.rng.as_mut()).unwrap_or(0) % 2000;
    Duration::from_millis(1000 + jitter)
}

impl IkeSa {
    /// Rekeys the IKE SA (RFC 7296 section 2.18): a CREATE_CHILD_SA
    /// request with the IKE proposals, our new SPI, a nonce and a KE
    /// payload. When it is answered the IKE SA carries on under new SPIs
    /// and keys with the same Child SAs ([`Event::IkeSaRekeyed`]), and the
    /// old one is deleted. If a request of ours is outstanding, the rekey
    /// waits for its answer.
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established.
    pub fn rekey_ike(&mut self, now: Instant) -> Result<()> {
        let State::Established(st) = &mut self.state else {
            return Err(Error::InvalidState("not established"));
        };
        st.enqueue(Queued::IkeRekey);
        self.run_queue(now);
        Ok(())
    }

    /// Builds and sends the CREATE_CHILD_SA request that rekeys the IKE
    /// SA: SK {SA, Ni, KEi} (RFC 7296 section 1.3.2). The KE payload is
    /// for `group`, or else the current IKE SA's.
    pub(super) fn start_ike_rekey(
        &mut self,
        now: Instant,
        group: Option<DhGroup>,
        ke_retries: u8,
    ) -> Result<()> {
        let State::Established(st) = &self.state else {
            return Err(Error::InvalidState("not established"));
        };
        let group = group.unwrap_or(st.sk.suite.group);
        let spi_i = random_ike_spi(self.rng.as_mut())?;
        let ni = random_nonce(self.rng.as_mut())?;
        let kex = crypto::start(group)?;
        let offer = proposal::with_spi(&self.config.ike_proposals, &spi_i.to_be_bytes());
        let payloads = [
            Payload::Sa(SaPayload {
                proposals: offer.clone(),
            }),
            Payload::Nonce(ni.clone()),
            Payload::KeyExchange(crate::message::KeyExchange {
                group,
                data: kex.public_value().to_vec(),
            }),
        ];
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            proposals = %logging::Proposals(&offer),
            spi_i = %logging::Hex(spi_i),
            "IKE proposals offered (IKE SA rekey)"
        );
        let request = Request::IkeRekey(Box::new(IkeRekeySent {
            spi_i,
            ni,
            kex,
            offer,
            ke_retries,
        }));
        self.send_sealed_request(now, ExchangeType::CreateChildSa, &payloads, Some(request))
    }

    /// The answer to our rekey of the IKE SA: on success the switch to
    /// the new IKE SA and the DELETE of the old one, or first the
    /// IKE_FOLLOWUP_KE exchanges of the chosen proposal's additional key
    /// exchanges (RFC 9370 section 2.2.2, `followup.rs`); on
    /// TEMPORARY_FAILURE (the peer is busy, or rekeying too) another try
    /// after a random pause; on INVALID_KE_PAYLOAD another try with the
    /// group it names.
    pub(super) fn on_ike_rekey_response(
        &mut self,
        now: Instant,
        st: &mut Established,
        rekey: IkeRekeySent,
        message: &Message,
    ) -> Option<IkeNext> {
        let p = Payloads(&message.payloads);
        if let Some(n) = p.notify(NotifyType::InvalidKePayload) {
            let group = <[u8; 2]>::try_from(n.data.as_slice())
                .map(|b| DhGroup::from(u16::from_be_bytes(b)))
                .ok()
                .filter(|g| {
                    *g != rekey.kex.group()
                        && rekey.ke_retries < MAX_KE_RETRIES
                        && offers_group(&self.config.ike_proposals, *g)
                });
            if let Some(group) = group {
                return Some(IkeNext::Retry(group, rekey.ke_retries + 1));
            }
        }
        let failed = |notify, by_peer| Box::new(Event::Failed { notify, by_peer });
        let result = (|| {
            if let Some(notify) = p.error() {
                return Err(failed(notify, true));
            }
            let bad = || failed(NotifyType::InvalidSyntax, false);
            let (Some(sa), Some(nr), Some(ke)) = (p.sa(), p.nonce(), p.ke()) else {
                return Err(bad());
            };
            let [chosen] = sa.proposals.as_slice() else {
                return Err(failed(NotifyType::NoProposalChosen, false));
            };
            let mut check = chosen.clone();
            check.spi = rekey.spi_i.to_be_bytes().to_vec();
            let suite = proposal::check_chosen(&rekey.offer, &check)
                .and_then(|_| IkeSuite::from_proposal(chosen))
                .map_err(|_| failed(NotifyType::NoProposalChosen, false))?;
            let spi_r = <[u8; 8]>::try_from(chosen.spi.as_slice())
                .map(u64::from_be_bytes)
                .ok()
                .filter(|s| *s != 0)
                .ok_or_else(bad)?;
            if suite.group != rekey.kex.group() || ke.group != suite.group {
                return Err(failed(NotifyType::InvalidKePayload, false));
            }
            let g_ir = rekey.kex.complete(&ke.data).map_err(|_| bad())?;
            let additional: Vec<DhGroup> = suite.additional_key_exchanges().collect();
            let keying = IkeKeying {
                spi_i: rekey.spi_i,
                spi_r,
                ni: rekey.ni,
                nr: nr.to_vec(),
                suite,
                initiated: true,
                secrets: KeSecrets::new(Some(g_ir), &additional),
            };
            if additional.is_empty() {
                return Ok(Ok(keying));
            }
            // RFC 9370 section 2.2.2: the additional key exchanges first.
            let link = followup::link_of(&p).ok_or_else(bad)?;
            Ok(Err(Continue {
                target: None,
                rekeying: Rekeying::Ike(keying),
                link,
            }))
        })();
        let result = match result {
            Ok(Err(next)) => return Some(IkeNext::Followup(Box::new(next))),
            Ok(Ok(keying)) => keying
                .finish(&st.sk)
                .map_err(|e| Box::new(Event::LocalError(e))),
            Err(event) => Err(event),
        };
        self.conclude_ike_rekey(now, st, result);
        None
    }

    /// Our rekey of the IKE SA is answered (in CREATE_CHILD_SA, or in the
    /// last IKE_FOLLOWUP_KE): the switch to the new IKE SA and the DELETE
    /// of the old one; or, failed, the IKE SA stands and is rekeyed again
    /// a little later.
    pub(super) fn conclude_ike_rekey(
        &mut self,
        now: Instant,
        st: &mut Established,
        result: core::result::Result<NewIkeSa, Box<Event>>,
    ) {
        match result {
            Ok(new) => {
                self.switch_ike_sa(now, st, new.spi_i, new.spi_r, Role::Initiator, new.sk);
                if let Err(e) = self.send_retiring_delete(now) {
                    self.events.push_back(Event::LocalError(e));
                }
            }
            Err(event) => {
                let busy = matches!(
                    *event,
                    Event::Failed {
                        notify: NotifyType::TemporaryFailure,
                        ..
                    }
                );
                if !busy {
                    self.events.push_back(*event);
                }
                st.ike_rekey_at = Some(now + retry_pause(self));
            }
        }
    }

    /// Answers the peer's rekey of the IKE SA; the switch to the new one
    /// follows the answer (the peer deletes the old one), or the last of
    /// its IKE_FOLLOWUP_KE exchanges (`followup.rs`).
    pub(super) fn on_ike_rekey_request(
        &mut self,
        now: Instant,
        st: &mut Established,
        message: &Message,
    ) -> (Vec<Payload>, Vec<Event>, Option<NewIkeSa>) {
        let busy = self.outstanding.is_some() || st.deleting || self.retiring.is_some();
        let result = if busy {
            Err(Notify::empty(NotifyType::TemporaryFailure))
        } else {
            self.ike_rekey_answer(st, message)
        };
        let (mut payloads, keying) = match result {
            Ok(r) => r,
            Err(n) => return (vec![Payload::Notify(n)], Vec::new(), None),
        };
        if !keying.secrets.remaining.is_empty() {
            self.await_followups(now, st, None, Rekeying::Ike(keying), &mut payloads);
            return (payloads, Vec::new(), None);
        }
        match keying.finish(&st.sk) {
            Ok(new) => (payloads, Vec::new(), Some(new)),
            Err(_) => (
                vec![Payload::Notify(Notify::empty(NotifyType::TemporaryFailure))],
                Vec::new(),
                None,
            ),
        }
    }

    /// The answer's payloads and the new IKE SA as agreed (its keys still
    /// to derive); or the notify that refuses the rekey.
    fn ike_rekey_answer(
        &mut self,
        st: &Established,
        message: &Message,
    ) -> core::result::Result<(Vec<Payload>, IkeKeying), Notify> {
        let _ = st;
        let p = Payloads(&message.payloads);
        let syntax = || Notify::empty(NotifyType::InvalidSyntax);
        let (Some(sa), Some(ni), Some(ke)) = (p.sa(), p.nonce(), p.ke()) else {
            return Err(syntax());
        };
        let selected = proposal::select(&self.config.ike_proposals, &sa.proposals);
        tracing::debug!(
            peer = %logging::Peer(self.remote),
            offered = %logging::Proposals(&sa.proposals),
            chosen = %selected.as_ref().map_or_else(
                || "none: NO_PROPOSAL_CHOSEN".to_owned(),
                |c| proposal::to_strongswan(&c.proposal)
            ),
            "IKE proposal chosen (IKE SA rekey)"
        );
        let selected = selected.ok_or(Notify::empty(NotifyType::NoProposalChosen))?;
        let suite = IkeSuite::from_proposal(&selected.proposal)
            .map_err(|_| Notify::empty(NotifyType::NoProposalChosen))?;
        let spi_i = <[u8; 8]>::try_from(selected.proposal.spi.as_slice())
            .map(u64::from_be_bytes)
            .ok()
            .filter(|s| *s != 0)
            .ok_or_else(syntax)?;
        // RFC 7296 section 1.3.2: KEi must be of the chosen group, or
        // INVALID_KE_PAYLOAD names the one we want.
        if ke.group != suite.group {
            return Err(Notify::new(
                NotifyType::InvalidKePayload,
                suite.group.value().to_be_bytes().to_vec(),
            ));
        }
        let temporary = |_| Notify::empty(NotifyType::TemporaryFailure);
        let (public, g_ir) = crypto::respond(suite.group, &ke.data).map_err(|e| match e {
            Error::InvalidPublicValue { .. } => syntax(),
            _ => Notify::empty(NotifyType::TemporaryFailure),
        })?;
        let spi_r = random_ike_spi(self.rng.as_mut()).map_err(temporary)?;
        let nr = random_nonce(self.rng.as_mut()).map_err(temporary)?;
        let mut chosen = selected.proposal;
        chosen.spi = spi_r.to_be_bytes().to_vec();
        let payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen],
            }),
            Payload::Nonce(nr.clone()),
            Payload::KeyExchange(crate::message::KeyExchange {
                group: suite.group,
                data: public,
            }),
        ];
        let additional: Vec<DhGroup> = suite.additional_key_exchanges().collect();
        let keying = IkeKeying {
            spi_i,
            spi_r,
            ni: ni.to_vec(),
            nr,
            suite,
            initiated: false,
            secrets: KeSecrets::new(Some(g_ir), &additional),
        };
        Ok((payloads, keying))
    }

    /// Moves to the new IKE SA: new SPIs, keys and role, message IDs from
    /// zero; the old one becomes [`Retiring`].
    pub(super) fn switch_ike_sa(
        &mut self,
        now: Instant,
        st: &mut Established,
        spi_i: u64,
        spi_r: u64,
        role: Role,
        sk: Sk,
    ) {
        let old_sk = core::mem::replace(&mut st.sk, sk);
        let old = Retiring {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            role: self.role,
            sk: old_sk,
            outstanding: self.outstanding.take(),
            last_response: self.last_response.take(),
            peer_next_id: self.peer_next_id,
            next_request_id: self.next_request_id,
            deadline: now + RETIRE_TIMEOUT,
        };
        self.events.push_back(Event::IkeSaRekeyed {
            old_spis: (old.spi_i, old.spi_r),
            spis: (spi_i, spi_r),
        });
        self.spi_i = spi_i;
        self.spi_r = spi_r;
        self.role = role;
        self.peer_next_id = 0;
        self.next_request_id = 0;
        self.retiring = Some(Box::new(old));
        // Fragments opened with the old keys belong to the old IKE SA.
        self.reassembly = Default::default();
        self.established_at = Some(now);
        st.ike_rekey_at = rekey_time(self.config.ike_lifetime, self.rng.as_mut(), now);
    }

    /// Sends the DELETE of the old IKE SA, on it (RFC 7296 section 2.18).
    fn send_retiring_delete(&mut self, now: Instant) -> Result<()> {
        let Some(r) = self.retiring.as_mut() else {
            return Ok(());
        };
        let id = r.next_request_id;
        let header = r.header(ExchangeType::Informational, false, id);
        let payloads = [Payload::Delete(Delete::ike())];
        let bytes = r.sk.outbound.seal(&header, &payloads)?;
        logging::message(logging::Direction::Sent, self.remote, &header, &payloads, 1);
        r.next_request_id = id.wrapping_add(1);
        r.outstanding = Some(Outstanding::new(
            now,
            ExchangeType::Informational,
            id,
            vec![bytes.clone()],
        ));
        self.transmit(bytes);
        Ok(())
    }

    /// Whether a header names the retiring IKE SA.
    pub(super) fn is_for_retiring(&self, header: &Header) -> bool {
        self.retiring
            .as_ref()
            .is_some_and(|r| header.initiator_spi == r.spi_i && header.responder_spi == r.spi_r)
    }

    /// A message on the retiring IKE SA: the answer to our DELETE, the
    /// peer's DELETE, or anything else the peer still sends on it (a
    /// retransmitted request gets its cached answer; a liveness check an
    /// empty one; a new exchange TEMPORARY_FAILURE).
    pub(super) fn handle_retiring(
        &mut self,
        msg: Received<'_>,
    ) -> core::result::Result<(), Discard> {
        let (now, remote, header, bytes) = (msg.now, msg.remote, &msg.header, msg.bytes);
        let Some(r) = self.retiring.as_mut() else {
            return Err(Discard::Unexpected);
        };
        if header.initiator != (r.role == Role::Responder) {
            return Err(Discard::Unexpected);
        }
        let open = |r: &Retiring| {
            let message = r.sk.inbound.open(bytes).map_err(exchange::discard)?;
            msg.log(&message.payloads);
            Ok(message)
        };
        if header.response {
            let Some(out) = &r.outstanding else {
                return Err(Discard::Unexpected);
            };
            if header.message_id != out.message_id {
                return Err(Discard::WrongMessageId);
            }
            open(r)?;
            // The old IKE SA is gone on both sides.
            self.retiring = None;
            return Ok(());
        }
        if let Some((id, response)) = &r.last_response {
            if header.message_id == *id {
                let response = response.clone();
                self.stats.cached_responses += 1;
                for bytes in response {
                    self.transmits.push_back(Transmit { dst: remote, bytes });
                }
                return Ok(());
            }
        }
        if header.message_id != r.peer_next_id {
            return Err(Discard::WrongMessageId);
        }
        let message = open(r)?;
        let reply = match header.exchange_type {
            ExchangeType::Informational => Vec::new(),
            _ => vec![Payload::Notify(Notify::empty(NotifyType::TemporaryFailure))],
        };
        let deleted = message
            .payloads
            .iter()
            .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::Ike));
        let response = r.header(header.exchange_type, true, header.message_id);
        let sealed =
            r.sk.outbound
                .seal(&response, &reply)
                .map_err(|_| Discard::Malformed)?;
        logging::message(logging::Direction::Sent, Some(remote), &response, &reply, 1);
        r.peer_next_id = header.message_id.wrapping_add(1);
        r.last_response = Some((header.message_id, vec![sealed.clone()]));
        if deleted {
            // Keep answering a retransmitted DELETE for a little while.
            r.deadline = r.deadline.min(now + Duration::from_secs(2));
        }
        self.transmits.push_back(Transmit {
            dst: remote,
            bytes: sealed,
        });
        Ok(())
    }

    /// Retransmits our DELETE of the retiring IKE SA, or drops it when its
    /// time is up.
    pub(super) fn retiring_timeout(&mut self, now: Instant) {
        let Some(r) = self.retiring.as_mut() else {
            return;
        };
        if now >= r.deadline {
            self.retiring = None;
            return;
        }
        let Some(out) = r.outstanding.as_mut() else {
            return;
        };
        match out.timer(now) {
            Timer::Running => {}
            // No answer: the old IKE SA simply goes.
            Timer::GiveUp => self.retiring = None,
            Timer::Retransmit(bytes) => self.retransmit(bytes),
        }
    }
}

impl IkeKeying {
    /// The new IKE SA's keys (RFC 7296 section 2.18, RFC 9370 section
    /// 2.2.2): `SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ...
    /// | SK(n))` under the old IKE SA's prf, then SK_* from it with the new
    /// SPIs, as in IKE_SA_INIT.
    pub(super) fn finish(self, old: &Sk) -> Result<NewIkeSa> {
        let missing = Error::InvalidState("no shared secret of the CREATE_CHILD_SA");
        let first = self.secrets.first.as_ref().ok_or(missing)?;
        let seed = skeyseed_rekey(
            old.suite.prf,
            &old.keys.sk_d,
            first.expose(),
            &self.ni,
            &self.nr,
            &self.secrets.additional(),
        );
        let keys = IkeKeys::derive(
            &self.suite,
            &seed,
            &self.ni,
            &self.nr,
            self.spi_i,
            self.spi_r,
        )?;
        let (outbound, inbound) = SkCipher::pair(&self.suite, &keys, self.initiated)?;
        Ok(NewIkeSa {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            sk: Sk {
                suite: self.suite,
                keys,
                outbound,
                inbound,
            },
        })
    }
}

/// What an answer to our rekey of the IKE SA leads to.
pub(super) enum IkeNext {
    /// The rekey again with the group the peer asked for
    /// (INVALID_KE_PAYLOAD), and how many times that happened.
    Retry(DhGroup, u8),
    /// The next IKE_FOLLOWUP_KE request (RFC 9370 section 2.2.2).
    Followup(Box<Continue>),
}
