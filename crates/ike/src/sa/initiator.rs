//! The initiator of an IKE SA (RFC 7296 section 1.2): IKE_SA_INIT
//! ([`InitSent`]: cookies, INVALID_KE_PAYLOAD, NAT detection, the
//! proposal the responder chose) and IKE_AUTH ([`AuthSent`]: our AUTH,
//! the responder's checked, the first Child SA).
//!
//! `initiator_child` also reads the answer to a CREATE_CHILD_SA request
//! of ours (`child.rs`): in both exchanges we offered a Child SA and
//! check what the responder chose.

use std::net::SocketAddr;
use std::time::Instant;

use super::auth;
use super::config::Config;
use super::event::{AuthFailure, Event};
use super::fragment;
use super::intermediate::{intermediate_supported, wants_intermediate};
use super::labels;
use super::logging::{self, Hex, Peer, Proposals, Selectors};
use super::nat;
use super::payloads::{Payloads, first_group, fragmentation_supported, offers_group};
use super::random::{Random, random_esp_spi, random_ike_spi, random_nonce};
use super::state::{
    AuthSent, ChildOffer, Discard, Established, Handshake, IkeSa, InitSent, IntAuthChain,
    MAX_KE_RETRIES, Received, Role, Sk, State, rekey_time,
};
use super::ts;
use crate::crypto::{self, IkeSuite, child_sa_keys};
use crate::error::{Error, Result};
use crate::message::{DhGroup, ExchangeType, Message, Notify, NotifyType, Payload, SaPayload};
use crate::proposal;

impl IkeSa {
    /// Starts an IKE SA as the initiator: queues the IKE_SA_INIT request
    /// to `remote` and arms the retransmission timer.
    ///
    /// The KE payload is for the first D-H group of the first IKE
    /// proposal. Fails if the proposals name no supported group, or the
    /// random source or the key exchange fails.
    pub fn initiate(
        config: Config,
        remote: SocketAddr,
        now: Instant,
        mut rng: Box<dyn Random + Send>,
    ) -> Result<Self> {
        let spi_i = random_ike_spi(rng.as_mut())?;
        let ni = random_nonce(rng.as_mut())?;
        let group = first_group(&config.ike_proposals).ok_or(Error::InvalidValue {
            what: "IKE proposals: no Diffie-Hellman group",
            value: 0,
        })?;
        let mut sa = Self::fresh(config, Role::Initiator, State::Closed, rng);
        sa.remote = Some(remote);
        sa.spi_i = spi_i;
        let init = sa.init_request(group, ni, 0)?;
        sa.send_request(now, ExchangeType::IkeSaInit, 0, vec![init.request.clone()]);
        sa.state = State::InitSent(Box::new(init));
        Ok(sa)
    }

    /// Sends our IKE_SA_INIT request again at once while it is
    /// unanswered: when the peer's attempt crosses ours and ours is the
    /// one both keep, the peer gives its own up only once it sees ours.
    /// The retransmission timer stays as it is.
    pub fn send_init_again(&mut self) {
        if !matches!(self.state, State::InitSent(_)) {
            return;
        }
        if let Some(out) = &self.outstanding {
            let bytes = out.bytes.clone();
            self.transmit_all(bytes);
        }
    }

    /// Builds the IKE_SA_INIT request: HDR, SAi1, KEi, Ni.
    fn init_request(&mut self, group: DhGroup, ni: Vec<u8>, ke_retries: u8) -> Result<InitSent> {
        let kex = crypto::start(group)?;
        let message = Message {
            header: self.header(ExchangeType::IkeSaInit, false, 0),
            payloads: vec![
                Payload::Sa(SaPayload {
                    proposals: self.config.ike_proposals.clone(),
                }),
                Payload::KeyExchange(crate::message::KeyExchange {
                    group,
                    data: kex.public_value().to_vec(),
                }),
                Payload::Nonce(ni.clone()),
            ],
        };
        let mut message = message;
        message
            .payloads
            .extend(auth::hash_algorithms_notify(&self.config));
        // RFC 7383 section 2.3: the initiator announces IKE fragmentation
        // with an empty IKEV2_FRAGMENTATION_SUPPORTED notify in its
        // IKE_SA_INIT request.
        if self.config.fragmentation {
            message.payloads.push(fragmentation_supported());
        }
        // RFC 9242 section 3: an initiator that offers additional key
        // exchanges (RFC 9370) announces IKE_INTERMEDIATE.
        if wants_intermediate(&self.config.ike_proposals) {
            message.payloads.push(intermediate_supported());
        }
        if let (Some(local), Some(remote)) = (self.local, self.remote) {
            message.payloads.extend(nat::notifies(
                self.spi_i,
                0,
                local,
                remote,
                self.config.force_udp_encap,
                self.rng.as_mut(),
            )?);
        }
        tracing::debug!(
            peer = %Peer(self.remote),
            proposals = %Proposals(&self.config.ike_proposals),
            ke = ?group,
            spi_i = %Hex(self.spi_i),
            "IKE proposals offered"
        );
        Ok(InitSent {
            kex,
            ni,
            request: message.encode()?,
            ke_retries,
            cookie: None,
        })
    }

