//! `[peer.ike]`: a peer whose SAs are negotiated with IKEv2, with a
//! pre-shared key or certificates (`cert`): identities, proposals,
//! lifetimes, NAT keepalives and fragmentation.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tunsec_ike::message::{Identity, Proposal, ProtocolId};

use super::identity::{ip_identity, parse_identity};
use super::{AuthKind, ConfigError, DEFAULT_NAT_KEEPALIVE, Sources, cert, invalid, quoted, secret};

/// The ESP mode of the Child SAs negotiated with an IKE peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildMode {
    /// Transport mode, asked for with USE_TRANSPORT_MODE (RFC 7296 section
    /// 1.3.1): ESP protects the tunnel's UDP datagram. The default. As a
    /// responder, the initiator's choice is followed.
    #[default]
    Transport,
    /// Tunnel mode (RFC 4303 section 3.1.2): ESP protects an inner IP
    /// header between the two underlay addresses and the datagram.
    Tunnel,
}

/// The traffic selectors of the Child SAs negotiated with an IKE peer
/// (RFC 7296 section 2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildSelectors {
    /// Host to host: the two underlay addresses, UDP, any port. The
    /// default.
    #[default]
    Host,
    /// Narrowed to the overlay's own datagrams: for each tunnel port P of
    /// the peer's networks, `local[udp/P]` and `remote[udp/P]`. Tunnel
    /// datagrams under such an SA leave from the tunnel port.
    Ports,
}

/// Whose keys the networks a peer carries travel under (overlay mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKeys {
    /// One Child SA for every network the two hosts share. The default.
    #[default]
    Shared,
    /// A Child SA of its own for each network the two hosts share,
    /// labelled with the network's identity (`vxlan/100`) in IKE, so that
    /// a frame of one network is sealed and opened only under that
    /// network's keys (ARCHITECTURE.md, "Keys per network"). A peer
    /// without it (strongSwan) gets one shared Child SA.
    PerNetwork,
}

/// How a gateway peer's selectors make Child SAs (RFC 7296 section 2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildLayout {
    /// One Child SA for all selectors, `local[proto/P] === remote[proto/P]`
    /// for each. The default.
    #[default]
    Single,
    /// Two Child SAs for each selector with ports, one per direction of
    /// the tunnel's traffic: `local[proto] === remote[proto/P]` (what
    /// this host sends to the peer's tunnel port, from any port) and
    /// `local[proto/P] === remote[proto]` (what the peer sends to ours);
    /// one Child SA for each selector without ports (GRE). This is what
    /// `ovs-monitor-ipsec` configures strongSwan with (its `-out` and `-in`
    /// connections), so a chassis of the stock stack finds the Child SAs
    /// it expects; each side creates the one it sends with if the other
    /// did not (`auto=route`).
    Split,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIke {
    pub(super) auth: Option<AuthKind>,
    pub(super) psk_file: Option<PathBuf>,
    pub(super) psk_env: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) intermediates: Option<Vec<PathBuf>>,
    pub(super) ca: Option<Vec<PathBuf>>,
    pub(super) crl: Option<Vec<PathBuf>>,
    pub(super) pin_cert: Option<PathBuf>,
    pub(super) pin_sha256: Option<String>,
    pub(super) mode: Option<ChildMode>,
    pub(super) selectors: Option<ChildSelectors>,
    pub(super) layout: Option<ChildLayout>,
    pub(super) keys: Option<ChildKeys>,
    pub(super) local_id: Option<String>,
    pub(super) remote_id: Option<String>,
    pub(super) ike_proposals: Option<Vec<String>>,
    pub(super) esp_proposals: Option<Vec<String>>,
    pub(super) child_lifetime: Option<u64>,
    pub(super) ike_lifetime: Option<u64>,
    pub(super) reauth_before_expiry: Option<u64>,
    pub(super) nat_keepalive: Option<u64>,
    pub(super) fragmentation: Option<bool>,
    pub(super) fragment_size: Option<u64>,
    pub(super) initiate: Option<bool>,
}

impl RawIke {
    /// The certificate fields.
    fn cert(&self) -> cert::RawCert<'_> {
        cert::RawCert {
            cert: &self.cert,
            key: &self.key,
            intermediates: &self.intermediates,
            ca: &self.ca,
            crl: &self.crl,
            pin_cert: &self.pin_cert,
            pin_sha256: &self.pin_sha256,
        }
    }
}

