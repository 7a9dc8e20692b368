//! Proposals: strongSwan's proposal syntax, the defaults, and the choice
//! among proposals (RFC 7296 sections 2.7 and 3.3).
//!
//! A proposal string is algorithm keywords joined by `-`, as in
//! strongSwan's `proposals` and `esp_proposals` settings:
//!
//! | keyword | transform |
//! | --- | --- |
//! | `aes128`, `aes256` | ENCR_AES_CBC with key length 128 or 256 |
//! | `aes128gcm16`, `aes256gcm16` (also `...gcm128`) | ENCR_AES_GCM_16 |
//! | `chacha20poly1305` | ENCR_CHACHA20_POLY1305 |
//! | `sha256`, `sha384`, `sha512` (also `sha2_256`...) | AUTH_HMAC_SHA2_256_128, `_384_192`, `_512_256` |
//! | `prfsha256`, `prfsha384`, `prfsha512` | PRF_HMAC_SHA2_256, `_384`, `_512` |
//! | `x25519` (also `curve25519`), `ecp256`, `ecp384`, `modp2048` | D-H groups 31, 19, 20, 14 |
//! | `esn`, `noesn` | extended sequence numbers or not (ESP only) |
//!
//! Several keywords of one kind are alternatives within the proposal. As in
//! strongSwan, an IKE proposal without a `prf` keyword takes its prfs from
//! its integrity keywords (`aes256-sha256-modp2048` proposes
//! PRF_HMAC_SHA2_256), and with an AEAD cipher the integrity keywords only
//! name prfs (`aes256gcm16-sha256-modp2048`). An ESP proposal without
//! `esn`/`noesn` offers no extended sequence numbers; a D-H group in an ESP
//! proposal asks for PFS when Child SAs are created or rekeyed.

use tunsec_esp::Suite;

use crate::error::{Error, Result};
use crate::message::{
    DhGroup, EncrId, EsnId, IntegId, PrfId, Proposal, ProtocolId, Transform, TransformId,
    TransformType,
};

/// The default IKE proposals, most preferred first.
pub const DEFAULT_IKE: [&str; 3] = [
    "aes128gcm16-prfsha256-x25519",
    "aes256gcm16-prfsha384-ecp384",
    "aes256-sha256-modp2048",
];

/// The default ESP proposals, most preferred first. Each is one that
/// tunsec's ESP engine runs.
pub const DEFAULT_ESP: [&str; 3] = ["aes128gcm16", "aes256gcm16", "aes256-sha256"];

/// What a keyword names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    /// A cipher, with its key length if it needs one.
    Encr(EncrId, Option<u16>),
    /// An integrity algorithm (and, in an IKE proposal without prf
    /// keywords, the prf of the same hash: [`prf_of`]).
    Integ(IntegId),
    Prf(PrfId),
    Dh(DhGroup),
    Esn(EsnId),
    /// `keN_<method>` (strongSwan 6): the Nth additional key exchange
    /// (RFC 9370), `keN_none` for none.
    AddKe(u8, DhGroup),
}

impl Keyword {
    /// The transform the keyword names (an integrity keyword: the
    /// integrity algorithm).
    fn transform(self) -> Transform {
        match self {
            Self::Encr(id, Some(bits)) => Transform::with_key_length(TransformId::Encr(id), bits),
            Self::Encr(id, None) => Transform::new(TransformId::Encr(id)),
            Self::Integ(i) => Transform::new(TransformId::Integ(i)),
            Self::Prf(p) => Transform::new(TransformId::Prf(p)),
            Self::Dh(g) => Transform::new(TransformId::Dh(g)),
            Self::Esn(e) => Transform::new(TransformId::Esn(e)),
            Self::AddKe(index, group) => Transform::new(TransformId::AddKe { index, group }),
        }
    }

    /// Whether the keyword names transform `t` (its ID and key length).
    fn names(self, t: &Transform) -> bool {
        let mine = self.transform();
        mine.id == t.id && mine.key_length() == t.key_length()
    }
}

/// The prf of the same hash as an integrity algorithm.
fn prf_of(integ: IntegId) -> Option<PrfId> {
    match integ {
        IntegId::HmacSha2_256_128 => Some(PrfId::HmacSha2_256),
        IntegId::HmacSha2_384_192 => Some(PrfId::HmacSha2_384),
        IntegId::HmacSha2_512_256 => Some(PrfId::HmacSha2_512),
        _ => None,
    }
}

/// The keywords.
const KEYWORDS: &[(&str, Keyword)] = &[
    ("aes128", Keyword::Encr(EncrId::AesCbc, Some(128))),
    ("aes256", Keyword::Encr(EncrId::AesCbc, Some(256))),
    ("aes128gcm16", Keyword::Encr(EncrId::AesGcm16, Some(128))),
    ("aes128gcm128", Keyword::Encr(EncrId::AesGcm16, Some(128))),
    ("aes256gcm16", Keyword::Encr(EncrId::AesGcm16, Some(256))),
    ("aes256gcm128", Keyword::Encr(EncrId::AesGcm16, Some(256))),
    (
        "chacha20poly1305",
        Keyword::Encr(EncrId::ChaCha20Poly1305, None),
    ),
    ("sha256", Keyword::Integ(IntegId::HmacSha2_256_128)),
    ("sha2_256", Keyword::Integ(IntegId::HmacSha2_256_128)),
    ("sha384", Keyword::Integ(IntegId::HmacSha2_384_192)),
    ("sha2_384", Keyword::Integ(IntegId::HmacSha2_384_192)),
    ("sha512", Keyword::Integ(IntegId::HmacSha2_512_256)),
    ("sha2_512", Keyword::Integ(IntegId::HmacSha2_512_256)),
    ("prfsha256", Keyword::Prf(PrfId::HmacSha2_256)),
    ("prfsha384", Keyword::Prf(PrfId::HmacSha2_384)),
    ("prfsha512", Keyword::Prf(PrfId::HmacSha2_512)),
    ("x25519", Keyword::Dh(DhGroup::Curve25519)),
    ("curve25519", Keyword::Dh(DhGroup::Curve25519)),
    ("ecp256", Keyword::Dh(DhGroup::Ecp256)),
    ("ecp384", Keyword::Dh(DhGroup::Ecp384)),
    ("modp2048", Keyword::Dh(DhGroup::Modp2048)),
    ("mlkem512", Keyword::Dh(DhGroup::MlKem512)),
    ("mlkem768", Keyword::Dh(DhGroup::MlKem768)),
    ("mlkem1024", Keyword::Dh(DhGroup::MlKem1024)),
    ("esn", Keyword::Esn(EsnId::Esn)),
    ("noesn", Keyword::Esn(EsnId::NoEsn)),
];

