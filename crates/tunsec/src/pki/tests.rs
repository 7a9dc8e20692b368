use std::os::unix::fs::PermissionsExt;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    pki: PkiArgs,
}

/// Runs `tunsec pki ARGS...`; returns what it printed.
fn pki(args: &[&str]) -> Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("pki").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(&cli.pki, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const STRONGSWAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ike/testdata/pki");

#[test]
fn pki_round_trip_every_key_type() {
    let tmp = tempfile::tempdir().unwrap();
    for (alg, shown) in [
        ("ecdsa-p256", "ECDSA P-256"),
        ("ecdsa-p384", "ECDSA P-384"),
        ("rsa", "RSA"),
        ("ed25519", "Ed25519"),
    ] {
        let ca = tmp.path().join(format!("ca-{alg}"));
        let nodes = tmp.path().join(format!("nodes-{alg}"));
        let said = pki(&[
            "init-ca",
            "--key",
            alg,
            "--name",
            "Test CA",
            "--out",
            s(&ca),
        ])
        .unwrap();
        assert!(said.starts_with("CA Test CA: "), "{said}");
        assert_eq!(mode(&ca.join("ca.key")), 0o600);
        assert_eq!(mode(&ca.join("ca.pem")), 0o644);
        let shown_ca = pki(&["show", s(&ca.join("ca.pem"))]).unwrap();
        assert!(shown_ca.contains("subject:     CN=Test CA"), "{shown_ca}");
        assert!(
            shown_ca.contains(&format!("key:         {shown}")),
            "{shown_ca}"
        );
        assert!(shown_ca.contains("CA:          true"), "{shown_ca}");

        pki(&[
            "issue",
            "--ca",
            s(&ca),
            "--name",
            "chassis-1",
            "--key",
            alg,
            "--san",
            "192.0.2.9",
            "--san",
            "2001:db8::9",
            "--san",
            "ops@example.org",
            "--san",
            "node-1.example",
            "--out",
            s(&nodes),
        ])
        .unwrap();
        let cert = nodes.join("chassis-1.pem");
        assert_eq!(mode(&nodes.join("chassis-1.key")), 0o600);
        let shown_node = pki(&["show", s(&cert)]).unwrap();
        for want in [
            "subject:     CN=chassis-1",
            "issuer:      CN=Test CA",
            "DNS:chassis-1, IP:192.0.2.9, IP:2001:db8::9, email:ops@example.org, DNS:node-1.example",
            &format!("key:         {shown}"),
            "CA:          false",
            "SHA-256:     ",
        ] {
            assert!(shown_node.contains(want), "{want} not in {shown_node}");
        }
        // verify: by the CA directory or file, with the CN or another SAN.
        let ok = pki(&["verify", s(&cert), "--ca", s(&ca)]).unwrap();
        assert!(ok.contains(": OK (CN=chassis-1)"), "{ok}");
        pki(&[
            "verify",
            s(&cert),
            "--ca",
            s(&ca.join("ca.pem")),
            "--id",
            "node-1.example",
        ])
        .unwrap();
        let err = pki(&["verify", s(&cert), "--ca", s(&ca), "--id", "node-2.example"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("identity mismatch"), "{err}");
        // The key issued matches the certificate, for IKE.
        let creds = tunsec_ike::cert::Credentials::from_pem(
            &fs::read(nodes.join("chassis-1.key")).unwrap(),
            &fs::read(&cert).unwrap(),
        )
        .unwrap();
        assert_eq!(creds.key.key_type().to_string(), shown);
    }
}

#[test]
fn pki_verify_refuses_another_ca_and_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other, nodes) = (
        tmp.path().join("ca"),
        tmp.path().join("other"),
        tmp.path().join("nodes"),
    );
    pki(&["init-ca", "--out", s(&ca)]).unwrap();
    pki(&["init-ca", "--out", s(&other)]).unwrap();
    pki(&["issue", "--ca", s(&ca), "--name", "n1", "--out", s(&nodes)]).unwrap();
    let cert = nodes.join("n1.pem");
    let err = pki(&["verify", s(&cert), "--ca", s(&other)])
        .unwrap_err()
        .to_string();
    // Same CA name, another key: the signature does not verify.
    assert!(
        err.starts_with(&format!("CERT {}: ", cert.display())) && err.contains("bad signature"),
        "{err}"
    );

    // A CRL from the CA, made with rcgen, revoking n1.
    let der = first_certificate(&fs::read(&cert).unwrap()).unwrap();
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    let ca_der = first_certificate(&fs::read(ca.join("ca.pem")).unwrap()).unwrap();
    let key = KeyPair::from_pem(&fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&ca_der, key).unwrap();
    let now = OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(parsed.raw_serial()),
            revocation_time: now - Duration::minutes(5),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let crl_path = tmp.path().join("ca.crl");
    fs::write(&crl_path, crl.pem().unwrap()).unwrap();
    let err = pki(&["verify", s(&cert), "--ca", s(&ca), "--crl", s(&crl_path)])
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("certificate revoked"), "{err}");
}