/// A peer whose SAs are negotiated with IKEv2, with a pre-shared key or
/// certificates.
#[derive(Clone)]
pub struct IkePeer {
    /// The pre-shared key (the file's or the environment variable's
    /// content, trimmed); empty with certificates.
    pub psk: tunsec_esp::Key,
    /// Certificate authentication (`auth = "cert"`): our key and chain,
    /// the peer's trust. `None`: the PSK.
    pub cert: Option<std::sync::Arc<tunsec_ike::sa::CertAuth>>,
    /// Our identity.
    pub local_id: Identity,
    /// The identity the peer must prove; `None` only with a pinned
    /// certificate and no `remote_id` (the pin names the peer).
    pub remote_id: Option<Identity>,
    /// The IKE proposals, most preferred first.
    pub ike_proposals: Vec<Proposal>,
    /// The ESP proposals, most preferred first.
    pub esp_proposals: Vec<Proposal>,
    /// How long a Child SA lives before it is rekeyed (at about 80-90% of
    /// it); `None`: no rekeying.
    pub child_lifetime: Option<std::time::Duration>,
    /// How long the IKE SA lives before it is rekeyed (at about 80-90% of
    /// it, RFC 7296 section 2.18); `None`: no rekeying.
    pub ike_lifetime: Option<std::time::Duration>,
    /// With a certificate: how long before our certificate's notAfter
    /// tunsecd looks for a renewed one and re-authenticates with it;
    /// `None`: a third of the certificate's validity, at most 7 days
    /// (`ike::CertRenewal`).
    pub reauth_before_expiry: Option<std::time::Duration>,
    /// How often a host behind a NAT sends a NAT keepalive (RFC 3948
    /// section 4).
    pub nat_keepalive: std::time::Duration,
    /// Offer and use IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// The largest IP datagram an IKE fragment makes, headers included.
    pub fragment_size: usize,
    /// The ESP mode asked for (initiator) or accepted (responder).
    pub mode: ChildMode,
    /// The traffic selectors offered (initiator) or narrowed to
    /// (responder).
    pub selectors: ChildSelectors,
    /// Gateway mode: how the peer's selectors make Child SAs.
    pub layout: ChildLayout,
    /// Overlay mode: one Child SA for all networks, or one per network.
    pub keys: ChildKeys,
    /// Whether this host starts the IKE SA by itself (at start-up, and
    /// again after a failure) when it is the designated initiator, the
    /// lower underlay address, or when the designated initiator stays
    /// silent. `false`: a passive responder (strongSwan's
    /// `start_action = none`), for a peer that always initiates;
    /// `tunsec up` still initiates once.
    pub initiate: bool,
}

impl fmt::Debug for IkePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkePeer")
            .field("psk", &"<redacted>")
            .field("cert", &self.cert.is_some())
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("ike_proposals", &self.ike_proposals.len())
            .field("esp_proposals", &self.esp_proposals.len())
            .field("child_lifetime", &self.child_lifetime)
            .field("ike_lifetime", &self.ike_lifetime)
            .field("nat_keepalive", &self.nat_keepalive)
            .field("fragmentation", &self.fragmentation)
            .field("fragment_size", &self.fragment_size)
            .field("mode", &self.mode)
            .field("selectors", &self.selectors)
            .field("layout", &self.layout)
            .field("keys", &self.keys)
            .field("initiate", &self.initiate)
            .finish()
    }
}

