//! charon's side of the interop lab: one charon instance in its own
//! namespace, its state and logs, `swanctl` and what it lists, and the
//! ipsec.conf of ovs-monitor-ipsec loaded by `starter`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use tunsec_lab::Lab;

use super::*;

/// Kills every process still living in one of the lab's namespaces (those
/// whose names start with `ns_prefix`, `Lab::ns("")`), by the pids `ip
/// netns pids` lists (never by name): TERM, then KILL.
pub(crate) fn kill_leftovers(ns_prefix: &str) {
    let Ok(out) = tunsec_lab::run("ip", &["netns", "list"]) else {
        return;
    };
    let namespaces: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(ns_prefix))
        .map(str::to_owned)
        .collect();
    for signal in ["-TERM", "-KILL"] {
        let mut any = false;
        for ns in &namespaces {
            let Ok(out) = tunsec_lab::run("ip", &["netns", "pids", ns]) else {
                continue;
            };
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                any = true;
                let _ = Command::new("kill")
                    .args([signal, pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One charon instance in namespace `ns`, its state in `dir`.
pub(crate) struct Charon {
    pub(crate) ns: String,
    pub(crate) dir: PathBuf,
    /// charon's own log (filelog), `charon.log` in the lab's directory.
    pub(crate) log: PathBuf,
    /// How many times it was started (each start logs its stdout apart).
    pub(crate) starts: u32,
    /// Started by `starter` from the `ipsec.conf` that ovs-monitor-ipsec
    /// writes (stroke), not by swanctl.
    pub(crate) stock: bool,
    /// Which strongSwan.
    pub(crate) version: Strongswan,
}

impl Charon {
    /// Renders strongswan.conf and swanctl.conf for a charon at host `me`
    /// whose peer (tunsecd) is host `peer`.
    pub(crate) fn new(lab: &Lab, ns: &str, me: u8, peer: u8, p: &Params) -> anyhow::Result<Self> {
        p.strongswan.check_installed()?;
        let dir = lab.dir.path().join("charon");
        std::fs::create_dir_all(dir.join("run"))?;
        // swanctl warns about every missing credential directory.
        for sub in [
            "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
            "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
        ] {
            std::fs::create_dir_all(dir.join("swanctl").join(sub))?;
        }
        let log = lab.dir.path().join("charon.log");
        let render = |template: &str, vars: &[(&str, &str)]| {
            vars.iter().fold(template.to_owned(), |t, (k, v)| {
                t.replace(&format!("@{k}@"), v)
            })
        };
        // With `green`, a second Child SA for network green's VXLAN port
        // (RFC 7296 section 1.3.1: created by CREATE_CHILD_SA).
        let extra_child = if p.green {
            format!(
                "            {GREEN} {{\n                mode = tunnel\n                \
                 local_ts = {me}/32[udp/{GREEN_PORT}]\n                \
                 remote_ts = {peer}/32[udp/{GREEN_PORT}]\n                \
                 esp_proposals = {esp}\n                start_action = none\n                \
                 close_action = none\n                dpd_action = none\n            }}",
                me = host_addr(me),
                peer = host_addr(peer),
                esp = p.esp,
            )
        } else {
            String::new()
        };
        let dir_s = dir.to_string_lossy().into_owned();
        let log_s = log.to_string_lossy().into_owned();
        std::fs::write(
            dir.join("strongswan.conf"),
            render(
                STRONGSWAN_CONF,
                &[
                    ("DIR", &dir_s),
                    ("LOG", &log_s),
                    ("LOAD", p.strongswan.load()),
                    ("SWANCTL_LOAD", p.strongswan.swanctl_load()),
                ],
            ),
        )?;
        if p.stock {
            let (conf, secrets) = stock_ipsec_conf(&host_addr(peer), p.psk_charon);
            std::fs::write(dir.join("ipsec.conf"), conf)?;
            tunsec::config::write_secret(dir.join("ipsec.secrets"), secrets)?;
        }
        let template = if p.cert.is_some() {
            SWANCTL_CERT_CONF
        } else {
            SWANCTL_CONF
        };
        std::fs::write(
            dir.join("swanctl/swanctl.conf"),
            render(
                template,
                &[
                    ("ME", &host_addr(me)),
                    ("PEER", &host_addr(peer)),
                    ("IKE", p.ike),
                    ("ESP", p.esp),
                    ("PSK", p.psk_charon),
                    ("TS", if p.green { "[udp/4789]" } else { "" }),
                    ("EXTRA_CHILD", &extra_child),
                    ("MYID", CHARON_ID),
                    ("PEERID", TUNSEC_ID),
                ],
            ),
        )?;
        Ok(Self {
            ns: ns.to_owned(),
            dir,
            log,
            starts: 0,
            stock: p.stock,
            version: p.strongswan,
        })
    }

    pub(crate) fn label(&self) -> String {
        format!("charon-out{}", self.starts)
    }

    /// Starts charon with a private /run (bind-mounted from `dir/run` in a
    /// mount namespace of its own), waits until vici answers and loads the
    /// config. `ip netns exec`, `unshare` and `sh` all exec, so the lab's
    /// pid is charon's.
    pub(crate) fn start(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        if self.stock {
            return self.start_stock(lab);
        }
        self.starts += 1;
        let dir = self.dir.to_string_lossy().into_owned();
        let label = self.label();
        let charon = self.version.charon();
        lab.spawn(
            &label,
            &self.ns,
            Path::new("unshare"),
            &[
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                r#"mount --bind "$1/run" /run && STRONGSWAN_CONF="$1/strongswan.conf" exec "$2""#,
                "sh",
                &dir,
                &charon,
            ],
        )?;
        let pid = lab.pid(&label).context("charon's pid")?;
        lab.wait_for("charon's vici socket", Duration::from_secs(15), || {
            Path::new(&format!("/proc/{pid}")).exists() && self.swanctl(&["--stats"]).is_ok()
        })
        .with_context(|| format!("charon (pid {pid}) did not come up"))?;
        let out = self.swanctl(&[
            "--load-all",
            "--noprompt",
            "--file",
            &format!("{dir}/swanctl/swanctl.conf"),
        ])?;
        ensure!(
            out.contains("successfully loaded 1 connections"),
            "swanctl --load-all: {out}"
        );
        Ok(())
    }

    /// Starts charon the way ovs-monitor-ipsec has it started (`ipsec
    /// start`): by `starter`, which reads `ipsec.conf` and hands its
    /// connections to charon over stroke, with the PSKs of `ipsec.secrets`
    /// (the stroke plugin's `secrets_file`). Waits until both connections
    /// are loaded and routed.
    pub(crate) fn start_stock(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        self.starts += 1;
        let dir = self.dir.to_string_lossy().into_owned();
        let conf_path = self.dir.join("strongswan.conf");
        let conf = std::fs::read_to_string(&conf_path)?
            .replace(" vici kernel-libipsec", " vici stroke kernel-libipsec")
            .replace(
                "    plugins {\n",
                &format!("    plugins {{\n        stroke {{\n            secrets_file = {dir}/ipsec.secrets\n        }}\n"),
            );
        std::fs::write(&conf_path, conf)?;
        let label = self.label();
        lab.spawn(
            &label,
            &self.ns,
            Path::new("unshare"),
            &[
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                r#"mount --bind "$1/run" /run && STRONGSWAN_CONF="$1/strongswan.conf" exec "$2" --nofork --conf "$1/ipsec.conf""#,
                "sh",
                &dir,
                STARTER,
            ],
        )?;
        let pid = lab.pid(&label).context("starter's pid")?;
        lab.wait_for(
            "ovs-monitor-ipsec's connections in charon",
            Duration::from_secs(20),
            || {
                let log = self.log_text();
                Path::new(&format!("/proc/{pid}")).exists()
                    && [STOCK_IN, STOCK_OUT]
                        .iter()
                        .all(|c| log.contains(&format!("'{c}'")))
                    && self.swanctl(&["--stats"]).is_ok()
            },
        )
        .with_context(|| {
            format!(
                "starter (pid {pid}) / charon did not load ipsec.conf:\n{}",
                self.log_text()
            )
        })?;
        Ok(())
    }

    /// Kills charon with SIGKILL (a crash: no DELETE leaves it) and reaps it.
    pub(crate) fn kill(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        let label = self.label();
        let pid = lab.pid(&label).context("charon is not running")?;
        tunsec_lab::run("kill", &["-KILL", &pid.to_string()])?;
        lab.stop(&label);
        Ok(())
    }

    /// Runs `swanctl OPERATION ARGS` against this charon's vici socket
    /// (from the root namespace: Unix sockets are not per network
    /// namespace); fails with its output unless it succeeds.
    pub(crate) fn swanctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let (op, rest) = args.split_first().context("no swanctl operation")?;
        let uri = format!("unix://{}/run/charon.vici", self.dir.display());
        let out = Command::new(self.version.swanctl())
            .arg(op)
            .args(["--uri", &uri])
            .args(rest)
            .env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .stdin(Stdio::null())
            .output()
            .context("cannot run swanctl")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "swanctl {}: {text}", args.join(" "));
        Ok(text)
    }

    pub(crate) fn list_sas(&self) -> anyhow::Result<SwanSas> {
        Ok(SwanSas::parse(&self.swanctl(&["--list-sas"])?))
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What `swanctl --list-sas` shows.
#[derive(Debug, Default)]
pub(crate) struct SwanSas {
    pub(crate) text: String,
    /// IKE SA lines (`tunsec: #1, ESTABLISHED, IKEv2, ...`).
    pub(crate) ike: Vec<String>,
    pub(crate) children: Vec<SwanChild>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SwanChild {
    /// `tunsec: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128`
    pub(crate) state: String,
    pub(crate) spi_in: u32,
    pub(crate) spi_out: u32,
    pub(crate) packets_in: u64,
    pub(crate) packets_out: u64,
}

impl SwanSas {
    pub(crate) fn parse(text: &str) -> Self {
        let mut sas = Self {
            text: text.to_owned(),
            ..Default::default()
        };
        // "  in  c2a6b1d0,    840 bytes,    10 packets,     1s ago"
        let spi_and_packets = |line: &str| -> (u32, u64) {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let spi = words
                .get(1)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .unwrap_or(0);
            let packets = words
                .iter()
                .position(|w| *w == "packets")
                .and_then(|i| words.get(i.wrapping_sub(1)))
                .and_then(|w| w.parse().ok())
                .unwrap_or(0);
            (spi, packets)
        };
        for line in text.lines() {
            let t = line.trim();
            if t.contains(", reqid ") {
                sas.children.push(SwanChild {
                    state: t.to_owned(),
                    ..Default::default()
                });
            } else if t.contains(", IKEv2") {
                sas.ike.push(t.to_owned());
            } else if let Some(child) = sas.children.last_mut() {
                if t.starts_with("in ") {
                    (child.spi_in, child.packets_in) = spi_and_packets(t);
                } else if t.starts_with("out ") {
                    (child.spi_out, child.packets_out) = spi_and_packets(t);
                }
            }
        }
        sas
    }

    pub(crate) fn established(&self) -> bool {
        self.ike.iter().any(|l| l.contains("ESTABLISHED"))
    }

    pub(crate) fn installed(&self) -> Vec<&SwanChild> {
        self.children
            .iter()
            .filter(|c| c.state.contains("INSTALLED"))
            .collect()
    }
}

/// The lines tunsecd needs in `[peer.ike]` to talk to kernel-libipsec:
/// tunnel mode.
/// strongSwan's starter: reads ipsec.conf, starts charon, loads the
/// connections over stroke.
pub(crate) const STARTER: &str = "/usr/lib/ipsec/starter";
/// The connection names ovs-monitor-ipsec gives a vxlan interface `vx0`
/// (version 1): `$ifname-in-$version`, `$ifname-out-$version`.
pub(crate) const STOCK_IN: &str = "vx0-in-1";
pub(crate) const STOCK_OUT: &str = "vx0-out-1";

/// `ipsec.conf` and `ipsec.secrets` as ovs-monitor-ipsec 3.1 writes them
/// (its `CONF_HEADER`, the `vxlan` template of `transp_tmpl` and the
/// `psk` auth section, `ipsec.secrets` line `%any REMOTE : PSK "..."`)
/// for one vxlan interface `vx0` with `options:remote_ip=PEER
/// options:psk=...`, changed in one word: `type=tunnel` instead of
/// `type=transport`, since kernel-libipsec, charon's only data plane on a
/// kernel without XFRM ESP, has no transport mode (`IPsec SA: unsupported
/// mode`). Everything else, `auto=route` and the stock proposals
/// included, is the script's.
pub(crate) fn stock_ipsec_conf(peer: &str, psk: &str) -> (String, String) {
    let header = "# Generated by ovs-monitor-ipsec...do not modify by hand!\n\n";
    let auth = format!("    left=%any\n    right={peer}\n    authby=psk");
    let conf = format!(
        "{header}\nconfig setup\n    uniqueids=yes\n\n\
         conn %default\n    keyingtries=%forever\n    type=tunnel\n    keyexchange=ikev2\n    \
         auto=route\n    ike=aes256gcm16-sha256-modp2048\n    esp=aes256gcm16-modp2048\n\n\
         conn {STOCK_IN}\n{auth}\n    leftprotoport=udp/4789\n    rightprotoport=udp\n\n\
         conn {STOCK_OUT}\n{auth}\n    leftprotoport=udp\n    rightprotoport=udp/4789\n\n"
    );
    let secrets = format!("{header}%any {peer} : PSK \"{psk}\"\n");
    (conf, secrets)
}
