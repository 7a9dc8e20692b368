//! IKE handshakes per second, initiator and responder in one process
//! through the sans-IO API, per key-exchange group.
//!
//! For each group (`x25519` 31, `ecp256` 19, `ecp384` 20, `modp2048` 14,
//! and ML-KEM alone, `mlkem768` 36), with the IKE proposal `aes128gcm16-prfsha256-<group>` and the ESP
//! proposal `aes128gcm16`, PSK authentication and one Child SA:
//!
//! - `handshake/<group>`: one full handshake. An [`IkeSa`] initiator and an
//!   [`Endpoint`] responder exchange IKE_SA_INIT and IKE_AUTH (four
//!   encoded, encrypted and decoded messages) until both report
//!   [`Event::ChildSaUp`]; the responder's IKE SA is then removed from the
//!   endpoint. Randomness is [`SystemRandom`], as in the daemon. Every
//!   handshake is checked: one that does not end in `ChildSaUp` on both
//!   sides is counted and makes the benchmark panic afterwards, and
//!   `main` runs one checked handshake per group before anything is timed.
//! - `kex/<group>`: the raw key exchange, both sides: the initiator's
//!   fresh private key and public value ([`crypto::start`]), the
//!   responder's answer and shared secret ([`crypto::respond`]; for
//!   ML-KEM an encapsulation), and the initiator's shared secret.
//!
//! - `certificates/<key>`: one full handshake as above (x25519), with
//!   certificate authentication instead of the PSK: each side's
//!   certificate from one CA (ECDSA P-256), with a key of type `<key>`
//!   (`p256`, `p384`, `rsa2048`, `rsa3072`, `ed25519`); each side signs
//!   its AUTH (RFC 7427) and validates the other's chain.
//!
//! - `hybrid/<auth>_<exchanges>`: one full handshake with additional key
//!   exchanges (RFC 9370: X25519 in IKE_SA_INIT, ML-KEM in
//!   IKE_INTERMEDIATE), with the PSK or ECDSA P-256 certificates.
//!
//! With `cargo bench`, `main` also prints how the handshake's CPU time
//! splits between the initiator and the responder, and the bytes of all
//! its datagrams: it runs handshakes and times every call into each side
//! separately with [`Instant`]; and the same, summed, for the hybrid key
//! exchanges.
//!
//! Run with `cargo bench -p tunsec-ike --bench handshake`; see
//! `docs/benchmarks.md`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use divan::Bencher;
use divan::counter::ItemsCount;
use std::sync::Arc;
use tunsec_esp::Key;
use tunsec_ike::crypto;
use tunsec_ike::message::{DhGroup, Identity};

use tunsec_ike::cert::{Credentials, Trust};
use tunsec_ike::sa::{
    CertAuth, Config, DatagramEvent, Endpoint, Event, IkeSa, Random, SystemRandom,
};

/// The groups measured, with their names in strongSwan's syntax.
const GROUPS: [(&str, DhGroup); 5] = [
    ("x25519", DhGroup::Curve25519),
    ("ecp256", DhGroup::Ecp256),
    ("ecp384", DhGroup::Ecp384),
    ("modp2048", DhGroup::Modp2048),
    ("mlkem768", DhGroup::MlKem768),
];

/// The ESP proposal of the Child SA.
const ESP: &str = "aes128gcm16";
/// The pre-shared key of both sides.
const PSK: &[u8] = b"benchmark pre-shared key, 32 by.";
/// Handshakes per group for the initiator / responder split.
const SPLIT_HANDSHAKES: u32 = 200;

