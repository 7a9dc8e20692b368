//! `[peer.ike] auth = "cert"`: our certificate and key, the peer's trust
//! (CAs with CRLs, or a pinned certificate or fingerprint), and typed
//! identities (`dn:`, `fqdn:`, `email:`, `ip:`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tunsec_ike::cert::{CertError, Credentials, Trust, parse_certificates};
use tunsec_ike::sa::CertAuth;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::secret::resolve;
use super::{ConfigError, invalid, quoted};

/// How a peer authenticates in IKE_AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// A pre-shared key (`psk_file` or `psk_env`).
    #[default]
    Psk,
    /// A certificate and a signature (`cert`, `key`, and `ca` or a pin).
    Cert,
}

fn shown(path: &Path) -> String {
    quoted(&path.display().to_string())
}

/// Reads a file named by `field`; the error names the field and the path.
fn read(field: &str, base_dir: &Path, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(resolve(base_dir, path))
        .map_err(|e| invalid(field, shown(path), format!("cannot be read: {e}")))
}

fn cert_error(field: &str, path: &Path, e: CertError) -> ConfigError {
    invalid(field, shown(path), format!("is not usable: {e}"))
}

/// The result of `[peer.ike] auth = "cert"`.
pub(super) struct Loaded {
    pub(super) auth: Arc<CertAuth>,
    /// Our certificate's subject DN (DER): the default `local_id`.
    pub(super) subject: Vec<u8>,
    /// The trust is a pin: the peer's identity may be left unset.
    pub(super) pinned: bool,
}

/// The certificate fields of `[peer.ike]`, borrowed from its raw table
/// (which also holds the PSK's and the negotiation's fields).
pub(super) struct RawCert<'a> {
    pub(super) cert: &'a Option<PathBuf>,
    pub(super) key: &'a Option<PathBuf>,
    pub(super) intermediates: &'a Option<Vec<PathBuf>>,
    pub(super) ca: &'a Option<Vec<PathBuf>>,
    pub(super) crl: &'a Option<Vec<PathBuf>>,
    pub(super) pin_cert: &'a Option<PathBuf>,
    pub(super) pin_sha256: &'a Option<String>,
}

impl RawCert<'_> {
    /// Each field by name, and whether it is set.
    pub(super) fn fields(&self) -> [(&'static str, bool); 7] {
        [
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("intermediates", self.intermediates.is_some()),
            ("ca", self.ca.is_some()),
            ("crl", self.crl.is_some()),
            ("pin_cert", self.pin_cert.is_some()),
            ("pin_sha256", self.pin_sha256.is_some()),
        ]
    }
}

