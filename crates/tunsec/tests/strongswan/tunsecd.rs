//! tunsecd's side of the interop lab: its config, the lab of one case
//! (underlay, both hosts, tenant, vxlan0 on charon's host) and what a
//! case asks of it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::status::Status;
use tunsec_lab::Lab;

use super::*;

pub(crate) const TUNNEL_MODE: &str = "mode = \"tunnel\"\n";

pub(crate) struct Interop {
    pub(crate) p: Params,
    pub(crate) ul: String,
    /// charon's namespace.
    pub(crate) s: String,
    /// tunsecd's namespace.
    pub(crate) t: String,
    /// The tenant behind tunsecd (after `add_tenant`).
    pub(crate) tenant: Option<String>,
    pub(crate) charon: Charon,
    pub(crate) pcap: PathBuf,
}

pub(crate) fn write_tunsec_config(lab: &Lab, p: &Params, gateway: bool) -> anyhow::Result<PathBuf> {
    let n = p.tunsec;
    let auth = if p.cert.is_some() {
        let d = lab.dir.path().join("pki");
        format!(
            "auth = \"cert\"\ncert = \"{d}/t.pem\"\nkey = \"{d}/t.key\"\nca = [\"{d}/ca.pem\"]\n\
             local_id = \"fqdn:{TUNSEC_ID}\"\nremote_id = \"fqdn:{CHARON_ID}\"\n{}",
            if d.join("ca.crl").exists() {
                format!("crl = [\"{}/ca.crl\"]\n", d.display())
            } else {
                String::new()
            },
            d = d.display()
        )
    } else {
        "psk_file = \"tunsec.psk\"\n".to_owned()
    };
    tunsec::config::write_secret(
        lab.dir.path().join("tunsec.psk"),
        format!("{}\n", p.psk_tunsec),
    )?;
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"t\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display()
    )?;
    if gateway {
        // Gateway mode: the kernel's vxlan0 on this host, UDP 4789.
        writeln!(
            c,
            "[gateway]\nmode = \"tunnel\"\ntunnel_devices = [\"vxlan0\"]\n"
        )?;
    } else {
        writeln!(
            c,
            "[[network]]\nname = \"blue\"\nvni = {VNI}\nencapsulation = \"vxlan\"\n"
        )?;
    }
    let what = if gateway {
        "[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n"
    } else {
        "networks = [\"blue\"]\n"
    };
    writeln!(
        c,
        "[[peer]]\nname = \"{PEER}\"\nunderlay = \"{}\"\npolicy = \"require\"\n{what}\n\
         [peer.ike]\n{auth}ike_proposals = [{}]\nesp_proposals = [\"{}\"]\n{TUNNEL_MODE}{}",
        host_addr(p.charon),
        if p.tunsec_ike.is_empty() {
            format!("\"{}\"", p.ike)
        } else {
            p.tunsec_ike
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        },
        p.esp,
        p.ike_extra
    )?;
    if p.green {
        c = c.replace("networks = [\"blue\"]", "networks = [\"blue\", \"green\"]");
        writeln!(
            c,
            "selectors = \"ports\"\n\n[[network]]\nname = \"{GREEN}\"\nvni = {GREEN_VNI}\n\
             encapsulation = \"vxlan\"\nport = {GREEN_PORT}\n"
        )?;
    }
    let path = lab.dir.path().join("tunsec.toml");
    std::fs::write(&path, c)?;
    Ok(path)
}

/// The underlay, charon's host with its vxlan0 and inbound filter, charon
/// started and loaded, tunsecd's host with tunsecd started, the capture
/// running. Nobody has initiated yet unless tunsecd does it by itself.
pub(crate) fn interop(lab: &mut Lab, p: Params) -> anyhow::Result<Interop> {
    interop_with(lab, p, false)
}

