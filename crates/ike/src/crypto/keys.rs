//! Key derivation: SKEYSEED and the IKE SA keys (RFC 7296 section 2.14),
//! Child SA keying material (section 2.17), and the octets that AUTH
//! covers (section 2.15).

use tunsec_esp::{SaKeys, Suite};

use super::{Encr, Integ, Key, Prf, SkCipher};
use crate::error::{Error, Result};
use crate::message::{DhGroup, Proposal, TransformId};

/// The transforms of an IKE SA, one of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// The cipher that protects the SK payload.
    pub encr: Encr,
    /// The integrity algorithm; `None` with an AEAD cipher.
    pub integ: Option<Integ>,
    /// The pseudorandom function.
    pub prf: Prf,
    /// The Diffie-Hellman group.
    pub group: DhGroup,
    /// The additional key exchanges (RFC 9370), ADDKE1 to ADDKE7 in
    /// order; [`DhGroup::None`] where there is none.
    pub additional: [DhGroup; 7],
}

impl IkeSuite {
    /// The suite of a negotiated IKE proposal: exactly one transform of
    /// each type, all supported, an integrity algorithm exactly when the
    /// cipher is not an AEAD (RFC 5282: an AEAD proposal has no
    /// integrity transform, or only NONE).
    pub fn from_proposal(proposal: &Proposal) -> Result<Self> {
        let mut encr = None;
        let mut integ = None;
        let mut prf = None;
        let mut group = None;
        let mut additional = [None; 7];
        for t in &proposal.transforms {
            let unsupported = || Error::Unsupported {
                what: "IKE transform",
                value: u64::from(t.id.id()),
            };
            let slot_taken = |taken: bool| {
                if taken {
                    Err(Error::InvalidValue {
                        what: "negotiated proposal: two transforms of one type",
                        value: u64::from(t.id.transform_type().value()),
                    })
                } else {
                    Ok(())
                }
            };
            match t.id {
                TransformId::Encr(_) => {
                    slot_taken(encr.is_some())?;
                    encr = Some(Encr::from_transform(t).ok_or_else(unsupported)?);
                }
                TransformId::Integ(crate::message::IntegId::None) if t.attributes.is_empty() => {
                    slot_taken(integ.is_some())?;
                    integ = Some(None);
                }
                TransformId::Integ(_) => {
                    slot_taken(integ.is_some())?;
                    integ = Some(Some(Integ::from_transform(t).ok_or_else(unsupported)?));
                }
                TransformId::Prf(_) => {
                    slot_taken(prf.is_some())?;
                    prf = Some(Prf::from_transform(t).ok_or_else(unsupported)?);
                }
                TransformId::Dh(g) if t.attributes.is_empty() => {
                    slot_taken(group.is_some())?;
                    group = Some(g);
                }
                TransformId::AddKe { index, group: g }
                    if (1..=7).contains(&index)
                        && t.attributes.is_empty()
                        && (g == DhGroup::None || super::find_group(g).is_some()) =>
                {
                    let slot = &mut additional[usize::from(index - 1)];
                    slot_taken(slot.is_some())?;
                    *slot = Some(g);
                }
                _ => return Err(unsupported()),
            }
        }
        let missing = |what| Error::InvalidValue { what, value: 0 };
        let encr = encr.ok_or(missing("negotiated proposal: no encryption algorithm"))?;
        let integ = integ.flatten();
        if encr.is_aead() != integ.is_none() {
            return Err(Error::InvalidValue {
                what: "negotiated proposal: integrity algorithm with an AEAD, or none without",
                value: integ.map_or(0, |i| u64::from(i.id().value())),
            });
        }
        Ok(Self {
            encr,
            integ,
            prf: prf.ok_or(missing("negotiated proposal: no prf"))?,
            group: group.ok_or(missing("negotiated proposal: no Diffie-Hellman group"))?,
            additional: additional.map(|g| g.unwrap_or(DhGroup::None)),
        })
    }

    /// The additional key exchanges to run after the first, in order
    /// (RFC 9370 section 2.2.1: by ascending transform type).
    pub fn additional_key_exchanges(&self) -> impl Iterator<Item = DhGroup> + '_ {
        self.additional
            .iter()
            .copied()
            .filter(|g| *g != DhGroup::None)
    }
}

