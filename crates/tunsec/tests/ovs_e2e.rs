//! End-to-end tests of `tunsecd` as the IPsec backend of Open vSwitch:
//! gateway mode with `[ovsdb]`, driven by the tunnel interfaces of a real
//! `ovsdb-server` (Debian's openvswitch-switch 3.1, vswitch schema),
//! written with `ovs-vsctl --no-wait` as an operator (or OVN) writes them.
//!
//! Each host namespace has its own ovsdb-server (its socket in the lab's
//! directory) and its own tunsecd, whose configuration has no `[[peer]]`
//! at all: every peer comes from the database. The data plane is a kernel
//! vxlan device per host (this kernel has no openvswitch module, so no
//! ovs-vswitchd; the tunnel rows need none to exist). They prove that:
//!
//! - `ovs_psk_tunnel_lifecycle`: a vxlan interface with `options:psk`
//!   brings the tunnel up (IKE SA, Child SA, pings over vxlan, the
//!   underlay capture holds IKE and ESP and no cleartext VXLAN); `tunsec
//!   status` lists the interface (`vxlan`, remote, `psk`, `established`);
//!   an invalid row (`remote_cert` with no `certificate`) is reported with
//!   the option at fault and touches no other tunnel; ovsdb-server
//!   stopped and started again leaves the SAs as they were, and the
//!   client resyncs; a new PSK on both sides re-authenticates that peer
//!   (a new IKE SA) while pings go on; deleting the interface deletes the
//!   SAs (the peer sees the DELETE) and the steering rules and guard
//!   entries. A second peer (h3, a GRE tunnel with its own PSK) keeps its
//!   IKE SA through all of it; a row without `remote_ip` is reported too.
//!
//! - `ovs_certificate_tunnels`: the same tunnel with self-signed
//!   certificates pinned by `remote_cert`, then with CA-signed ones
//!   (`ca_cert`, `remote_name`), all from `tunsec pki`: each comes up,
//!   pings cross, no cleartext VXLAN on the underlay; deleting the
//!   interface removes its SAs and rules.
//!
//! - `ovs_garbage_on_the_database_socket`: a fake server that answers
//!   with garbage (random bytes, broken JSON, an unknown reply, an 8 MiB
//!   string) is refused five times over without a crash; tunsecd's
//!   status says why; the real server at the same path is then taken up.
//!
//! They need root, iproute2, nftables, ping, tshark (dumpcap) and
//! Debian's openvswitch-switch; they fail, never skip, when something is
//! missing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tunsec::status::{OvsTunnelStatus, Status};
use tunsec_lab::Lab;

mod common;
use common::*;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
/// The steering rules' priorities (the gateway defaults).
const PRIORITY: u32 = 29_000;
/// The VXLAN address of host `n`'s vxlan device.
fn vxlan_addr(n: u8) -> String {
    format!("10.42.0.{n}")
}

fn preflight() {
    require(
        "ovs_e2e tests",
        &[
            ("ovsdb-server", &["--version"], "openvswitch-switch"),
            ("ovs-vsctl", &["--version"], "openvswitch-switch"),
            ("test", &["-f", SCHEMA], "openvswitch-switch"),
            ("nft", &["--version"], "nftables"),
            ("dumpcap", &["-v"], "tshark"),
        ],
    );
}

fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

/// Host `n`'s OVS database directory.
fn db_dir(lab: &Lab, n: u8) -> PathBuf {
    lab.dir.path().join(format!("ovs{n}"))
}

/// Creates host `n`'s database (vswitch schema) and starts its
/// ovsdb-server in namespace `ns`.
fn create_db(lab: &mut Lab, ns: &str, n: u8) -> anyhow::Result<()> {
    create_ovsdb(&db_dir(lab, n), SCHEMA)?;
    start_db(lab, ns, n)?;
    vsctl(lab, n, &["init"])?;
    vsctl(lab, n, &["add-br", "br-int"])?;
    Ok(())
}