/// As [`interop`]; with `gateway`, tunsecd runs in gateway mode and its
/// host has a kernel vxlan0 (198.51.100.<n>, the tenant address) instead
/// of a tenant behind a TAP device, and both vxlan devices send from port
/// 4789 (`srcport 4789 4790`), the Child SA's selectors being
/// `[udp/4789]` on both sides.
pub(crate) fn interop_with(lab: &mut Lab, p: Params, gateway: bool) -> anyhow::Result<Interop> {
    let t0 = Instant::now();
    let ul = add_underlay(lab)?;
    let s = add_host(lab, &ul, "s", p.charon)?;
    let t = add_host(lab, &ul, "t", p.tunsec)?;
    // Decrypted packets arrive on ipsec0 while the peer's address is
    // reachable through eth0 for marked packets: loose reverse path
    // filtering, as strongSwan's own libipsec tests.
    lab.exec(
        &s,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.conf.all.rp_filter=2",
            "net.ipv4.conf.default.rp_filter=2",
        ],
    )?;
    // vxlan0 to tunsecd: its packets to the peer's address take the route
    // into ipsec0 that libipsec installs in table 220. 1350 = ipsec0's
    // 1400 less VXLAN's 50.
    let (me, peer) = (host_addr(p.charon), host_addr(p.tunsec));
    add_vxlan(
        lab,
        &s,
        &me,
        &peer,
        tenant_addr(p.charon),
        1350,
        (gateway && !p.stock) || p.green,
    )?;
    if p.green {
        let port = GREEN_PORT.to_string();
        let next = (GREEN_PORT + 1).to_string();
        lab.exec(
            &s,
            "ip",
            &[
                "link",
                "add",
                "vxlan1",
                "type",
                "vxlan",
                "id",
                GREEN_VNI,
                "local",
                &me,
                "remote",
                &peer,
                "dstport",
                &port,
                "srcport",
                &port,
                &next,
                "nolearning",
            ],
        )?;
        lab.exec(&s, "ip", &["link", "set", "vxlan1", "mtu", "1350", "up"])?;
        let addr = format!("{}/24", green_addr(p.charon));
        lab.exec(&s, "ip", &["addr", "add", &addr, "dev", "vxlan1"])?;
    }
    // libipsec has no inbound policy: cleartext from the peer would be
    // accepted. What the Child SA covers (UDP from the peer) must come
    // through ipsec0; IKE and ESP in UDP are let in.
    let rules = format!(
        "table inet tsinterop {{\n chain input {{ type filter hook input priority 0; policy accept;\n  \
         iifname \"eth0\" ip saddr {peer} udp dport != {{ 500, 4500 }} drop\n }}\n}}\n"
    );
    let rules_file = lab.dir.path().join("s.nft");
    std::fs::write(&rules_file, rules)?;
    lab.exec(&s, "nft", &["-f", &rules_file.to_string_lossy()])?;

    let pcap = start_capture(lab, &ul, "capture")?;
    let mut charon = Charon::new(lab, &s, p.charon, p.tunsec, &p)?;
    if let Some(pki) = p.cert {
        let dir = make_pki(lab, &p, pki)?;
        install_charon_credentials(&charon, &dir)?;
    }
    charon.start(lab)?;
    let config = write_tunsec_config(lab, &p, gateway)?;
    start_tunsecd(lab, &t, p.tunsec, &config)?;
    let mut tenant = None;
    if gateway {
        let advice = status(lab, p.tunsec)?
            .gateway
            .context("no gateway status")?
            .tunnel_mtu_advice;
        add_vxlan(lab, &t, &peer, &me, tenant_addr(p.tunsec), advice, !p.stock)?;
        tenant = Some(t.clone());
    }
    phase(lab, "charon and tunsecd up", t0);
    Ok(Interop {
        p,
        ul,
        s,
        t,
        tenant,
        charon,
        pcap,
    })
}

