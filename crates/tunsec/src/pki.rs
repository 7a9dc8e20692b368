//! `tunsec pki`: a small CA for tunsec nodes, in the manner of ovs-pki and
//! strongSwan's `pki`, built on rcgen. Everything is PEM; private keys are
//! created with mode 0600.
//!
//! - `init-ca --out DIR`: a self-signed CA, `DIR/ca.pem` and `DIR/ca.key`.
//! - `issue --ca DIR --name NODE --out DIR`: a node certificate whose
//!   subject CN is the node name (OVN's chassis name) and which carries the
//!   name as a dNSName too, plus any `--san`; `DIR/NODE.pem` and
//!   `DIR/NODE.key`.
//! - `self-signed --name NODE --out DIR`: a self-signed node certificate,
//!   for peers that pin each other (`pin_cert` / `pin_sha256`).
//! - `crl --ca DIR [--revoke CERT]... --out FILE`: a CRL from the CA that
//!   revokes the certificates given (`[peer.ike] crl`).
//! - `show CERT`: subject, issuer, SANs, validity, key type, fingerprint.
//! - `verify CERT --ca CA [--crl CRL]`: the checks IKE makes
//!   ([`tunsec_ike::cert::verify_peer`]).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};
use tunsec_ike::cert::{CertificateDer, PeerPublicKey, Trust, UnixTime};
use tunsec_ike::message::Identity;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

/// `tunsec pki`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PkiCommand {
    /// Create a CA: a key and a self-signed certificate (DIR/ca.key,
    /// DIR/ca.pem).
    InitCa {
        /// The key type.
        #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
        key: KeyAlg,
        /// The CA's common name.
        #[arg(long, default_value = "tunsec CA")]
        name: String,
        /// Validity, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Where to write ca.pem and ca.key (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate signed by a CA (DIR/NODE.key,
    /// DIR/NODE.pem).
    Issue {
        /// The CA's directory (ca.pem and ca.key), as made by init-ca.
        #[arg(long)]
        ca: PathBuf,
        #[command(flatten)]
        node: NodeCertArgs,
    },
    /// Make a self-signed node certificate, to be pinned by its peers
    /// (DIR/NODE.key, DIR/NODE.pem).
    SelfSigned {
        #[command(flatten)]
        node: NodeCertArgs,
    },
    /// Make a CRL signed by the CA that revokes the certificates given.
    Crl {
        /// The CA's directory (ca.pem and ca.key), as made by init-ca.
        #[arg(long)]
        ca: PathBuf,
        /// Certificates to revoke (PEM or DER), by their serial numbers.
        #[arg(long)]
        revoke: Vec<PathBuf>,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// The CRL file to write (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a certificate.
    Show {
        /// The certificate (PEM or DER).
        cert: PathBuf,
    },
    /// Verify a certificate as IKE would: a chain to the CA, validity now,
    /// key usage, CRLs, and its name.
    Verify {
        /// The certificate (PEM, end entity first, then intermediates).
        cert: PathBuf,
        /// The CA certificate, or a directory with ca.pem.
        #[arg(long)]
        ca: PathBuf,
        /// CRLs (PEM or DER).
        #[arg(long)]
        crl: Vec<PathBuf>,
        /// The identity to check, as an FQDN (default: the subject CN).
        #[arg(long)]
        id: Option<String>,
    },
}

/// The arguments of a node certificate (`issue` and `self-signed`).
#[derive(Debug, clap::Args)]
struct NodeCertArgs {
    /// The node's name: the subject CN (OVN's chassis name), and a
    /// dNSName.
    #[arg(long)]
    name: String,
    /// More subjectAltNames: an IP address, an e-mail address (with
    /// `@`) or a DNS name.
    #[arg(long)]
    san: Vec<String>,
    /// The key type.
    #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
    key: KeyAlg,
    /// Validity, in days.
    #[arg(long, default_value_t = 1825)]
    days: u32,
    /// Where to write NODE.pem and NODE.key (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// A key type for `init-ca` and `issue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 3072 with SHA-256.
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    fn generate(self) -> Result<KeyPair> {
        let key = match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::Rsa => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        };
        key.context("generating the key")
    }
}

