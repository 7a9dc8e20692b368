//! Key export, for debugging with Wireshark only: the SK_e and SK_a keys
//! of an IKE SA, which Wireshark's IKEv2 decryption table
//! (`ikev2_decryption_table`) needs to open the SK payloads of a capture.
//! `tunsec keys export --wireshark` asks for them; nothing else may.

use super::IkeSa;
use super::state::State;
use crate::crypto::{IkeKeys, IkeSuite};

/// What a dissector needs to open an IKE SA's encrypted messages: its
/// SPIs, its transforms and its keys. It borrows the keys from the IKE
/// SA (they zeroize with it, and print as `<redacted>`).
#[derive(Debug, Clone, Copy)]
pub struct IkeSaKeys<'a> {
    /// The initiator's SPI.
    pub spi_i: u64,
    /// The responder's SPI.
    pub spi_r: u64,
    /// The negotiated transforms: which cipher SK_ei/SK_er are for, and
    /// which integrity algorithm SK_ai/SK_ar are for (none with an AEAD).
    pub suite: IkeSuite,
    /// The keys (RFC 7296 section 2.14): SK_ei and SK_er with the AEAD
    /// salt at their end (RFC 5282 section 7.1), SK_ai and SK_ar empty
    /// with an AEAD.
    pub keys: &'a IkeKeys,
}

impl IkeSa {
    /// The SPIs, transforms and keys of this IKE SA, once IKE_SA_INIT is
    /// done and until it closes; `None` before and after. After a rekey
    /// of the IKE SA, the new one's (the old one lingers only until it is
    /// deleted).
    ///
    /// For key export (`tunsec keys export --wireshark`, which an
    /// operator asks for explicitly: a capture of this IKE SA's messages
    /// can be decrypted with what this returns) and for harnesses that
    /// must seal messages as the peer would (the `ike_intermediate` fuzz
    /// target); nothing in the daemon's own path reads keys through it.
    pub fn export_keys(&self) -> Option<IkeSaKeys<'_>> {
        let sk = match &self.state {
            State::IntermediateSent(st) => &st.sk,
            State::AuthSent(st) => &st.sk,
            State::ExpectAuth(st) => &st.sk,
            State::Established(st) => &st.sk,
            State::InitSent(_) | State::ExpectInit | State::Closed => return None,
        };
        Some(IkeSaKeys {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            suite: sk.suite,
            keys: &sk.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Instant;

    use tunsec_esp::Key;

    use super::super::{Config, SeededRandom};
    use super::*;
    use crate::crypto::{Encr, Integ};
    use crate::message::Identity;

    fn config(local: &str, remote: &str, proposals: &str) -> Config {
        let mut c = Config::new(
            Identity::Fqdn(local.into()),
            Some(Identity::Fqdn(remote.into())),
            Key::from_slice(b"export test psk"),
        );
        c.ike_proposals = vec![crate::proposal::parse_ike(proposals).unwrap()];
        c
    }

    /// Runs IKE_SA_INIT and IKE_AUTH between two IKE SAs in memory;
    /// checks what each exports on the way.
    fn handshake(proposals: &str) -> (IkeSa, IkeSa) {
        let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 500);
        let b = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 500);
        let now = Instant::now();
        let mut i = IkeSa::initiate(
            config("a.test", "b.test", proposals),
            b,
            now,
            Box::new(SeededRandom::new(1)),
        )
        .unwrap();
        let mut r = IkeSa::respond(
            config("b.test", "a.test", proposals),
            Box::new(SeededRandom::new(2)),
        );
        // Nothing to export before IKE_SA_INIT is answered.
        assert!(i.export_keys().is_none() && r.export_keys().is_none());
        for _ in 0..10 {
            while let Some(t) = i.poll_transmit() {
                r.handle_datagram(now, a, &t.bytes);
            }
            while let Some(t) = r.poll_transmit() {
                i.handle_datagram(now, b, &t.bytes);
            }
        }
        assert!(i.is_established() && r.is_established());
        (i, r)
    }

    /// Both ends export the same SPIs, transforms and keys (each derived
    /// its own), the four keys as long as the transforms need, and the
    /// two directions differ.
    #[test]
    fn both_ends_export_the_same_keys() {
        for (proposals, encr, integ, enc_len, integ_len) in [
            (
                "aes128gcm16-prfsha256-x25519",
                Encr::AesGcm128,
                None,
                16 + 4,
                0,
            ),
            (
                "aes256-sha256-prfsha256-ecp256",
                Encr::AesCbc256,
                Some(Integ::HmacSha2_256_128),
                32,
                32,
            ),
        ] {
            let (i, r) = handshake(proposals);
            let (ki, kr) = (i.export_keys().unwrap(), r.export_keys().unwrap());
            assert_eq!((ki.spi_i, ki.spi_r), i.spis(), "{proposals}");
            assert_eq!((ki.spi_i, ki.spi_r), (kr.spi_i, kr.spi_r), "{proposals}");
            assert_ne!(ki.spi_r, 0, "{proposals}");
            assert_eq!(ki.suite, kr.suite, "{proposals}");
            assert_eq!((ki.suite.encr, ki.suite.integ), (encr, integ));
            for (a, b) in [
                (&ki.keys.sk_ei, &kr.keys.sk_ei),
                (&ki.keys.sk_er, &kr.keys.sk_er),
                (&ki.keys.sk_ai, &kr.keys.sk_ai),
                (&ki.keys.sk_ar, &kr.keys.sk_ar),
            ] {
                assert_eq!(a.expose(), b.expose(), "{proposals}");
            }
            assert_eq!(ki.keys.sk_ei.len(), enc_len, "{proposals}");
            assert_eq!(ki.keys.sk_er.len(), enc_len, "{proposals}");
            assert_eq!(ki.keys.sk_ai.len(), integ_len, "{proposals}");
            assert_eq!(ki.keys.sk_ar.len(), integ_len, "{proposals}");
            assert_ne!(ki.keys.sk_ei.expose(), ki.keys.sk_er.expose());
            // Printing the export shows no key.
            let shown = format!("{ki:?}");
            let raw = format!("{:?}", ki.keys.sk_ei.expose());
            assert!(!shown.contains(&raw[1..raw.len() - 1]), "{shown}");
        }
    }
}