fn parse_proposals(
    field: &str,
    list: Option<Vec<String>>,
    protocol: ProtocolId,
) -> Result<Vec<Proposal>, ConfigError> {
    let Some(list) = list else {
        return Ok(tunsec_ike::proposal::defaults(protocol));
    };
    if list.is_empty() {
        return Err(invalid(field, "[]", "must list at least one proposal"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, text) in list.iter().enumerate() {
        let parsed = match protocol {
            ProtocolId::Esp => tunsec_ike::proposal::parse_esp(text),
            _ => tunsec_ike::proposal::parse_ike(text),
        };
        let mut p = parsed.map_err(|e| match e {
            tunsec_ike::Error::Proposal { token, reason, .. } => invalid(
                format!("{field}[{j}]"),
                quoted(text),
                format!("is not a valid proposal: {token:?}: {reason}"),
            ),
            other => invalid(format!("{field}[{j}]"), quoted(text), other.to_string()),
        })?;
        p.number = u8::try_from(j + 1)
            .map_err(|_| invalid(field, list.len(), "lists more than 255 proposals"))?;
        out.push(p);
    }
    Ok(out)
}

/// Reads the pre-shared key from exactly one of `psk_file` and `psk_env`;
/// leading and trailing whitespace is trimmed, and an empty key refused.
fn read_psk(
    f: &dyn Fn(&str) -> String,
    raw: &RawIke,
    sources: &Sources<'_>,
) -> Result<tunsec_esp::Key, ConfigError> {
    let (field, shown, bytes) = match (&raw.psk_file, &raw.psk_env) {
        (Some(_), Some(name)) => {
            return Err(invalid(
                f("psk_env"),
                quoted(name),
                "cannot be combined with psk_file: the key comes from one of them",
            ));
        }
        (None, None) => {
            return Err(invalid(
                f("psk_file"),
                "(missing)",
                "is required, or psk_env: the pre-shared key comes from a file or an environment variable",
            ));
        }
        (Some(path), None) => {
            let shown = quoted(&path.display().to_string());
            let bytes = secret::read(&f("psk_file"), sources.base_dir, path)?;
            ("psk_file", shown, bytes)
        }
        (None, Some(name)) => {
            let shown = quoted(name);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(invalid(
                    f("psk_env"),
                    &shown,
                    "is not an environment variable name",
                ));
            }
            let value = (sources.env)(name).ok_or_else(|| {
                invalid(
                    f("psk_env"),
                    &shown,
                    "names an environment variable that is not set",
                )
            })?;
            let bytes = std::os::unix::ffi::OsStringExt::into_vec(value);
            ("psk_env", shown, zeroize::Zeroizing::new(bytes))
        }
    };
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        let reason = match field {
            "psk_env" => "names an environment variable that is empty",
            _ => "is empty",
        };
        return Err(invalid(f(field), &shown, reason));
    }
    Ok(tunsec_esp::Key::from_slice(trimmed))
}

/// The authentication `[peer.ike]` asks for, with only its own fields:
/// with `auth = "psk"` no certificate field may be set, with `auth =
/// "cert"` neither `psk_file` nor `psk_env`.
fn check_auth_fields(f: &dyn Fn(&str) -> String, raw: &RawIke) -> Result<AuthKind, ConfigError> {
    let auth = raw.auth.unwrap_or_default();
    let cert_fields = raw.cert().fields();
    let psk_fields = [
        ("psk_file", raw.psk_file.is_some()),
        ("psk_env", raw.psk_env.is_some()),
    ];
    let (others, reason): (&[(&str, bool)], _) = match auth {
        AuthKind::Psk => (&cert_fields, "needs auth = \"cert\" (auth is \"psk\")"),
        AuthKind::Cert => (&psk_fields, "cannot be used with auth = \"cert\""),
    };
    match others.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(invalid(f(name), "(set)", reason)),
        None => Ok(auth),
    }
}