/// Runs `tunsec pki`, writing what it reports to `out`.
pub fn run(args: &PkiArgs, out: &mut dyn Write) -> Result<()> {
    match &args.command {
        PkiCommand::InitCa {
            key,
            name,
            days,
            out: dir,
        } => {
            let (cert, key_file) = init_ca(*key, name, *days, dir)?;
            writeln!(out, "CA {name}: {} {}", cert.display(), key_file.display())?;
        }
        PkiCommand::Issue { ca, node: n } => {
            let (cert, key_file) = issue(ca, &n.name, &n.san, n.key, n.days, &n.out)?;
            writeln!(out, "{}: {} {}", n.name, cert.display(), key_file.display())?;
        }
        PkiCommand::SelfSigned { node: n } => {
            let (cert, key_file) = self_signed(&n.name, &n.san, n.key, n.days, &n.out)?;
            writeln!(out, "{}: {} {}", n.name, cert.display(), key_file.display())?;
        }
        PkiCommand::Crl {
            ca,
            revoke,
            days,
            out: file,
        } => {
            crl(ca, revoke, *days, file)?;
            writeln!(out, "CRL: {} ({} revoked)", file.display(), revoke.len())?;
        }
        PkiCommand::Show { cert } => {
            let text = show(&read(cert, "CERT")?).with_context(|| arg("CERT", cert))?;
            out.write_all(text.as_bytes())?;
        }
        PkiCommand::Verify { cert, ca, crl, id } => {
            let subject = verify(cert, ca, crl, id.as_deref(), UnixTime::now())?;
            writeln!(out, "{}: OK ({subject})", cert.display())?;
        }
    }
    Ok(())
}

fn arg(name: &str, value: &Path) -> String {
    let dash = if name.chars().all(|c| c.is_ascii_uppercase()) {
        ""
    } else {
        "--"
    };
    format!("{dash}{name} {}", value.display())
}

fn read(path: &Path, name: &str) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("{}: cannot read", arg(name, path)))
}

/// Creates the directory if needed; refuses to replace `files` in it.
fn prepare_out(dir: &Path, files: &[&str]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", arg("out", dir)))?;
    files
        .iter()
        .map(|f| {
            let p = dir.join(f);
            if p.exists() {
                bail!("{}: {} already exists", arg("out", dir), p.display());
            }
            Ok(p)
        })
        .collect()
}

/// Writes a new file with `mode`, from its creation on: a private key is
/// never readable by others, even for a moment.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Allow for clocks a little behind ours.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("system random");
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Writes `cert` (mode 0644) and `key` (mode 0600) into `paths` (the
/// certificate's, then the key's, from [`prepare_out`]); returns them.
fn write_cert_and_key(
    paths: &[PathBuf],
    cert: &rcgen::Certificate,
    key: &KeyPair,
) -> Result<(PathBuf, PathBuf)> {
    write_new(
        &paths[1],
        Zeroizing::new(key.serialize_pem()).as_bytes(),
        0o600,
    )?;
    write_new(&paths[0], cert.pem().as_bytes(), 0o644)?;
    Ok((paths[0].clone(), paths[1].clone()))
}

/// `init-ca`: returns the certificate and key paths.
pub fn init_ca(alg: KeyAlg, name: &str, days: u32, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let paths = prepare_out(dir, &["ca.pem", "ca.key"])?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let key = alg.generate()?;
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("--name {name}: cannot make the CA certificate"))?;
    write_cert_and_key(&paths, &cert, &key)
}

