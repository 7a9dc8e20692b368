//! The soak's faults, drawn one after another from a seeded generator.
//! Each is applied, held, and undone; then the soak measures how long
//! until every pair of tenants pings again (the recovery), which must stay
//! within the fault's [`Fault::bound`].

use std::time::{Duration, Instant};

use anyhow::Context;
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

use super::lab::{HOSTS, SoakLab};
use crate::common::reorder::Reorderer;
use crate::common::*;

/// xorshift64*: the soak's only source of chance, so that a seed replays
/// a run's faults.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn host(&mut self) -> u8 {
        HOSTS[self.range(0, HOSTS.len() as u64 - 1) as usize]
    }

    /// A host and another one, its peer.
    fn pair(&mut self) -> (u8, u8) {
        let a = self.host();
        let b = HOSTS[(usize::from(a) + self.range(0, 1) as usize) % HOSTS.len()];
        (a, b)
    }
}

/// One fault.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// `tunsec rekey`: host `.0` rekeys its Child SA with `.1`.
    RekeyChild(u8, u8),
    /// `tunsec rekey --ike`: host `.0` rekeys its IKE SA with `.1`.
    RekeyIke(u8, u8),
    /// `tunsec reauth`: host `.0` re-authenticates with `.1`.
    Reauth(u8, u8),
    /// `kill -9` of tunsecd `.0`, restarted after `.1` seconds.
    Kill(u8, u64),
    /// Host `.0`'s underlay link down for `.1` seconds.
    LinkDown(u8, u64),
    /// Host `.0` loses `.1` percent of its IKE and ESP datagrams, both
    /// ways, and reorders its ESP to host `.2`, for `.3` seconds.
    Loss(u8, u64, u8, u64),
    /// Host `.0` gets a new certificate and key and reloads; the others
    /// reload too (every IKE SA re-authenticates at its next rekey).
    Reload(u8),
    /// Host `.0`'s certificate is revoked (the CRL every host loads, then
    /// a reload of the others) for `.1` seconds, then the CRL is restored.
    Revoke(u8, u64),
}

impl Fault {
    /// The kinds, in the report's order.
    pub(crate) const KINDS: [&'static str; 8] = [
        "rekey-child",
        "rekey-ike",
        "reauth",
        "kill-9",
        "link-down",
        "loss+reorder",
        "reload-cert",
        "revoke-cert",
    ];

    /// Draws the next fault.
    pub(crate) fn draw(rng: &mut Rng) -> Self {
        match rng.range(0, 7) {
            0 => {
                let (a, b) = rng.pair();
                Self::RekeyChild(a, b)
            }
            1 => {
                let (a, b) = rng.pair();
                Self::RekeyIke(a, b)
            }
            2 => {
                let (a, b) = rng.pair();
                Self::Reauth(a, b)
            }
            3 => Self::Kill(rng.host(), rng.range(1, 3)),
            4 => Self::LinkDown(rng.host(), rng.range(1, 10)),
            5 => {
                // Reorder where most packets flow (traffic.rs): TCP data
                // and its acknowledgements, the UDP stream.
                const FLOWS: [(u8, u8); 3] = [(1, 2), (2, 1), (3, 1)];
                let (a, b) = FLOWS[rng.range(0, FLOWS.len() as u64 - 1) as usize];
                Self::Loss(a, rng.range(1, 5), b, rng.range(5, 10))
            }
            6 => Self::Reload(rng.host()),
            _ => Self::Revoke(rng.host(), rng.range(3, 6)),
        }
    }