const INITIATOR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RESPONDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn main() {
    // Never time a failing handshake: check one per group and per
    // certificate key first.
    for (name, group) in GROUPS {
        let mut bench = Handshake::new(group);
        assert!(bench.run(&mut Split::default()), "{name}: no Child SA");
    }
    for (name, key) in CERT_KEYS {
        let mut bench = Handshake::with_certificates(key);
        assert!(bench.run(&mut Split::default()), "{name}: no Child SA");
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // needs no figures.
    if std::env::args().any(|a| a == "--bench") {
        print_split();
    }
    divan::main();
}

/// The configuration of one side for `group`.
fn config(group: &str, local: Ipv4Addr, remote: Ipv4Addr) -> Config {
    Config::new(
        Identity::Ipv4(local),
        Some(Identity::Ipv4(remote)),
        Key::from_slice(PSK),
    )
    .with_proposals(&format!("aes128gcm16-prfsha256-{group}"), ESP)
    .expect("proposals")
}

/// A responder endpoint and both sides' configurations for one group.
struct Handshake {
    initiator: Config,
    responder: Config,
    endpoint: Endpoint,
    now: Instant,
}

/// CPU time spent in each side, and the bytes of every datagram.
#[derive(Default)]
struct Split {
    initiator: Duration,
    responder: Duration,
    bytes: usize,
}

impl Handshake {
    /// x25519 with certificate authentication, each side's key made by
    /// `key` (see the module documentation).
    fn with_certificates(key: MakeKey) -> Self {
        Self::with_certificates_and(key, "x25519")
    }

    /// Certificate authentication with the key exchanges `ke` (`x25519`,
    /// `x25519-ke1_mlkem768`, ...).
    fn with_certificates_and(key: MakeKey, ke: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let side = |host: &str, local: Ipv4Addr, remote: Ipv4Addr, peer: &str| {
            let key = key();
            let cert = CertificateParams::new(vec![host.to_owned()])
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("certificate");
            let credentials =
                Credentials::from_pem(key.serialize_pem().as_bytes(), cert.pem().as_bytes())
                    .expect("credentials");
            let trust = Trust::ca(&[ca_pem.as_bytes()], &[]).expect("trust");
            let mut c = config(ke, local, remote);
            c.local_id = Identity::Fqdn(host.as_bytes().to_vec());
            c.remote_id = Some(Identity::Fqdn(peer.as_bytes().to_vec()));
            c.with_cert(Arc::new(CertAuth::new(credentials, trust)))
        };
        Self {
            initiator: side("a.bench", INITIATOR, RESPONDER, "b.bench"),
            responder: side("b.bench", RESPONDER, INITIATOR, "a.bench"),
            endpoint: Endpoint::new(),
            now: Instant::now(),
        }
    }

    fn new(group: DhGroup) -> Self {
        let name = GROUPS
            .iter()
            .find(|(_, g)| *g == group)
            .map(|(n, _)| *n)
            .expect("group");
        Self::with_key_exchanges(name)
    }

    /// PSK authentication with the key exchanges `ke` (a group, or a
    /// hybrid like `x25519-ke1_mlkem768`: RFC 9370 in IKE_INTERMEDIATE).
    fn with_key_exchanges(ke: &str) -> Self {
        Self {
            initiator: config(ke, INITIATOR, RESPONDER),
            responder: config(ke, RESPONDER, INITIATOR),
            endpoint: Endpoint::new(),
            now: Instant::now(),
        }
    }

    /// One full handshake; whether both sides reported `ChildSaUp`. Adds
    /// the time spent in each side to `split`.
    fn run(&mut self, split: &mut Split) -> bool {
        let (to_i, to_r) = (
            SocketAddr::from((INITIATOR, 500)),
            SocketAddr::from((RESPONDER, 500)),
        );
        let t = Instant::now();
        let rng: Box<dyn Random + Send> = Box::new(SystemRandom);
        let Ok(mut initiator) = IkeSa::initiate(self.initiator.clone(), to_r, self.now, rng) else {
            return false;
        };
        split.initiator += t.elapsed();
        let (mut i_up, mut r_up) = (false, false);
        let mut handle = None;
        // IKE_SA_INIT and IKE_AUTH: two round trips, each message whole or
        // in fragments (RFC 7383: an RSA-3072 IKE_AUTH does not fit 1,280
        // bytes).
        // With additional key exchanges, IKE_INTERMEDIATE rounds between.
        for _ in 0..2 + 7 {
            let t = Instant::now();
            let requests: Vec<_> = std::iter::from_fn(|| initiator.poll_transmit()).collect();
            split.initiator += t.elapsed();
            if requests.is_empty() {
                break;
            }
            split.bytes += requests.iter().map(|r| r.bytes.len()).sum::<usize>();
            let t = Instant::now();
            let mut responses = Vec::new();
            for request in requests {
                let h = match self
                    .endpoint
                    .handle_datagram(self.now, to_i, &request.bytes)
                {
                    DatagramEvent::Sa(h) => h,
                    DatagramEvent::NewSa(incoming) => {
                        let responder = self.responder.clone();
                        let rng: Box<dyn Random + Send> = Box::new(SystemRandom);
                        match self.endpoint.accept(incoming, self.now, responder, rng) {
                            Some(h) => h,
                            None => return false,
                        }
                    }
                    DatagramEvent::Refused | DatagramEvent::Dropped => return false,
                };
                handle = Some(h);
                let Some(sa) = self.endpoint.sa_mut(h) else {
                    return false;
                };
                while let Some(event) = sa.poll_event() {
                    r_up |= matches!(event, Event::ChildSaUp { .. });
                }
                responses.extend(std::iter::from_fn(|| sa.poll_transmit()));
            }
            split.responder += t.elapsed();
            if responses.is_empty() {
                return false;
            }
            split.bytes += responses.iter().map(|r| r.bytes.len()).sum::<usize>();
            let t = Instant::now();
            for response in responses {
                initiator.handle_datagram(self.now, to_r, &response.bytes);
            }
            while let Some(event) = initiator.poll_event() {
                i_up |= matches!(event, Event::ChildSaUp { .. });
            }
            split.initiator += t.elapsed();
        }
        let t = Instant::now();
        if let Some(h) = handle {
            self.endpoint.remove(h);
        }
        split.responder += t.elapsed();
        i_up && r_up
    }
}

/// Prints the initiator's and the responder's share of a handshake.
fn print_split() {
    println!("initiator / responder CPU per handshake ({SPLIT_HANDSHAKES} handshakes each):");
    for (name, group) in GROUPS {
        let mut bench = Handshake::new(group);
        let mut split = Split::default();
        for _ in 0..SPLIT_HANDSHAKES {
            assert!(bench.run(&mut split), "{name}: no Child SA");
        }
        let per = |d: Duration| d / SPLIT_HANDSHAKES;
        println!(
            "  {name:>8}: initiator {:>9.1?}  responder {:>9.1?}  {} bytes",
            per(split.initiator),
            per(split.responder),
            split.bytes / SPLIT_HANDSHAKES as usize
        );
    }
    println!();
    println!("hybrid key exchanges (RFC 9370), CPU per handshake and bytes on the wire:");
    for ke in HYBRID {
        for (auth, mut bench) in [
            ("psk", Handshake::with_key_exchanges(ke)),
            (
                "ecdsa",
                Handshake::with_certificates_and(CERT_KEYS[0].1, ke),
            ),
        ] {
            let mut split = Split::default();
            for _ in 0..SPLIT_HANDSHAKES {
                assert!(bench.run(&mut split), "{ke} {auth}: no Child SA");
            }
            let n = SPLIT_HANDSHAKES;
            println!(
                "  {ke:>34} {auth:>5}: {:>9.1?} ({:.0} handshakes/s on one core)  {} bytes",
                (split.initiator + split.responder) / n,
                f64::from(n) / (split.initiator + split.responder).as_secs_f64(),
                split.bytes / n as usize
            );
        }
    }
    println!();
}

/// The key exchanges of the hybrid measurements: X25519 alone, then with
/// ML-KEM-768, then with ML-KEM-768 and ML-KEM-1024.
const HYBRID: [&str; 3] = [
    "x25519",
    "x25519-ke1_mlkem768",
    "x25519-ke1_mlkem768-ke2_mlkem1024",
];

/// Full handshakes (one item = one handshake, both sides).
fn handshake(bencher: Bencher<'_, '_>, group: DhGroup) {
    let mut bench = Handshake::new(group);
    let mut split = Split::default();
    let mut failures = 0u64;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        if !bench.run(&mut split) {
            failures += 1;
        }
    });
    assert_eq!(failures, 0, "{group}: handshakes failed");
}