/// A kernel vxlan0 (VNI 100, UDP 4789) in `ns` from `me` to `peer` with
/// address `addr`/24; with `pin`, its source port is 4789.
pub(crate) fn add_vxlan(
    lab: &Lab,
    ns: &str,
    me: &str,
    peer: &str,
    addr: String,
    mtu: u16,
    pin: bool,
) -> anyhow::Result<()> {
    let mut args = vec![
        "link",
        "add",
        "vxlan0",
        "type",
        "vxlan",
        "id",
        VNI,
        "local",
        me,
        "remote",
        peer,
        "dstport",
        "4789",
        "nolearning",
    ];
    if pin {
        args.extend(["srcport", "4789", "4790"]);
    }
    lab.exec(ns, "ip", &args)?;
    let mtu = mtu.to_string();
    lab.exec(ns, "ip", &["link", "set", "vxlan0", "mtu", &mtu, "up"])?;
    lab.exec(
        ns,
        "ip",
        &["addr", "add", &format!("{addr}/24"), "dev", "vxlan0"],
    )?;
    Ok(())
}

impl Interop {
    pub(crate) fn status(&self, lab: &Lab) -> anyhow::Result<Status> {
        status(lab, self.p.tunsec)
    }

    /// Both sides' state, for error messages.
    pub(crate) fn describe(&self, lab: &Lab) -> String {
        let t = self
            .status(lab)
            .map_or_else(|e| format!("{e:#}"), |s| s.render());
        let s = self
            .charon
            .swanctl(&["--list-sas"])
            .unwrap_or_else(|e| format!("{e:#}"));
        format!("tunsecd:\n{t}\ncharon (swanctl --list-sas):\n{s}")
    }

    /// The Child SA pair that tunsecd sends on, once both sides have it
    /// installed and agree on the SPIs.
    pub(crate) fn current_pair(&self, lab: &Lab) -> anyhow::Result<Option<Pair>> {
        let st = self.status(lab)?;
        let ike = ike_of(&st)?;
        if ike.state != "established" {
            return Ok(None);
        }
        let sas = self.charon.list_sas()?;
        if !sas.established() {
            return Ok(None);
        }
        let (ins, outs) = (spi_of(&st, "in"), spi_of(&st, "out"));
        let [out] = outs[..] else {
            return Ok(None);
        };
        // charon's installed Child SA whose inbound SPI is tunsecd's
        // outbound one.
        Ok(sas
            .installed()
            .into_iter()
            .find(|c| c.spi_in == out && ins.contains(&c.spi_out))
            .map(|c| Pair {
                to_tunsec: c.spi_out,
                to_charon: c.spi_in,
            }))
    }