/// Loads the certificate fields of `[peer.ike]` with `auth = "cert"`:
/// `cert` and `key` are required, with `ca` (and optional `crl`) or
/// `pin_cert` / `pin_sha256`.
pub(super) fn load(
    f: &dyn Fn(&str) -> String,
    raw: &RawCert<'_>,
    base_dir: &Path,
) -> Result<Loaded, ConfigError> {
    let cert_path = raw
        .cert
        .as_deref()
        .ok_or_else(|| invalid(f("cert"), "(missing)", "is required with auth = \"cert\""))?;
    let key_path = raw
        .key
        .as_deref()
        .ok_or_else(|| invalid(f("key"), "(missing)", "is required with auth = \"cert\""))?;
    // Not readable by every user: the key would be anyone's.
    let key = super::secret::read(&f("key"), base_dir, key_path)?;
    let mut chain = read(&f("cert"), base_dir, cert_path)?;
    for (j, p) in raw.intermediates.iter().flatten().enumerate() {
        let field = format!("{}[{j}]", f("intermediates"));
        let bytes = read(&field, base_dir, p)?;
        parse_certificates(&bytes).map_err(|e| cert_error(&field, p, e))?;
        if !bytes.starts_with(b"-----") && !chain.starts_with(b"-----") {
            // Both DER: keep them apart as PEM.
            return Err(invalid(
                field,
                shown(p),
                "must be PEM when the certificate is DER (or put the chain in one PEM file)",
            ));
        }
        chain.push(b'\n');
        chain.extend_from_slice(&bytes);
    }
    let credentials = Credentials::from_pem(&key, &chain).map_err(|e| match e {
        CertError::InvalidKey(_) | CertError::Malformed("private key PEM") => {
            cert_error(&f("key"), key_path, e)
        }
        e => cert_error(&f("cert"), cert_path, e),
    })?;
    let subject = X509Certificate::from_der(credentials.end_entity().as_ref())
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .map_err(|_| {
            cert_error(
                &f("cert"),
                cert_path,
                CertError::Malformed("certificate DER"),
            )
        })?;

    let pins = raw.pin_cert.is_some() || raw.pin_sha256.is_some();
    let trust = match (&raw.ca, pins) {
        (Some(_), true) => {
            return Err(invalid(
                f("ca"),
                "(set)",
                "cannot be combined with pin_cert or pin_sha256: trust a CA or pin the peer",
            ));
        }
        (None, false) => {
            return Err(invalid(
                f("ca"),
                "(missing)",
                "is required with auth = \"cert\", or pin_cert / pin_sha256",
            ));
        }
        (Some(cas), false) => {
            if cas.is_empty() {
                return Err(invalid(f("ca"), "[]", "must name at least one CA file"));
            }
            let mut roots = Vec::new();
            for (j, p) in cas.iter().enumerate() {
                let field = format!("{}[{j}]", f("ca"));
                let bytes = read(&field, base_dir, p)?;
                Trust::ca(&[&bytes], &[]).map_err(|e| cert_error(&field, p, e))?;
                roots.push(bytes);
            }
            let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
            let mut crls = Vec::new();
            for (j, p) in raw.crl.iter().flatten().enumerate() {
                let field = format!("{}[{j}]", f("crl"));
                let bytes = read(&field, base_dir, p)?;
                // Each CRL on its own first, so that an error names its file.
                Trust::ca(&roots, &[&bytes]).map_err(|e| cert_error(&field, p, e))?;
                crls.push(bytes);
            }
            let crls: Vec<&[u8]> = crls.iter().map(Vec::as_slice).collect();
            Trust::ca(&roots, &crls).map_err(|e| cert_error(&f("ca"), &cas[0], e))?
        }
        (None, true) => {
            if raw.crl.is_some() {
                return Err(invalid(
                    f("crl"),
                    "(set)",
                    "needs ca: a pinned certificate is not checked against CRLs",
                ));
            }
            let mut certs = Vec::new();
            if let Some(p) = &raw.pin_cert {
                let bytes = read(&f("pin_cert"), base_dir, p)?;
                let parsed =
                    parse_certificates(&bytes).map_err(|e| cert_error(&f("pin_cert"), p, e))?;
                certs.extend(parsed);
            }
            let mut fingerprints = Vec::new();
            if let Some(hex_text) = &raw.pin_sha256 {
                fingerprints.push(parse_fingerprint(&f("pin_sha256"), hex_text)?);
            }
            Trust::pinned(&certs, &fingerprints)
        }
    };
    Ok(Loaded {
        auth: Arc::new(CertAuth::new(credentials, trust)),
        subject,
        pinned: pins,
    })
}