/// One key exchange, both sides: the initiator's key generation, the
/// responder's answer, and the initiator's shared secret.
fn kex(bencher: Bencher<'_, '_>, group: DhGroup) {
    let mut failures = 0u64;
    bencher.bench_local(|| {
        let agreed = crypto::start(group).and_then(|initiator| {
            let (answer, responder_key) = crypto::respond(group, initiator.public_value())?;
            Ok(initiator.complete(&answer)? == responder_key)
        });
        if !matches!(agreed, Ok(true)) {
            failures += 1;
        }
    });
    assert_eq!(failures, 0, "{group}: key exchanges failed");
}

/// Makes a key pair for a certificate.
type MakeKey = fn() -> rcgen::KeyPair;

/// The certificate keys measured: name, and how to make one.
const CERT_KEYS: [(&str, MakeKey); 5] = [
    ("p256", || {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
    }),
    ("p384", || {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key")
    }),
    ("rsa2048", || {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("key")
    }),
    ("rsa3072", || {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            .expect("key")
    }),
    ("ed25519", || {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key")
    }),
];

/// Full handshakes with certificates (x25519), per key type.
fn cert_handshake(bencher: Bencher<'_, '_>, key: &str) {
    let make = CERT_KEYS
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(_, k)| *k)
        .expect("key type");
    let mut bench = Handshake::with_certificates(make);
    let mut split = Split::default();
    let mut failures = 0u64;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        if !bench.run(&mut split) {
            failures += 1;
        }
    });
    assert_eq!(failures, 0, "{key}: handshakes failed");
}