#[test]
fn pki_errors_name_the_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let missing = tmp.path().join("missing");
    pki(&["init-ca", "--out", s(&ca)]).unwrap();
    let err = |args: &[&str]| format!("{:#}", pki(args).unwrap_err());

    let e = err(&["init-ca", "--out", s(&ca)]);
    assert!(
        e.starts_with(&format!("--out {}: ", ca.display())) && e.contains("already exists"),
        "{e}"
    );
    let e = err(&[
        "issue",
        "--ca",
        s(&missing),
        "--name",
        "n",
        "--out",
        s(tmp.path()),
    ]);
    assert!(
        e.starts_with(&format!("--ca {}: ", missing.display())),
        "{e}"
    );
    let e = err(&[
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "n",
        "--san",
        "bad name",
        "--out",
        s(tmp.path()),
    ]);
    assert!(e.starts_with("--san bad name: "), "{e}");
    let e = err(&[
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "a/b",
        "--out",
        s(tmp.path()),
    ]);
    assert!(e.starts_with("--name \"a/b\": "), "{e}");
    let e = err(&["show", s(&missing)]);
    assert!(
        e.starts_with(&format!("CERT {}: cannot read", missing.display())),
        "{e}"
    );
    let e = err(&["verify", s(&ca.join("ca.pem")), "--ca", s(&missing)]);
    assert!(
        e.starts_with(&format!("--ca {}: cannot read", missing.display())),
        "{e}"
    );
    let e = err(&[
        "verify",
        s(&ca.join("ca.pem")),
        "--ca",
        s(&ca),
        "--crl",
        s(&ca.join("ca.pem")),
    ]);
    assert!(e.contains("--crl"), "{e}");
    let e = err(&["init-ca", "--key", "dsa", "--out", s(&missing)]);
    assert!(e.contains("--key") && e.contains("dsa"), "{e}");
    // Issuing refuses to replace a key.
    pki(&[
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "n",
        "--out",
        s(tmp.path()),
    ])
    .unwrap();
    let e = err(&[
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "n",
        "--out",
        s(tmp.path()),
    ]);
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn pki_strongswan_ca() {
    // Verify strongSwan-made certificates, and issue with a strongSwan CA
    // (its SEC1 key).
    let dir = Path::new(STRONGSWAN);
    let ok = pki(&[
        "verify",
        s(&dir.join("node-ecdsa.pem")),
        "--ca",
        s(&dir.join("ca-ecdsa.pem")),
        "--crl",
        s(&dir.join("ca-ecdsa.crl")),
    ])
    .unwrap();
    assert!(ok.contains("CN=node-ecdsa.example"), "{ok}");
    let e = pki(&[
        "verify",
        s(&dir.join("revoked-rsa.pem")),
        "--ca",
        s(&dir.join("ca-rsa.pem")),
        "--crl",
        s(&dir.join("ca-rsa.crl")),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.ends_with("certificate revoked"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    fs::create_dir(&ca).unwrap();
    fs::copy(dir.join("ca-ecdsa.pem"), ca.join("ca.pem")).unwrap();
    fs::copy(dir.join("ca-ecdsa.key"), ca.join("ca.key")).unwrap();
    pki(&[
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "n1",
        "--out",
        s(tmp.path()),
    ])
    .unwrap();
    pki(&["verify", s(&tmp.path().join("n1.pem")), "--ca", s(&ca)]).unwrap();
}

#[test]
fn pki_self_signed_and_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, nodes) = (tmp.path().join("ca"), tmp.path().join("nodes"));
    pki(&["init-ca", "--out", s(&ca)]).unwrap();
    pki(&["issue", "--ca", s(&ca), "--name", "n1", "--out", s(&nodes)]).unwrap();
    pki(&["issue", "--ca", s(&ca), "--name", "n2", "--out", s(&nodes)]).unwrap();
    let crl_path = tmp.path().join("ca.crl");
    let printed = pki(&[
        "crl",
        "--ca",
        s(&ca),
        "--revoke",
        s(&nodes.join("n1.pem")),
        "--out",
        s(&crl_path),
    ])
    .unwrap();
    assert!(printed.contains("(1 revoked)"), "{printed}");
    assert!(
        fs::read_to_string(&crl_path)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );
    let check = |name: &str| {
        pki(&[
            "verify",
            s(&nodes.join(format!("{name}.pem"))),
            "--ca",
            s(&ca),
            "--crl",
            s(&crl_path),
        ])
    };
    assert!(
        check("n1")
            .unwrap_err()
            .to_string()
            .ends_with("certificate revoked")
    );
    check("n2").unwrap();

    // A self-signed node certificate: its own issuer, key 0600.
    pki(&[
        "self-signed",
        "--name",
        "solo",
        "--san",
        "192.0.2.9",
        "--key",
        "ed25519",
        "--out",
        s(&nodes),
    ])
    .unwrap();
    assert_eq!(mode(&nodes.join("solo.key")), 0o600);
    let shown = pki(&["show", s(&nodes.join("solo.pem"))]).unwrap();
    assert!(
        shown.contains("Ed25519") && shown.contains("192.0.2.9"),
        "{shown}"
    );
    let der = first_certificate(&fs::read(nodes.join("solo.pem")).unwrap()).unwrap();
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(parsed.subject(), parsed.issuer());
}