fn parse_san(s: &str) -> Result<SanType> {
    let bad = || anyhow!("--san {s}: not an IP address, e-mail address or DNS name");
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ia5 = s.try_into().map_err(|_| bad())?;
    if s.contains('@') {
        Ok(SanType::Rfc822Name(ia5))
    } else if !s.is_empty() && !s.contains(char::is_whitespace) {
        Ok(SanType::DnsName(ia5))
    } else {
        Err(bad())
    }
}

/// The CA of `--ca DIR`: its certificate and an issuer that signs with
/// its key.
fn load_ca(ca: &Path) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>)> {
    let (ca_pem, ca_key) = if ca.is_dir() {
        (ca.join("ca.pem"), ca.join("ca.key"))
    } else {
        bail!("{}: not a directory with ca.pem and ca.key", arg("ca", ca));
    };
    let ca_cert = tunsec_ike::cert::parse_certificates(&read(&ca_pem, "ca")?)
        .with_context(|| format!("--ca {}: {}", ca.display(), ca_pem.display()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(read(&ca_key, "ca")?)
            .with_context(|| format!("--ca {}: {} is not PEM", ca.display(), ca_key.display()))?,
    );
    let ca_signing_key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("--ca {}: {} is not a key", ca.display(), ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_der(&ca_cert[0], ca_signing_key)
        .with_context(|| format!("--ca {}: {}", ca.display(), ca_pem.display()))?;
    Ok((ca_cert[0].clone(), issuer))
}

/// The certificate parameters of node `name`: the CN and a dNSName of
/// the name, the SANs given, digitalSignature.
fn node_params(name: &str, sans: &[String], days: u32) -> Result<CertificateParams> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        bail!("--name {name:?}: not usable as a node name and file name");
    }
    let dns = SanType::DnsName(
        name.try_into()
            .map_err(|_| anyhow!("--name {name}: not an ASCII DNS name"))?,
    );
    let mut alt_names = vec![dns];
    for s in sans {
        alt_names.push(parse_san(s)?);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = alt_names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    Ok(params)
}

/// `self-signed`: returns the certificate and key paths.
pub fn self_signed(
    name: &str,
    sans: &[String],
    alg: KeyAlg,
    days: u32,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    node_certificate(None, name, sans, alg, days, dir)
}

/// `crl`: writes a CRL (PEM) from the CA in `ca` that revokes the
/// certificates `revoke` by serial number, valid for `days`.
pub fn crl(ca: &Path, revoke: &[PathBuf], days: u32, out: &Path) -> Result<()> {
    let (_, issuer) = load_ca(ca)?;
    let now = OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    for path in revoke {
        let der = first_certificate(&read(path, "revoke")?).with_context(|| arg("revoke", path))?;
        let (_, parsed) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow!("{}: not a certificate: {e}", arg("revoke", path)))?;
        revoked.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(parsed.raw_serial()),
            revocation_time: now - Duration::minutes(1),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let mut number = [0u8; 8];
    aws_lc_rs::rand::fill(&mut number).context("system random")?;
    number[0] &= 0x7f;
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update: now + Duration::days(i64::from(days)),
        crl_number: SerialNumber::from_slice(&number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .with_context(|| format!("{}: cannot sign the CRL", arg("ca", ca)))?;
    let pem = crl.pem().context("encoding the CRL")?;
    fs::write(out, pem).with_context(|| format!("{}: cannot write", arg("out", out)))
}

/// `issue`: returns the certificate and key paths.
pub fn issue(
    ca: &Path,
    name: &str,
    sans: &[String],
    alg: KeyAlg,
    days: u32,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    node_certificate(Some(ca), name, sans, alg, days, dir)
}

/// A node certificate and its key, `NODE.pem` and `NODE.key` in `dir`:
/// issued by the CA in the directory `ca`, or self-signed without one.
/// Returns the certificate and key paths.
fn node_certificate(
    ca: Option<&Path>,
    name: &str,
    sans: &[String],
    alg: KeyAlg,
    days: u32,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let mut params = node_params(name, sans, days)?;
    let issuer = match ca {
        Some(ca) => {
            params.use_authority_key_identifier_extension = true;
            Some(load_ca(ca)?.1)
        }
        None => None,
    };
    let paths = prepare_out(dir, &[&format!("{name}.pem"), &format!("{name}.key")])?;
    let key = alg.generate()?;
    let cert = match &issuer {
        Some(issuer) => params
            .signed_by(&key, issuer)
            .with_context(|| format!("--name {name}: cannot issue"))?,
        None => params
            .self_signed(&key)
            .with_context(|| format!("--name {name}: cannot make the certificate"))?,
    };
    write_cert_and_key(&paths, &cert, &key)
}

/// `show`: a description of the (first) certificate in PEM or DER.
pub fn show(bytes: &[u8]) -> Result<String> {
    let der = first_certificate(bytes)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("not a certificate: {e}"))?;
    let key = PeerPublicKey::from_certificate(&der)
        .map(|k| k.key_type().to_string())
        .unwrap_or_else(|e| e.to_string());
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                    16 => format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                    _ => format!("IP:{b:02x?}"),
                },
                other => format!("{other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let fp = tunsec_ike::cert::fingerprint(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let ca = cert.is_ca();
    Ok(format!(
        "subject:     {}\nissuer:      {}\nserial:      {}\nsubjectAlt:  {sans}\n\
         not before:  {}\nnot after:   {}\nkey:         {key}\nCA:          {ca}\n\
         SHA-256:     {fp}\n",
        cert.subject(),
        cert.issuer(),
        cert.raw_serial_as_string(),
        cert.validity().not_before,
        cert.validity().not_after,
    ))
}

fn first_certificate(bytes: &[u8]) -> Result<CertificateDer<'static>> {
    let mut certs = tunsec_ike::cert::parse_certificates(bytes)?;
    Ok(certs.remove(0))
}