pub(super) fn validate_ike(
    i: usize,
    raw: RawIke,
    local: IpAddr,
    remote: IpAddr,
    sources: &Sources<'_>,
) -> Result<IkePeer, ConfigError> {
    let f = |name: &str| format!("peer[{i}].ike.{name}");
    let cert = match check_auth_fields(&f, &raw)? {
        AuthKind::Psk => None,
        AuthKind::Cert => Some(cert::load(&f, &raw.cert(), sources.base_dir)?),
    };
    let psk = match cert {
        None => read_psk(&f, &raw, sources)?,
        Some(_) => tunsec_esp::Key::from_slice(&[]),
    };
    // With a certificate, we are its subject DN unless told otherwise;
    // the peer must be named unless it is pinned.
    let local_id = match (&raw.local_id, &cert) {
        (Some(s), _) => parse_identity(&f("local_id"), s)?,
        (None, Some(c)) => Identity::DerAsn1Dn(c.subject.clone()),
        (None, None) => ip_identity(local),
    };
    // RFC 4945 section 3.1: the peer checks our ID against our
    // certificate; say so now rather than in the peer's log.
    if let (Some(c), Some(text)) = (&cert, &raw.local_id) {
        tunsec_ike::cert::check_identity(c.auth.credentials.end_entity(), &local_id).map_err(
            |e| {
                invalid(
                    f("local_id"),
                    quoted(text),
                    format!("does not match cert: {e}"),
                )
            },
        )?;
    }
    let remote_id = match (&raw.remote_id, &cert) {
        (Some(s), _) => Some(parse_identity(&f("remote_id"), s)?),
        (None, None) => Some(ip_identity(remote)),
        (None, Some(c)) if c.pinned => None,
        (None, Some(_)) => {
            return Err(invalid(
                f("remote_id"),
                "(missing)",
                "is required with auth = \"cert\" and ca: the CA vouches for many nodes, name the one expected (dn:..., fqdn:..., email:..., ip:...)",
            ));
        }
    };
    let lifetime = |name: &str, value: Option<u64>| match value {
        None => Ok(None),
        Some(secs) if (2..=86_400 * 7).contains(&secs) => {
            Ok(Some(std::time::Duration::from_secs(secs)))
        }
        Some(secs) => Err(invalid(f(name), secs, "must be from 2 to 604800 seconds")),
    };
    let child_lifetime = lifetime("child_lifetime", raw.child_lifetime)?;
    let ike_lifetime = lifetime("ike_lifetime", raw.ike_lifetime)?;
    let reauth_before_expiry = match raw.reauth_before_expiry {
        None => None,
        Some(secs) if (60..=86_400 * 365).contains(&secs) => {
            Some(std::time::Duration::from_secs(secs))
        }
        Some(secs) => {
            return Err(invalid(
                f("reauth_before_expiry"),
                secs,
                "must be from 60 to 31536000 seconds (a year)",
            ));
        }
    };
    if reauth_before_expiry.is_some() && raw.cert.is_none() {
        return Err(invalid(
            f("reauth_before_expiry"),
            raw.reauth_before_expiry.unwrap_or(0),
            "only applies to auth = \"cert\" (a certificate that expires)",
        ));
    }
    let nat_keepalive = match raw.nat_keepalive {
        None => DEFAULT_NAT_KEEPALIVE,
        Some(secs) if (1..=3600).contains(&secs) => std::time::Duration::from_secs(secs),
        Some(secs) => {
            return Err(invalid(
                f("nat_keepalive"),
                secs,
                "must be from 1 to 3600 seconds",
            ));
        }
    };
    let fragment_size = match raw.fragment_size {
        None => tunsec_ike::sa::fragment::DEFAULT_FRAGMENT_SIZE,
        // RFC 791: every IPv4 host accepts datagrams of 576 bytes.
        Some(size @ 576..=65_535) => size as usize,
        Some(size) => {
            return Err(invalid(
                f("fragment_size"),
                size,
                "must be from 576 to 65535 bytes",
            ));
        }
    };
    Ok(IkePeer {
        psk,
        cert: cert.map(|c| c.auth),
        local_id,
        remote_id,
        ike_proposals: parse_proposals(&f("ike_proposals"), raw.ike_proposals, ProtocolId::Ike)?,
        esp_proposals: parse_proposals(&f("esp_proposals"), raw.esp_proposals, ProtocolId::Esp)?,
        child_lifetime,
        ike_lifetime,
        reauth_before_expiry,
        nat_keepalive,
        fragmentation: raw.fragmentation.unwrap_or(true),
        fragment_size,
        mode: raw.mode.unwrap_or_default(),
        selectors: raw.selectors.unwrap_or_default(),
        layout: raw.layout.unwrap_or_default(),
        keys: raw.keys.unwrap_or_default(),
        initiate: raw.initiate.unwrap_or(true),
    })
}

#[cfg(test)]
mod test {
    use std::ffi::OsString;

    use tunsec_ike::message::{Identity, ProtocolId};

    use super::super::testing::*;
    use super::*;