    pub(super) fn on_init_response(&mut self, msg: Received<'_>) -> Result<(), Discard> {
        let (now, remote, header, bytes) = (msg.now, msg.remote, msg.header, msg.bytes);
        let message = Message::decode(bytes).map_err(|_| Discard::Malformed)?;
        msg.log(&message.payloads);
        let p = Payloads(&message.payloads);
        // RFC 7296 section 2.6: a responder under load asks for a cookie
        // first (see cookie.rs).
        if let (Some(n), None) = (p.notify(NotifyType::Cookie), p.sa()) {
            return self.on_cookie_request(now, &n.data);
        }
        // RFC 7296 section 1.2: INVALID_KE_PAYLOAD names the group the
        // responder wants; the initiator retries IKE_SA_INIT with a KE payload
        // of that group.
        if let Some(n) = p.notify(NotifyType::InvalidKePayload) {
            let group = <[u8; 2]>::try_from(n.data.as_slice())
                .map(|b| DhGroup::from(u16::from_be_bytes(b)))
                .map_err(|_| Discard::Malformed)?;
            let State::InitSent(st) = &self.state else {
                return Err(Discard::Unexpected);
            };
            if st.ke_retries >= MAX_KE_RETRIES
                || group == st.kex.group()
                || !offers_group(&self.config.ike_proposals, group)
            {
                self.close(Event::Failed {
                    notify: NotifyType::InvalidKePayload,
                    by_peer: true,
                });
                return Ok(());
            }
            let (ni, retries) = (st.ni.clone(), st.ke_retries + 1);
            // Section 2.6: the cookie stays when the group changes.
            let cookie = st.cookie.clone();
            match self
                .init_request(group, ni, retries)
                .and_then(|init| init.with_cookie(cookie))
            {
                Ok(init) => {
                    let request = vec![init.request.clone()];
                    self.send_request(now, ExchangeType::IkeSaInit, 0, request);
                    self.state = State::InitSent(Box::new(init));
                }
                Err(e) => self.local_error(e),
            }
            return Ok(());
        }
        // An error notify ends the attempt (RFC 7296 section 2.21.1). It is not
        // authenticated; a later slice may keep waiting for a while.
        if let Some(notify) = p.error() {
            self.close(Event::Failed {
                notify,
                by_peer: true,
            });
            return Ok(());
        }
        let (Some(sa), Some(ke), Some(nr)) = (p.sa(), p.ke(), p.nonce()) else {
            return Err(Discard::Malformed);
        };
        if header.responder_spi == 0 {
            return Err(Discard::Malformed);
        }
        let State::InitSent(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return Err(Discard::Unexpected);
        };
        self.outstanding = None;
        self.spi_r = header.responder_spi;
        self.detect_nat(&message.payloads, remote);
        // RFC 7296 section 2.7: the responder accepts one proposal, which must
        // be one we offered, with one transform of each type.
        let suite = match sa.proposals.as_slice() {
            [chosen] => proposal::check_chosen(&self.config.ike_proposals, chosen)
                .and_then(|_| IkeSuite::from_proposal(chosen)),
            _ => Err(Error::InvalidValue {
                what: "IKE_SA_INIT response: not one proposal",
                value: sa.proposals.len() as u64,
            }),
        };
        let Ok(suite) = suite else {
            tracing::debug!(
                peer = %remote,
                chosen = %Proposals(&sa.proposals),
                offered = %Proposals(&self.config.ike_proposals),
                "IKE proposal of the peer refused: not exactly one of ours"
            );
            self.close(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        };
        tracing::debug!(
            peer = %remote,
            chosen = %Proposals(&sa.proposals),
            spi_i = %Hex(self.spi_i),
            spi_r = %Hex(self.spi_r),
            "IKE proposal chosen by the peer"
        );
        if suite.group != st.kex.group() || ke.group != suite.group {
            self.close(Event::Failed {
                notify: NotifyType::InvalidKePayload,
                by_peer: false,
            });
            return Ok(());
        }
        let InitSent {
            kex, ni, request, ..
        } = *st;
        let Ok(g_ir) = kex.complete(&ke.data) else {
            self.close(Event::Failed {
                notify: NotifyType::InvalidSyntax,
                by_peer: false,
            });
            return Ok(());
        };
        let nr = nr.to_vec();
        // RFC 7383 section 2.3: fragmentation is used only if both sides
        // sent IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT.
        if self.config.fragmentation && p.notify(NotifyType::Ikev2FragmentationSupported).is_some()
        {
            self.fragment_limit = Some(fragment::message_limit(self.config.fragment_size, remote));
        }
        let peer_hashes = auth::peer_hash_algorithms(&message.payloads);
        // RFC 9370 section 2.2.1: the chosen additional key exchanges run
        // in IKE_INTERMEDIATE exchanges, which the responder must have
        // announced (RFC 9242 section 3).
        let pending: Vec<DhGroup> = suite.additional_key_exchanges().collect();
        if !pending.is_empty()
            && p.notify(NotifyType::IntermediateExchangeSupported)
                .is_none()
        {
            self.close(Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: false,
            });
            return Ok(());
        }
        let handshake = Handshake {
            ni,
            nr,
            init_request: request,
            init_response: bytes.to_vec(),
            peer_hashes,
        };
        self.next_request_id = 1;
        let result = self
            .derive(suite, &g_ir, &handshake.ni, &handshake.nr)
            .and_then(|sk| {
                if pending.is_empty() {
                    self.send_auth(now, sk, handshake, &IntAuthChain::default())
                } else {
                    self.send_intermediate(now, sk, handshake, pending, IntAuthChain::default())
                }
            });
        if let Err(e) = result {
            self.local_error(e);
        }
        Ok(())
    }

