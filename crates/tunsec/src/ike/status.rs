//! The driver's view for `tunsec status`.

use super::IkeDriver;
use super::logging::{key_exchanges_name, suite_name};
use super::networks::name_of;
use std::collections::HashMap;
use std::time::Instant;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{ChildKeys, IkePeer};
use crate::status::{ChildKeyExchange, IkeEndpointStatus, IkeStatus, nat_summary};

impl IkeDriver {
    pub(super) fn publish_status(&mut self) {
        let now = Instant::now();
        self.published_at = now;
        let mut map = HashMap::new();
        for i in 0..self.peers.len() {
            let sa = self.peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
            let secs_since =
                |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs());
            let secs_until =
                |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now).as_secs());
            let (ike_rekey, child_rekey) = sa.as_ref().map_or((None, None), |sa| sa.rekey_times());
            let age = sa.as_ref().and_then(|sa| sa.established_at());
            let nat_state = sa.as_ref().and_then(|sa| sa.nat());
            let nat =
                nat_state.map(|n| nat_summary(n.local_behind_nat, n.remote_behind_nat, n.forced));
            let stats = sa.as_ref().map(|sa| sa.stats()).unwrap_or_default();
            // The role of the IKE SA there is (whoever started it), else
            // the one this host takes when it connects.
            let role = match sa.as_ref().map(|sa| sa.is_initiator()) {
                Some(true) => "initiator",
                Some(false) => "responder",
                None if self.peers[i].initiator && self.peers[i].half_open.is_empty() => {
                    "initiator"
                }
                None => "responder",
            };
            let key_exchange = sa.as_ref().and_then(|sa| sa.ike_suite()).map(|s| {
                let groups: Vec<_> = std::iter::once(s.group)
                    .chain(s.additional_key_exchanges())
                    .collect();
                key_exchanges_name(&groups)
            });
            let gateway = !self.peers[i].gateway_selectors.is_empty();
            let children = sa.as_ref().map_or_else(Vec::new, |sa| {
                sa.child_sas()
                    .into_iter()
                    .map(|c| ChildKeyExchange {
                        spi_in: format!("{:#010x}", c.inbound_spi),
                        spi_out: format!("{:#010x}", c.outbound_spi),
                        key_exchange: key_exchanges_name(&c.key_exchanges),
                        // Overlay: the network's name; gateway: the
                        // label itself (`vxlan/100`), the VNI rule's.
                        network: c.label.as_deref().and_then(|l| {
                            if gateway {
                                Some(String::from_utf8_lossy(l).into_owned())
                            } else {
                                name_of(&self.networks, l).map(str::to_owned)
                            }
                        }),
                    })
                    .collect()
            });
            // Configured per network, but every Child SA came up unlabelled:
            // the peer does not do it (strongSwan), and they are shared.
            let unlabelled = !children.is_empty() && children.iter().all(|c| c.network.is_none());
            let labelled = children.iter().any(|c| c.network.is_some());
            let keys = match self.peers[i].ike.keys {
                ChildKeys::Shared if gateway => None,
                ChildKeys::PerNetwork if gateway && !labelled && !children.is_empty() => {
                    Some("shared: the peer does not do keys per network".to_owned())
                }
                ChildKeys::PerNetwork if gateway => Some("per network".to_owned()),
                ChildKeys::Shared => Some("shared".to_owned()),
                ChildKeys::PerNetwork if unlabelled => {
                    Some("shared: the peer does not do keys per network".to_owned())
                }
                ChildKeys::PerNetwork => Some("per network".to_owned()),
            };
            let sa = sa.map(|sa| {
                (
                    sa.is_established(),
                    sa.spis(),
                    sa.ike_suite().map(|s| suite_name(&s)),
                )
            });
            let p = &self.peers[i];
            let (state, spis, suite) = match sa {
                Some((established, spis, suite)) => (
                    if established {
                        "established".to_owned()
                    } else {
                        "connecting".to_owned()
                    },
                    Some(spis),
                    suite,
                ),
                None if !p.half_open.is_empty() => ("connecting".to_owned(), None, None),
                None => match (&p.last_error, p.initiator) {
                    (Some(e), _) => (format!("failed: {e}"), None, None),
                    (None, true) => ("connecting".to_owned(), None, None),
                    (None, false) => ("waiting".to_owned(), None, None),
                },
            };
            map.insert(
                p.index,
                IkeStatus {
                    age_secs: secs_since(age),
                    rekey_in_secs: secs_until(ike_rekey),
                    child_rekey_in_secs: secs_until(child_rekey),
                    nat,
                    nat_local: nat_state.map(|n| n.local_behind_nat),
                    nat_peer_mismatch: nat_state.map(|n| n.remote_behind_nat),
                    udp_encap_forced: nat_state.map(|n| n.forced),
                    retransmits: stats.retransmits,
                    dropped: stats.malformed
                        + stats.wrong_spi
                        + stats.wrong_message_id
                        + stats.integrity
                        + stats.unexpected,
                    fragments_sent: stats.fragments_sent,
                    fragments_received: stats.fragments_received,
                    half_open: p.half_open.len() as u64,
                    handshakes_failed: p.handshakes_failed,
                    state,
                    role: role.to_owned(),
                    spi_i: spis.map(|s| format!("{:#018x}", s.0)),
                    spi_r: spis.map(|s| format!("{:#018x}", s.1)),
                    suite,
                    key_exchange,
                    children,
                    keys,
                    last_error: p.last_error.clone(),
                    child_sas: p.child_sas,
                    ike_rekeys: p.ike_rekeys,
                    auth: Some(auth_summary(&p.ike)),
                },
            );
        }
        let e = self.endpoint.stats();
        let endpoint = IkeEndpointStatus {
            half_open: self.endpoint.half_open() as u64,
            responders: e.responders,
            cookies_sent: e.cookies_sent,
            bad_cookies: e.bad_cookies,
            refused: e.refused,
            malformed: e.malformed,
            unknown_spi: e.unknown_spi,
        };
        if let Ok(mut states) = self.states.lock() {
            *states = super::IkeView {
                peers: map,
                endpoint: Some(endpoint),
            };
        }
    }
}

/// How a peer's `[peer.ike]` authenticates, for `tunsec status`: `psk`,
/// or our certificate (subject, key type, notAfter) and the trust in the
/// peer, with the identity it must prove.
pub(super) fn auth_summary(ike: &IkePeer) -> String {
    let expect = ike.remote_id.as_ref().map_or_else(
        || "any identity in it".to_owned(),
        super::hint::show_identity,
    );
    let Some(cert) = &ike.cert else {
        return format!("psk, peer {expect}");
    };
    let ours = cert
        .credentials
        .chain
        .first()
        .and_then(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map_or_else(
            || "certificate (unreadable)".to_owned(),
            |(_, c)| {
                format!(
                    "certificate {} ({}, until {})",
                    c.subject(),
                    cert.credentials.key.key_type(),
                    c.validity().not_after
                )
            },
        );
    format!("{ours}; peer {expect}, {}", cert.trust.describe())
}
