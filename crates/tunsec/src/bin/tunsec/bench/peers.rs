//! The userspace WireGuard peers that `tunsec bench` compares with, when
//! they are installed: wireguard-go (Debian) and boringtun-cli
//! (crates.io), run as in `shared/refs/peers/bench-peers.sh`. Each
//! daemon runs in a host namespace with its TUN device at MTU 1420 (what
//! wg-quick sets) and iperf3 runs between the hosts' inner addresses.
//! `--with-peers` installs what is missing; a peer that is still missing
//! is reported as skipped, with the reason.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Endpoints, HOST_ADDR, say};
use tunsec_lab::Lab;

/// The boringtun-cli version installed by `--with-peers` (the one the
/// issue's figures were measured with).
const BORINGTUN_VERSION: &str = "0.7.1";
/// The MTU wg-quick gives a WireGuard interface.
const WG_MTU: u16 = 1420;
const WG_PORT: &str = "51820";
/// WireGuard's userspace API sockets (one per interface name, in the
/// file system, so shared by every namespace).
const UAPI_DIR: &str = "/var/run/wireguard";

/// A userspace WireGuard implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Peer {
    /// Debian's wireguard-go.
    WireguardGo,
    /// boringtun-cli from crates.io.
    Boringtun,
}

impl Peer {
    /// Both peers, in bench order.
    pub(crate) const ALL: [Self; 2] = [Self::WireguardGo, Self::Boringtun];

    /// The case name.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun",
        }
    }

    /// What the case runs.
    pub(crate) const fn description(self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go (Debian) over TUN, between the hosts, MTU 1420",
            Self::Boringtun => {
                "boringtun-cli 0.7.1 (default 4 threads) over TUN, between the hosts, MTU 1420"
            }
        }
    }

    const fn binary(self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun-cli",
        }
    }

    const fn tag(self) -> &'static str {
        match self {
            Self::WireguardGo => "wg",
            Self::Boringtun => "bt",
        }
    }
}

/// The peers' binaries found on this machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    wg: Option<PathBuf>,
    wireguard_go: Option<PathBuf>,
    boringtun: Option<PathBuf>,
}

impl Tools {
    /// Looks for `wg`, `wireguard-go` and `boringtun-cli` in `PATH` and
    /// in cargo's bin directory.
    pub(crate) fn find() -> Self {
        Self {
            wg: which("wg"),
            wireguard_go: which("wireguard-go"),
            boringtun: which("boringtun-cli"),
        }
    }

    /// The daemon and `wg` for `peer`, or why the case cannot run.
    pub(crate) fn for_peer(&self, peer: Peer) -> Result<(PathBuf, PathBuf), String> {
        let daemon = match peer {
            Peer::WireguardGo => &self.wireguard_go,
            Peer::Boringtun => &self.boringtun,
        };
        match (daemon, &self.wg) {
            (Some(d), Some(wg)) => Ok((d.clone(), wg.clone())),
            (None, _) => Err(format!("{} is not installed", peer.binary())),
            (_, None) => Err("wg (wireguard-tools) is not installed".to_owned()),
        }
    }
}

/// Where a program is: `PATH`, then cargo's bin directories.
fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Installs what `peers` need and is missing, as
/// `shared/refs/peers/install-deps.sh` does: wireguard-go and
/// wireguard-tools with apt-get (without recommends, which would pull a
/// kernel image), boringtun-cli with `cargo install`. Returns why each
/// peer that could not be installed could not.
pub(crate) fn install(peers: &[Peer]) -> Vec<(Peer, String)> {
    let tools = Tools::find();
    let mut failed = Vec::new();
    let mut apt = Vec::new();
    if tools.wg.is_none() && !peers.is_empty() {
        apt.push("wireguard-tools");
    }
    if peers.contains(&Peer::WireguardGo) && tools.wireguard_go.is_none() {
        apt.push("wireguard-go");
    }
    if !apt.is_empty() {
        say(&format!("--with-peers: apt-get install {}", apt.join(" ")));
        let mut result = apt_install(&apt);
        if result.is_err() {
            // The package lists may be missing or stale.
            let _ = quiet("apt-get", &["update", "-q"]);
            result = apt_install(&apt);
        }
        if let Err(e) = result {
            for &p in peers {
                failed.push((p, format!("apt-get install {} failed: {e}", apt.join(" "))));
            }
            return failed;
        }
    }
    if peers.contains(&Peer::Boringtun) && tools.boringtun.is_none() {
        match which("cargo") {
            None => failed.push((
                Peer::Boringtun,
                "cannot install boringtun-cli: cargo is not installed".to_owned(),
            )),
            Some(cargo) => {
                say(&format!(
                    "--with-peers: cargo install --locked boringtun-cli --version {BORINGTUN_VERSION} (a few minutes)"
                ));
                let cargo = cargo.to_string_lossy().into_owned();
                if let Err(e) = quiet(
                    &cargo,
                    &[
                        "install",
                        "--locked",
                        "boringtun-cli",
                        "--version",
                        BORINGTUN_VERSION,
                    ],
                ) {
                    failed.push((
                        Peer::Boringtun,
                        format!("cargo install boringtun-cli failed: {e}"),
                    ));
                }
            }
        }
    }
    failed
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    quiet("apt-get", &args)
}