/// `keN_<method>` (strongSwan 6's syntax, N from 1 to 7): the Nth
/// additional key exchange (RFC 9370), `keN_none` for none.
fn additional_key_exchange(token: &str) -> Option<(&str, Keyword)> {
    let rest = token
        .get(..2)?
        .eq_ignore_ascii_case("ke")
        .then(|| &token[2..])?;
    let (n, method) = rest.split_once('_')?;
    let index: u8 = n.parse().ok().filter(|i| (1..=7).contains(i))?;
    let group = if method.eq_ignore_ascii_case("none") {
        DhGroup::None
    } else {
        match KEYWORDS
            .iter()
            .find(|(name, ..)| name.eq_ignore_ascii_case(method))?
        {
            (_, Keyword::Dh(g)) => *g,
            _ => return None,
        }
    };
    Some((token, Keyword::AddKe(index, group)))
}

fn is_aead(t: &Transform) -> bool {
    matches!(
        t.id,
        TransformId::Encr(EncrId::AesGcm16 | EncrId::ChaCha20Poly1305)
    )
}

/// Parses an IKE proposal. The result has number 0 and no SPI: the state
/// machine numbers the proposals it sends and fills in SPIs.
pub fn parse_ike(proposal: &str) -> Result<Proposal> {
    parse(proposal, ProtocolId::Ike)
}

/// Parses an ESP proposal (see [`parse_ike`]). Every cipher and integrity
/// combination must be one that tunsec's ESP engine runs
/// ([`tunsec_esp::Suite`]).
pub fn parse_esp(proposal: &str) -> Result<Proposal> {
    parse(proposal, ProtocolId::Esp)
}

/// Parses a comma-separated list of proposals (strongSwan's
/// `proposals = a, b`), numbered from 1 in order.
pub fn parse_list(list: &str, protocol: ProtocolId) -> Result<Vec<Proposal>> {
    let mut out = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        let mut p = parse(item.trim(), protocol)?;
        p.number = u8::try_from(i + 1).map_err(|_| Error::Proposal {
            proposal: list.to_owned(),
            token: item.to_owned(),
            reason: "more than 255 proposals",
        })?;
        out.push(p);
    }
    Ok(out)
}

/// The default proposals for IKE or ESP, numbered from 1.
pub fn defaults(protocol: ProtocolId) -> Vec<Proposal> {
    let list = if protocol == ProtocolId::Esp {
        DEFAULT_ESP
    } else {
        DEFAULT_IKE
    };
    parse_list(&list.join(","), protocol).unwrap_or_default()
}