    /// Sends the IKE_AUTH request, with the next message ID (1, or one
    /// after the last IKE_INTERMEDIATE exchange); AUTH covers `chain`.
    pub(super) fn send_auth(
        &mut self,
        now: Instant,
        sk: Sk,
        handshake: Handshake,
        chain: &IntAuthChain,
    ) -> Result<()> {
        let id = self.next_request_id;
        let int_auth = chain.suffix(id);
        let (st, bytes) = self.auth_request(sk, handshake, id, int_auth)?;
        self.send_request(now, ExchangeType::IkeAuth, id, bytes);
        self.next_request_id = id.wrapping_add(1);
        self.state = State::AuthSent(Box::new(st));
        Ok(())
    }

    /// Initiator: NAT detection in the IKE_SA_INIT response that came from
    /// `remote`; on a NAT (or forced encapsulation) IKE moves to the NAT-T
    /// port from IKE_AUTH on (RFC 7296 section 2.23).
    fn detect_nat(&mut self, payloads: &[Payload], remote: SocketAddr) {
        let Some(local) = self.local else {
            return;
        };
        self.nat = nat::detect(
            payloads,
            self.spi_i,
            self.spi_r,
            local,
            remote,
            self.config.force_udp_encap,
        );
        if self.nat.is_some_and(|n| n.udp_encap()) {
            let port = self.config.natt_port;
            if let Some(r) = self.remote.as_mut() {
                r.set_port(port);
            }
            if let Some(l) = self.local.as_mut() {
                l.set_port(port);
            }
        }
    }