/// Runs a command with its output captured; on failure, the last line it
/// printed to stderr.
fn quiet(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(format!("{} ({})", last.trim(), out.status))
}

/// A WireGuard key pair from `wg genkey` and `wg pubkey`.
fn keypair(wg: &Path) -> anyhow::Result<(String, String)> {
    let private = tunsec_lab::run(&wg.to_string_lossy(), &["genkey"])?;
    let private = String::from_utf8_lossy(&private.stdout).trim().to_owned();
    let mut child = Command::new(wg)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run wg pubkey")?;
    child
        .stdin
        .take()
        .context("wg pubkey: no stdin")?
        .write_all(format!("{private}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Starts the peer's daemon in each host namespace (`hosts[0]` and
/// `hosts[1]`, with underlay addresses `HOST_ADDR`), configures both with
/// `wg`, and returns the endpoints for iperf3 (10.44.0.1 and .2).
pub(super) fn setup(
    lab: &mut Lab,
    hosts: &[String; 2],
    peer: Peer,
    daemon: &Path,
    wg: &Path,
) -> anyhow::Result<Endpoints> {
    const INNER: [&str; 2] = ["10.44.0.1", "10.44.0.2"];
    std::fs::create_dir_all(UAPI_DIR)?;
    let tag = std::process::id() % 100_000;
    let ifname = |side: usize| format!("tsb{}{tag}{}", peer.tag(), side + 1);
    let mut labels = Vec::new();
    let mut files = Vec::new();
    let mut keys = Vec::new();
    for (side, host) in hosts.iter().enumerate() {
        let ifn = ifname(side);
        let sock = Path::new(UAPI_DIR).join(format!("{ifn}.sock"));
        files.push(sock.clone());
        let label = format!("{}-h{}", peer.name(), side + 1);
        let daemon_s = daemon.to_string_lossy().into_owned();
        match peer {
            Peer::WireguardGo => lab.spawn(
                &label,
                host,
                Path::new("env"),
                &["LOG_LEVEL=error", &daemon_s, "-f", &ifn],
            )?,
            // -f: stay in the foreground; it drops privileges to
            // getlogin()'s user unless told not to, which fails without
            // a login tty.
            Peer::Boringtun => lab.spawn(
                &label,
                host,
                daemon,
                &[
                    "-f",
                    "--disable-drop-privileges",
                    "--verbosity",
                    "error",
                    &ifn,
                ],
            )?,
        };
        lab.wait_for(
            &format!("{} to open {}", peer.binary(), sock.display()),
            Duration::from_secs(10),
            || sock.exists(),
        )?;
        labels.push(label);
        keys.push(keypair(wg)?);
    }
    let wg_s = wg.to_string_lossy().into_owned();
    for (side, host) in hosts.iter().enumerate() {
        let other = 1 - side;
        let ifn = ifname(side);
        let key_file = lab.dir.path().join(format!("wg-{}.key", side + 1));
        std::fs::write(&key_file, format!("{}\n", keys[side].0))?;
        let key_s = key_file.to_string_lossy().into_owned();
        lab.exec(
            host,
            &wg_s,
            &[
                "set",
                &ifn,
                "private-key",
                &key_s,
                "listen-port",
                WG_PORT,
                "peer",
                &keys[other].1,
                "endpoint",
                &format!("{}:{WG_PORT}", HOST_ADDR[other]),
                "allowed-ips",
                &format!("{}/32", INNER[other]),
            ],
        )?;
        lab.exec(
            host,
            "ip",
            &["addr", "add", &format!("{}/24", INNER[side]), "dev", &ifn],
        )?;
        lab.exec(
            host,
            "ip",
            &["link", "set", &ifn, "mtu", &WG_MTU.to_string(), "up"],
        )?;
    }
    Ok(Endpoints {
        client_ns: hosts[0].clone(),
        server_ns: hosts[1].clone(),
        client_ip: INNER[0],
        server_ip: INNER[1],
        mtu: WG_MTU,
        daemon: Some(peer.binary()),
        daemon_labels: labels,
        hosts: hosts.to_vec(),
        control_sockets: Vec::new(),
        files,
        networks: None,
    })
}