/// Starts (again) host `n`'s ovsdb-server.
fn start_db(lab: &mut Lab, ns: &str, n: u8) -> anyhow::Result<()> {
    let dir = db_dir(lab, n);
    start_ovsdb(lab, &format!("ovsdb{n}"), ns, &dir)
}

/// `ovs-vsctl --no-wait` on host `n`'s database.
fn vsctl(lab: &Lab, n: u8, args: &[&str]) -> anyhow::Result<String> {
    let db = format!("--db=unix:{}", db_dir(lab, n).join("db.sock").display());
    let mut all = vec![db.as_str(), "--no-wait", "--timeout=10"];
    all.extend_from_slice(args);
    let out = tunsec_lab::run("ovs-vsctl", &all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds tunnel interface `name` of type `kind` with `options`
/// (`options:KEY=VALUE`) to host `n`'s `br-int`, as an operator does.
fn add_tunnel(lab: &Lab, n: u8, name: &str, kind: &str, options: &[&str]) -> anyhow::Result<()> {
    let kind = format!("type={kind}");
    let mut args = vec![
        "add-port",
        "br-int",
        name,
        "--",
        "set",
        "interface",
        name,
        &kind,
    ];
    args.extend_from_slice(options);
    vsctl(lab, n, &args)?;
    Ok(())
}

/// Host `n`'s configuration: gateway mode, the database of host `n`, no
/// peers.
fn write_config(lab: &Lab, n: u8) -> anyhow::Result<PathBuf> {
    let text = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\
         [gateway]\ntunnel_devices = [\"vxlan0\"]\n\
         [ovsdb]\nremote = \"unix:{}\"\nunixctl = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display(),
        db_dir(lab, n).join("db.sock").display(),
        unixctl_path(lab, n).display()
    );
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Where host `n`'s tunsecd answers `ovs-appctl`.
fn unixctl_path(lab: &Lab, n: u8) -> PathBuf {
    lab.dir.path().join(format!("h{n}-ipsec.ctl"))
}

/// `ovs-appctl -t <host n's unixctl socket> ARGS`.
fn appctl(lab: &Lab, n: u8, args: &[&str]) -> anyhow::Result<String> {
    let target = unixctl_path(lab, n).to_string_lossy().into_owned();
    let mut all = vec!["-t", target.as_str()];
    all.extend_from_slice(args);
    let out = tunsec_lab::run("ovs-appctl", &all)?;
    ensure!(
        out.status.success(),
        "ovs-appctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A kernel vxlan device on host `n` towards `peer`, at `mtu`.
fn add_vxlan(lab: &Lab, ns: &str, n: u8, peer: u8, mtu: u16) -> anyhow::Result<()> {
    let (local, remote) = (host_addr(n), host_addr(peer));
    lab.exec(
        ns,
        "ip",
        &[
            "link", "add", "vxlan0", "type", "vxlan", "id", "42", "remote", &remote, "local",
            &local, "dstport", "4789",
        ],
    )?;
    lab.exec(
        ns,
        "ip",
        &["link", "set", "vxlan0", "mtu", &mtu.to_string()],
    )?;
    let cidr = format!("{}/24", vxlan_addr(n));
    lab.exec(ns, "ip", &["addr", "add", &cidr, "dev", "vxlan0"])?;
    lab.exec(ns, "ip", &["link", "set", "vxlan0", "up"])?;
    Ok(())
}

/// The OVSDB tunnel `name` in host `n`'s status.
fn ovs_tunnel(s: &Status, name: &str) -> Option<OvsTunnelStatus> {
    s.gateway
        .as_ref()?
        .ovsdb
        .as_ref()?
        .tunnels
        .iter()
        .find(|t| t.name == name)
        .cloned()
}

/// Waits until tunnel `name` is `established` on host `n`.
fn wait_established(lab: &Lab, n: u8, name: &str) -> anyhow::Result<()> {
    let r = lab.wait_for(
        &format!("h{n}'s tunnel {name} to be established"),
        Duration::from_secs(20),
        || {
            status(lab, n)
                .ok()
                .and_then(|s| ovs_tunnel(&s, name))
                .is_some_and(|t| t.state == "established")
        },
    );
    if r.is_err() {
        if let Ok(s) = status(lab, n) {
            eprintln!("{}", s.render());
        }
    }
    r
}

/// The IKE SPIs of host `n`'s peer `name`, when established.
fn ike_spis(lab: &Lab, n: u8, name: &str) -> anyhow::Result<Option<(String, String)>> {
    let s = status(lab, n)?;
    Ok(s.peers
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.ike.as_ref())
        .filter(|i| i.state == "established")
        .and_then(|i| i.spi_i.clone().zip(i.spi_r.clone())))
}

/// tunsecd's steering rules in `ns` (the bypass rule and the peers').
fn rule_count(ns: &str) -> anyhow::Result<usize> {
    let rules = exec_output(ns, "ip", &["rule"])?;
    Ok(String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{PRIORITY}:")) || l.starts_with(&format!("{}:", PRIORITY + 1))
        })
        .count())
}

/// Lines of the guard in `ns` that name `addr`.
fn guard_lines(ns: &str, addr: &str) -> anyhow::Result<usize> {
    let out = exec_output(ns, "nft", &["list", "table", "inet", "tunsec_gw"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(addr))
        .count())
}

#[test]
fn ovs_psk_tunnel_lifecycle() {
    with_lab("ovs1", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        create_db(lab, &h1, 1)?;
        create_db(lab, &h2, 2)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        for (n, ns) in [(1, &h1), (2, &h2)] {
            let config = write_config(lab, n)?;
            start_tunsecd(lab, ns, n, &config)?;
        }
        let advice = status(lab, 1)?
            .gateway
            .context("no gateway status")?
            .tunnel_mtu_advice;
        add_vxlan(lab, &h1, 1, 2, advice)?;
        add_vxlan(lab, &h2, 2, 1, advice)?;
        // No tunnel row yet: tunsecd protects nothing, and the vxlan
        // devices talk in the clear (as before IPsec was turned on); the
        // capture is checked from the first protected moment on.
        ensure!(rule_count(&h1)? <= 1, "rules on h1 without any tunnel");

        // The operator adds the tunnels, as OVS's IPsec tutorial does.
        for (n, peer) in [(1, 2), (2, 1)] {
            add_tunnel(
                lab,
                n,
                "tun0",
                "vxlan",
                &[
                    &format!("options:remote_ip={}", host_addr(peer)),
                    "options:psk=swordfish",
                ],
            )?;
        }
        wait_established(lab, 1, "tun0")?;
        wait_established(lab, 2, "tun0")?;
        let t = ovs_tunnel(&status(lab, 1)?, "tun0").context("no tun0")?;
        ensure!(
            (t.kind.as_str(), t.remote.as_str(), t.auth.as_str()) == ("vxlan", "192.0.2.2", "psk"),
            "{t:?}"
        );
        let since_protected = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        ping_ok(&h1, &vxlan_addr(2))?;
        ping_ok(&h2, &vxlan_addr(1))?;
        let before = ike_spis(lab, 1, "tun0")?.context("no IKE SA on h1")?;

        // A second peer, h3, over GRE (IP protocol 47) with its own PSK:
        // the changes to tun0 below must leave it alone.
        let h3 = add_host(lab, &ul, "h3", 3)?;
        create_db(lab, &h3, 3)?;
        let config = write_config(lab, 3)?;
        start_tunsecd(lab, &h3, 3, &config)?;
        for (n, peer, name) in [(1u8, 3u8, "tun3"), (3, 1, "tun0")] {
            add_tunnel(
                lab,
                n,
                name,
                "gre",
                &[
                    &format!("options:remote_ip={}", host_addr(peer)),
                    "options:psk=another-key-for-gre",
                ],
            )?;
        }
        wait_established(lab, 1, "tun3")?;
        wait_established(lab, 3, "tun0")?;
        let gre = ike_spis(lab, 1, "tun3")?.context("no IKE SA with h3")?;

        // An invalid row: reported, and no other tunnel is touched.
        add_tunnel(
            lab,
            1,
            "tun1",
            "vxlan",
            &[
                "options:remote_ip=192.0.2.3",
                "options:remote_cert=/nonexistent/h3.pem",
            ],
        )?;
        // And one without remote_ip.
        add_tunnel(lab, 1, "tun2", "vxlan", &["options:psk=swordfish"])?;
        lab.wait_for(
            "tun1 and tun2 to be reported",
            Duration::from_secs(5),
            || {
                status(lab, 1).is_ok_and(|s| {
                    ["tun1", "tun2"]
                        .iter()
                        .all(|n| ovs_tunnel(&s, n).is_some_and(|t| t.state == "invalid"))
                })
            },
        )?;
        let s1 = status(lab, 1)?;
        let t1 = ovs_tunnel(&s1, "tun1").context("no tun1")?;
        let reason = t1.reason.clone().unwrap_or_default();
        ensure!(reason.contains("certificate"), "tun1: {t1:?}");
        let t2 = ovs_tunnel(&s1, "tun2").context("no tun2")?;
        ensure!(
            t2.reason
                .as_deref()
                .is_some_and(|r| r.contains("remote_ip")),
            "tun2: {t2:?}"
        );
        ensure!(s1.render().contains("tun1"), "{}", s1.render());
        // What operators' scripts read, through OVS's own ovs-appctl.
        let show = appctl(lab, 1, &["tunnels/show"])?;
        eprintln!("  ovs-appctl tunnels/show:\n{show}");
        ensure!(
            show.contains("Interface name: tun0 v1 (ESTABLISHED)")
                && show.contains("Interface name: tun1 v1 (INVALID: ")
                && show.contains("  Remote IP:      192.0.2.2")
                && show.contains("  PSK:            <redacted>")
                && !show.contains("swordfish"),
            "{show}"
        );
        ensure!(
            ike_spis(lab, 1, "tun0")? == Some(before.clone()),
            "the invalid row changed tun0's IKE SA"
        );
        vsctl(lab, 1, &["del-port", "br-int", "tun1"])?;
        vsctl(lab, 1, &["del-port", "br-int", "tun2"])?;

        // The database goes away and comes back: the SAs stay, and the
        // client resyncs.
        lab.stop("ovsdb2");
        lab.wait_for("h2 to see the database go", Duration::from_secs(5), || {
            status(lab, 2)
                .ok()
                .and_then(|s| s.gateway?.ovsdb)
                .is_some_and(|o| !o.connected)
        })?;
        ping_ok(&h1, &vxlan_addr(2))?;
        let updates = status(lab, 2)?
            .gateway
            .and_then(|g| g.ovsdb)
            .context("no ovsdb status")?
            .updates;
        start_db(lab, &h2, 2)?;
        lab.wait_for("h2 to reconnect", Duration::from_secs(15), || {
            status(lab, 2)
                .ok()
                .and_then(|s| s.gateway?.ovsdb)
                .is_some_and(|o| o.connected)
        })?;
        ensure!(
            ike_spis(lab, 1, "tun0")? == Some(before.clone()),
            "the database's restart changed tun0's IKE SA"
        );
        let o2 = status(lab, 2)?
            .gateway
            .and_then(|g| g.ovsdb)
            .context("no ovsdb")?;
        ensure!(
            o2.updates == updates,
            "a resync of the same rows reconfigured the tunnels: {} -> {}",
            updates,
            o2.updates
        );

        // A new PSK on both sides: that peer is re-authenticated, under
        // pings.
        let pinger = pings(&h1, &vxlan_addr(2), 100)?;
        for n in [1, 2] {
            vsctl(
                lab,
                n,
                &["set", "interface", "tun0", "options:psk=another-swordfish"],
            )?;
        }
        let mut after = None;
        lab.wait_for("a new IKE SA for tun0", Duration::from_secs(15), || {
            after = ike_spis(lab, 1, "tun0")
                .ok()
                .flatten()
                .filter(|s| *s != before);
            after.is_some()
        })?;
        wait_established(lab, 1, "tun0")?;
        let received = pings_received(pinger)?;
        eprintln!(
            "  IKE SA {before:?} -> {after:?}; pings across the PSK change: {received} of 100"
        );
        ensure!(
            received == 100,
            "{} pings lost across the PSK change",
            100 - received
        );
        ensure!(
            ike_spis(lab, 1, "tun3")? == Some(gre.clone()),
            "tun0's new PSK changed tun3's IKE SA"
        );

        // The interface deleted on h1: its SAs go (h2 sees the DELETE),
        // and so do its rules and guard entries.
        ensure!(
            rule_count(&h1)? == 4,
            "rules on h1 with tun0 and tun3: want 1 + 2 + 1"
        );
        ensure!(guard_lines(&h1, &host_addr(2))? > 0, "h2 not in h1's guard");
        vsctl(lab, 1, &["del-port", "br-int", "tun0"])?;
        lab.wait_for("h1 to remove tun0", Duration::from_secs(5), || {
            status(lab, 1).is_ok_and(|s| s.peers.iter().all(|p| p.name != "tun0"))
        })?;
        ensure!(
            ike_spis(lab, 1, "tun3")? == Some(gre.clone()),
            "deleting tun0 changed tun3's IKE SA"
        );
        lab.wait_for("h2 to see the DELETE", Duration::from_secs(5), || {
            status(lab, 2).is_ok_and(|s| {
                s.peers.iter().all(|p| {
                    p.sas.is_empty() && p.ike.as_ref().is_none_or(|i| i.state != "established")
                })
            })
        })?;
        ensure!(
            rule_count(&h1)? == 2,
            "tun0's rules stay on h1 (want 1 + tun3's 1)"
        );
        ensure!(
            guard_lines(&h1, &host_addr(2))? == 0,
            "h2 stays in h1's guard"
        );

        stop_capture(lab, "capture");
        let clear: Vec<Frame> = frames(&pcap)?
            .into_iter()
            .filter(|f| f.time > since_protected && f.time < since_protected + 1e9)
            .filter(|f| f.vni.is_some())
            .collect();
        // After tun0 went from h1, h2 still protects its side (its row is
        // there): nothing of VNI 42 left in the clear from the moment both
        // were up.
        if !clear.is_empty() {
            bail!(
                "{} cleartext VXLAN frames:{}",
                clear.len(),
                describe(&clear.iter().collect::<Vec<_>>())
            );
        }
        Ok(())
    });
}

/// `tunsec pki` with `args`, into the lab's `pki` directory.
fn pki(lab: &Lab, args: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = lab.dir.path().join("pki");
    std::fs::create_dir_all(&dir)?;
    let dir_s = dir.to_string_lossy().into_owned();
    let mut all = vec!["pki"];
    all.extend_from_slice(args);
    all.extend(["--out", &dir_s]);
    let out = tunsec_lab::run(TUNSEC, &all)?;
    ensure!(
        out.status.success(),
        "tunsec pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir)
}

/// Host `n`'s tunnel `name` to `peer`, with `options`, replacing what is
/// there.
fn set_tunnel(lab: &Lab, n: u8, peer: u8, name: &str, options: &[String]) -> anyhow::Result<()> {
    let _ = vsctl(lab, n, &["--if-exists", "del-port", "br-int", name]);
    let remote = format!("options:remote_ip={}", host_addr(peer));
    let mut all = vec![remote.as_str()];
    all.extend(options.iter().map(String::as_str));
    add_tunnel(lab, n, name, "vxlan", &all)
}

/// The tunnels of the OVS contract with certificates, as OVS's IPsec
/// tutorial sets them up: first self-signed certificates pinned by
/// `remote_cert`, then CA-signed ones with `ca_cert` and `remote_name`
/// (the peer's CN). Each time the tunnel comes up, pings cross, and the
/// capture holds no cleartext VXLAN; then deleting the interface removes
/// its SAs and rules.
#[test]
fn ovs_certificate_tunnels() {
    with_lab("ovs2", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        create_db(lab, &h1, 1)?;
        create_db(lab, &h2, 2)?;
        for (n, ns) in [(1, &h1), (2, &h2)] {
            let config = write_config(lab, n)?;
            start_tunsecd(lab, ns, n, &config)?;
        }
        let advice = status(lab, 1)?
            .gateway
            .context("no gateway status")?
            .tunnel_mtu_advice;
        add_vxlan(lab, &h1, 1, 2, advice)?;
        add_vxlan(lab, &h2, 2, 1, advice)?;
        let dir = pki(lab, &["init-ca", "--name", "ovs test CA"])?;
        for n in [1, 2] {
            pki(lab, &["self-signed", "--name", &format!("h{n}-self")])?;
            pki(
                lab,
                &[
                    "issue",
                    "--ca",
                    &dir.to_string_lossy(),
                    "--name",
                    &format!("h{n}"),
                ],
            )?;
        }
        let file = |f: &str| dir.join(f).to_string_lossy().into_owned();

        // Self-signed, pinned: other_config's certificate and key, the
        // peer's certificate in options:remote_cert.
        let pcap = start_capture(lab, &ul, "capture")?;
        for (n, peer) in [(1u8, 2u8), (2, 1)] {
            vsctl(
                lab,
                n,
                &[
                    "set",
                    "Open_vSwitch",
                    ".",
                    &format!(
                        "other_config:certificate={}",
                        file(&format!("h{n}-self.pem"))
                    ),
                    &format!(
                        "other_config:private_key={}",
                        file(&format!("h{n}-self.key"))
                    ),
                ],
            )?;
            set_tunnel(
                lab,
                n,
                peer,
                "tun0",
                &[
                    format!("options:remote_cert={}", file(&format!("h{peer}-self.pem"))),
                    format!("options:remote_name=h{peer}-self"),
                ],
            )?;
        }
        wait_established(lab, 1, "tun0")?;
        wait_established(lab, 2, "tun0")?;
        let t = ovs_tunnel(&status(lab, 1)?, "tun0").context("no tun0")?;
        ensure!(t.auth == "certificate, pinned peer", "{t:?}");
        ping_ok(&h1, &vxlan_addr(2))?;
        let pinned = ike_spis(lab, 1, "tun0")?.context("no IKE SA")?;

        // CA-signed: ca_cert, and the peer named by remote_name (its CN).
        // The switch renews the peer: a new IKE SA with certificates from
        // the CA.
        for (n, peer) in [(1u8, 2u8), (2, 1)] {
            vsctl(
                lab,
                n,
                &[
                    "set",
                    "Open_vSwitch",
                    ".",
                    &format!("other_config:certificate={}", file(&format!("h{n}.pem"))),
                    &format!("other_config:private_key={}", file(&format!("h{n}.key"))),
                    &format!("other_config:ca_cert={}", file("ca.pem")),
                ],
            )?;
            set_tunnel(
                lab,
                n,
                peer,
                "tun0",
                &[format!("options:remote_name=h{peer}")],
            )?;
        }
        lab.wait_for("a CA-signed IKE SA", Duration::from_secs(20), || {
            status(lab, 1)
                .ok()
                .and_then(|s| ovs_tunnel(&s, "tun0"))
                .is_some_and(|t| {
                    t.auth == "certificate, CA-signed peer h2" && t.state == "established"
                })
                && ike_spis(lab, 1, "tun0")
                    .ok()
                    .flatten()
                    .is_some_and(|s| s != pinned)
        })?;
        wait_established(lab, 2, "tun0")?;
        ping_ok(&h1, &vxlan_addr(2))?;
        ping_ok(&h2, &vxlan_addr(1))?;

        // Deleted: SAs and rules go on h1, and h2 sees the DELETE.
        vsctl(lab, 1, &["del-port", "br-int", "tun0"])?;
        lab.wait_for("h1 to remove tun0", Duration::from_secs(5), || {
            status(lab, 1).is_ok_and(|s| s.peers.is_empty())
        })?;
        ensure!(rule_count(&h1)? <= 1, "tun0's rules stay on h1");
        lab.wait_for("h2 to see the DELETE", Duration::from_secs(5), || {
            status(lab, 2).is_ok_and(|s| s.peers.iter().all(|p| p.sas.is_empty()))
        })?;
        stop_capture(lab, "capture");
        let clear: Vec<Frame> = frames(&pcap)?
            .into_iter()
            .filter(|f| f.vni.is_some())
            .collect();
        ensure!(
            clear.is_empty(),
            "{} cleartext VXLAN frames:{}",
            clear.len(),
            describe(&clear.iter().collect::<Vec<_>>())
        );
        Ok(())
    });
}

/// Garbage on the OVSDB socket: a fake server at the remote's path
/// answers every connection with bytes that are no JSON-RPC (random bytes,
/// broken JSON, an unknown reply, a huge string). tunsecd refuses each,
/// says why in its status, keeps serving and keeps reconnecting; once the
/// real ovsdb-server is at that path it resyncs and configures the
/// tunnel there.
#[test]
fn ovs_garbage_on_the_database_socket() {
    with_lab("ovs3", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let dir = db_dir(lab, 1);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("db.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock)?;
        listener.set_nonblocking(true)?;
        let garbage: Vec<Vec<u8>> = vec![
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            b"{\"id\": 0, \"result\": [1, 2, {\"unterminated\": ".to_vec(),
            b"{\"id\": 12345, \"result\": \"not a schema\", \"error\": null}".to_vec(),
            [b"\"".as_slice(), &vec![b'x'; 8 << 20]].concat(),
            b"]]]]}}}}".to_vec(),
        ];
        let config = write_config(lab, 1)?;
        start_tunsecd(lab, &h1, 1, &config)?;
        // Serve each kind of garbage to a connection of tunsecd's.
        let mut served = 0;
        let t = std::time::Instant::now();
        while served < garbage.len() && t.elapsed() < Duration::from_secs(60) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    use std::io::Write as _;
                    let _ = conn.write_all(&garbage[served]);
                    served += 1;
                    // Let tunsecd read it before the connection closes.
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        ensure!(
            served == garbage.len(),
            "tunsecd reconnected {served} times"
        );
        let s = status(lab, 1)?;
        let o = s.gateway.and_then(|g| g.ovsdb).context("no ovsdb status")?;
        eprintln!("  after the garbage: {o:?}");
        ensure!(!o.connected && o.last_error.is_some(), "{o:?}");
        ensure!(o.tunnels.is_empty(), "garbage made tunnels: {o:?}");

        // The real server at the same path: resync and a tunnel.
        drop(listener);
        std::fs::remove_file(&sock)?;
        create_db(lab, &h1, 1)?;
        add_tunnel(
            lab,
            1,
            "tun0",
            "vxlan",
            &["options:remote_ip=192.0.2.2", "options:psk=swordfish"],
        )?;
        lab.wait_for("tunsecd to configure tun0", Duration::from_secs(20), || {
            status(lab, 1)
                .ok()
                .and_then(|s| ovs_tunnel(&s, "tun0"))
                .is_some_and(|t| t.state == "configured")
        })?;
        Ok(())
    });
}
