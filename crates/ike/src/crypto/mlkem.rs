//! ML-KEM (FIPS 203) as an IKEv2 key exchange method, with aws-lc-rs's
//! `kem` module (draft-ietf-ipsecme-ikev2-mlkem, the IANA "Transform Type 4
//! - Key Exchange Method Transform IDs" 35, 36 and 37).
//!
//! A KEM is not symmetric like Diffie-Hellman. draft-ietf-ipsecme-ikev2-mlkem
//! section 2.2: the initiator sends its encapsulation key in the KE payload;
//! the responder encapsulates to it and answers with the ciphertext; the
//! shared secret is the 32-byte ML-KEM shared key. So the initiator is a
//! [`KeyExchange`] whose `complete` decapsulates, and the responder
//! answers with [`respond`].
//!
//! Checks before use (draft section 3, FIPS 203 section 7): an
//! encapsulation key must have the method's length and pass the modulus
//! check (every coefficient below q; aws-lc does it when encapsulating), a
//! ciphertext the method's length. A ciphertext that does not decapsulate
//! gives an unrelated key (FIPS 203 implicit rejection), so the exchange
//! fails where the keys are proven, at AUTH: never a panic.

use aws_lc_rs::kem::{
    AlgorithmId, Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_512, ML_KEM_768,
    ML_KEM_1024,
};

use super::Key;
use super::method::{Answer, KeyExchange};
use crate::error::{Error, Result};
use crate::message::DhGroup;

/// One ML-KEM parameter set, with its sizes (FIPS 203 section 8, table 3).
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    /// The method.
    pub(super) group: DhGroup,
    /// The encapsulation key's length: the initiator's KE data.
    pub(super) encapsulation_key_len: usize,
    /// The ciphertext's length: the responder's KE data.
    pub(super) ciphertext_len: usize,
    algorithm: &'static aws_lc_rs::kem::Algorithm<AlgorithmId>,
}

/// ML-KEM-512 (transform ID 35).
pub(super) const ML_KEM_512_PARAMS: Params = Params {
    group: DhGroup::MlKem512,
    encapsulation_key_len: 800,
    ciphertext_len: 768,
    algorithm: &ML_KEM_512,
};

/// ML-KEM-768 (transform ID 36).
pub(super) const ML_KEM_768_PARAMS: Params = Params {
    group: DhGroup::MlKem768,
    encapsulation_key_len: 1184,
    ciphertext_len: 1088,
    algorithm: &ML_KEM_768,
};

/// ML-KEM-1024 (transform ID 37).
pub(super) const ML_KEM_1024_PARAMS: Params = Params {
    group: DhGroup::MlKem1024,
    encapsulation_key_len: 1568,
    ciphertext_len: 1568,
    algorithm: &ML_KEM_1024,
};

impl Params {
    fn invalid(&self, reason: &'static str) -> Error {
        Error::InvalidPublicValue {
            group: self.group.value(),
            reason,
        }
    }

    /// The initiator's side: a fresh decapsulation key.
    pub(super) fn generate(self) -> Result<Box<dyn KeyExchange>> {
        let private = DecapsulationKey::generate(self.algorithm)
            .map_err(|_| Error::Crypto("ML-KEM key generation failed"))?;
        Ok(Box::new(MlKem::with_private(self, private)?))
    }

    /// The responder's side: encapsulates to the initiator's
    /// `encapsulation_key`; the ciphertext to send, and the shared key.
    pub(super) fn encapsulate(self, encapsulation_key: &[u8]) -> Result<Answer> {
        if encapsulation_key.len() != self.encapsulation_key_len {
            return Err(self.invalid("wrong length"));
        }
        let key = EncapsulationKey::new(self.algorithm, encapsulation_key)
            .map_err(|_| self.invalid("not an encapsulation key"))?;
        // FIPS 203 section 7.2: encapsulation runs the modulus check first
        // and fails on a key with a coefficient of q or more.
        let (ciphertext, shared) = key
            .encapsulate()
            .map_err(|_| self.invalid("fails the modulus check"))?;
        Ok((
            ciphertext.as_ref().to_vec(),
            Key::from_slice(shared.as_ref()),
        ))
    }
}

/// The initiator's half of an ML-KEM exchange: its decapsulation key and
/// the encapsulation key it sends.
struct MlKem {
    params: Params,
    private: DecapsulationKey<AlgorithmId>,
    public: Vec<u8>,
}

impl MlKem {
    fn with_private(params: Params, private: DecapsulationKey<AlgorithmId>) -> Result<Self> {
        let public = private
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .map_err(|_| Error::Crypto("ML-KEM encapsulation key"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            params,
            private,
            public,
        })
    }
}

impl KeyExchange for MlKem {
    fn group(&self) -> DhGroup {
        self.params.group
    }

    fn public_value(&self) -> &[u8] {
        &self.public
    }

