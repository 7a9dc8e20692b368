//! The driver's view for `tunsec status` and its log lines.

use super::{IkeDriver, reload};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use tunsec_ike::message::TrafficSelector;
use tunsec_ike::sa::ChildSaParams;

use crate::status::{IkeEndpointStatus, IkeStatus, nat_summary};

impl IkeDriver {
    pub(super) fn publish_status(&mut self) {
        let now = Instant::now();
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
                    last_error: p.last_error.clone(),
                    child_sas: p.child_sas,
                    ike_rekeys: p.ike_rekeys,
                    auth: Some(reload::auth_summary(&p.ike)),
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

/// Logs a Child SA pair that was installed: the peer, its SPIs in hex,
/// the mode, the suite, and the traffic selectors (ours, the peer's).
/// Never its keys.
pub(super) fn log_child(
    name: &str,
    addr: IpAddr,
    what: &str,
    inbound: &ChildSaParams,
    outbound: &ChildSaParams,
) {
    let list = |ts: &[TrafficSelector]| {
        ts.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        peer = %name,
        addr = %addr,
        spi_in = format_args!("{:#010x}", inbound.spi),
        spi_out = format_args!("{:#010x}", outbound.spi),
        mode = %if inbound.transport { "transport" } else { "tunnel" },
        suite = %inbound.suite,
        esn = inbound.esn,
        udp_encap = inbound.udp_encap,
        local_ts = %list(&inbound.local_ts),
        remote_ts = %list(&inbound.remote_ts),
        "{what}"
    );
}

/// An IKE suite in strongSwan's proposal syntax, as the config writes it
/// (`aes128gcm16-prfsha256-x25519`, `aes256-sha256-prfsha256-modp2048`).
pub(super) fn suite_name(s: &tunsec_ike::crypto::IkeSuite) -> String {
    use tunsec_ike::crypto::Prf;
    use tunsec_ike::message::DhGroup;
    let (encr, integ) = transform_names(s);
    let prf = match s.prf {
        Prf::HmacSha2_256 => "prfsha256",
        Prf::HmacSha2_384 => "prfsha384",
        Prf::HmacSha2_512 => "prfsha512",
    };
    let group = match s.group {
        DhGroup::Curve25519 => "x25519".to_owned(),
        DhGroup::Ecp256 => "ecp256".to_owned(),
        DhGroup::Ecp384 => "ecp384".to_owned(),
        DhGroup::Modp2048 => "modp2048".to_owned(),
        other => format!("group{}", u16::from(other)),
    };
    [Some(encr), integ, Some(prf), Some(group.as_str())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("-")
}

/// An IKE suite's cipher and integrity algorithm in strongSwan's
/// proposal syntax (`aes128gcm16`, `aes256` and `sha256`); no integrity
/// algorithm with an AEAD cipher.
pub(super) fn transform_names(
    s: &tunsec_ike::crypto::IkeSuite,
) -> (&'static str, Option<&'static str>) {
    use tunsec_ike::crypto::{Encr, Integ};
    let encr = match s.encr {
        Encr::AesCbc128 => "aes128",
        Encr::AesCbc256 => "aes256",
        Encr::AesGcm128 => "aes128gcm16",
        Encr::AesGcm256 => "aes256gcm16",
        Encr::ChaCha20Poly1305 => "chacha20poly1305",
    };
    let integ = s.integ.map(|i| match i {
        Integ::HmacSha2_256_128 => "sha256",
        Integ::HmacSha2_384_192 => "sha384",
        Integ::HmacSha2_512_256 => "sha512",
    });
    (encr, integ)
}

#[cfg(test)]
mod test {
    use tunsec_ike::crypto::{Encr, IkeSuite, Integ, Prf};
    use tunsec_ike::message::DhGroup;

    #[test]
    fn suite_names_are_strongswan_syntax() {
        let gcm = IkeSuite {
            encr: Encr::AesGcm128,
            integ: None,
            prf: Prf::HmacSha2_256,
            group: DhGroup::Curve25519,
        };
        assert_eq!(super::suite_name(&gcm), "aes128gcm16-prfsha256-x25519");
        let cbc = IkeSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha2_256_128),
            prf: Prf::HmacSha2_256,
            group: DhGroup::Modp2048,
        };
        assert_eq!(super::suite_name(&cbc), "aes256-sha256-prfsha256-modp2048");
    }
}
