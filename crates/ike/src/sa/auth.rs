//! How an IKE SA authenticates in IKE_AUTH: a pre-shared key, or a
//! certificate and a signature (RFC 7296 section 2.15, RFC 7427, RFC 4945).
//!
//! With [`Config::cert`] set:
//!
//! - IKE_SA_INIT: both messages carry SIGNATURE_HASH_ALGORITHMS (RFC 7427
//!   section 4; the responder only if the initiator sent it), and the
//!   responder's carries a CERTREQ naming the CAs it trusts (RFC 7296
//!   section 3.7).
//! - IKE_AUTH: each side sends its end-entity certificate and its
//!   intermediates in CERT payloads (encoding 4, X.509 signature, end
//!   entity first; section 3.6), the initiator a CERTREQ too, and an AUTH
//!   payload that signs the same octets a PSK would MAC (section 2.15).
//!   The method is 14, Digital Signature (RFC 7427), when the peer sent
//!   SIGNATURE_HASH_ALGORITHMS with a hash our key can sign with; else 9
//!   or 10 (RFC 4754) for an ECDSA key. An RSA or Ed25519 key facing a
//!   peer that announced nothing still signs with method 14: we never sign
//!   method 1 (PKCS#1 v1.5 with SHA-1).
//! - The peer's certificate is checked with [`crate::cert::verify_peer`]
//!   against the peer's [`Trust`](crate::cert::Trust) at the wall-clock
//!   time [`WallClock`](super::WallClock) gives, its ID against the
//!   certificate and [`Config::remote_id`], and
//!   its AUTH (methods 14, 9, 10 and 1) with the certificate's key. Any
//!   failure is [`AuthFailure::Certificate`] with the [`CertError`] that
//!   says why, answered AUTHENTICATION_FAILED.

use std::time::Instant;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use rustls_pki_types::CertificateDer;
use tunsec_esp::Key;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::config::Config;
use super::event::{AuthFailure, Event};
use super::payloads::Payloads;
use super::state::{IkeSa, Role, Sk, State};
use crate::cert::identity::{check_certificate_identity, check_expected_identity};
use crate::cert::{
    CertError, HashAlgorithm, SUPPORTED_HASHES, encode_hash_algorithms, parse_hash_algorithms,
    verify_peer,
};
use crate::crypto::{IkeSuite, shared_key_auth, signed_octets};
use crate::error::{Error, Result};
use crate::message::{
    Auth, AuthMethod, CertEncoding, Certificate, ExchangeType, Header, Identity, Message, Notify,
    NotifyType, Payload,
};

/// IKE_SA_INIT: the SIGNATURE_HASH_ALGORITHMS notify we announce (RFC 7427
/// section 4), when we authenticate with a certificate.
pub(super) fn hash_algorithms_notify(config: &Config) -> Option<Payload> {
    config.cert.as_ref()?;
    Some(Payload::Notify(Notify::new(
        NotifyType::SignatureHashAlgorithms,
        encode_hash_algorithms(&SUPPORTED_HASHES),
    )))
}

/// The hash algorithms the peer announced in IKE_SA_INIT; `None` if it
/// sent no SIGNATURE_HASH_ALGORITHMS (or one that does not parse, which is
/// treated the same: RFC 7427 section 4 leaves us the older methods).
pub(super) fn peer_hash_algorithms(payloads: &[Payload]) -> Option<Vec<HashAlgorithm>> {
    let n = Payloads(payloads).notify(NotifyType::SignatureHashAlgorithms)?;
    parse_hash_algorithms(&n.data).ok()
}

/// A CERTREQ naming the CAs we trust for the peer (RFC 7296 section 3.7:
/// the SHA-1 hashes of their SubjectPublicKeyInfo); none for pinned trust
/// or PSK.
pub(super) fn certreq(config: &Config) -> Option<Payload> {
    let data = config.cert.as_ref()?.trust.certreq_data();
    (!data.is_empty()).then_some(Payload::CertificateRequest(Certificate {
        encoding: CertEncoding::X509Signature,
        data,
    }))
}