    /// The kind's name, one of [`Self::KINDS`].
    pub(crate) fn kind(self) -> &'static str {
        let i = match self {
            Self::RekeyChild(..) => 0,
            Self::RekeyIke(..) => 1,
            Self::Reauth(..) => 2,
            Self::Kill(..) => 3,
            Self::LinkDown(..) => 4,
            Self::Loss(..) => 5,
            Self::Reload(..) => 6,
            Self::Revoke(..) => 7,
        };
        Self::KINDS[i]
    }

    /// How long after the fault is undone every pair of tenants must ping
    /// again. A restarted tunsecd keys with both peers (RFC 7296 section
    /// 2.4, INITIAL_CONTACT) and installs its TAP device. A link that
    /// comes back finds its IKE SAs still there (dead-peer detection, 15.5
    /// s, takes longer than the longest outage), but a Child SA of 10 s
    /// may have expired meanwhile: its rekey goes again at most
    /// `RETRANSMIT_TIMEOUT_LIMIT` (4 s) after the link is back, or at once
    /// when the peer's own request arrives; 1 s more for the exchange and
    /// the pings. The others never stop traffic.
    pub(crate) fn bound(self) -> Duration {
        match self {
            Self::Kill(..) => Duration::from_secs(6),
            Self::LinkDown(..) => Duration::from_secs(5),
            Self::Loss(..) => Duration::from_secs(4),
            _ => Duration::from_secs(2),
        }
    }

    /// Applies the fault, holds it, and undoes it.
    pub(crate) fn run(self, lab: &mut Lab, soak: &mut SoakLab) -> anyhow::Result<()> {
        match self {
            Self::RekeyChild(a, b) | Self::RekeyIke(a, b) => {
                let ike = matches!(self, Self::RekeyIke(..));
                call(
                    lab,
                    a,
                    &Request::Rekey {
                        peer: format!("h{b}"),
                        ike,
                        network: None,
                    },
                )
            }
            Self::Reauth(a, b) => call(
                lab,
                a,
                &Request::Reauth {
                    peer: format!("h{b}"),
                },
            ),
            Self::Kill(n, secs) => {
                soak.kill(lab, n)?;
                std::thread::sleep(Duration::from_secs(secs));
                soak.restart(lab, n)
            }
            Self::LinkDown(n, secs) => {
                let port = format!("ul-h{n}");
                lab.exec(&soak.ul, "ip", &["link", "set", &port, "down"])?;
                std::thread::sleep(Duration::from_secs(secs));
                lab.exec(&soak.ul, "ip", &["link", "set", &port, "up"])?;
                Ok(())
            }
            Self::Loss(n, percent, to, secs) => {
                let ns = soak.host(n).to_owned();
                let rules = format!(
                    "table inet soakloss {{\n\
                     \x20 chain output {{ type filter hook output priority -10; policy accept;\n\
                     \x20   udp dport {{ 500, 4500 }} numgen random mod 100 < {percent} drop\n\
                     \x20   ip protocol esp numgen random mod 100 < {percent} drop\n\
                     \x20 }}\n\
                     \x20 chain input {{ type filter hook input priority -10; policy accept;\n\
                     \x20   udp sport {{ 500, 4500 }} numgen random mod 100 < {percent} drop\n\
                     \x20   ip protocol esp numgen random mod 100 < {percent} drop\n\
                     \x20 }}\n\
                     }}\n"
                );
                let file = lab.dir.path().join("loss.nft");
                std::fs::write(&file, rules)?;
                lab.exec(&ns, "nft", &["-f", &file.to_string_lossy()])?;
                let mut reorder = Reorderer::start(lab, &ns, &host_addr(to), 4500)?;
                std::thread::sleep(Duration::from_secs(secs));
                // The reorderer first: deleting the table drops what the
                // kernel still has queued.
                let stats = reorder.remove(lab)?;
                lab.exec(&ns, "nft", &["delete", "table", "inet", "soakloss"])?;
                eprintln!(
                    "    reorderer h{n} -> h{to}: {} ESP, {} held back",
                    stats.esp, stats.held
                );
                Ok(())
            }
            Self::Reload(n) => {
                soak.renew(n)?;
                for h in HOSTS {
                    call(lab, h, &Request::Reload)?;
                }
                Ok(())
            }
            Self::Revoke(n, secs) => {
                soak.write_crl(Some(n))?;
                for h in HOSTS.into_iter().filter(|&h| h != n) {
                    call(lab, h, &Request::Reload)?;
                }
                std::thread::sleep(Duration::from_secs(secs));
                soak.write_crl(None)?;
                for h in HOSTS.into_iter().filter(|&h| h != n) {
                    call(lab, h, &Request::Reload)?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::RekeyChild(a, b) => write!(f, "h{a}: rekey the Child SA with h{b}"),
            Self::RekeyIke(a, b) => write!(f, "h{a}: rekey the IKE SA with h{b}"),
            Self::Reauth(a, b) => write!(f, "h{a}: re-authenticate with h{b}"),
            Self::Kill(n, s) => write!(f, "h{n}: kill -9, restart after {s} s"),
            Self::LinkDown(n, s) => write!(f, "h{n}: underlay link down for {s} s"),
            Self::Loss(n, p, to, s) => {
                write!(
                    f,
                    "h{n}: {p}% loss both ways, reordering to h{to}, for {s} s"
                )
            }
            Self::Reload(n) => write!(f, "h{n}: new certificate, every host reloads"),
            Self::Revoke(n, s) => write!(f, "h{n}: certificate revoked for {s} s, then restored"),
        }
    }
}

/// A control request to host `n` that must succeed.
fn call(lab: &Lab, n: u8, request: &Request) -> anyhow::Result<()> {
    match control::call(&socket_path(lab, n), request)
        .with_context(|| format!("h{n}: {request:?}"))?
    {
        Response::Error { message } => anyhow::bail!("h{n}: {request:?}: {message}"),
        _ => Ok(()),
    }
}

/// Waits until every pair of tenants pings, at most `limit`; returns how
/// long it took, or `None`.
pub(crate) fn recovery(soak: &SoakLab, limit: Duration) -> anyhow::Result<Option<Duration>> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if soak.all_pairs_ping()? {
            return Ok(Some(t.elapsed()));
        }
    }
    Ok(None)
}