fn parse(proposal: &str, protocol: ProtocolId) -> Result<Proposal> {
    let error = |token: &str, reason| Error::Proposal {
        proposal: proposal.to_owned(),
        token: token.to_owned(),
        reason,
    };
    let ike = match protocol {
        ProtocolId::Ike => true,
        ProtocolId::Esp => false,
        _ => return Err(error(proposal, "only IKE and ESP proposals are supported")),
    };
    let (mut encr, mut integ, mut prf, mut dh, mut esn) = (vec![], vec![], vec![], vec![], vec![]);
    let mut addke = vec![];
    // Integrity keywords, as prfs, for an IKE proposal without prf keywords.
    let mut implied_prf = vec![];
    let mut seen: Vec<&str> = vec![];
    for token in proposal.split('-') {
        let found = KEYWORDS
            .iter()
            .find(|(name, ..)| name.eq_ignore_ascii_case(token))
            .map(|(name, keyword)| (*name, *keyword))
            .or_else(|| additional_key_exchange(token));
        let Some((name, keyword)) = found else {
            return Err(error(
                token,
                if token.is_empty() {
                    "empty algorithm name"
                } else {
                    "unknown or unsupported algorithm"
                },
            ));
        };
        if seen.contains(&name) {
            return Err(error(token, "named twice"));
        }
        seen.push(name);
        let transform = keyword.transform();
        match keyword {
            Keyword::Encr(..) => encr.push(transform),
            Keyword::Integ(i) => {
                integ.push((token, transform));
                implied_prf.extend(prf_of(i).map(|p| Transform::new(TransformId::Prf(p))));
            }
            Keyword::Prf(_) if !ike => return Err(error(token, "a prf in an ESP proposal")),
            Keyword::Prf(_) => prf.push(transform),
            Keyword::Dh(_) => dh.push(transform),
            Keyword::Esn(_) if ike => return Err(error(token, "ESN in an IKE proposal")),
            Keyword::Esn(_) => esn.push(transform),
            // RFC 9370 section 2.2.2: a Child SA's additional key
            // exchanges run in IKE_FOLLOWUP_KE after CREATE_CHILD_SA.
            Keyword::AddKe(..) => addke.push(transform),
        }
    }
    if !addke.is_empty() && dh.is_empty() {
        return Err(error(
            proposal,
            "an additional key exchange (keN_) without a first one",
        ));
    }
    let Some(first_encr) = encr.first() else {
        return Err(error(proposal, "no encryption algorithm"));
    };
    let aead = is_aead(first_encr);
    // RFC 5282: a proposal holds either combined-mode (AEAD)
    // ciphers or others, not both. strongSwan splits such a string into two
    // proposals; here the user writes two.
    if let Some(mixed) = encr.iter().find(|t| is_aead(t) != aead) {
        let name = KEYWORDS
            .iter()
            .find(|(_, k)| k.names(mixed))
            .map_or("", |(name, _)| name);
        return Err(error(
            name,
            "AEAD and non-AEAD ciphers in one proposal; write two proposals",
        ));
    }
    if ike && prf.is_empty() {
        prf = implied_prf;
    }
    if aead {
        if !ike {
            if let Some((token, _)) = integ.first() {
                return Err(error(token, "an integrity algorithm with an AEAD cipher"));
            }
        }
        integ.clear();
    } else if integ.is_empty() {
        return Err(error(
            proposal,
            "no integrity algorithm for a non-AEAD cipher",
        ));
    }
    if ike && prf.is_empty() {
        return Err(error(
            proposal,
            "no prf (prfsha256...) or integrity algorithm",
        ));
    }
    if ike && dh.is_empty() {
        return Err(error(proposal, "no Diffie-Hellman group"));
    }
    if !ike {
        if esn.is_empty() {
            esn.push(Transform::new(TransformId::Esn(EsnId::NoEsn)));
        }
        // Every combination must be one the ESP engine runs.
        for e in &encr {
            let integs: Vec<Option<&Transform>> = if aead {
                vec![None]
            } else {
                integ.iter().map(|(_, t)| Some(t)).collect()
            };
            for i in integs {
                if esp_suite_of(e, i).is_none() {
                    let token = i
                        .and_then(|i| integ.iter().find(|(_, t)| t == i))
                        .map_or(proposal, |(token, _)| token);
                    return Err(error(
                        token,
                        "not supported by the ESP engine (CBC only as aes256-sha256)",
                    ));
                }
            }
        }
    }
    let transforms = encr
        .into_iter()
        .chain(integ.into_iter().map(|(_, t)| t))
        .chain(prf)
        .chain(dh)
        .chain(esn)
        .chain(addke)
        .collect();
    Ok(Proposal {
        number: 0,
        protocol,
        spi: Vec::new(),
        transforms,
    })
}

/// A key exchange method's name in strongSwan's syntax (`x25519`,
/// `mlkem768`), if it has one.
pub fn group_name(group: DhGroup) -> Option<&'static str> {
    KEYWORDS
        .iter()
        .find(|(_, k)| matches!(k, Keyword::Dh(g) if *g == group))
        .map(|(name, _)| *name)
}