/// `cert_handshake` per key type.
mod certificates {
    use super::*;

    /// ECDSA P-256.
    #[divan::bench]
    fn p256(bencher: Bencher<'_, '_>) {
        cert_handshake(bencher, "p256");
    }

    /// ECDSA P-384.
    #[divan::bench]
    fn p384(bencher: Bencher<'_, '_>) {
        cert_handshake(bencher, "p384");
    }

    /// RSA 2048 (RSASSA-PSS).
    #[divan::bench]
    fn rsa2048(bencher: Bencher<'_, '_>) {
        cert_handshake(bencher, "rsa2048");
    }

    /// RSA 3072 (RSASSA-PSS).
    #[divan::bench]
    fn rsa3072(bencher: Bencher<'_, '_>) {
        cert_handshake(bencher, "rsa3072");
    }

    /// Ed25519.
    #[divan::bench]
    fn ed25519(bencher: Bencher<'_, '_>) {
        cert_handshake(bencher, "ed25519");
    }
}

/// Full hybrid handshakes (RFC 9370), PSK and ECDSA P-256 certificates.
mod hybrid {
    use super::*;

    fn run(bencher: Bencher<'_, '_>, mut bench: Handshake) {
        let mut split = Split::default();
        let mut failures = 0u64;
        bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
            if !bench.run(&mut split) {
                failures += 1;
            }
        });
        assert_eq!(failures, 0, "hybrid handshakes failed");
    }

    /// X25519 + ML-KEM-768, PSK.
    #[divan::bench]
    fn psk_x25519_mlkem768(bencher: Bencher<'_, '_>) {
        run(bencher, Handshake::with_key_exchanges(HYBRID[1]));
    }

    /// X25519 + ML-KEM-768 + ML-KEM-1024, PSK.
    #[divan::bench]
    fn psk_x25519_mlkem768_mlkem1024(bencher: Bencher<'_, '_>) {
        run(bencher, Handshake::with_key_exchanges(HYBRID[2]));
    }

    /// X25519 + ML-KEM-768, ECDSA P-256 certificates.
    #[divan::bench]
    fn ecdsa_x25519_mlkem768(bencher: Bencher<'_, '_>) {
        run(
            bencher,
            Handshake::with_certificates_and(CERT_KEYS[0].1, HYBRID[1]),
        );
    }

    /// X25519 + ML-KEM-768 + ML-KEM-1024, ECDSA P-256 certificates.
    #[divan::bench]
    fn ecdsa_x25519_mlkem768_mlkem1024(bencher: Bencher<'_, '_>) {
        run(
            bencher,
            Handshake::with_certificates_and(CERT_KEYS[0].1, HYBRID[2]),
        );
    }
}

/// One module per measurement, one benchmark per group inside it.
macro_rules! group_benches {
    ($($module:ident => $function:ident),*) => {
        $(
            #[doc = concat!("`", stringify!($function), "` per group.")]
            mod $module {
                use super::*;

                /// Group 31.
                #[divan::bench]
                fn x25519(bencher: Bencher<'_, '_>) {
                    super::$function(bencher, DhGroup::Curve25519);
                }

                /// Group 19.
                #[divan::bench]
                fn ecp256(bencher: Bencher<'_, '_>) {
                    super::$function(bencher, DhGroup::Ecp256);
                }

                /// Group 20.
                #[divan::bench]
                fn ecp384(bencher: Bencher<'_, '_>) {
                    super::$function(bencher, DhGroup::Ecp384);
                }

                /// Group 14.
                #[divan::bench]
                fn modp2048(bencher: Bencher<'_, '_>) {
                    super::$function(bencher, DhGroup::Modp2048);
                }

                /// ML-KEM-768 (36) alone.
                #[divan::bench]
                fn mlkem768(bencher: Bencher<'_, '_>) {
                    super::$function(bencher, DhGroup::MlKem768);
                }
            }
        )*
    };
}

group_benches!(handshakes => handshake, key_exchange => kex);