// The ciphers are built here from the keys, so that `sk` (which only
// protects messages) needs nothing from this module.
impl SkCipher {
    /// The outbound and inbound ciphers of one side of an IKE SA.
    pub fn pair(suite: &IkeSuite, keys: &IkeKeys, initiator: bool) -> Result<(Self, Self)> {
        let i = Self::new(
            suite.encr,
            suite.integ.map(|a| (a, &keys.sk_ai)),
            &keys.sk_ei,
        )?;
        let r = Self::new(
            suite.encr,
            suite.integ.map(|a| (a, &keys.sk_ar)),
            &keys.sk_er,
        )?;
        Ok(if initiator { (i, r) } else { (r, i) })
    }
}

/// The keys of an IKE SA (RFC 7296 section 2.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeKeys {
    /// SK_d: the key Child SA keys (and a rekeyed IKE SA's SKEYSEED) are
    /// derived from.
    pub sk_d: Key,
    /// SK_ai: integrity key, initiator to responder; empty with an AEAD.
    pub sk_ai: Key,
    /// SK_ar: integrity key, responder to initiator; empty with an AEAD.
    pub sk_ar: Key,
    /// SK_ei: encryption key (salt included), initiator to responder.
    pub sk_ei: Key,
    /// SK_er: encryption key (salt included), responder to initiator.
    pub sk_er: Key,
    /// SK_pi: the key of the initiator's AUTH payload.
    pub sk_pi: Key,
    /// SK_pr: the key of the responder's AUTH payload.
    pub sk_pr: Key,
}

/// SKEYSEED of a new IKE SA.
///
/// RFC 7296 section 2.14: `SKEYSEED = prf(Ni | Nr, g^ir)`, the nonces
/// without their payload headers and `g^ir` as long as the group's modulus
/// or coordinate (the key exchange returns it so).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Key {
    let nonces = Key::new([ni, nr].concat());
    prf.prf(nonces.expose(), &[g_ir])
}

/// SKEYSEED of an IKE SA that rekeys another.
///
/// RFC 7296 section 2.18: `SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)`,
/// with the prf of the old IKE SA and the nonces of the CREATE_CHILD_SA
/// exchange. With additional key exchanges in IKE_FOLLOWUP_KE (RFC 9370
/// section 2.2.2), their secrets `additional` follow the nonces:
/// `SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))`.
pub fn skeyseed_rekey(
    old_prf: Prf,
    old_sk_d: &Key,
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    additional: &[&[u8]],
) -> Key {
    let mut seed = vec![g_ir, ni, nr];
    seed.extend_from_slice(additional);
    old_prf.prf(old_sk_d.expose(), &seed)
}

impl IkeKeys {
    /// Splits prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) into the seven keys.
    ///
    /// RFC 7296 section 2.14:
    ///
    /// ```text
    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
    ///                 = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)
    /// ```
    ///
    /// SK_d, SK_pi and SK_pr are as long as the prf's key, SK_ai and SK_ar
    /// as the integrity algorithm's key, and SK_ei and SK_er as the
    /// cipher's key, with the 4-byte salt of the AEAD ciphers (RFC 5282,
    /// RFC 7634).
    pub fn derive(
        suite: &IkeSuite,
        skeyseed: &Key,
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self> {
        let prf_len = suite.prf.output_len();
        let integ_len = suite.integ.map_or(0, Integ::key_len);
        let encr_len = suite.encr.key_len();
        let lengths = [
            prf_len, integ_len, integ_len, encr_len, encr_len, prf_len, prf_len,
        ];
        let total = lengths.iter().sum();
        let material = suite.prf.prf_plus(
            skeyseed.expose(),
            &[ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()],
            total,
        )?;
        let mut rest = material.expose();
        let mut next = |len: usize| {
            let (key, tail) = rest.split_at(len);
            rest = tail;
            Key::from_slice(key)
        };
        Ok(Self {
            sk_d: next(prf_len),
            sk_ai: next(integ_len),
            sk_ar: next(integ_len),
            sk_ei: next(encr_len),
            sk_er: next(encr_len),
            sk_pi: next(prf_len),
            sk_pr: next(prf_len),
        })
    }
}

/// The keys of one Child SA pair, split by direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildKeys {
    /// The keys of the SA that carries traffic from the IKE SA's initiator
    /// to its responder.
    pub initiator_to_responder: SaKeys,
    /// The keys of the SA in the other direction.
    pub responder_to_initiator: SaKeys,
}