/// Our CERT payloads: the end entity first, then the intermediates (RFC
/// 7296 section 3.6).
pub(super) fn cert_payloads(config: &Config) -> Vec<Payload> {
    config
        .cert
        .as_ref()
        .map(|c| {
            c.credentials
                .chain
                .iter()
                .map(|der| {
                    Payload::Certificate(Certificate {
                        encoding: CertEncoding::X509Signature,
                        data: der.to_vec(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Responder: the identity we answer as, given the initiator's IDr (the
/// identity it expects of us, RFC 7296 section 3.5). Without IDr, or with
/// ours, [`Config::local_id`]. With a certificate, any identity the
/// certificate holds (RFC 4945 section 3.1: its subject, or a
/// subjectAltName), which we then answer as, so that a peer that names
/// us by a SAN while our `local_id` is the subject DN still finds us.
/// Else [`AuthFailure::NotOurIdentity`].
pub(super) fn responder_identity(
    config: &Config,
    idr: Option<&Identity>,
) -> Result<Identity, AuthFailure> {
    let Some(idr) = idr else {
        return Ok(config.local_id.clone());
    };
    if check_expected_identity(idr, &config.local_id).is_ok() {
        return Ok(config.local_id.clone());
    }
    let ours = config
        .cert
        .as_ref()
        .and_then(|c| c.credentials.chain.first())
        .and_then(|der| X509Certificate::from_der(der.as_ref()).ok())
        .is_some_and(|(_, cert)| check_certificate_identity(&cert, idr).is_ok());
    if ours {
        Ok(idr.clone())
    } else {
        Err(AuthFailure::NotOurIdentity {
            asked: idr.clone(),
            ours: config.local_id.clone(),
        })
    }
}

/// Our AUTH payload over our signed octets (RFC 7296 section 2.15:
/// `real_message | peer_nonce | prf(SK_p, IDx')`, `our_id` being the ID
/// payload we send): the PSK's MAC, or a signature (see the module
/// documentation for the method).
#[allow(clippy::too_many_arguments)]
pub(super) fn local_auth(
    config: &Config,
    our_id: &Identity,
    suite: &IkeSuite,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &Key,
    peer_hashes: Option<&[HashAlgorithm]>,
    int_auth: &[u8],
) -> Result<Auth> {
    // RFC 9242 section 3.3.2: after IKE_INTERMEDIATE exchanges the octets
    // end in IntAuth_i | IntAuth_r | IKE_AUTH's message ID (`int_auth`).
    let mut octets = signed_octets(
        suite.prf,
        real_message,
        peer_nonce,
        sk_p,
        &encode_id(our_id),
    );
    octets.extend_from_slice(int_auth);
    let Some(cert) = &config.cert else {
        let auth = shared_key_auth(suite.prf, config.psk.expose(), &octets);
        return Ok(Auth {
            method: AuthMethod::SharedKey,
            data: auth.expose().to_vec(),
        });
    };
    let key = &cert.credentials.key;
    let scheme = peer_hashes.and_then(|h| key.choose_scheme(h));
    let (method, scheme) = match (scheme, key.legacy_method()) {
        (Some(scheme), _) => (AuthMethod::DigitalSignature, scheme),
        (None, Some(method)) => (method, key.schemes()[0]),
        (None, None) => (AuthMethod::DigitalSignature, key.schemes()[0]),
    };
    let data = key
        .auth_data(method, scheme, &octets)
        .map_err(|_| Error::Crypto("signing the AUTH payload failed"))?;
    Ok(Auth { method, data })
}

/// Checks the peer's AUTH payload (and, with certificates, its CERT
/// payloads and identity) over the peer's signed octets.
#[allow(clippy::too_many_arguments)]
pub(super) fn verify_peer_auth(
    config: &Config,
    now: Instant,
    payloads: &[Payload],
    id: &Identity,
    auth: &Auth,
    suite: &IkeSuite,
    peer_real_message: &[u8],
    our_nonce: &[u8],
    sk_p: &Key,
    int_auth: &[u8],
) -> Result<(), AuthFailure> {
    let mut octets = signed_octets(
        suite.prf,
        peer_real_message,
        our_nonce,
        sk_p,
        &encode_id(id),
    );
    octets.extend_from_slice(int_auth);
    let Some(cert) = &config.cert else {
        if let Some(expected) = config.remote_id.as_ref().filter(|r| *r != id) {
            return Err(AuthFailure::IdentityMismatch {
                presented: id.clone(),
                expected: expected.clone(),
            });
        }
        if auth.method != AuthMethod::SharedKey {
            return Err(AuthFailure::UnsupportedMethod);
        }
        let expected = shared_key_auth(suite.prf, config.psk.expose(), &octets);
        return verify_slices_are_equal(expected.expose(), &auth.data)
            .map_err(|_| AuthFailure::BadAuth);
    };
    if !matches!(
        auth.method,
        AuthMethod::DigitalSignature
            | AuthMethod::EcdsaSha256P256
            | AuthMethod::EcdsaSha384P384
            | AuthMethod::RsaSignature
    ) {
        return Err(AuthFailure::UnsupportedMethod);
    }
    let (end_entity, intermediates) = peer_certificates(payloads)?;
    let expected = config.remote_id.as_ref().unwrap_or(id);
    let public = verify_peer(
        &end_entity,
        &intermediates,
        &cert.trust,
        cert.clock.at(now),
        id,
        expected,
    )
    .map_err(AuthFailure::Certificate)?;
    public
        .verify(auth.method, &auth.data, &octets)
        .map(|_| ())
        .map_err(AuthFailure::Certificate)
}

/// The peer's X.509 certificates from its CERT payloads: the first is the
/// end entity (RFC 7296 section 3.6), the others intermediates. CERT
/// payloads of other encodings are ignored.
fn peer_certificates(
    payloads: &[Payload],
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), AuthFailure> {
    let mut certs = payloads.iter().filter_map(|p| match p {
        Payload::Certificate(c) if c.encoding == CertEncoding::X509Signature => {
            Some(CertificateDer::from(c.data.clone()))
        }
        _ => None,
    });
    let end_entity = certs
        .next()
        .ok_or(AuthFailure::Certificate(CertError::Malformed(
            "no X.509 CERT payload from the peer",
        )))?;
    Ok((end_entity, certs.collect()))
}

pub(super) fn encode_id(id: &Identity) -> Vec<u8> {
    let mut body = Vec::new();
    id.encode(&mut body);
    body
}

impl IkeSa {
    /// Checks the peer's identity and AUTH payload: against our PSK, or
    /// its certificate against our trust and its signature (auth.rs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verify_peer(
        &self,
        now: Instant,
        payloads: &[Payload],
        id: &Identity,
        auth: &Auth,
        sk: &Sk,
        peer_real_message: &[u8],
        our_nonce: &[u8],
        int_auth: &[u8],
    ) -> Result<(), AuthFailure> {
        let sk_p = match self.role {
            Role::Initiator => &sk.keys.sk_pr,
            Role::Responder => &sk.keys.sk_pi,
        };
        verify_peer_auth(
            &self.config,
            now,
            payloads,
            id,
            auth,
            &sk.suite,
            peer_real_message,
            our_nonce,
            sk_p,
            int_auth,
        )
    }

    /// Initiator: the responder's AUTH (or certificate) is refused. RFC
    /// 7296 section 2.21.2: the initiator tells the responder in an
    /// INFORMATIONAL request of its own with AUTHENTICATION_FAILED (sent
    /// once, not retransmitted: the IKE SA is closed at once).
    pub(super) fn refuse_responder(&mut self, sk: &Sk, reason: AuthFailure) {
        let header = self.header(ExchangeType::Informational, false, 2);
        let notify = [Payload::Notify(Notify::empty(
            NotifyType::AuthenticationFailed,
        ))];
        if let Ok(bytes) = self.seal(sk, &header, &notify) {
            self.transmit_all(bytes);
        }
        self.close(Event::AuthFailed { reason });
    }

    /// Responder: whether an established IKE SA's request is the
    /// initiator's INFORMATIONAL AUTHENTICATION_FAILED (section 2.21.2),
    /// its first request after IKE_AUTH; if so it is answered, and the IKE
    /// SA closes with [`AuthFailure::RejectedByPeer`] (the owner removes
    /// its Child SA).
    pub(super) fn on_auth_failed_informational(
        &mut self,
        header: &Header,
        message: &Message,
    ) -> bool {
        let refused = self.role == Role::Responder
            && header.exchange_type == ExchangeType::Informational
            && header.message_id == 2
            && Payloads(&message.payloads)
                .notify(NotifyType::AuthenticationFailed)
                .is_some();
        if !refused {
            return false;
        }
        if let State::Established(st) = &self.state {
            let response = self.header(ExchangeType::Informational, true, 2);
            if let Ok(bytes) = self.seal(&st.sk, &response, &[]) {
                self.send_response(2, bytes);
            }
        }
        self.close(Event::AuthFailed {
            reason: AuthFailure::RejectedByPeer,
        });
        true
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