/// `verify`: checks `cert` (and any intermediates after it in the file)
/// against the CA and CRLs at `now`, with the identity `id` as an FQDN (by
/// default the subject CN, else the subject DN). Returns the subject.
pub fn verify(
    cert: &Path,
    ca: &Path,
    crls: &[PathBuf],
    id: Option<&str>,
    now: UnixTime,
) -> Result<String> {
    let chain = tunsec_ike::cert::parse_certificates(&read(cert, "CERT")?)
        .with_context(|| arg("CERT", cert))?;
    let ca_file = if ca.is_dir() {
        ca.join("ca.pem")
    } else {
        ca.to_path_buf()
    };
    let ca_bytes = read(&ca_file, "ca")?;
    let crl_bytes = crls
        .iter()
        .map(|c| read(c, "crl"))
        .collect::<Result<Vec<_>>>()?;
    let crl_refs: Vec<&[u8]> = crl_bytes.iter().map(Vec::as_slice).collect();
    let trust = Trust::ca(&[&ca_bytes], &crl_refs).with_context(|| {
        format!(
            "{} or {}: not usable",
            arg("ca", ca),
            crls.iter()
                .map(|c| arg("crl", c))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let (_, parsed) =
        X509Certificate::from_der(&chain[0]).map_err(|e| anyhow!("{}: {e}", arg("CERT", cert)))?;
    let subject = parsed.subject().to_string();
    let identity = match id {
        Some(id) => Identity::Fqdn(id.as_bytes().to_vec()),
        None => match parsed
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
        {
            Some(cn) => Identity::Fqdn(cn.as_bytes().to_vec()),
            None => Identity::DerAsn1Dn(parsed.subject().as_raw().to_vec()),
        },
    };
    tunsec_ike::cert::verify_peer(&chain[0], &chain[1..], &trust, now, &identity, &identity)
        .map_err(|e| anyhow!("{}: {e}", arg("CERT", cert)))?;
    Ok(subject)
}

#[cfg(test)]
mod tests;