/// The ESP keys of a Child SA pair, from its keying material.
///
/// RFC 7296 section 2.17: `KEYMAT = prf+(SK_d, Ni | Nr)`, or with a fresh
/// Diffie-Hellman exchange in CREATE_CHILD_SA, `KEYMAT = prf+(SK_d, g^ir
/// (new) | Ni | Nr)`. The nonces are those of the exchange that creates the
/// Child SA (of IKE_SA_INIT for the first one). All keys for the SA
/// carrying data from the initiator to the responder are taken before
/// those of the reverse direction, and within one SA the encryption key
/// comes before the integrity key. The "initiator" is the one of the
/// exchange that created the Child SA.
///
/// With additional key exchanges (RFC 9370 section 2.2.2), their shared
/// secrets `additional` follow the nonces in order:
///
/// ```text
/// KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))
/// ```
pub fn child_sa_keys(
    prf: Prf,
    sk_d: &Key,
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    additional: &[&[u8]],
    suite: Suite,
) -> Result<ChildKeys> {
    let one = suite.encryption_key_len() + suite.integrity_key_len();
    let mut seed = vec![g_ir.unwrap_or(&[]), ni, nr];
    seed.extend_from_slice(additional);
    let keymat = prf.prf_plus(sk_d.expose(), &seed, 2 * one)?;
    let (i_to_r, r_to_i) = keymat.expose().split_at(one);
    let keys = |keymat: &[u8]| {
        SaKeys::from_keymat(suite, keymat).map_err(|_| Error::KeyLength {
            what: "Child SA keys",
            expected: one,
            actual: keymat.len(),
        })
    };
    Ok(ChildKeys {
        initiator_to_responder: keys(i_to_r)?,
        responder_to_initiator: keys(r_to_i)?,
    })
}

/// The octets an AUTH payload covers (RFC 7296 section 2.15): for the
/// initiator
///
/// ```text
/// InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
/// MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
/// ```
///
/// and symmetrically for the responder (`RealMessage2 | NonceIData |
/// prf(SK_pr, RestOfRespIDPayload)`). `message` is the sender's whole
/// IKE_SA_INIT message as sent, `peer_nonce` the other side's nonce data,
/// `sk_p` the sender's SK_pi or SK_pr, and `id_body` the body of the
/// sender's ID payload (see [`crate::message::Identity::encode`]).
pub fn signed_octets(
    prf: Prf,
    message: &[u8],
    peer_nonce: &[u8],
    sk_p: &Key,
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.prf(sk_p.expose(), &[id_body]);
    [message, peer_nonce, maced_id.expose()].concat()
}

