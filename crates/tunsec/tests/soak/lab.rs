//! The soak's lab: three hosts h1-h3 (192.0.2.1-3) on the underlay
//! bridge, each with a tenant t1-t3 (198.51.100.1-3) on bridge `br-t`.
//! In overlay mode tunsecd enslaves its TAP device to `br-t` (`[[network]]
//! bridge`), also after a restart. In gateway mode `br-t` holds the
//! kernel's own vxlan device `vxlan0` (VNI 100, a static flood entry for
//! each other host), whose datagrams tunsecd steers into ESP. Every pair
//! of hosts keys with IKEv2 and certificates from one CA (`tunsec pki`),
//! under a `require` policy, with Child SAs of 10 s and IKE SAs of 30 s.
//! The underlay bridge counts, in nftables, every frame that is neither
//! ARP, IKE, ESP nor ICMP, and cleartext VXLAN apart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use tunsec::pki::{self, KeyAlg};
use tunsec_lab::Lab;

use crate::common::*;

/// The hosts, by number.
pub(crate) const HOSTS: [u8; 3] = [1, 2, 3];
/// Child SA and IKE SA lifetimes, seconds.
pub(crate) const CHILD_LIFETIME: u64 = 10;
pub(crate) const IKE_LIFETIME: u64 = 30;
/// The nftables table on the underlay bridge and its counters.
const TABLE: &str = "soak";
pub(crate) const COUNTERS: [&str; 3] = ["vxlan_clear", "other_frames", "icmp_frames"];

/// Which mode the three tunsecd run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// tunsecd is the VTEP (a TAP device on `br-t`).
    Overlay,
    /// The kernel's vxlan device is the VTEP; tunsecd protects its
    /// datagrams by policy.
    Gateway,
}

impl Mode {
    /// The mode's name, for the report and the files.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Overlay => "overlay",
            Self::Gateway => "gateway",
        }
    }
}

/// The kernel vxlan device's MTU in gateway mode: room for VXLAN, ESP in
/// UDP and the outer headers in the underlay's 1500.
const GATEWAY_VXLAN_MTU: u16 = 1350;

/// The lab of one soak run.
pub(crate) struct SoakLab {
    /// The underlay namespace (bridge `br0`).
    pub(crate) ul: String,
    /// Host namespaces, by host number - 1.
    pub(crate) hosts: Vec<String>,
    /// Tenant namespaces, by host number - 1.
    pub(crate) tenants: Vec<String>,
    /// The PKI: the CA in `ca/`, `h<n>.pem`/`h<n>.key`, `ca.crl`.
    pub(crate) pki: PathBuf,
    /// Certificates issued so far (for fresh file names).
    issued: u32,
}

impl SoakLab {
    /// Builds the lab and starts the three tunsecd; returns once every
    /// pair of tenants pings.
    pub(crate) fn build(lab: &mut Lab, mode: Mode) -> anyhow::Result<Self> {
        let ul = add_underlay(lab)?;
        count_underlay(lab, &ul)?;
        let pki = lab.dir.path().join("pki");
        pki::init_ca(KeyAlg::EcdsaP256, "tunsec soak CA", 30, &pki.join("ca"))?;
        for n in HOSTS {
            pki::issue(
                &pki.join("ca"),
                &format!("h{n}"),
                &[],
                KeyAlg::EcdsaP256,
                30,
                &pki,
            )?;
        }
        pki::crl(&pki.join("ca"), &[], 7, &pki.join("ca.crl"))?;
        let mut hosts = Vec::new();
        let mut tenants = Vec::new();
        for n in HOSTS {
            let h = add_host(lab, &ul, &format!("h{n}"), n)?;
            let (t, _) = add_tenant_behind_bridge(lab, &h, &format!("t{n}"), "t", &tenant_addr(n))?;
            if mode == Mode::Gateway {
                add_gateway_vxlan(lab, &h, &t, n)?;
            }
            let config = write_config(lab, &pki, n, mode)?;
            start_tunsecd(lab, &h, n, &config)?;
            hosts.push(h);
            tenants.push(t);
        }
        for n in HOSTS.into_iter().filter(|_| mode == Mode::Overlay) {
            let (h, t) = (&hosts[usize::from(n) - 1], &tenants[usize::from(n) - 1]);
            lab.wait_for(
                &format!("{TAP} on br-t in h{n}"),
                Duration::from_secs(10),
                || {
                    lab.try_exec(
                        h,
                        "sh",
                        &["-c", &format!("ip link show {TAP} | grep -q 'master br-t'")],
                    )
                },
            )?;
            set_tenant_mtu(lab, h, t, TAP)?;
        }
        let soak = Self {
            ul,
            hosts,
            tenants,
            pki,
            issued: 0,
        };
        lab.wait_for(
            "every pair of tenants to ping",
            Duration::from_secs(30),
            || soak.all_pairs_ping().unwrap_or(false),
        )?;
        Ok(soak)
    }

