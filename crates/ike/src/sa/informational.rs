//! INFORMATIONAL exchanges on an established IKE SA (RFC 7296 sections
//! 1.4, 2.4): liveness checks, and DELETE of Child SAs and of the IKE SA,
//! ours and the peer's. The answer to our DELETE is read in `child.rs`
//! (a retired pair) and `exchange.rs` (the IKE SA).

use std::time::Instant;

use super::event::Event;
use super::state::{Child, IkeSa, Request, Retired, State, rekey_time};
use crate::error::{Error, Result};
use crate::message::{Delete, ExchangeType, Header, Message, Payload, ProtocolId};

impl IkeSa {
    /// Deletes the IKE SA (and its Child SA): sends an INFORMATIONAL
    /// request with a DELETE payload. The IKE SA closes with
    /// [`Event::IkeSaDeleted`] when the peer answers, or with
    /// [`Event::PeerDead`] if it never does (RFC 7296 section 1.4.1).
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established
    /// and no request of ours is outstanding.
    pub fn delete(&mut self, now: Instant) -> Result<()> {
        self.send_informational(now, &[Payload::Delete(Delete::ike())], None)?;
        if let State::Established(st) = &mut self.state {
            st.deleting = true;
        }
        Ok(())
    }

    /// Checks that the peer is alive: sends an empty INFORMATIONAL request
    /// (RFC 7296 section 2.4), retransmitted like any other; no answer
    /// ends in [`Event::PeerDead`].
    ///
    /// Fails with [`Error::InvalidState`] unless the IKE SA is established
    /// and no request of ours is outstanding.
    pub fn check_liveness(&mut self, now: Instant) -> Result<()> {
        self.send_informational(now, &[], None)
    }

    fn send_informational(
        &mut self,
        now: Instant,
        payloads: &[Payload],
        request: Option<Request>,
    ) -> Result<()> {
        if self.outstanding.is_some() {
            return Err(Error::InvalidState("a request is outstanding"));
        }
        self.send_sealed_request(now, ExchangeType::Informational, payloads, request)
    }

    /// DELETE of one Child SA pair, by our inbound SPI (RFC 7296 section
    /// 1.4.1).
    pub(super) fn send_delete_child(&mut self, now: Instant, r: Retired) -> Result<()> {
        let delete = Payload::Delete(Delete::esp(&[r.inbound]));
        self.send_informational(now, &[delete], Some(Request::DeleteChild(r)))
    }

    /// An INFORMATIONAL request from the peer once the IKE SA is up: an
    /// empty one checks liveness; DELETE closes Child SAs or the IKE SA
    /// (RFC 7296 section 1.4.1).
    pub(super) fn on_informational_request(
        &mut self,
        now: Instant,
        header: &Header,
        message: &Message,
    ) {
        let response = self.header(header.exchange_type, true, header.message_id);
        let id = header.message_id;
        let State::Established(st) = &mut self.state else {
            return;
        };
        let mut reply = Vec::new();
        let mut events = Vec::new();
        let mut delete_ike = false;
        for payload in &message.payloads {
            let Payload::Delete(d) = payload else {
                continue;
            };
            match d.protocol {
                ProtocolId::Ike => delete_ike = true,
                ProtocolId::Esp => {
                    // RFC 7296 section 1.4.1: the answer to a
                    // DELETE of ESP SAs deletes the SAs of the other
                    // direction, by our own (inbound) SPIs.
                    let mut gone = Vec::new();
                    for spi in &d.spis {
                        if let Some(i) = st.child_by_outbound(spi) {
                            gone.push(st.children.remove(i));
                        }
                    }
                    for child in gone {
                        let (inbound, outbound) = child.spis();
                        reply.push(Payload::Delete(Delete::esp(&[inbound])));
                        st.unqueue_rekey(inbound);
                        let collided = st.collision.take_if(|c| c.old == (inbound, outbound));
                        if let Some(c) = collided {
                            // Colliding rekeys, and the peer deletes
                            // the old pair before our request is
                            // answered: its rekey (the one we
                            // answered) won (section 2.8.1).
                            st.children.push(Child {
                                inbound: c.inbound.spi,
                                outbound: c.outbound.spi,
                                ts: child.ts,
                                rekey_at: rekey_time(
                                    self.config.child_lifetime,
                                    self.rng.as_mut(),
                                    now,
                                ),
                                key_exchanges: c.inbound.key_exchanges.clone(),
                                label: c.inbound.label.clone(),
                            });
                            events.push(Event::ChildSaRekeyed {
                                old_inbound_spi: inbound,
                                old_outbound_spi: outbound,
                                inbound: c.inbound,
                                outbound: c.outbound,
                            });
                        }
                        events.push(Event::ChildSaDown {
                            inbound_spi: inbound,
                            outbound_spi: outbound,
                        });
                    }
                    // A pair replaced by a rekey, or the redundant
                    // pair of a collision (section 2.8.1).
                    let (gone, kept): (Vec<Retired>, Vec<Retired>) =
                        st.retired.iter().partition(|r| {
                            d.spis.iter().any(|spi| spi[..] == r.outbound.to_be_bytes())
                        });
                    st.retired = kept;
                    for r in gone {
                        reply.push(Payload::Delete(Delete::esp(&[r.inbound])));
                        if r.announce {
                            events.push(Event::ChildSaDown {
                                inbound_spi: r.inbound,
                                outbound_spi: r.outbound,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        if delete_ike {
            // RFC 7296 section 1.4.1: deleting the IKE SA deletes its Child
            // SAs; the response is an empty INFORMATIONAL message.
            reply.clear();
            events = vec![Event::IkeSaDeleted];
        }
        let State::Established(st) = &self.state else {
            return;
        };
        let sealed = self.seal(&st.sk, &response, &reply);
        self.peer_next_id = id.wrapping_add(1);
        match sealed {
            Ok(bytes) => self.send_response(id, bytes),
            Err(e) => return self.local_error(e),
        }
        if delete_ike {
            self.state = State::Closed;
        }
        self.events.extend(events);
    }
}