    /// Builds the IKE_AUTH request: HDR, SK {IDi, [CERT+,] [CERTREQ,]
    /// [IDr,] AUTH, [N(USE_TRANSPORT_MODE),] SAi2, TSi, TSr}.
    fn auth_request(
        &mut self,
        sk: Sk,
        handshake: Handshake,
        id: u32,
        int_auth: Vec<u8>,
    ) -> Result<(AuthSent, Vec<Vec<u8>>)> {
        let Handshake {
            ni,
            nr,
            init_request,
            init_response,
            peer_hashes,
        } = handshake;
        let c = &self.config;
        // RFC 7296 section 2.15: InitiatorSignedOctets = RealMessage1 |
        // NonceRData | MACedIDForI; a PSK's MAC or a signature (auth.rs).
        let auth = auth::local_auth(
            c,
            &c.local_id,
            &sk.suite,
            &init_request,
            &nr,
            &sk.keys.sk_pi,
            peer_hashes.as_deref(),
            &int_auth,
        )?;
        let mut payloads = vec![Payload::IdInitiator(c.local_id.clone())];
        // RFC 7296 sections 3.6 and 3.7: our certificates, and the CAs we
        // trust for the responder's.
        payloads.extend(auth::cert_payloads(c));
        payloads.extend(auth::certreq(c));
        if let Some(idr) = &c.remote_id {
            payloads.push(Payload::IdResponder(idr.clone()));
        }
        // RFC 7296 section 2.4: INITIAL_CONTACT tells the peer that we hold
        // no other IKE SA with it, so it may delete what it has with us.
        if c.initial_contact {
            payloads.push(Payload::Notify(Notify::empty(NotifyType::InitialContact)));
        }
        payloads.push(Payload::Auth(auth));
        // RFC 7296 section 1.3.1: USE_TRANSPORT_MODE asks for a transport-mode
        // Child SA.
        if c.transport_mode {
            payloads.push(Payload::Notify(Notify::empty(NotifyType::UseTransportMode)));
        }
        let esp_spi = random_esp_spi(self.rng.as_mut())?;
        let c = &self.config;
        // RFC 7296 section 1.2: no D-H transform in IKE_AUTH (PFS applies
        // to rekeys only).
        let offer = ChildOffer::new(
            esp_spi,
            &proposal::without_ke(&c.esp_proposals),
            c.local_ts.clone(),
            c.remote_ts.clone(),
        )
        .with_label(c.child_labels.first().cloned(), false);
        if let Some(label) = &offer.label {
            payloads.push(labels::notify(label));
        }
        payloads.push(offer.sa());
        payloads.push(Payload::TsInitiator(offer.tsi.clone()));
        payloads.push(Payload::TsResponder(offer.tsr.clone()));
        offer.log(self.remote, "IKE_AUTH");
        let bytes = self.seal(
            &sk,
            &self.header(ExchangeType::IkeAuth, false, id),
            &payloads,
        )?;
        let st = AuthSent {
            sk,
            ni,
            nr,
            init_response,
            offer,
            int_auth,
        };
        Ok((st, bytes))
    }

    pub(super) fn on_auth_response(&mut self, now: Instant, message: &Message) {
        let State::AuthSent(st) = core::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let p = Payloads(&message.payloads);
        // RFC 7296 section 2.21.2: a responder that rejects our AUTH answers
        // AUTHENTICATION_FAILED in the (encrypted) IKE_AUTH response.
        if p.notify(NotifyType::AuthenticationFailed).is_some() {
            self.close(Event::AuthFailed {
                reason: AuthFailure::RejectedByPeer,
            });
            return;
        }
        let (Some(idr), Some(auth)) = (p.idr(), p.auth()) else {
            match p.error() {
                Some(notify) => self.close(Event::Failed {
                    notify,
                    by_peer: true,
                }),
                None => self.close(Event::AuthFailed {
                    reason: AuthFailure::MissingPayload,
                }),
            }
            return;
        };
        let verified = self.verify_peer(
            now,
            &message.payloads,
            idr,
            auth,
            &st.sk,
            &st.init_response,
            &st.ni,
            &st.int_auth,
        );
        if let Err(reason) = verified {
            // Section 2.21.2: the responder hears it in an INFORMATIONAL.
            self.refuse_responder(&st.sk, reason);
            return;
        }
        let AuthSent {
            sk, ni, nr, offer, ..
        } = *st;
        self.events.push_back(Event::IkeSaEstablished);
        let child = self.initiator_child(&p, &sk, &ni, &nr, &offer, None);
        let event = child.unwrap_or_else(|event| *event);
        // Our label not repeated: the peer does not know labels.
        if let Event::ChildSaUp { inbound, .. } = &event {
            self.peer_lacks_labels = offer.label.is_some() && inbound.label.is_none();
        }
        let rekey_at = rekey_time(self.config.child_lifetime, self.rng.as_mut(), now);
        let mut established = Established::new(sk, &event, rekey_at);
        established.ike_rekey_at = rekey_time(self.config.ike_lifetime, self.rng.as_mut(), now);
        self.established_at = Some(now);
        self.state = State::Established(Box::new(established));
        self.events.push_back(event);
        self.queue_additional_children(now);
    }

