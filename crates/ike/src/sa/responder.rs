//! The responder of an IKE SA (RFC 7296 section 1.2): `ExpectInit`
//! (IKE_SA_INIT: the proposal we choose, INVALID_KE_PAYLOAD and other
//! refusals without state, NAT detection) and [`ExpectAuth`] (IKE_AUTH:
//! the initiator's AUTH checked, ours, the first Child SA).
//!
//! `responder_child` also answers the peer's CREATE_CHILD_SA requests
//! (`child.rs`): in both exchanges we choose a proposal and narrow the
//! traffic selectors to our policy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth;
use super::config::{CHILD_COMPLETION_DELAY, Config};
use super::event::{AuthFailure, Event, Transmit};
use super::fragment;
use super::intermediate::intermediate_supported;
use super::labels;
use super::logging::{self, Direction as Dir, Peer, Proposals, Selectors};
use super::nat;
use super::payloads::{Payloads, fragmentation_supported};
use super::random::{Random, random_esp_spi, random_ike_spi, random_nonce};
use super::state::{
    Discard, Established, ExpectAuth, IkeSa, IntAuthChain, Received, Role, Sk, State, rekey_time,
};
use super::ts;
use crate::crypto::{self, IkeSuite, child_sa_keys};
use crate::error::Error;
use crate::message::{
    DhGroup, ExchangeType, Header, Message, Notify, NotifyType, Payload, SaPayload,
};
use crate::proposal;

/// How long a responder keeps a half-open IKE SA (IKE_SA_INIT answered,
/// no IKE_AUTH yet) before it gives up: longer than an initiator's whole
/// retransmission schedule.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

impl IkeSa {
    /// An IKE SA that waits, as the responder, for an IKE_SA_INIT request.
    ///
    /// It answers the first acceptable one; one it refuses
    /// (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD) leaves it waiting, without
    /// state, as RFC 7296 section 2.6 wants of a responder before it has
    /// committed to an SA.
    pub fn respond(config: Config, rng: Box<dyn Random + Send>) -> Self {
        Self::fresh(config, Role::Responder, State::ExpectInit, rng)
    }

    /// Answers an error notify to an IKE_SA_INIT request, without keeping
    /// state (the responder SPI is zero).
    pub(super) fn refuse_init(&mut self, remote: SocketAddr, header: &Header, notify: Notify) {
        let message = Message {
            header: Header {
                initiator_spi: header.initiator_spi,
                responder_spi: 0,
                response: true,
                initiator: false,
                ..self.header(ExchangeType::IkeSaInit, true, 0)
            },
            payloads: vec![Payload::Notify(notify)],
        };
        if let Ok(bytes) = message.encode() {
            logging::message(
                Dir::Sent,
                Some(remote),
                &message.header,
                &message.payloads,
                1,
            );
            self.transmits.push_back(Transmit { dst: remote, bytes });
        }
    }