    fn complete(self: Box<Self>, ciphertext: &[u8]) -> Result<Key> {
        // FIPS 203 section 7.3: the ciphertext type check.
        if ciphertext.len() != self.params.ciphertext_len {
            return Err(self.params.invalid("wrong length"));
        }
        let shared = self
            .private
            .decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| self.params.invalid("does not decapsulate"))?;
        Ok(Key::from_slice(shared.as_ref()))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::crypto::kex::{respond, start};
    use crate::testdata::unhex;

    /// One ACVP decapsulation test group: the key pair, and per case the
    /// ciphertext, the shared key, and whether the ciphertext was
    /// modified (then the key is the implicit rejection's).
    struct Group {
        ek: Vec<u8>,
        dk: Vec<u8>,
        cases: Vec<(String, Vec<u8>, Vec<u8>)>,
    }

    fn acvp(file: &str) -> Group {
        let path = format!("{}/testdata/ml-kem/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut group = Group {
            ek: Vec::new(),
            dk: Vec::new(),
            cases: Vec::new(),
        };
        let mut case: (String, Vec<u8>) = (String::new(), Vec::new());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            match key {
                "ek" => group.ek = unhex(value),
                "dk" => group.dk = unhex(value),
                "reason" => case.0 = value.to_owned(),
                "c" => case.1 = unhex(value),
                "k" => {
                    group
                        .cases
                        .push((case.0.clone(), std::mem::take(&mut case.1), unhex(value)))
                }
                _ => {}
            }
        }
        group
    }

    /// NIST's ACVP vectors (ML-KEM-encapDecap-FIPS203, the decapsulation
    /// groups) through the KE layer: the initiator holding the vector's
    /// decapsulation key completes each ciphertext to the vector's shared
    /// key, also for modified ciphertexts (implicit rejection).
    #[test]
    fn acvp_decapsulation_through_the_ke_layer() {
        for (file, params) in [
            ("decapsulation-512.txt", ML_KEM_512_PARAMS),
            ("decapsulation-768.txt", ML_KEM_768_PARAMS),
            ("decapsulation-1024.txt", ML_KEM_1024_PARAMS),
        ] {
            let group = acvp(file);
            assert_eq!(group.ek.len(), params.encapsulation_key_len, "{file}");
            assert!(group.cases.len() >= 10, "{file}");
            let modified = group
                .cases
                .iter()
                .filter(|(reason, ..)| reason != "no modification")
                .count();
            assert!(modified > 0, "{file}: no modified ciphertext");
            // FIPS 203 algorithm 16: dk = dk_pke (384 k bytes) | ek | H(ek) | z.
            let rank = params.encapsulation_key_len / 384;
            assert_eq!(&group.dk[384 * rank..][..group.ek.len()], &group.ek[..]);
            for (reason, c, k) in &group.cases {
                // aws-lc does not derive ek from an imported dk: it is
                // given as the vector has it.
                let private = DecapsulationKey::new(params.algorithm, &group.dk).unwrap();
                let initiator = Box::new(MlKem {
                    params,
                    private,
                    public: group.ek.clone(),
                });
                let key = initiator.complete(c).unwrap();
                assert_eq!(key.expose(), &k[..], "{file}: {reason}");
            }
        }
    }

    /// The responder's encapsulation decapsulates to the same key, and
    /// what has the wrong length or form is refused.
    #[test]
    fn respond_and_complete_agree_and_bad_values_are_refused() {
        for params in [ML_KEM_512_PARAMS, ML_KEM_768_PARAMS, ML_KEM_1024_PARAMS] {
            let group = params.group;
            let initiator = start(group).unwrap();
            let ek = initiator.public_value().to_vec();
            assert_eq!(ek.len(), params.encapsulation_key_len);
            let (ciphertext, responder_key) = respond(group, &ek).unwrap();
            assert_eq!(ciphertext.len(), params.ciphertext_len);
            assert_eq!(initiator.complete(&ciphertext).unwrap(), responder_key);

            let refused = |r: Result<Answer>| matches!(r, Err(Error::InvalidPublicValue { group: g, .. }) if g == group.value());
            assert!(refused(respond(group, &ek[1..])));
            assert!(refused(respond(group, &[ek.clone(), vec![0]].concat())));
            // FIPS 203 section 7.2: the first coefficient set to 4095 (q is
            // 3329) fails the modulus check.
            let mut bad = ek.clone();
            bad[0] = 0xff;
            bad[1] |= 0x0f;
            assert!(refused(respond(group, &bad)), "{group:?}");

            let initiator = start(group).unwrap();
            assert!(matches!(
                initiator.complete(&ciphertext[1..]),
                Err(Error::InvalidPublicValue { .. })
            ));
            // Another key pair's ciphertext decapsulates, to another key
            // (implicit rejection): the exchange then fails at AUTH.
            let other = start(group).unwrap();
            assert_ne!(other.complete(&ciphertext).unwrap(), responder_key);
        }
    }
}