    /// The Child SA from the responder's answer to our `offer`, or the
    /// event that says why there is none.
    pub(super) fn initiator_child(
        &self,
        p: &Payloads<'_>,
        sk: &Sk,
        ni: &[u8],
        nr: &[u8],
        offer: &ChildOffer,
        g_ir: Option<&[u8]>,
    ) -> Result<Event, Box<Event>> {
        let (tsi, tsr) = (&offer.tsi[..], &offer.tsr[..]);
        let failed = |notify| {
            Box::new(Event::Failed {
                notify,
                by_peer: false,
            })
        };
        // NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE...: the IKE SA stands, the Child
        // SA was refused (RFC 7296 section 1.2).
        if let Some(notify) = p.error() {
            return Err(Box::new(Event::Failed {
                notify,
                by_peer: true,
            }));
        }
        let (Some(sa), Some(rtsi), Some(rtsr)) = (p.sa(), p.tsi(), p.tsr()) else {
            return Err(failed(NotifyType::InvalidSyntax));
        };
        let [chosen] = sa.proposals.as_slice() else {
            tracing::debug!(peer = %Peer(self.remote), chosen = %Proposals(&sa.proposals), "ESP proposal of the peer refused: not exactly one");
            return Err(failed(NotifyType::NoProposalChosen));
        };
        let mut check = chosen.clone();
        check.spi = offer.esp_spi.to_be_bytes().to_vec();
        let choice = proposal::check_chosen(&offer.proposals, &check)
            .and_then(|_| proposal::esp_choice(chosen))
            .map_err(|_| {
                tracing::debug!(
                    peer = %Peer(self.remote),
                    chosen = %Proposals(core::slice::from_ref(chosen)),
                    offered = %Proposals(&offer.proposals),
                    "ESP proposal of the peer refused: not one we offered"
                );
                failed(NotifyType::NoProposalChosen)
            })?;
        tracing::debug!(
            peer = %Peer(self.remote),
            chosen = %Proposals(core::slice::from_ref(chosen)),
            spi_out = %logging::proposal_spi(chosen),
            "ESP proposal chosen by the peer"
        );
        let peer_spi = <[u8; 4]>::try_from(chosen.spi.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| failed(NotifyType::InvalidSyntax))?;
        let transport =
            self.config.transport_mode && p.notify(NotifyType::UseTransportMode).is_some();
        // RFC 7296 section 2.23.1: in transport mode behind a NAT the
        // responder replaces our (private) address in TSi with the NAT's;
        // our side of the SA stays our own address.
        let behind_nat = transport && self.nat.is_some_and(|n| n.local_behind_nat);
        // RFC 7296 section 2.9: the responder may narrow, never widen, what we
        // proposed.
        let acceptable = !rtsi.is_empty()
            && !rtsr.is_empty()
            && (behind_nat || ts::is_subset(rtsi, tsi))
            && ts::is_subset(rtsr, tsr);
        tracing::debug!(
            peer = %Peer(self.remote),
            tsi = %Selectors(rtsi),
            tsr = %Selectors(rtsr),
            offered_tsi = %Selectors(tsi),
            offered_tsr = %Selectors(tsr),
            transport,
            "traffic selectors {} by the peer",
            if acceptable {
                "narrowed"
            } else {
                "refused: widened"
            }
        );
        if !acceptable {
            return Err(failed(NotifyType::TsUnacceptable));
        }
        let rtsi = if behind_nat { tsi } else { rtsi };
        let label =
            labels::check(offer.label.as_deref(), offer.label_required, p).map_err(failed)?;
        let keys = child_sa_keys(sk.suite.prf, &sk.keys.sk_d, g_ir, ni, nr, &[], choice.suite)
            .map_err(|e| Box::new(Event::LocalError(e)))?;
        let mut event = self.child_sa_up(
            true,
            &choice,
            transport,
            (offer.esp_spi, peer_spi),
            keys,
            (rtsi, rtsr),
        );
        labels::set(&mut event, label);
        Ok(event)
    }
}