    #[test]
    fn ike_peer_parses_with_defaults() {
        let c = parse_ike(&ike_config(IKE_PEER), b"  correct horse battery\n").unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert!(c.peers[0].sa.is_none());
        assert_eq!(ike.psk.expose(), b"correct horse battery");
        assert_eq!(ike.local_id, Identity::Ipv4("192.0.2.1".parse().unwrap()));
        assert_eq!(
            ike.remote_id,
            Some(Identity::Ipv4("192.0.2.2".parse().unwrap()))
        );
        assert_eq!(
            ike.ike_proposals,
            tunsec_ike::proposal::defaults(ProtocolId::Ike)
        );
        assert_eq!(
            ike.esp_proposals,
            tunsec_ike::proposal::defaults(ProtocolId::Esp)
        );
        assert!(
            !format!("{ike:?}").contains("horse"),
            "the PSK never prints"
        );

        let c = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}local_id = \"a.example\"\nremote_id = \"keyid:b\"\n\
                 ike_proposals = [\"aes256gcm16-prfsha384-ecp384\", \"aes128gcm16-prfsha256-x25519\"]\n\
                 esp_proposals = [\"aes256gcm16\"]\n"
            )),
            b"k",
        )
        .unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert_eq!(ike.local_id, Identity::Fqdn(b"a.example".to_vec()));
        assert_eq!(ike.remote_id, Some(Identity::KeyId(b"b".to_vec())));
        assert_eq!(ike.ike_proposals.len(), 2);
        assert_eq!(ike.ike_proposals[1].number, 2);
        assert_eq!(ike.esp_proposals.len(), 1);
    }

    #[test]
    fn ike_errors_name_the_field() {
        // Manual keys and IKE together.
        assert_ike_invalid(
            &format!("{BASE}{IKE_PEER}"),
            b"k",
            "peer[0].ike",
            "[peer.ike]",
        );
        assert_ike_invalid(
            &ike_config(IKE_PEER),
            b" \n",
            "peer[0].ike.psk_file",
            "\"b.psk\"",
        );
        assert_ike_invalid(
            &ike_config("[peer.ike]\npsk_file = \"nope.psk\"\n"),
            b"k",
            "peer[0].ike.psk_file",
            "\"nope.psk\"",
        );
        let err = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}ike_proposals = [\"aes256gcm16-prfsha384-ecp999\"]\n"
            )),
            b"k",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("peer[0].ike.ike_proposals[0]"), "{text}");
        assert!(text.contains("ecp999"), "{text}");
        let err = parse_ike(
            &ike_config(&format!(
                "{IKE_PEER}esp_proposals = [\"aes128gcm16\", \"rot13\"]\n"
            )),
            b"k",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("peer[0].ike.esp_proposals[1]"), "{text}");
        assert!(text.contains("rot13"), "{text}");
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}esp_proposals = []\n")),
            b"k",
            "peer[0].ike.esp_proposals",
            "[]",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}remote_id = \"two words\"\n")),
            b"k",
            "peer[0].ike.remote_id",
            "\"two words\"",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}nat_keepalive = 0\n")),
            b"k",
            "peer[0].ike.nat_keepalive",
            "0",
        );
        // Only for certificates, and at least a minute.
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}reauth_before_expiry = 86400\n")),
            b"k",
            "peer[0].ike.reauth_before_expiry",
            "86400",
        );
        assert_ike_invalid(
            &ike_config(&format!("{IKE_PEER}reauth_before_expiry = 5\n")),
            b"k",
            "peer[0].ike.reauth_before_expiry",
            "5",
        );
        for field in ["child_lifetime", "ike_lifetime"] {
            assert_ike_invalid(
                &ike_config(&format!("{IKE_PEER}{field} = 1\n")),
                b"k",
                &format!("peer[0].ike.{field}"),
                "1",
            );
        }
        let ike = parse_ike(
            &ike_config(&format!("{IKE_PEER}ike_lifetime = 3600\n")),
            b"k",
        )
        .unwrap()
        .peers[0]
            .ike
            .clone()
            .unwrap();
        assert_eq!(ike.ike_lifetime, Some(std::time::Duration::from_secs(3600)));
        // Keys are never inline.
        let err =
            parse_ike(&ike_config(&format!("{IKE_PEER}psk = \"secret\"\n")), b"k").unwrap_err();
        assert!(err.to_string().contains("psk"), "{err}");
    }

    /// The `[peer.ike]` of the test peer with `extra` lines added.
    fn ike(extra: &str) -> IkePeer {
        parse_ike(&ike_config(&format!("{IKE_PEER}{extra}")), b"k")
            .unwrap()
            .peers[0]
            .ike
            .clone()
            .unwrap()
    }

    /// `initiate`: on by default; `false` makes a passive responder; not a
    /// boolean is an error that names the field.
    #[test]
    fn ike_initiate_parses() {
        assert!(ike("").initiate);
        assert!(!ike("initiate = false\n").initiate);
        let err =
            parse_ike(&ike_config(&format!("{IKE_PEER}initiate = \"no\"\n")), b"k").unwrap_err();
        assert!(err.to_string().contains("initiate"), "{err}");
    }

    /// IKE fragmentation (RFC 7383): on at 1280 bytes by default; off, or
    /// another size from 576 to 65535.
    #[test]
    fn ike_fragmentation_parses() {
        let d = ike("");
        assert!(d.fragmentation);
        assert_eq!(d.fragment_size, 1280);
        let c = ike("fragmentation = false
fragment_size = 576
");
        assert!(!c.fragmentation);
        assert_eq!(c.fragment_size, 576);
        for bad in ["575", "65536", "0"] {
            assert_ike_invalid(
                &ike_config(&format!(
                    "{IKE_PEER}fragment_size = {bad}
"
                )),
                b"k",
                "peer[0].ike.fragment_size",
                bad,
            );
        }
    }

    #[test]
    fn ike_mode_parses() {
        let c = parse_ike(&ike_config(IKE_PEER), b"k").unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let c = parse_ike(&ike_config(&format!("{IKE_PEER}mode = \"tunnel\"\n")), b"k").unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Tunnel);
        let c = parse_ike(
            &ike_config(&format!("{IKE_PEER}mode = \"transport\"\n")),
            b"k",
        )
        .unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let err = parse_ike(&ike_config(&format!("{IKE_PEER}mode = \"beet\"\n")), b"k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("beet"), "{err}");
    }

    #[test]
    fn ike_selectors_parse() {
        let c = parse_ike(&ike_config(IKE_PEER), b"k").unwrap();
        let selectors = |c: &Config| c.peers[0].ike.as_ref().unwrap().selectors;
        assert_eq!(selectors(&c), ChildSelectors::Host);
        for (text, want) in [
            ("host", ChildSelectors::Host),
            ("ports", ChildSelectors::Ports),
        ] {
            let c = parse_ike(
                &ike_config(&format!("{IKE_PEER}selectors = \"{text}\"\n")),
                b"k",
            )
            .unwrap();
            assert_eq!(selectors(&c), want);
        }
        let err = parse_ike(
            &ike_config(&format!("{IKE_PEER}selectors = \"any\"\n")),
            b"k",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("selectors") && err.contains("any"), "{err}");
        // The Child SA layout is gateway mode's.
        let err = parse_ike(
            &ike_config(&format!("{IKE_PEER}layout = \"split\"\n")),
            b"k",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("peer[0].ike.layout") && err.contains("split"),
            "{err}"
        );
    }

    /// Parses with a fake environment that holds `vars`.
    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = dir_with_keys();
        write_secret(dir.path().join("b.psk"), b"from the file").unwrap();
        let env = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        };
        Config::parse_with_env(text, dir.path(), &env)
    }

    fn assert_env_invalid(text: &str, vars: &[(&str, &str)], field: &str, value: &str, why: &str) {
        let (f, v, reason) = refused(parse_env(text, vars));
        assert_eq!((f.as_str(), v.as_str()), (field, value));
        assert!(reason.contains(why), "{reason}");
    }

    #[test]
    fn psk_from_the_environment() {
        let env_peer = ike_config("[peer.ike]\npsk_env = \"TS_PSK_B\"\n");
        let c = parse_env(&env_peer, &[("TS_PSK_B", "  battery staple\n")]).unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert_eq!(ike.psk.expose(), b"battery staple");
        assert!(!format!("{ike:?}").contains("staple"));
        // The file still works without the variable.
        let c = parse_env(&ike_config(IKE_PEER), &[]).unwrap();
        assert_eq!(
            c.peers[0].ike.as_ref().unwrap().psk.expose(),
            b"from the file"
        );
        // Not both.
        assert_env_invalid(
            &ike_config(&format!("{IKE_PEER}psk_env = \"TS_PSK_B\"\n")),
            &[("TS_PSK_B", "k")],
            "peer[0].ike.psk_env",
            "\"TS_PSK_B\"",
            "cannot be combined with psk_file",
        );
        // Not neither.
        assert_env_invalid(
            &ike_config("[peer.ike]\nmode = \"tunnel\"\n"),
            &[],
            "peer[0].ike.psk_file",
            "(missing)",
            "psk_env",
        );
        // Unset, empty, or blank.
        assert_env_invalid(
            &env_peer,
            &[("OTHER", "k")],
            "peer[0].ike.psk_env",
            "\"TS_PSK_B\"",
            "not set",
        );
        for blank in ["", " \n\t"] {
            assert_env_invalid(
                &env_peer,
                &[("TS_PSK_B", blank)],
                "peer[0].ike.psk_env",
                "\"TS_PSK_B\"",
                "empty",
            );
        }
        // Not a variable name.
        for name in ["", "A=B"] {
            assert_env_invalid(
                &ike_config(&format!("[peer.ike]\npsk_env = \"{name}\"\n")),
                &[],
                "peer[0].ike.psk_env",
                &format!("{name:?}"),
                "not an environment variable name",
            );
        }
    }
}