    /// Waits until both sides have one Child SA pair up; returns it.
    pub(crate) fn wait_up(&self, lab: &Lab, what: &str, timeout: Duration) -> anyhow::Result<Pair> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pair) = self.current_pair(lab)? {
                return Ok(pair);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: no Child SA on both sides within {} s\n{}",
                    timeout.as_secs(),
                    self.describe(lab)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// charon initiates (`swanctl --initiate`, which must complete) and
    /// tunsecd responds; returns the Child SA pair once both have it.
    pub(crate) fn charon_initiates(&self, lab: &Lab) -> anyhow::Result<Pair> {
        let out = self
            .charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "15"]);
        let out = out.with_context(|| self.describe(lab))?;
        ensure!(out.contains("initiate completed successfully"), "{out}");
        let pair = self.wait_up(lab, "charon initiating", Duration::from_secs(10))?;
        let ike = ike_of(&self.status(lab)?)?;
        ensure!(ike.role == "responder", "tunsecd's role: {ike:?}");
        Ok(pair)
    }

    /// The first failure tunsecd reports for charon (its status's last
    /// error), within 15 s.
    pub(crate) fn first_error(&self, lab: &Lab) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = ike_of(&self.status(lab)?)?.last_error {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!(
                    "tunsecd reports no failure within 15 s\n{}",
                    self.describe(lab)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Brings the first Child SA up: whoever has the lower address
    /// initiates (charon by `swanctl --initiate`); returns the pair.
    pub(crate) fn bring_up(&self, lab: &Lab) -> anyhow::Result<Pair> {
        if self.p.charon < self.p.tunsec {
            self.charon
                .swanctl(&["--initiate", "--child", CONN, "--timeout", "15"])
                .with_context(|| self.describe(lab))?;
        }
        self.wait_up(lab, "first Child SA", Duration::from_secs(15))
    }

    /// The tenant behind tunsecd, and a first ping through both ways.
    pub(crate) fn add_tenant(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        let tenant = add_tenant(lab, &self.t, self.p.tunsec, TAP)?;
        self.tenant = Some(tenant.clone());
        Ok(tenant)
    }

    pub(crate) fn tenant(&self) -> &str {
        self.tenant.as_deref().expect("add_tenant first")
    }

    /// Pings from the tenant to charon's vxlan0 and back, `count` each.
    pub(crate) fn ping_both_ways(&self, count: u32) -> anyhow::Result<()> {
        let to_s = ping(self.tenant(), &tenant_addr(self.p.charon), count)?;
        ensure!(
            to_s == count,
            "tenant -> vxlan0 ({}): {to_s} of {count} replies",
            tenant_addr(self.p.charon)
        );
        let to_t = ping(&self.s, &tenant_addr(self.p.tunsec), count)?;
        ensure!(
            to_t == count,
            "vxlan0 -> tenant ({}): {to_t} of {count} replies",
            tenant_addr(self.p.tunsec)
        );
        Ok(())
    }

    /// A short TCP transfer with iperf3 from the tenant to charon's host;
    /// returns the bytes received.
    pub(crate) fn iperf(&self, lab: &mut Lab) -> anyhow::Result<u64> {
        let client = self.iperf_start(lab, 2, false)?;
        Ok(self.iperf_finish(lab, client)?.received)
    }

    /// Starts an iperf3 server on charon's vxlan0 and a client in the
    /// tenant that sends for `secs` seconds (both ways with `bidir`).
    pub(crate) fn iperf_start(
        &self,
        lab: &mut Lab,
        secs: u32,
        bidir: bool,
    ) -> anyhow::Result<std::process::Child> {
        let server = tenant_addr(self.p.charon);
        lab.spawn(
            "iperf3-server",
            &self.s,
            Path::new("iperf3"),
            &["-s", "-1", "-B", &server],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let secs = secs.to_string();
        let mut args = vec![
            "-c",
            &server,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "5000",
        ];
        if bidir {
            args.push("--bidir");
        }
        Command::new("ip")
            .args(["netns", "exec", self.tenant(), "iperf3"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start iperf3")
    }

    pub(crate) fn iperf_finish(
        &self,
        lab: &mut Lab,
        client: std::process::Child,
    ) -> anyhow::Result<Iperf> {
        let server = tenant_addr(self.p.charon);
        let out = client.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "iperf3 to {server} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_str(&text).context("iperf3's JSON output")?;
        let end = &json["end"];
        let result = Iperf {
            received: end["sum_received"]["bytes"]
                .as_u64()
                .context("no end.sum_received.bytes in iperf3's output")?,
            received_back: end["sum_received_bidir_reverse"]["bytes"]
                .as_u64()
                .unwrap_or(0),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0)
                + end["sum_sent_bidir_reverse"]["retransmits"]
                    .as_u64()
                    .unwrap_or(0),
            mbps: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e6,
        };
        eprintln!(
            "  iperf3 tenant -> {server}: {} bytes there, {} back, {:.0} Mbit/s, {} TCP retransmits; \
             UDP receive buffer overflows: charon's host {}, tunsecd's host {}",
            result.received,
            result.received_back,
            result.mbps,
            result.retransmits,
            udp_rcvbuf_errors(&self.s),
            udp_rcvbuf_errors(&self.t)
        );
        ensure!(result.received > 0, "iperf3 moved no bytes");
        lab.stop("iperf3-server");
        Ok(result)
    }
}