/// The AUTH data of a shared key (RFC 7296 section 2.15):
/// `prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)`.
pub fn shared_key_auth(prf: Prf, shared_secret: &[u8], signed_octets: &[u8]) -> Key {
    let pad = prf.prf(shared_secret, &[b"Key Pad for IKEv2"]);
    prf.prf(pad.expose(), &[signed_octets])
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::message::{Message, Payload, PayloadType, decode_payloads};
    use crate::testdata::Capture;

    fn nonce(m: &Message) -> &[u8] {
        match m.payload(PayloadType::Nonce) {
            Some(Payload::Nonce(n)) => n,
            _ => panic!("no nonce"),
        }
    }

    fn suite_of(m: &Message) -> IkeSuite {
        let Some(Payload::Sa(sa)) = m.payload(PayloadType::SecurityAssociation) else {
            panic!("no SA")
        };
        IkeSuite::from_proposal(&sa.proposals[0]).unwrap()
    }

    /// strongSwan's own SKEYSEED and SK_* values, from the shared secret
    /// and the nonces and SPIs on the wire: prf, prf+ and the split of
    /// section 2.14 for all three prfs, AEAD and CBC suites.
    #[test]
    fn strongswan_key_derivation() {
        for c in Capture::all() {
            let init_req = Message::decode(&c.init_req).unwrap();
            let init_resp = Message::decode(&c.init_resp).unwrap();
            let suite = suite_of(&init_resp);
            assert_eq!(suite, suite_of(&init_req));
            let (ni, nr) = (nonce(&init_req), nonce(&init_resp));
            let seed = skeyseed(suite.prf, ni, nr, c.key("g_ir"));
            assert_eq!(seed.expose(), c.key("skeyseed"), "{}", c.name);
            let keys = IkeKeys::derive(
                &suite,
                &seed,
                ni,
                nr,
                init_resp.header.initiator_spi,
                init_resp.header.responder_spi,
            )
            .unwrap();
            for (name, key) in [
                ("sk_d", &keys.sk_d),
                ("sk_ei", &keys.sk_ei),
                ("sk_er", &keys.sk_er),
                ("sk_pi", &keys.sk_pi),
                ("sk_pr", &keys.sk_pr),
            ] {
                assert_eq!(key.expose(), c.key(name), "{} {name}", c.name);
            }
            if suite.integ.is_some() {
                assert_eq!(keys.sk_ai.expose(), c.key("sk_ai"));
                assert_eq!(keys.sk_ar.expose(), c.key("sk_ar"));
            } else {
                assert!(keys.sk_ai.is_empty() && keys.sk_ar.is_empty());
            }
        }
    }

    /// The initiator's PSK AUTH value strongSwan computed and sent, from
    /// the IKE_SA_INIT request, Nr, SK_pi and IDi.
    #[test]
    fn strongswan_psk_auth() {
        for c in Capture::all().filter(|c| c.name.starts_with("psk")) {
            let init_resp = Message::decode(&c.init_resp).unwrap();
            let suite = suite_of(&init_resp);
            let plain = decode_payloads(PayloadType::IdInitiator, c.key("auth_req_plain")).unwrap();
            let Payload::IdInitiator(idi) = &plain[0] else {
                panic!()
            };
            let Some(Payload::Auth(auth)) = plain.iter().find(|p| matches!(p, Payload::Auth(_)))
            else {
                panic!()
            };
            let mut id_body = Vec::new();
            idi.encode(&mut id_body);
            let octets = signed_octets(
                suite.prf,
                &c.init_req,
                nonce(&init_resp),
                &Key::from_slice(c.key("sk_pi")),
                &id_body,
            );
            let expected = shared_key_auth(suite.prf, c.key("psk"), &octets);
            assert_eq!(expected.expose(), &auth.data[..], "{}", c.name);
            assert_eq!(expected.expose(), c.key("auth_i"));
        }
    }

    #[test]
    fn child_sa_keys_split_by_direction_then_by_kind() {
        let prf = Prf::HmacSha2_256;
        let sk_d = Key::from_slice(&[7; 32]);
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        // With PFS, g^ir comes first in the seed.
        let g = [9u8; 32];
        for (suite, g_ir) in Suite::ALL
            .into_iter()
            .flat_map(|s| [(s, None), (s, Some(&g[..]))])
        {
            let keys = child_sa_keys(prf, &sk_d, g_ir, &ni, &nr, &[], suite).unwrap();
            let one = suite.encryption_key_len() + suite.integrity_key_len();
            let seed = [g_ir.unwrap_or(&[]), &ni, &nr];
            let keymat = prf.prf_plus(sk_d.expose(), &seed, 2 * one).unwrap();
            let k = keymat.expose();
            let enc = suite.encryption_key_len();
            assert_eq!(keys.initiator_to_responder.encryption.expose(), &k[..enc]);
            assert_eq!(keys.initiator_to_responder.integrity.expose(), &k[enc..one]);
            assert_eq!(
                keys.responder_to_initiator.encryption.expose(),
                &k[one..one + enc]
            );
            assert_eq!(
                keys.responder_to_initiator.integrity.expose(),
                &k[one + enc..]
            );
        }
        let pfs = |g_ir| child_sa_keys(prf, &sk_d, g_ir, &ni, &nr, &[], Suite::AesGcm128).unwrap();
        assert_ne!(pfs(Some(&g[..])), pfs(None));
    }

    /// RFC 9370 section 2.2.2: `KEYMAT = prf+(SK_d, SK(0) | Ni | Nr |
    /// SK(1) | ... | SK(n))`, the additional secrets after the nonces,
    /// in order.
    #[test]
    fn child_sa_keys_with_additional_key_exchanges() {
        let prf = Prf::HmacSha2_256;
        let sk_d = Key::from_slice(&[7; 32]);
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        let (sk0, sk1, sk2) = ([9u8; 32], [10u8; 32], [11u8; 32]);
        let suite = Suite::AesGcm256;
        let keys = child_sa_keys(prf, &sk_d, Some(&sk0), &ni, &nr, &[&sk1, &sk2], suite).unwrap();
        let one = suite.encryption_key_len() + suite.integrity_key_len();
        let seed = [&sk0[..], &ni, &nr, &sk1, &sk2].concat();
        let keymat = prf.prf_plus(sk_d.expose(), &[&seed], 2 * one).unwrap();
        let enc = suite.encryption_key_len();
        assert_eq!(
            keys.initiator_to_responder.encryption.expose(),
            &keymat.expose()[..enc]
        );
        let swapped = child_sa_keys(prf, &sk_d, Some(&sk0), &ni, &nr, &[&sk2, &sk1], suite);
        assert_ne!(swapped.unwrap(), keys);
    }

    #[test]
    fn rekey_skeyseed_uses_the_old_sk_d() {
        let prf = Prf::HmacSha2_384;
        let old = Key::from_slice(&[3; 48]);
        let seed = skeyseed_rekey(prf, &old, b"g^ir", b"Ni", b"Nr", &[]);
        assert_eq!(seed, prf.prf(&[3; 48], &[b"g^irNiNr"]));
        // RFC 9370 section 2.2.2: SK(1..n) after the nonces.
        let seed = skeyseed_rekey(prf, &old, b"g^ir", b"Ni", b"Nr", &[b"SK1", b"SK2"]);
        assert_eq!(seed, prf.prf(&[3; 48], &[b"g^irNiNrSK1SK2"]));
    }

    #[test]
    fn suites_from_proposals() {
        use crate::message::{EncrId, IntegId, PrfId, ProtocolId, Transform};
        let proposal = |transforms| Proposal {
            number: 1,
            protocol: ProtocolId::Ike,
            spi: vec![],
            transforms,
        };
        let gcm = Transform::with_key_length(TransformId::Encr(EncrId::AesGcm16), 256);
        let prf = Transform::new(TransformId::Prf(PrfId::HmacSha2_384));
        let dh = Transform::new(TransformId::Dh(DhGroup::Ecp384));
        let none = Transform::new(TransformId::Integ(IntegId::None));
        let sha = Transform::new(TransformId::Integ(IntegId::HmacSha2_256_128));
        let ok =
            IkeSuite::from_proposal(&proposal(vec![gcm.clone(), prf.clone(), dh.clone()])).unwrap();
        assert_eq!(ok.encr, Encr::AesGcm256);
        assert_eq!(ok.integ, None);
        // INTEG NONE is allowed with an AEAD.
        assert_eq!(
            IkeSuite::from_proposal(&proposal(vec![gcm.clone(), none, prf.clone(), dh.clone()]))
                .unwrap(),
            ok
        );
        // A real integrity algorithm is not, and two ciphers are not.
        assert!(
            IkeSuite::from_proposal(&proposal(vec![gcm.clone(), sha, prf.clone(), dh.clone()]))
                .is_err()
        );
        assert!(
            IkeSuite::from_proposal(&proposal(vec![gcm.clone(), gcm.clone(), prf.clone(), dh]))
                .is_err()
        );
        // No group.
        assert!(IkeSuite::from_proposal(&proposal(vec![gcm, prf])).is_err());
    }
}