/// A SHA-256 fingerprint: 64 hex digits, with or without `:` between the
/// octets (as `openssl x509 -fingerprint -sha256` and `tunsec pki show`
/// print it).
fn parse_fingerprint(field: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    hex::decode(&digits)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            invalid(
                field,
                quoted(text),
                "is not a SHA-256 fingerprint (64 hex digits, optionally with ':' between octets)",
            )
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tunsec_ike::message::Identity;

    use super::super::testing::ike_config;
    use crate::config::{Config, ConfigError, dn_to_der};
    use crate::pki::{self, KeyAlg};

    /// A directory with a CA, node certificates `a` and `b` from it, and a
    /// self-signed `solo`.
    fn pki_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        pki::init_ca(KeyAlg::EcdsaP256, "test CA", 30, &p.join("ca")).unwrap();
        for n in ["a", "b"] {
            let email = format!("{n}@example.com");
            pki::issue(&p.join("ca"), n, &[email], KeyAlg::EcdsaP256, 30, p).unwrap();
        }
        pki::self_signed("solo", &[], KeyAlg::Ed25519, 30, p).unwrap();
        pki::crl(&p.join("ca"), &[p.join("b.pem")], 7, &p.join("ca.crl")).unwrap();
        dir
    }

    fn parse(dir: &tempfile::TempDir, ike: &str) -> Result<Config, ConfigError> {
        Config::parse(&ike_config(&format!("[peer.ike]\n{ike}")), dir.path())
    }

    fn assert_invalid(dir: &tempfile::TempDir, ike: &str, field: &str, value: &str, why: &str) {
        match parse(dir, ike) {
            Err(ConfigError::Invalid {
                field: f,
                value: v,
                reason,
            }) => {
                assert_eq!((f.as_str(), v.as_str()), (field, value), "{reason}");
                assert!(reason.contains(why), "{field}: {reason}");
            }
            other => panic!("expected an error on {field}, got {other:?}"),
        }
    }

    const CA: &str = "auth = \"cert\"\ncert = \"a.pem\"\nkey = \"a.key\"\nca = [\"ca/ca.pem\"]\n";

    #[test]
    fn cert_auth_parses() {
        let dir = pki_dir();
        let c = parse(
            &dir,
            &format!("{CA}crl = [\"ca.crl\"]\nremote_id = \"fqdn:b\"\n"),
        )
        .unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert!(ike.cert.is_some());
        assert_eq!(ike.remote_id, Some(Identity::Fqdn(b"b".to_vec())));
        // We are our certificate's subject by default.
        let Identity::DerAsn1Dn(dn) = &ike.local_id else {
            panic!("{:?}", ike.local_id)
        };
        assert!(tunsec_ike::cert::dn_eq(dn, &dn_to_der("CN=a").unwrap()));

        // Intermediates follow our certificate in the chain we send.
        let c = parse(
            &dir,
            &format!("{CA}intermediates = [\"ca/ca.pem\"]\nremote_id = \"fqdn:b\"\n"),
        )
        .unwrap();
        let chain = &c.peers[0]
            .ike
            .as_ref()
            .unwrap()
            .cert
            .as_ref()
            .unwrap()
            .credentials
            .chain;
        assert_eq!(chain.len(), 2);
        assert_invalid(
            &dir,
            &format!("{CA}intermediates = [\"ca.crl\"]\nremote_id = \"fqdn:b\"\n"),
            "peer[0].ike.intermediates[0]",
            "\"ca.crl\"",
            "not usable",
        );

        // Pinned by certificate or fingerprint; the peer's ID may be left out.
        let c = parse(
            &dir,
            "auth = \"cert\"\ncert = \"a.pem\"\nkey = \"a.key\"\npin_cert = \"solo.pem\"\nlocal_id = \"email:a@example.com\"\n",
        )
        .unwrap();
        let ike = c.peers[0].ike.as_ref().unwrap();
        assert_eq!(ike.remote_id, None);
        assert_eq!(ike.local_id, Identity::Rfc822(b"a@example.com".to_vec()));
        let fp = "ab".repeat(32);
        parse(
            &dir,
            &format!("auth = \"cert\"\ncert = \"a.pem\"\nkey = \"a.key\"\npin_sha256 = \"{fp}\"\nremote_id = \"ip:2001:db8::2\"\n"),
        )
        .unwrap();
        let colons = vec!["AB"; 32].join(":");
        parse(
            &dir,
            &format!(
                "auth = \"cert\"\ncert = \"a.pem\"\nkey = \"a.key\"\npin_sha256 = \"{colons}\"\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn cert_auth_errors_name_the_field() {
        let dir = pki_dir();
        let p = dir.path();
        assert_invalid(&dir, CA, "peer[0].ike.remote_id", "(missing)", "required");
        let with_id = |s: &str| format!("{s}remote_id = \"fqdn:b\"\n");
        assert_invalid(
            &dir,
            &with_id(&CA.replace("ca = [\"ca/ca.pem\"]\n", "")),
            "peer[0].ike.ca",
            "(missing)",
            "pin_cert",
        );
        assert_invalid(
            &dir,
            &with_id(&format!("{CA}pin_sha256 = \"00\"\n")),
            "peer[0].ike.ca",
            "(set)",
            "cannot be combined",
        );
        assert_invalid(
            &dir,
            &with_id(&CA.replace("cert = \"a.pem\"\n", "")),
            "peer[0].ike.cert",
            "(missing)",
            "required",
        );
        assert_invalid(
            &dir,
            &with_id(&CA.replace("a.key", "nope.key")),
            "peer[0].ike.key",
            "\"nope.key\"",
            "cannot be read",
        );
        // The key of another certificate.
        assert_invalid(
            &dir,
            &with_id(&CA.replace("a.key", "b.key")),
            "peer[0].ike.key",
            "\"b.key\"",
            "does not match",
        );
        // A certificate file that is not one.
        assert_invalid(
            &dir,
            &with_id(&CA.replace("cert = \"a.pem\"", "cert = \"ca.crl\"")),
            "peer[0].ike.cert",
            "\"ca.crl\"",
            "not usable",
        );
        assert_invalid(
            &dir,
            &with_id(&format!("{CA}crl = [\"a.pem\"]\n")),
            "peer[0].ike.crl[0]",
            "\"a.pem\"",
            "not usable",
        );
        // A world-readable key is refused.
        std::fs::set_permissions(p.join("a.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_invalid(&dir, &with_id(CA), "peer[0].ike.key", "\"a.key\"", "0644");
        std::fs::set_permissions(p.join("a.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
        parse(&dir, &with_id(CA)).unwrap();
        // PSK fields with certificates, and certificate fields with a PSK.
        assert_invalid(
            &dir,
            &with_id(&format!("{CA}psk_file = \"x\"\n")),
            "peer[0].ike.psk_file",
            "(set)",
            "auth = \"cert\"",
        );
        assert_invalid(
            &dir,
            "psk_file = \"x\"\ncert = \"a.pem\"\n",
            "peer[0].ike.cert",
            "(set)",
            "needs auth = \"cert\"",
        );
        // Our own ID must be in our certificate.
        assert_invalid(
            &dir,
            &format!("{CA}remote_id = \"fqdn:b\"\nlocal_id = \"fqdn:b\"\n"),
            "peer[0].ike.local_id",
            "\"fqdn:b\"",
            "is not in the certificate",
        );
        parse(
            &dir,
            &format!("{CA}remote_id = \"fqdn:b\"\nlocal_id = \"dn:CN=a\"\n"),
        )
        .unwrap();
        let bad_fp = "auth = \"cert\"\ncert = \"a.pem\"\nkey = \"a.key\"\npin_sha256 = \"abc\"\n";
        assert_invalid(&dir, bad_fp, "peer[0].ike.pin_sha256", "\"abc\"", "64 hex");
        for (id, why) in [
            ("dn:CN", "TYPE=VALUE"),
            ("dn:XX=1", "unknown attribute"),
            ("email:nobody", "e-mail"),
            ("ip:300.1.1.1", "IP address"),
            ("fqdn:", "a name"),
        ] {
            assert_invalid(
                &dir,
                &format!("{CA}remote_id = \"{id}\"\n"),
                "peer[0].ike.remote_id",
                &format!("\"{id}\""),
                why,
            );
        }
        assert!(matches!(
            parse(&dir, "auth = \"token\"\n"),
            Err(ConfigError::Syntax { field: Some(f), .. }) if f == "peer[0].ike.auth"
        ));
    }
}
