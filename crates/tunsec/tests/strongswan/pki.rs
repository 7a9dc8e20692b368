//! Certificates of the interop cases: made by strongSwan's `pki` or by
//! `tunsec pki`, installed for charon, and the certificate cases' common
//! body.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};
use tunsec_lab::Lab;

use super::*;

/// A fault in a certificate case's PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CertFault {
    /// None: both sides trust each other.
    None,
    /// tunsecd's certificate comes from another CA than charon trusts.
    TunsecOtherCa,
    /// charon's certificate is on a CRL that tunsecd loads.
    CharonRevoked,
}

/// Who makes the certificates of a certificate case (a CA, and a node
/// certificate for each side, with its identity as a dNSName).
#[derive(Clone, Copy, Debug)]
pub(crate) enum CertPki {
    /// strongSwan's `pki`, with this key type (`ecdsa` P-256 or `rsa`
    /// 2048); used by both sides.
    Strongswan(&'static str),
    /// `tunsec pki`, with this key type; used by both sides.
    Tunsec(tunsec::pki::KeyAlg),
}

/// Runs strongSwan's `pki ARGS`, with `stdin` as its input; returns its
/// output.
pub(crate) fn sswan_pki(args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new(PKI)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run strongSwan's pki (strongswan-pki)")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("pki's stdin")?
            .write_all(input)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "pki {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Makes the PKI of a certificate case in `lab/pki`: `ca.pem`, and
/// `t.pem`/`t.key` (tunsecd) and `s.pem`/`s.key` (charon), each node
/// certificate with its IKE identity and address as subjectAltNames.
pub(crate) fn make_pki(lab: &Lab, p: &Params, pki: CertPki) -> anyhow::Result<PathBuf> {
    let dir = lab.dir.path().join("pki");
    std::fs::create_dir_all(&dir)?;
    let nodes = [("t", TUNSEC_ID, p.tunsec), ("s", CHARON_ID, p.charon)];
    match pki {
        CertPki::Strongswan(kind) => {
            let size = if kind == "rsa" { "2048" } else { "256" };
            let ca_key = sswan_pki(
                &["--gen", "--type", kind, "--size", size, "--outform", "pem"],
                None,
            )?;
            std::fs::write(dir.join("ca.key"), &ca_key)?;
            let ca_key_s = dir.join("ca.key").to_string_lossy().into_owned();
            let ca = sswan_pki(
                &[
                    "--self",
                    "--ca",
                    "--lifetime",
                    "30",
                    "--in",
                    &ca_key_s,
                    "--type",
                    kind,
                    "--dn",
                    "C=CH, O=tunsec interop, CN=strongSwan pki CA",
                    "--outform",
                    "pem",
                ],
                None,
            )?;
            std::fs::write(dir.join("ca.pem"), &ca)?;
            let ca_s = dir.join("ca.pem").to_string_lossy().into_owned();
            for (short, id, n) in nodes {
                let key = sswan_pki(
                    &["--gen", "--type", kind, "--size", size, "--outform", "pem"],
                    None,
                )?;
                let key_path = dir.join(format!("{short}.key"));
                std::fs::write(&key_path, &key)?;
                std::fs::set_permissions(
                    &key_path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                let public = sswan_pki(
                    &["--pub", "--in", &key_path.to_string_lossy(), "--type", kind],
                    None,
                )?;
                let dn = format!("C=CH, O=tunsec interop, CN={id}");
                let addr = host_addr(n);
                let cert = sswan_pki(
                    &[
                        "--issue",
                        "--cacert",
                        &ca_s,
                        "--cakey",
                        &ca_key_s,
                        "--lifetime",
                        "30",
                        "--dn",
                        &dn,
                        "--san",
                        id,
                        "--san",
                        &addr,
                        "--outform",
                        "pem",
                    ],
                    Some(&public),
                )?;
                std::fs::write(dir.join(format!("{short}.pem")), &cert)?;
            }
        }
        CertPki::Tunsec(alg) => {
            use tunsec::pki;
            pki::init_ca(alg, "tunsec pki interop CA", 30, &dir.join("ca"))?;
            std::fs::copy(dir.join("ca/ca.pem"), dir.join("ca.pem"))?;
            // With TunsecOtherCa, tunsecd's certificate comes from a CA
            // that charon does not know.
            if p.cert_fault == CertFault::TunsecOtherCa {
                pki::init_ca(alg, "another CA", 30, &dir.join("other"))?;
            }
            for (short, id, n) in nodes {
                let out = dir.join(short);
                let ca = if short == "t" && p.cert_fault == CertFault::TunsecOtherCa {
                    "other"
                } else {
                    "ca"
                };
                pki::issue(&dir.join(ca), id, &[host_addr(n)], alg, 30, &out)?;
                std::fs::rename(
                    out.join(format!("{id}.pem")),
                    dir.join(format!("{short}.pem")),
                )?;
                std::fs::rename(
                    out.join(format!("{id}.key")),
                    dir.join(format!("{short}.key")),
                )?;
            }
            let revoked = if p.cert_fault == CertFault::CharonRevoked {
                vec![dir.join("s.pem")]
            } else {
                Vec::new()
            };
            pki::crl(&dir.join("ca"), &revoked, 7, &dir.join("ca.crl"))?;
        }
    }
    Ok(dir)
}

/// Puts charon's credentials where swanctl --load-all finds them: the CA
/// in x509ca/, its certificate in x509/, its key in the directory of its
/// format.
pub(crate) fn install_charon_credentials(charon: &Charon, pki: &Path) -> anyhow::Result<()> {
    let swanctl = charon.dir.join("swanctl");
    std::fs::copy(pki.join("ca.pem"), swanctl.join("x509ca/ca.pem"))?;
    std::fs::copy(pki.join("s.pem"), swanctl.join("x509/me.pem"))?;
    let key = std::fs::read_to_string(pki.join("s.key"))?;
    let sub = if key.contains("BEGIN RSA PRIVATE KEY") {
        "rsa"
    } else if key.contains("BEGIN EC PRIVATE KEY") {
        "ecdsa"
    } else {
        "private"
    };
    std::fs::write(swanctl.join(sub).join("me.key"), key)?;
    Ok(())
}

/// [`cert_case`], which leaves the lab's state for more checks.
pub(crate) fn cert_case_with(
    lab: &mut Lab,
    p: Params,
    ike_suite: &str,
    esp_suite: &str,
) -> anyhow::Result<Interop> {
    let mut x = interop(lab, p)?;
    let pair = x.bring_up(lab)?;
    let ike = ike_of(&x.status(lab)?)?;
    let role = if p.tunsec < p.charon {
        "initiator"
    } else {
        "responder"
    };
    ensure!(ike.role == role, "tunsecd's role: {ike:?}");
    // charon checked our certificate and signature.
    let log = x.charon.log_text();
    let line = log
        .lines()
        .find(|l| {
            l.contains(&format!("authentication of '{TUNSEC_ID}' with")) && l.contains("successful")
        })
        .with_context(|| format!("charon's log shows no verified signature of tunsecd:\n{log}"))?;
    eprintln!("  charon: {}", line.trim());
    // ... and trusted it through the CA.
    find_line(&log, "charon", "reached self-signed root ca")?;
    establishes(lab, &mut x, pair, ike_suite, esp_suite)?;
    Ok(x)
}
