//! The driver's log lines: installed Child SAs, failed IKE SAs, and the
//! suites in strongSwan's proposal syntax (which `tunsec status` and the
//! key export show too). Never a key.

use std::net::IpAddr;

use tunsec_ike::message::TrafficSelector;
use tunsec_ike::sa::{ChildSaParams, Event};

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
/// Key exchange methods in the order they ran, as status shows them:
/// strongSwan's names joined by `+` (`x25519+mlkem768`), `none` for
/// none.
pub(super) fn key_exchanges_name(groups: &[tunsec_ike::message::DhGroup]) -> String {
    if groups.is_empty() {
        return "none".to_owned();
    }
    groups
        .iter()
        .map(|g| {
            tunsec_ike::proposal::group_name(*g)
                .map_or_else(|| format!("group{}", u16::from(*g)), str::to_owned)
        })
        .collect::<Vec<_>>()
        .join("+")
}

pub(super) fn suite_name(s: &tunsec_ike::crypto::IkeSuite) -> String {
    use tunsec_ike::crypto::Prf;
    let (encr, integ) = transform_names(s);
    let prf = match s.prf {
        Prf::HmacSha2_256 => "prfsha256",
        Prf::HmacSha2_384 => "prfsha384",
        Prf::HmacSha2_512 => "prfsha512",
    };
    let group = tunsec_ike::proposal::group_name(s.group)
        .map_or_else(|| format!("group{}", u16::from(s.group)), str::to_owned);
    // RFC 9370's additional key exchanges, as `keN_<method>`.
    let additional: Vec<String> = s
        .additional
        .iter()
        .enumerate()
        .filter(|(_, g)| **g != tunsec_ike::message::DhGroup::None)
        .map(|(n, g)| {
            let name = tunsec_ike::proposal::group_name(*g)
                .map_or_else(|| format!("group{}", u16::from(*g)), str::to_owned);
            format!("ke{}_{name}", n + 1)
        })
        .collect();
    [Some(encr), integ, Some(prf), Some(group.as_str())]
        .into_iter()
        .flatten()
        .chain(additional.iter().map(String::as_str))
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

/// The events of a failed IKE SA, for a log line: an authentication
/// failure in words (`IKE authentication failed: ... certificate
/// revoked`), the others as they print.
pub(super) fn describe_events(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e {
            Event::AuthFailed { reason } => format!("IKE authentication failed: {reason}"),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
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
            additional: [DhGroup::None; 7],
        };
        assert_eq!(super::suite_name(&gcm), "aes128gcm16-prfsha256-x25519");
        let cbc = IkeSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha2_256_128),
            prf: Prf::HmacSha2_256,
            group: DhGroup::Modp2048,
            additional: [DhGroup::None; 7],
        };
        assert_eq!(super::suite_name(&cbc), "aes256-sha256-prfsha256-modp2048");
        let pq = IkeSuite {
            group: DhGroup::MlKem768,
            ..gcm
        };
        assert_eq!(super::suite_name(&pq), "aes128gcm16-prfsha256-mlkem768");
        let mut additional = [DhGroup::None; 7];
        additional[0] = DhGroup::MlKem768;
        additional[1] = DhGroup::MlKem1024;
        let hybrid = IkeSuite { additional, ..gcm };
        assert_eq!(
            super::suite_name(&hybrid),
            "aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024"
        );
    }
}