    pub(super) fn on_init_request(&mut self, msg: Received<'_>) -> Result<(), Discard> {
        let (now, remote, header, bytes) = (msg.now, msg.remote, &msg.header, msg.bytes);
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            // An unknown critical payload is answered (critical.rs).
            Err(e) => return self.undecodable_init(remote, header, e),
        };
        msg.log(&message.payloads);
        let p = Payloads(&message.payloads);
        let (Some(sa), Some(ke), Some(ni)) = (p.sa(), p.ke(), p.nonce()) else {
            return Err(Discard::Malformed);
        };
        // RFC 7296 section 2.7: the responder picks one proposal, or answers
        // NO_PROPOSAL_CHOSEN.
        let chosen = proposal::select(&self.config.ike_proposals, &sa.proposals);
        let chosen = chosen.and_then(|c| {
            IkeSuite::from_proposal(&c.proposal)
                .ok()
                .map(|s| (c.proposal, s))
        });
        tracing::debug!(
            peer = %remote,
            offered = %Proposals(&sa.proposals),
            ours = %Proposals(&self.config.ike_proposals),
            chosen = %chosen.as_ref().map_or_else(
                || "none: NO_PROPOSAL_CHOSEN".to_owned(),
                |(c, _)| proposal::to_strongswan(c)
            ),
            "IKE proposal chosen"
        );
        let Some((chosen, suite)) = chosen else {
            self.refuse_init(remote, header, Notify::empty(NotifyType::NoProposalChosen));
            self.events.push_back(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        };
        // RFC 9370 section 2.2.1: additional key exchanges run in
        // IKE_INTERMEDIATE, which the initiator must announce (RFC 9242
        // section 3); we answer the announcement with ours.
        let intermediate = p
            .notify(NotifyType::IntermediateExchangeSupported)
            .is_some();
        let pending: Vec<DhGroup> = suite.additional_key_exchanges().collect();
        if !pending.is_empty() && !intermediate {
            self.refuse_init(remote, header, Notify::empty(NotifyType::NoProposalChosen));
            self.events.push_back(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        }
        // RFC 7296 section 1.2: a KE payload of another group than the chosen
        // one is answered with INVALID_KE_PAYLOAD, which names the group we
        // want.
        if ke.group != suite.group {
            self.refuse_init(
                remote,
                header,
                Notify::new(
                    NotifyType::InvalidKePayload,
                    suite.group.value().to_be_bytes().to_vec(),
                ),
            );
            return Ok(());
        }
        let (public, g_ir) = match crypto::respond(suite.group, &ke.data) {
            Ok(answer) => answer,
            Err(Error::InvalidPublicValue { .. }) => {
                self.refuse_init(remote, header, Notify::empty(NotifyType::InvalidSyntax));
                return Ok(());
            }
            Err(e) => {
                self.local_error(e);
                return Ok(());
            }
        };
        let peer_hashes = auth::peer_hash_algorithms(&message.payloads);
        // RFC 7383 section 2.3: the responder announces fragmentation only
        // if the initiator did, and then both use it.
        let fragmentation = self.config.fragmentation
            && p.notify(NotifyType::Ikev2FragmentationSupported).is_some();
        if fragmentation {
            self.fragment_limit = Some(fragment::message_limit(self.config.fragment_size, remote));
        }
        let result = (|| {
            let spi_r = random_ike_spi(self.rng.as_mut())?;
            let nr = random_nonce(self.rng.as_mut())?;
            self.spi_i = header.initiator_spi;
            self.spi_r = spi_r;
            self.remote = Some(remote);
            // RFC 7296 section 2.23: the request's digests cover SPIr = 0.
            let nat = self.local.and_then(|local| {
                nat::detect(
                    &message.payloads,
                    header.initiator_spi,
                    0,
                    local,
                    remote,
                    self.config.force_udp_encap,
                )
            });
            let nat_notifies = match (nat, self.local) {
                (Some(_), Some(local)) => Some(nat::notifies(
                    self.spi_i,
                    spi_r,
                    local,
                    remote,
                    self.config.force_udp_encap,
                    self.rng.as_mut(),
                )?),
                _ => None,
            };
            self.nat = nat;
            let response = Message {
                header: self.header(ExchangeType::IkeSaInit, true, 0),
                payloads: vec![
                    Payload::Sa(SaPayload {
                        proposals: vec![chosen],
                    }),
                    Payload::KeyExchange(crate::message::KeyExchange {
                        group: suite.group,
                        data: public,
                    }),
                    Payload::Nonce(nr.clone()),
                ]
                .into_iter()
                .chain(nat_notifies.into_iter().flatten())
                .chain(fragmentation.then(fragmentation_supported))
                .chain(intermediate.then(intermediate_supported))
                // RFC 7427 section 4 and RFC 7296 section 3.7: our hash
                // algorithms if the initiator announced its own, and the
                // CAs we trust.
                .chain(
                    peer_hashes
                        .is_some()
                        .then(|| auth::hash_algorithms_notify(&self.config))
                        .flatten(),
                )
                .chain(auth::certreq(&self.config))
                .collect(),
            }
            .encode()?;
            let sk = self.derive(suite, &g_ir, ni, &nr)?;
            Ok::<_, Error>((sk, nr, response))
        })();
        match result {
            Ok((sk, nr, response)) => {
                self.remote = Some(remote);
                self.half_open_deadline = Some(now + HALF_OPEN_TIMEOUT);
                self.send_response(0, vec![response.clone()]);
                self.state = State::ExpectAuth(Box::new(ExpectAuth {
                    sk,
                    ni: ni.to_vec(),
                    nr,
                    init_request: bytes.to_vec(),
                    init_response: response,
                    peer_hashes,
                    pending,
                    chain: IntAuthChain::default(),
                    next_id: 1,
                }));
            }
            Err(e) => self.local_error(e),
        }
        Ok(())
    }

    pub(super) fn on_auth_request(&mut self, now: Instant, message: &Message) {
        self.half_open_deadline = None;
        let State::ExpectAuth(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let p = Payloads(&message.payloads);
        let id = st.next_id;
        let header = self.header(ExchangeType::IkeAuth, true, id);
        let int_auth = st.chain.suffix(id);
        let verified = match (p.idi(), p.auth()) {
            (Some(idi), Some(auth)) => self.verify_peer(
                now,
                &message.payloads,
                idi,
                auth,
                &st.sk,
                &st.init_request,
                &st.nr,
                &int_auth,
            ),
            _ => Err(AuthFailure::MissingPayload),
        };
        // IDr, if sent, names the identity the initiator expects of us
        // (with a certificate: any identity in it, which we answer as).
        let our_id = verified.and_then(|()| auth::responder_identity(&self.config, p.idr()));
        let verified = our_id.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(reason) = verified {
            // RFC 7296 section 2.21.2: if the responder's AUTH check fails, it
            // answers with an AUTHENTICATION_FAILED notify in the encrypted
            // IKE_AUTH response, and the IKE SA is not created.
            let notify = [Payload::Notify(Notify::empty(
                NotifyType::AuthenticationFailed,
            ))];
            match self.seal(&st.sk, &header, &notify) {
                Ok(bytes) => {
                    self.send_response(id, bytes);
                    self.close(Event::AuthFailed { reason });
                }
                Err(e) => self.local_error(e),
            }
            return;
        }
        self.peer_initial_contact = p.notify(NotifyType::InitialContact).is_some();
        let ExpectAuth {
            sk,
            ni,
            nr,
            init_response,
            peer_hashes,
            ..
        } = *st;
        // RFC 7296 section 2.15: responderSignedOctets = RealMessage2 |
        // NonceIData | MACedIDForR; a PSK's MAC or a signature (auth.rs).
        let c = &self.config;
        let our_id = our_id.unwrap_or_else(|_| c.local_id.clone());
        let auth = match auth::local_auth(
            c,
            &our_id,
            &sk.suite,
            &init_response,
            &ni,
            &sk.keys.sk_pr,
            peer_hashes.as_deref(),
            &int_auth,
        ) {
            Ok(auth) => auth,
            Err(e) => {
                self.local_error(e);
                return;
            }
        };
        // HDR, SK {IDr, [CERT+,] AUTH, ...} (RFC 7296 section 1.2).
        let mut payloads = vec![Payload::IdResponder(our_id)];
        payloads.extend(auth::cert_payloads(c));
        payloads.push(Payload::Auth(auth));
        let child = self.responder_child(true, &p, &sk, &ni, &nr, None);
        let child_event = match child {
            Ok((child_payloads, event)) => {
                payloads.extend(child_payloads);
                event
            }
            Err(notify) => {
                payloads.push(Payload::Notify(Notify::empty(notify)));
                Event::Failed {
                    notify,
                    by_peer: false,
                }
            }
        };
        match self.seal(&sk, &header, &payloads) {
            Ok(bytes) => {
                self.send_response(id, bytes);
                self.peer_next_id = id.wrapping_add(1);
                self.next_request_id = 0;
                let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
                let mut established = Established::new(sk, &child_event, rekey_at);
                established.ike_rekey_at =
                    rekey_time(self.config.ike_lifetime, self.rng.as_mut(), now);
                if self.config.create_missing_children {
                    established.complete_at = Some(now + CHILD_COMPLETION_DELAY);
                }
                self.established_at = Some(now);
                self.state = State::Established(Box::new(established));
                self.events.push_back(Event::IkeSaEstablished);
                self.events.push_back(child_event);
            }
            Err(e) => self.local_error(e),
        }
    }

    /// The responder's half of a Child SA, the first (`ike_auth`) or a
    /// rekey's: the chosen proposal with our SPI, the narrowed selectors,
    /// and the keys; or the error notify that refuses it (the IKE SA
    /// stands either way).
    pub(super) fn responder_child(
        &mut self,
        ike_auth: bool,
        p: &Payloads<'_>,
        sk: &Sk,
        ni: &[u8],
        nr: &[u8],
        g_ir: Option<&[u8]>,
    ) -> Result<(Vec<Payload>, Event), NotifyType> {
        let (Some(sa), Some(tsi), Some(tsr)) = (p.sa(), p.tsi(), p.tsr()) else {
            return Err(NotifyType::InvalidSyntax);
        };
        // RFC 7296 section 1.2: IKE_AUTH's SA payloads carry no D-H
        // transform; a group in our ESP proposals is for rekeys (PFS). An
        // IKE_AUTH offer that has one anyway is read without it.
        let selected = if ike_auth {
            proposal::select(
                &proposal::without_ke(&self.config.esp_proposals),
                &proposal::without_ke(&sa.proposals),
            )
        } else {
            proposal::select(&self.config.esp_proposals, &sa.proposals)
        };
        tracing::debug!(
            peer = %Peer(self.remote),
            offered = %Proposals(&sa.proposals),
            ours = %Proposals(&self.config.esp_proposals),
            chosen = %selected.as_ref().map_or_else(
                || "none: NO_PROPOSAL_CHOSEN".to_owned(),
                |c| proposal::to_strongswan(&c.proposal)
            ),
            spi_out = %selected.as_ref().map(|c| logging::proposal_spi(&c.proposal)).unwrap_or_default(),
            "ESP proposal chosen"
        );
        let selected = selected.ok_or(NotifyType::NoProposalChosen)?;
        let choice =
            proposal::esp_choice(&selected.proposal).map_err(|_| NotifyType::NoProposalChosen)?;
        let peer_spi = <[u8; 4]>::try_from(selected.proposal.spi.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| NotifyType::InvalidSyntax)?;
        // RFC 7296 section 1.3.1: the responder that agrees to transport mode
        // includes USE_TRANSPORT_MODE in its answer; without it the SA is in
        // tunnel mode.
        let transport =
            self.config.transport_mode && p.notify(NotifyType::UseTransportMode).is_some();
        // RFC 7296 section 2.23.1: in transport mode, an initiator behind a
        // NAT names its private address in TSi; the traffic comes from the
        // address the IKE SA comes from, which replaces it.
        let translated;
        let tsi = match (transport, self.nat, self.remote) {
            (true, Some(n), Some(remote)) if n.remote_behind_nat => {
                translated = ts::with_address(tsi, remote.ip());
                &translated[..]
            }
            _ => tsi,
        };
        // RFC 7296 section 2.9: the responder narrows TSi and TSr to its
        // policy, the union of its configured Child SAs or one of them; if
        // nothing is left it answers TS_UNACCEPTABLE.
        let (local_policy, remote_policy) = self.config.policy_ts();
        let narrowed = if self.config.narrow_to_one_child {
            ts::narrow_to_child(tsi, tsr, &self.config.children())
        } else {
            Some((
                ts::narrow(tsi, &remote_policy),
                ts::narrow(tsr, &local_policy),
            ))
            .filter(|(i, r)| !i.is_empty() && !r.is_empty())
        };
        tracing::debug!(
            peer = %Peer(self.remote),
            offered_tsi = %Selectors(tsi),
            offered_tsr = %Selectors(tsr),
            ours_local = %Selectors(&local_policy),
            ours_remote = %Selectors(&remote_policy),
            one_child = self.config.narrow_to_one_child,
            tsi = %Selectors(narrowed.as_ref().map_or(&[][..], |n| &n.0)),
            tsr = %Selectors(narrowed.as_ref().map_or(&[][..], |n| &n.1)),
            transport,
            "traffic selectors {}",
            if narrowed.is_some() {
                "narrowed"
            } else {
                "unacceptable: TS_UNACCEPTABLE"
            }
        );
        let Some((tsi, tsr)) = narrowed else {
            return Err(NotifyType::TsUnacceptable);
        };
        let label = labels::agree(&self.config, p)?;
        let our_spi =
            random_esp_spi(self.rng.as_mut()).map_err(|_| NotifyType::TemporaryFailure)?;
        let keys = child_sa_keys(sk.suite.prf, &sk.keys.sk_d, g_ir, ni, nr, &[], choice.suite)
            .map_err(|_| NotifyType::TemporaryFailure)?;
        let mut chosen = selected.proposal;
        chosen.spi = our_spi.to_be_bytes().to_vec();
        let mut payloads = Vec::new();
        if transport {
            payloads.push(Payload::Notify(Notify::empty(NotifyType::UseTransportMode)));
        }
        payloads.push(Payload::Sa(SaPayload {
            proposals: vec![chosen],
        }));
        payloads.push(Payload::TsInitiator(tsi.clone()));
        payloads.push(Payload::TsResponder(tsr.clone()));
        if let Some(label) = &label {
            payloads.push(labels::notify(label));
        }
        let mut event = self.child_sa_up(
            false,
            &choice,
            transport,
            (our_spi, peer_spi),
            keys,
            (&tsr, &tsi),
        );
        labels::set(&mut event, label);
        Ok((payloads, event))
    }
}