/// Writes a proposal in strongSwan's syntax, every transform named
/// (`aes256-sha256-prfsha256-modp2048`). Transforms without a keyword
/// appear as `type:id`.
pub fn to_strongswan(proposal: &Proposal) -> String {
    proposal
        .transforms
        .iter()
        .map(|t| {
            if let TransformId::AddKe { index, group } = t.id {
                let method = if group == DhGroup::None {
                    Some("none")
                } else {
                    group_name(group)
                };
                if let Some(method) = method {
                    return format!("ke{index}_{method}");
                }
            }
            let keyword = KEYWORDS.iter().find(|(_, k)| k.names(t));
            match keyword {
                Some((name, ..)) if t.attributes.len() <= usize::from(t.key_length().is_some()) => {
                    (*name).to_owned()
                }
                _ => format!("{}:{}", t.id.transform_type().value(), t.id.id()),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The outcome of proposal selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Which of our own proposals matched.
    pub own_index: usize,
    /// The proposal to answer with: the peer's number, protocol and SPI,
    /// and one transform of each type.
    pub proposal: Proposal,
}

/// RFC 9370's transform types, in the order their exchanges run.
const ADDITIONAL_KE_TYPES: [TransformType; 7] = [
    TransformType::AddKe1,
    TransformType::AddKe2,
    TransformType::AddKe3,
    TransformType::AddKe4,
    TransformType::AddKe5,
    TransformType::AddKe6,
    TransformType::AddKe7,
];

/// Transform types whose absence means the same as their NONE transform.
fn optional(transform_type: TransformType) -> Option<Transform> {
    match transform_type {
        TransformType::Integ => Some(Transform::new(TransformId::Integ(IntegId::None))),
        TransformType::Dh => Some(Transform::new(TransformId::Dh(DhGroup::None))),
        // RFC 9370 section 2.2.1: NONE makes an additional key exchange
        // optional.
        t @ (TransformType::AddKe1
        | TransformType::AddKe2
        | TransformType::AddKe3
        | TransformType::AddKe4
        | TransformType::AddKe5
        | TransformType::AddKe6
        | TransformType::AddKe7) => Some(Transform::new(TransformId::AddKe {
            index: t.value() - 5,
            group: DhGroup::None,
        })),
        _ => None,
    }
}

/// The proposals without their D-H transforms, for the Child SA that
/// IKE_AUTH creates. RFC 7296 section 1.2: "IKE_AUTH messages do not
/// contain KEi/KEr or Ni/Nr payloads. Thus, the SA payloads in the
/// IKE_AUTH exchange cannot contain Transform Type 4 (Diffie-Hellman
/// group) with any value other than NONE. Implementations SHOULD omit the
/// whole transform substructure instead of sending value NONE." An ESP
/// proposal with a group (`aes128gcm16-x25519`) uses it only in
/// CREATE_CHILD_SA (PFS on rekeys), as strongSwan does. The same holds
/// for RFC 9370's additional key exchanges.
pub fn without_ke(proposals: &[Proposal]) -> Vec<Proposal> {
    proposals
        .iter()
        .map(|p| Proposal {
            transforms: p
                .transforms
                .iter()
                .filter(|t| {
                    t.id.transform_type() != TransformType::Dh
                        && !matches!(t.id, TransformId::AddKe { .. })
                })
                .cloned()
                .collect(),
            ..p.clone()
        })
        .collect()
}

/// The proposals with the sender's SPI, as an SA payload carries them
/// when it creates a Child SA or rekeys the IKE SA (RFC 7296 section
/// 3.3.1: the SPI of the SA that the sender receives on).
pub fn with_spi(proposals: &[Proposal], spi: &[u8]) -> Vec<Proposal> {
    proposals
        .iter()
        .map(|p| Proposal {
            spi: spi.to_vec(),
            ..p.clone()
        })
        .collect()
}

/// Chooses, as a responder, the first of our own proposals that the
/// initiator's offer contains.
///
/// RFC 7296 section 2.7: the responder accepts a single proposal and, in
/// it, one transform of each type. Section 3.3.6: a proposal with a
/// transform type the responder does not know, or without a type it needs,
/// is unacceptable, while the others are processed as usual. So a peer's
/// proposal matches one of ours if both have the same transform types and
/// share a transform of each type; a missing INTEG or D-H type counts as
/// its NONE transform. Within a type our order of preference decides.
pub fn select(own: &[Proposal], offered: &[Proposal]) -> Option<Selected> {
    own.iter().enumerate().find_map(|(own_index, mine)| {
        offered.iter().find_map(|theirs| {
            let transforms = intersect(mine, theirs)?;
            Some(Selected {
                own_index,
                proposal: Proposal {
                    number: theirs.number,
                    protocol: theirs.protocol,
                    spi: theirs.spi.clone(),
                    transforms,
                },
            })
        })
    })
}

/// The transform types of a proposal, in the conventional order (ENCR,
/// INTEG, PRF, D-H, ESN, then the others by number), which is also
/// strongSwan's.
fn types_of(p: &Proposal) -> Vec<TransformType> {
    let mut types = Vec::new();
    for t in &p.transforms {
        let ty = t.id.transform_type();
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    types.sort_by_key(|ty| rank(*ty));
    types
}

fn rank(ty: TransformType) -> u16 {
    match ty {
        TransformType::Encr => 0,
        TransformType::Integ => 1,
        TransformType::Prf => 2,
        TransformType::Dh => 3,
        TransformType::Esn => 4,
        other => 5 + u16::from(other.value()),
    }
}

fn of_type(p: &Proposal, ty: TransformType) -> Option<Vec<&Transform>> {
    let list: Vec<&Transform> = p
        .transforms
        .iter()
        .filter(|t| t.id.transform_type() == ty)
        .collect();
    (!list.is_empty()).then_some(list)
}

fn intersect(mine: &Proposal, theirs: &Proposal) -> Option<Vec<Transform>> {
    if mine.protocol != theirs.protocol {
        return None;
    }
    let mut types = types_of(mine);
    for ty in types_of(theirs) {
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    types.sort_by_key(|ty| rank(*ty));
    let mut chosen = Vec::new();
    for ty in types {
        let none = optional(ty);
        let list = |p: &'_ Proposal| -> Option<Vec<Transform>> {
            match of_type(p, ty) {
                Some(list) => Some(list.into_iter().cloned().collect()),
                None => none.clone().map(|n| vec![n]),
            }
        };
        let (m, t) = (list(mine)?, list(theirs)?);
        let pick = m.into_iter().find(|x| t.contains(x))?;
        // An implicit NONE is not written back.
        if of_type(theirs, ty).is_some() {
            chosen.push(pick);
        }
    }
    Some(chosen)
}

/// Checks, as an initiator, the responder's chosen proposal: it must carry
/// the number of one of ours, the same protocol, exactly one transform of
/// each type that ours has, each one we offered. Returns the index of our
/// proposal.
pub fn check_chosen(own: &[Proposal], chosen: &Proposal) -> Result<usize> {
    let bad = |what| Error::InvalidValue {
        what,
        value: u64::from(chosen.number),
    };
    let (index, mine) = own
        .iter()
        .enumerate()
        .find(|(_, p)| p.number == chosen.number)
        .ok_or(bad("chosen proposal: a number we did not offer"))?;
    if mine.protocol != chosen.protocol {
        return Err(bad("chosen proposal: another protocol"));
    }
    let types = types_of(chosen);
    if types.len() != chosen.transforms.len() {
        return Err(bad("chosen proposal: two transforms of one type"));
    }
    for ty in types_of(mine) {
        // A type left out means its NONE transform, which we must have
        // offered.
        let none_offered = optional(ty).is_some_and(|none| mine.transforms.contains(&none));
        if !types.contains(&ty) && !none_offered {
            return Err(bad("chosen proposal: a transform type is missing"));
        }
    }
    for t in &chosen.transforms {
        let offered = mine.transforms.contains(t)
            || (optional(t.id.transform_type()).as_ref() == Some(t)
                && of_type(mine, t.id.transform_type()).is_none());
        if !offered {
            return Err(bad("chosen proposal: a transform we did not offer"));
        }
    }
    Ok(index)
}

/// What a negotiated ESP proposal means for the ESP engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspChoice {
    /// The cipher suite.
    pub suite: Suite,
    /// Whether extended sequence numbers were chosen.
    pub esn: bool,
    /// The D-H group for PFS, if any.
    pub group: Option<DhGroup>,
    /// The additional key exchanges (RFC 9370 section 2.2.2), in the
    /// order they run in IKE_FOLLOWUP_KE: by ascending transform type,
    /// NONE left out.
    pub additional: Vec<DhGroup>,
}

fn esp_suite_of(encr: &Transform, integ: Option<&Transform>) -> Option<Suite> {
    let integ = integ.map(|t| t.id);
    match (encr.id, encr.key_length(), integ) {
        (
            TransformId::Encr(EncrId::AesGcm16),
            Some(128),
            None | Some(TransformId::Integ(IntegId::None)),
        ) => Some(Suite::AesGcm128),
        (
            TransformId::Encr(EncrId::AesGcm16),
            Some(256),
            None | Some(TransformId::Integ(IntegId::None)),
        ) => Some(Suite::AesGcm256),
        (
            TransformId::Encr(EncrId::ChaCha20Poly1305),
            None,
            None | Some(TransformId::Integ(IntegId::None)),
        ) => Some(Suite::ChaCha20Poly1305),
        (
            TransformId::Encr(EncrId::AesCbc),
            Some(256),
            Some(TransformId::Integ(IntegId::HmacSha2_256_128)),
        ) => Some(Suite::AesCbc256HmacSha256),
        _ => None,
    }
}

/// The ESP suite, ESN and PFS group of a negotiated ESP proposal (one
/// transform of each type).
pub fn esp_choice(proposal: &Proposal) -> Result<EspChoice> {
    let one = |ty| {
        let list = of_type(proposal, ty).unwrap_or_default();
        match list[..] {
            [] => Ok(None),
            [t] => Ok(Some(t)),
            _ => Err(Error::InvalidValue {
                what: "negotiated ESP proposal: two transforms of one type",
                value: u64::from(TransformType::value(ty)),
            }),
        }
    };
    let encr = one(TransformType::Encr)?.ok_or(Error::InvalidValue {
        what: "negotiated ESP proposal: no cipher",
        value: 0,
    })?;
    let suite = esp_suite_of(encr, one(TransformType::Integ)?).ok_or(Error::Unsupported {
        what: "ESP cipher",
        value: u64::from(encr.id.id()),
    })?;
    let esn = match one(TransformType::Esn)?.map(|t| t.id) {
        Some(TransformId::Esn(EsnId::Esn)) => true,
        Some(TransformId::Esn(EsnId::NoEsn)) | None => false,
        Some(other) => {
            return Err(Error::Unsupported {
                what: "ESN transform",
                value: u64::from(other.id()),
            });
        }
    };
    let group = match one(TransformType::Dh)?.map(|t| t.id) {
        Some(TransformId::Dh(DhGroup::None)) | None => None,
        Some(TransformId::Dh(g)) => Some(g),
        Some(_) => None,
    };
    let mut additional = Vec::new();
    for ty in ADDITIONAL_KE_TYPES {
        match one(ty)?.map(|t| t.id) {
            Some(TransformId::AddKe { group, .. }) if group != DhGroup::None => {
                additional.push(group);
            }
            _ => {}
        }
    }
    Ok(EspChoice {
        suite,
        esn,
        group,
        additional,
    })
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::crypto::{Encr, IkeSuite, Integ, Prf};
    use crate::message::{Message, Payload, PayloadType, decode_payloads};
    use crate::testdata::Capture;

    fn ids(p: &Proposal) -> Vec<TransformId> {
        p.transforms.iter().map(|t| t.id).collect()
    }

    /// strongSwan's own proposals, parsed here, are the SA payloads it sent.
    #[test]
    fn strongswan_proposals_parse_to_what_strongswan_sends() {
        let cases = [
            ("psk-x25519", "aes128gcm16-prfsha256-x25519", "aes128gcm16"),
            ("psk-modp2048", "aes256-sha256-modp2048", "aes256-sha256"),
            ("cert-ecp384", "aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
            (
                "psk-chacha-ecp256",
                "chacha20poly1305-prfsha512-ecp256",
                "chacha20poly1305",
            ),
        ];
        for (name, ike, esp) in cases {
            let c = Capture::load(name);
            let init = Message::decode(&c.init_req).unwrap();
            let Some(Payload::Sa(sa)) = init.payload(PayloadType::SecurityAssociation) else {
                panic!()
            };
            let mut mine = parse_ike(ike).unwrap();
            mine.number = 1;
            assert_eq!(sa.proposals, [mine.clone()], "{name}");
            let plain = decode_payloads(PayloadType::IdInitiator, c.key("auth_req_plain")).unwrap();
            let Some(Payload::Sa(child)) = plain.iter().find(|p| matches!(p, Payload::Sa(_)))
            else {
                panic!()
            };
            let mut mine_esp = parse_esp(esp).unwrap();
            mine_esp.number = 1;
            mine_esp.spi = child.proposals[0].spi.clone();
            assert_eq!(child.proposals, [mine_esp.clone()], "{name}");
            // Our defaults select strongSwan's offer, and so would
            // strongSwan's response.
            let resp = Message::decode(&c.init_resp).unwrap();
            let Some(Payload::Sa(chosen)) = resp.payload(PayloadType::SecurityAssociation) else {
                panic!()
            };
            let selected = select(&[mine.clone()], &sa.proposals).unwrap();
            assert_eq!(selected.proposal, chosen.proposals[0]);
            assert_eq!(check_chosen(&[mine], &chosen.proposals[0]).unwrap(), 0);
            assert!(
                esp_choice(
                    &select(&[mine_esp.clone()], &child.proposals)
                        .unwrap()
                        .proposal
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn keywords_and_implied_prfs() {
        use TransformId::*;
        let p = parse_ike("aes256-sha256-modp2048").unwrap();
        assert_eq!(
            ids(&p),
            [
                Encr(EncrId::AesCbc),
                Integ(IntegId::HmacSha2_256_128),
                Prf(PrfId::HmacSha2_256),
                Dh(DhGroup::Modp2048),
            ]
        );
        assert_eq!(p.transforms[0].key_length(), Some(256));
        // With an AEAD, sha256 names only a prf.
        let p = parse_ike("aes256gcm16-sha256-modp2048").unwrap();
        assert_eq!(
            ids(&p),
            [
                Encr(EncrId::AesGcm16),
                Prf(PrfId::HmacSha2_256),
                Dh(DhGroup::Modp2048)
            ]
        );
        // An explicit prf wins over the implied ones.
        let p = parse_ike("aes128-sha256-prfsha384-x25519").unwrap();
        assert_eq!(
            ids(&p),
            [
                Encr(EncrId::AesCbc),
                Integ(IntegId::HmacSha2_256_128),
                Prf(PrfId::HmacSha2_384),
                Dh(DhGroup::Curve25519),
            ]
        );
        // Alternatives, case and aliases.
        let p = parse_ike("AES128GCM16-aes256gcm128-prfsha256-curve25519-ecp256").unwrap();
        assert_eq!(p.transforms.len(), 5);
        assert_eq!(p.transforms[1].key_length(), Some(256));
        // ESP: ESN defaults to no, PFS groups and esn allowed.
        let p = parse_esp("aes128gcm16").unwrap();
        assert_eq!(ids(&p), [Encr(EncrId::AesGcm16), Esn(EsnId::NoEsn)]);
        let p = parse_esp("aes256-sha256-x25519-esn-noesn").unwrap();
        assert_eq!(
            ids(&p),
            [
                Encr(EncrId::AesCbc),
                Integ(IntegId::HmacSha2_256_128),
                Dh(DhGroup::Curve25519),
                Esn(EsnId::Esn),
                Esn(EsnId::NoEsn),
            ]
        );
        for s in [
            "aes128gcm16-prfsha256-x25519",
            "aes256-sha256-prfsha256-modp2048",
            "aes256gcm16-prfsha384-mlkem768",
            "aes128gcm16-prfsha256-mlkem512-mlkem1024",
        ] {
            assert_eq!(to_strongswan(&parse_ike(s).unwrap()), s);
        }
        assert_eq!(
            to_strongswan(&parse_esp("aes256gcm16-mlkem768").unwrap()),
            "aes256gcm16-mlkem768-noesn"
        );
        assert_eq!(group_name(DhGroup::MlKem1024), Some("mlkem1024"));
        assert_eq!(group_name(DhGroup::Unknown(21)), None);
        assert_eq!(
            to_strongswan(&parse_esp("aes256-sha256").unwrap()),
            "aes256-sha256-noesn"
        );
    }

    #[test]
    fn errors_name_the_bad_token() {
        let cases = [
            (
                parse_ike("aes128gcm16-prfsha256-x25519-3des"),
                "3des",
                "unknown",
            ),
            (parse_ike("aes128gcm16--x25519"), "", "empty"),
            (parse_ike("aes128-x25519"), "aes128-x25519", "integrity"),
            (parse_ike("aes128gcm16-x25519"), "aes128gcm16-x25519", "prf"),
            (
                parse_ike("aes128gcm16-prfsha256"),
                "aes128gcm16-prfsha256",
                "Diffie-Hellman",
            ),
            (parse_ike("aes128gcm16-prfsha256-x25519-esn"), "esn", "ESN"),
            (
                parse_ike("aes128-aes128gcm16-sha256-x25519"),
                "aes128gcm16",
                "AEAD",
            ),
            (
                parse_ike("aes128gcm16-prfsha256-x25519-x25519"),
                "x25519",
                "twice",
            ),
            (parse_esp("aes128gcm16-prfsha256"), "prfsha256", "prf"),
            (parse_esp("aes128gcm16-sha256"), "sha256", "AEAD"),
            (parse_esp("aes128-sha256"), "sha256", "ESP engine"),
            (parse_esp("aes256-sha512"), "sha512", "ESP engine"),
            (parse_esp("sha256"), "sha256", "encryption"),
            (parse_esp("modp1024"), "modp1024", "unknown"),
        ];
        for (result, token, reason) in cases {
            match result {
                Err(Error::Proposal {
                    token: t,
                    reason: r,
                    ..
                }) => {
                    assert_eq!(t, token);
                    assert!(r.contains(reason), "{token}: {r}");
                }
                other => panic!("{token}: {other:?}"),
            }
        }
        let e = parse_ike("aes128gcm16-prfsha256-x25519-3des").unwrap_err();
        assert_eq!(e.fault(), crate::Fault::Config);
        assert!(e.to_string().contains("\"3des\""), "{e}");
    }

    #[test]
    fn defaults_parse_and_map_to_suites() {
        let ike = defaults(ProtocolId::Ike);
        assert_eq!(ike.len(), 3);
        assert_eq!(ike.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2, 3]);
        let suites: Vec<IkeSuite> = ike
            .iter()
            .map(|p| {
                // One transform of each type, as if chosen.
                IkeSuite::from_proposal(p).unwrap()
            })
            .collect();
        assert_eq!(suites[0].encr, Encr::AesGcm128);
        assert_eq!(suites[0].prf, Prf::HmacSha2_256);
        assert_eq!(suites[0].group, DhGroup::Curve25519);
        assert_eq!(suites[1].group, DhGroup::Ecp384);
        assert_eq!(suites[2].integ, Some(Integ::HmacSha2_256_128));
        let esp = defaults(ProtocolId::Esp);
        let choices: Vec<Suite> = esp.iter().map(|p| esp_choice(p).unwrap().suite).collect();
        assert_eq!(
            choices,
            [
                Suite::AesGcm128,
                Suite::AesGcm256,
                Suite::AesCbc256HmacSha256
            ]
        );
        assert!(!esp_choice(&esp[0]).unwrap().esn);
        let pfs = parse_esp("aes128gcm16-ecp256-esn").unwrap();
        let c = esp_choice(&pfs).unwrap();
        assert_eq!((c.esn, c.group), (true, Some(DhGroup::Ecp256)));
    }

    fn numbered(list: &str, protocol: ProtocolId) -> Vec<Proposal> {
        parse_list(list, protocol).unwrap()
    }

    #[test]
    fn ike_auth_proposals_carry_no_key_exchange() {
        let own = parse_list(
            "aes128gcm16-x25519, aes256-sha256-modp2048, aes256gcm16",
            ProtocolId::Esp,
        )
        .unwrap();
        let stripped = without_ke(&own);
        assert_eq!(stripped.len(), 3);
        for (p, q) in own.iter().zip(&stripped) {
            assert_eq!(p.number, q.number);
            assert!(
                q.transforms
                    .iter()
                    .all(|t| t.id.transform_type() != TransformType::Dh)
            );
        }
        assert_eq!(to_strongswan(&stripped[0]), "aes128gcm16-noesn");
        assert_eq!(to_strongswan(&stripped[1]), "aes256-sha256-noesn");
        assert_eq!(stripped[2], own[2]);
        // strongSwan's IKE_AUTH offer for esp_proposals = aes128gcm16-x25519
        // carries no group: our stripped proposals accept it.
        let theirs = without_ke(&parse_list("aes128gcm16-x25519", ProtocolId::Esp).unwrap());
        assert!(select(&own, &theirs).is_none());
        assert!(select(&stripped, &theirs).is_some());
    }

    #[test]
    fn selection_follows_the_responders_preference() {
        let own = numbered(
            "aes256gcm16-prfsha384-ecp384, aes128gcm16-prfsha256-x25519",
            ProtocolId::Ike,
        );
        let offer = numbered(
            "aes128gcm16-prfsha256-x25519, aes256gcm16-aes128gcm16-prfsha256-prfsha384-ecp384-x25519",
            ProtocolId::Ike,
        );
        let s = select(&own, &offer).unwrap();
        // Our first proposal, found in the peer's second.
        assert_eq!(s.own_index, 0);
        assert_eq!(s.proposal.number, 2);
        assert_eq!(to_strongswan(&s.proposal), "aes256gcm16-prfsha384-ecp384");
        assert_eq!(check_chosen(&own_with_number(&own, 2), &s.proposal), Ok(0));

        // Nothing in common.
        let offer = numbered("aes256-sha512-modp2048", ProtocolId::Ike);
        assert_eq!(select(&own, &offer), None);
        // Another protocol.
        let esp = numbered("aes128gcm16", ProtocolId::Esp);
        assert_eq!(select(&own, &esp), None);
    }

    fn own_with_number(own: &[Proposal], number: u8) -> Vec<Proposal> {
        let mut own = own.to_vec();
        own[0].number = number;
        own
    }

    #[test]
    fn selection_keeps_the_peers_spi_and_handles_optional_types() {
        let own = numbered("aes128gcm16-esn-noesn", ProtocolId::Esp);
        let mut offer = numbered(
            "aes256gcm16-noesn, aes128gcm16-x25519-noesn",
            ProtocolId::Esp,
        );
        offer[1].spi = vec![0xc0, 0xff, 0xee, 0x01];
        // The peer's second proposal asks for PFS, ours does not: no match.
        assert_eq!(select(&own, &offer), None);
        // With D-H NONE in it, PFS is optional and NONE is chosen.
        offer[1]
            .transforms
            .insert(1, Transform::new(TransformId::Dh(DhGroup::None)));
        let s = select(&own, &offer).unwrap();
        assert_eq!(s.proposal.spi, [0xc0, 0xff, 0xee, 0x01]);
        assert_eq!(s.proposal.number, 2);
        assert_eq!(
            ids(&s.proposal),
            [
                TransformId::Encr(EncrId::AesGcm16),
                TransformId::Dh(DhGroup::None),
                TransformId::Esn(EsnId::NoEsn),
            ]
        );
        // INTEG NONE from the peer with an AEAD matches our AEAD without.
        let mut offer = numbered("aes128gcm16", ProtocolId::Esp);
        offer[0]
            .transforms
            .push(Transform::new(TransformId::Integ(IntegId::None)));
        assert!(select(&own, &offer).is_some());
        // A transform type we do not know makes the proposal unacceptable.
        let mut offer = numbered("aes128gcm16", ProtocolId::Esp);
        offer[0]
            .transforms
            .push(Transform::new(TransformId::new(241, 0)));
        assert_eq!(select(&own, &offer), None);
        // A different key length is a different transform.
        let offer = numbered("aes256gcm16", ProtocolId::Esp);
        assert_eq!(select(&own, &offer), None);
    }

    #[test]
    fn chosen_proposals_are_checked() {
        let own = numbered("aes128gcm16-prfsha256-x25519-ecp256", ProtocolId::Ike);
        let good = Proposal {
            transforms: vec![
                Transform::with_key_length(TransformId::Encr(EncrId::AesGcm16), 128),
                Transform::new(TransformId::Prf(PrfId::HmacSha2_256)),
                Transform::new(TransformId::Dh(DhGroup::Ecp256)),
            ],
            ..own[0].clone()
        };
        assert_eq!(check_chosen(&own, &good), Ok(0));
        let mut two = good.clone();
        two.transforms
            .push(Transform::new(TransformId::Dh(DhGroup::Curve25519)));
        assert!(check_chosen(&own, &two).is_err());
        let mut missing = good.clone();
        missing.transforms.pop();
        assert!(check_chosen(&own, &missing).is_err());
        let mut other = good.clone();
        other.transforms[2] = Transform::new(TransformId::Dh(DhGroup::Modp2048));
        assert!(check_chosen(&own, &other).is_err());
        let mut number = good.clone();
        number.number = 2;
        assert!(check_chosen(&own, &number).is_err());
        let mut protocol = good;
        protocol.protocol = ProtocolId::Esp;
        assert!(check_chosen(&own, &protocol).is_err());
    }

    /// strongSwan 6's `keN_<method>`: additional key exchanges (RFC 9370)
    /// parse into transform types 6 to 12, print back, and reach the suite
    /// in order; `keN_none` makes one optional.
    #[test]
    fn additional_key_exchanges() {
        for text in [
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768",
            "aes128gcm16-prfsha256-ecp256-ke1_mlkem768-ke2_mlkem1024",
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none",
        ] {
            let p = parse_ike(text).unwrap();
            assert_eq!(to_strongswan(&p), text);
        }
        let p = parse_ike("aes128gcm16-prfsha256-ecp256-ke2_mlkem1024-ke1_mlkem768").unwrap();
        assert!(
            p.transforms
                .iter()
                .any(|t| t.id.transform_type() == TransformType::AddKe2)
        );
        // For Child SAs too (IKE_FOLLOWUP_KE): the choice lists them in
        // the order they run.
        let esp = parse_esp("aes256gcm16-x25519-ke2_mlkem1024-ke1_mlkem768").unwrap();
        let choice = esp_choice(&esp).unwrap();
        assert_eq!(choice.group, Some(DhGroup::Curve25519));
        assert_eq!(
            choice.additional,
            [DhGroup::MlKem768, DhGroup::MlKem1024],
            "{}",
            to_strongswan(&esp)
        );
        let Err(Error::Proposal { token, .. }) = parse_esp("aes256gcm16-ke1_mlkem768") else {
            panic!("an ESP proposal with ke1_ and no first key exchange parsed");
        };
        assert_eq!(token, "aes256gcm16-ke1_mlkem768");
        for (bad, token) in [
            ("aes128gcm16-prfsha256-x25519-ke8_mlkem768", "ke8_mlkem768"),
            ("aes128gcm16-prfsha256-x25519-ke1_mlkem999", "ke1_mlkem999"),
            (
                "aes128gcm16-prfsha256-ke1_mlkem768",
                "aes128gcm16-prfsha256-ke1_mlkem768",
            ),
        ] {
            let Err(Error::Proposal { token: t, .. }) = parse_ike(bad) else {
                panic!("{bad} parsed");
            };
            assert_eq!(t, token, "{bad}");
        }
        // The responder picks one method per type, NONE where offered.
        let theirs = parse_list(
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none",
            ProtocolId::Ike,
        )
        .unwrap();
        let hybrid =
            parse_list("aes256gcm16-prfsha384-x25519-ke1_mlkem768", ProtocolId::Ike).unwrap();
        let chosen = select(&hybrid, &theirs).unwrap().proposal;
        let suite = IkeSuite::from_proposal(&chosen).unwrap();
        assert_eq!(
            suite.additional_key_exchanges().collect::<Vec<_>>(),
            [DhGroup::MlKem768]
        );
        let classical = parse_list("aes256gcm16-prfsha384-x25519", ProtocolId::Ike).unwrap();
        let chosen = select(&classical, &theirs).unwrap().proposal;
        assert_eq!(
            to_strongswan(&chosen),
            "aes256gcm16-prfsha384-x25519-ke1_none"
        );
        let suite = IkeSuite::from_proposal(&chosen).unwrap();
        assert_eq!(suite.additional_key_exchanges().count(), 0);
        assert!(check_chosen(&theirs, &chosen).is_ok());
        // Without NONE offered, a classical responder chooses nothing.
        let required =
            parse_list("aes256gcm16-prfsha384-x25519-ke1_mlkem768", ProtocolId::Ike).unwrap();
        assert!(select(&classical, &required).is_none());
    }

    proptest::proptest! {
        /// Any string of keywords, `keN_` ones among them, either fails to
        /// parse with an error naming a token of it, or parses to a
        /// proposal that prints and parses back to itself.
        #[test]
        fn proposals_with_additional_key_exchanges_round_trip(
            tokens in proptest::collection::vec(
                proptest::sample::select(vec![
                    "aes128gcm16", "aes256gcm16", "aes256", "sha256", "prfsha256",
                    "prfsha384", "x25519", "ecp256", "mlkem768", "ke1_mlkem768",
                    "ke1_none", "ke2_mlkem1024", "ke7_x25519", "ke8_mlkem768",
                    "ke0_ecp256", "noesn",
                ]),
                1..7,
            ),
            ike in proptest::bool::ANY,
        ) {
            let text = tokens.join("-");
            let protocol = if ike { ProtocolId::Ike } else { ProtocolId::Esp };
            match parse(&text, protocol) {
                Ok(p) => {
                    let again = parse(&to_strongswan(&p), protocol).unwrap();
                    proptest::prop_assert_eq!(again.transforms, p.transforms);
                }
                Err(Error::Proposal { token, .. }) => {
                    proptest::prop_assert!(text.contains(&token), "{} {}", text, token);
                }
                Err(e) => proptest::prop_assert!(false, "{}", e),
            }
        }
    }
}