    /// Host `n`'s namespace.
    pub(crate) fn host(&self, n: u8) -> &str {
        &self.hosts[usize::from(n) - 1]
    }

    /// Tenant `n`'s namespace.
    pub(crate) fn tenant(&self, n: u8) -> &str {
        &self.tenants[usize::from(n) - 1]
    }

    /// Whether one ping goes through between every pair of tenants (each
    /// way once).
    pub(crate) fn all_pairs_ping(&self) -> anyhow::Result<bool> {
        for (a, b) in [(1u8, 2u8), (2, 3), (3, 1)] {
            if probe(self.tenant(a), &tenant_addr(b))? != 1
                || probe(self.tenant(b), &tenant_addr(a))? != 1
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Kills tunsecd `n` with SIGKILL (no clean-up at all).
    pub(crate) fn kill(&self, lab: &mut Lab, n: u8) -> anyhow::Result<()> {
        let label = format!("h{n}");
        let pid = lab.pid(&label).context("no daemon pid")?;
        ensure!(
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?
                .success(),
            "kill -KILL {pid} failed"
        );
        lab.stop(&label);
        let log = lab.dir.path().join(format!("{label}.log"));
        let kept = lab.dir.path().join(format!("{label}.killed-{pid}.log"));
        std::fs::rename(&log, kept)?;
        Ok(())
    }

    /// Starts tunsecd `n` again with its config.
    pub(crate) fn restart(&self, lab: &mut Lab, n: u8) -> anyhow::Result<()> {
        let config = lab.dir.path().join(format!("h{n}.toml"));
        start_tunsecd(lab, self.host(n), n, &config)
    }

    /// Issues host `n` a new certificate and key from the CA, in place of
    /// its current ones (the config names the same files).
    pub(crate) fn renew(&mut self, n: u8) -> anyhow::Result<()> {
        self.issued += 1;
        let fresh = self.pki.join(format!("new-{}", self.issued));
        let name = format!("h{n}");
        pki::issue(
            &self.pki.join("ca"),
            &name,
            &[],
            KeyAlg::EcdsaP256,
            30,
            &fresh,
        )?;
        std::fs::copy(
            fresh.join(format!("{name}.pem")),
            self.pki.join(format!("{name}.pem")),
        )?;
        std::fs::copy(
            fresh.join(format!("{name}.key")),
            self.pki.join(format!("{name}.key")),
        )?;
        Ok(())
    }

    /// Writes the CRL that every host loads: revoking host `n`'s current
    /// certificate, or nothing.
    pub(crate) fn write_crl(&self, revoke: Option<u8>) -> anyhow::Result<()> {
        let revoked: Vec<PathBuf> = revoke
            .map(|n| self.pki.join(format!("h{n}.pem")))
            .into_iter()
            .collect();
        pki::crl(&self.pki.join("ca"), &revoked, 7, &self.pki.join("ca.crl"))
    }

    /// The underlay bridge's counters: cleartext VXLAN, other frames
    /// (neither ARP, IKE, ESP nor ICMP), ICMP.
    pub(crate) fn counters(&self, lab: &Lab) -> anyhow::Result<[u64; 3]> {
        let mut out = [0; 3];
        for (i, name) in COUNTERS.iter().enumerate() {
            let text = lab.exec(&self.ul, "nft", &["list", "counter", "bridge", TABLE, name])?;
            let text = String::from_utf8_lossy(&text.stdout).into_owned();
            out[i] = text
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("counter {name}: {text}"))?;
        }
        Ok(out)
    }
}

/// One ping with a 1 s wait: 1 if it was answered.
fn probe(ns: &str, dst: &str) -> anyhow::Result<u32> {
    let out = exec_output(ns, "ping", &["-c", "1", "-W", "1", "-q", dst])?;
    Ok(u32::from(out.status.success()))
}

/// The nftables counters on the underlay bridge (`br0` in `ul`).
fn count_underlay(lab: &Lab, ul: &str) -> anyhow::Result<()> {
    let rules = format!(
        "table bridge {TABLE} {{\n\
         \x20 counter vxlan_clear {{ }}\n\
         \x20 counter other_frames {{ }}\n\
         \x20 counter icmp_frames {{ }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority 0; policy accept;\n\
         \x20   ether type arp accept\n\
         \x20   ether type ip6 accept\n\
         \x20   udp dport 4789 counter name \"vxlan_clear\" accept\n\
         \x20   udp sport 4789 counter name \"vxlan_clear\" accept\n\
         \x20   udp dport {{ 500, 4500 }} accept\n\
         \x20   udp sport {{ 500, 4500 }} accept\n\
         \x20   ip protocol esp accept\n\
         \x20   ip protocol icmp counter name \"icmp_frames\" accept\n\
         \x20   counter name \"other_frames\" accept\n\
         \x20 }}\n\
         }}\n"
    );
    let file = lab.dir.path().join("ul.nft");
    std::fs::write(&file, rules)?;
    lab.exec(ul, "nft", &["-f", &file.to_string_lossy()])?;
    Ok(())
}

/// Gateway mode: the kernel's vxlan device `vxlan0` of host `n` (VNI
/// 100, port 4789, no learning, a flood entry for each other host) on
/// bridge `br-t` with tenant `t`, whose MTU follows it.
fn add_gateway_vxlan(lab: &Lab, h: &str, t: &str, n: u8) -> anyhow::Result<()> {
    let local = host_addr(n);
    let mtu = GATEWAY_VXLAN_MTU.to_string();
    lab.exec(
        h,
        "ip",
        &[
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            "100",
            "local",
            &local,
            "dstport",
            "4789",
            "nolearning",
        ],
    )?;
    for peer in HOSTS.into_iter().filter(|&p| p != n) {
        lab.exec(
            h,
            "bridge",
            &[
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vxlan0",
                "dst",
                &host_addr(peer),
            ],
        )?;
    }
    lab.exec(h, "ip", &["link", "set", "vxlan0", "mtu", &mtu])?;
    lab.exec(h, "ip", &["link", "set", "vxlan0", "master", "br-t"])?;
    lab.exec(h, "ip", &["link", "set", "vxlan0", "up"])?;
    lab.exec(t, "ip", &["link", "set", "eth0", "mtu", &mtu])?;
    Ok(())
}

/// Host `n`'s config: network blue on `br-t` (overlay mode) or the
/// kernel's `vxlan0` steered by selector (gateway mode), the two other
/// hosts as peers under `require`, certificates, short lifetimes.
fn write_config(lab: &Lab, pki: &Path, n: u8, mode: Mode) -> anyhow::Result<PathBuf> {
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display(),
    )?;
    let peer_lines = match mode {
        Mode::Overlay => {
            c.push_str(
                "[[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\nbridge = \"br-t\"\n\n",
            );
            "networks = [\"blue\"]\npolicy = \"require\"\n"
        }
        Mode::Gateway => {
            c.push_str("[gateway]\ntunnel_devices = [\"vxlan0\"]\n\n");
            "\n[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n"
        }
    };
    for peer in HOSTS.into_iter().filter(|&p| p != n) {
        writeln!(
            c,
            "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\n{peer_lines}\n\
             [peer.ike]\nauth = \"cert\"\ncert = \"{d}/h{n}.pem\"\nkey = \"{d}/h{n}.key\"\n\
             ca = [\"{d}/ca/ca.pem\"]\ncrl = [\"{d}/ca.crl\"]\n\
             local_id = \"fqdn:h{n}\"\nremote_id = \"fqdn:h{peer}\"\n\
             child_lifetime = {CHILD_LIFETIME}\nike_lifetime = {IKE_LIFETIME}\n",
            host_addr(peer),
            d = pki.display()
        )?;
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}
