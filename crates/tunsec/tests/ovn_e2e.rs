//! End-to-end test of tunsecd under OVN (Debian's ovn-central and
//! ovn-host 23.03, openvswitch-switch 3.1): the IPsec of an OVN cloud,
//! with tunsecd in place of `ovs-monitor-ipsec` and strongSwan on every
//! chassis.
//!
//! The lab: the OVN northbound and southbound databases and
//! `ovn-northd`; chassis c1 to c4, each a namespace on the underlay
//! (192.0.2.N) with its own ovsdb-server (vswitch schema),
//! `ovn-controller` (system-id `chassis-N`, encapsulation vxlan) and
//! tunsecd in gateway mode with `[ovsdb]` and no `[[peer]]`. The
//! certificates of c1, c2 and c4 come from `tunsec pki`, c3's from
//! `ovs-pki`, each with CN = the system-id; every chassis trusts both
//! CAs. This kernel has no openvswitch module, so there is no
//! ovs-vswitchd: the data plane is a kernel vxlan device in external
//! (collect_md) mode, as OVS's kernel datapath uses for its vxlan vport,
//! with an encap route per tunnel row's `remote_ip` (tenant address
//! 10.42.0.N on chassis N). `ovn-controller` writes the tunnel rows with
//! no vswitchd running.
//!
//! `ovn_ipsec_across_chassis_joining_and_leaving` proves that:
//! - after `ovn-nbctl set nb_global . ipsec=true`, every pair of c1, c2
//!   and c3 has its IKE SA within 20 s (the time it took is printed);
//! - a TCP transfer from c1 to c2 (24 MiB, paced at 16 Mbit/s, SHA-256
//!   checked) loses nothing while c4 joins (its tunnels come up on every
//!   chassis with no restart) and c3 leaves (`ovn-sbctl chassis-del`: the
//!   others delete their SAs with it);
//! - the underlay capture holds no cleartext VXLAN between chassis while
//!   IPsec is on;
//! - `ipsec=false` takes protection down as the stock stack does: the
//!   rows lose `remote_name`, tunsecd deletes every IKE SA and removes
//!   its rules and guard entries, and the tenant traffic flows again, in
//!   the clear.
//!
//! It needs root, iproute2, nftables, ping, tshark (dumpcap), Debian's
//! openvswitch-switch, ovn-central and ovn-host; it fails, never skips,
//! when something is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::status::Status;
use tunsec_lab::Lab;

mod common;
use common::*;

const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/overlay_tool.py");
const PYTHON: &str = "/usr/bin/python3";
const VSWITCH: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
/// The kernel's vxlan device in external mode, as OVS names it.
const VXLAN_DEV: &str = "vxlan_sys_4789";
/// How long every chassis pair may take to have its IKE SA.
const UP_WITHIN: Duration = Duration::from_secs(20);
const TRANSFER_BYTES: usize = 24 << 20;

fn preflight() {
    require(
        "ovn_e2e tests",
        &[
            ("ovsdb-server", &["--version"], "openvswitch-switch"),
            ("ovs-vsctl", &["--version"], "openvswitch-switch"),
            ("ovs-pki", &["--version"], "openvswitch-common"),
            ("ovn-northd", &["--version"], "ovn-central"),
            ("ovn-nbctl", &["--version"], "ovn-central"),
            ("ovn-controller", &["--version"], "ovn-host"),
            ("test", &["-f", NB_SCHEMA], "ovn-central"),
            ("nft", &["--version"], "nftables"),
            ("dumpcap", &["-v"], "tshark"),
            ("tc", &["-V"], "iproute2"),
        ],
    );
}

fn tenant(n: u8) -> String {
    format!("10.42.0.{n}")
}

/// Runs `cmd args` and fails with its stderr unless it succeeds.
fn run_ok(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tunsec_lab::run(cmd, args)?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A new database for `schema` in `dir`, and its ovsdb-server
/// (`db.sock`) in namespace `ns`.
fn new_ovsdb(lab: &mut Lab, label: &str, ns: &str, dir: &Path, schema: &str) -> anyhow::Result<()> {
    create_ovsdb(dir, schema)?;
    start_ovsdb(lab, label, ns, dir)
}

/// The central part: NB and SB databases and ovn-northd.
struct Central {
    nb: String,
    sb: String,
}

impl Central {
    fn start(lab: &mut Lab, ns: &str) -> anyhow::Result<Self> {
        let dir = lab.dir.path().join("central");
        for (db, schema) in [("nb", NB_SCHEMA), ("sb", SB_SCHEMA)] {
            new_ovsdb(lab, &format!("ovn-{db}"), ns, &dir.join(db), schema)?;
        }
        let sock = |db: &str| format!("unix:{}", dir.join(db).join("db.sock").display());
        let c = Self {
            nb: sock("nb"),
            sb: sock("sb"),
        };
        c.nbctl(&["init"])?;
        let rundir = format!("OVN_RUNDIR={}", dir.display());
        let log = format!("--log-file={}", dir.join("northd.log").display());
        let ctl = format!("--unixctl={}", dir.join("northd.ctl").display());
        let (nb, sb) = (
            format!("--ovnnb-db={}", c.nb),
            format!("--ovnsb-db={}", c.sb),
        );
        lab.spawn(
            "ovn-northd",
            ns,
            Path::new("env"),
            &[&rundir, "ovn-northd", &nb, &sb, &log, &ctl],
        )?;
        Ok(c)
    }

    fn nbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", self.nb);
        let mut all = vec![db.as_str(), "--timeout=10"];
        all.extend_from_slice(args);
        run_ok("ovn-nbctl", &all)
    }

    fn sbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", self.sb);
        let mut all = vec![db.as_str(), "--timeout=10"];
        all.extend_from_slice(args);
        run_ok("ovn-sbctl", &all)
    }
}

/// One chassis.
struct Chassis {
    n: u8,
    ns: String,
    dir: PathBuf,
}

impl Chassis {
    fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db=unix:{}", self.dir.join("db.sock").display());
        let mut all = vec![db.as_str(), "--no-wait", "--timeout=10"];
        all.extend_from_slice(args);
        run_ok("ovs-vsctl", &all)
    }

    /// The `remote_ip`s of its vxlan tunnel rows.
    fn tunnel_remotes(&self) -> anyhow::Result<Vec<String>> {
        let out = self.vsctl(&[
            "--bare",
            "--columns=options",
            "find",
            "interface",
            "type=vxlan",
        ])?;
        Ok(out
            .split([',', ' ', '{', '}', '\n'])
            .filter_map(|kv| kv.strip_prefix("remote_ip="))
            .map(|v| v.trim_matches('"').to_owned())
            .collect())
    }
}

/// Chassis `n`: its namespace, database, certificates, ovn-controller,
/// tunsecd and vxlan device.
fn add_chassis(
    lab: &mut Lab,
    ul: &str,
    central: &Central,
    n: u8,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<Chassis> {
    let ns = add_host(lab, ul, &format!("c{n}"), n)?;
    let dir = lab.dir.path().join(format!("c{n}"));
    new_ovsdb(lab, &format!("ovsdb{n}"), &ns, &dir, VSWITCH)?;
    let c = Chassis { n, ns, dir };
    c.vsctl(&["init"])?;
    c.vsctl(&["add-br", "br-int"])?;
    c.vsctl(&[
        "set",
        "open_vswitch",
        ".",
        &format!("external_ids:system-id=chassis-{n}"),
        &format!("external_ids:ovn-remote={}", central.sb),
        "external_ids:ovn-encap-type=vxlan",
        &format!("external_ids:ovn-encap-ip={}", host_addr(n)),
        "external_ids:ovn-bridge=br-int",
        &format!("other_config:certificate={}", cert.display()),
        &format!("other_config:private_key={}", key.display()),
        &format!("other_config:ca_cert={}", ca.display()),
    ])?;
    let rundir = |v: &str| format!("{v}={}", c.dir.display());
    let (ovs_rundir, ovn_rundir) = (rundir("OVS_RUNDIR"), rundir("OVN_RUNDIR"));
    let db = format!("unix:{}", c.dir.join("db.sock").display());
    let log = format!("--log-file={}", c.dir.join("ovn-controller.log").display());
    lab.spawn(
        &format!("ovn-controller{n}"),
        &c.ns,
        Path::new("env"),
        &[&ovs_rundir, &ovn_rundir, "ovn-controller", &db, &log],
    )?;
    let config = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"chassis-{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\
             [gateway]\n[ovsdb]\nremote = \"{db}\"\n",
            host_addr(n),
            socket_path(lab, n).display()
        ),
    )?;
    start_tunsecd(lab, &c.ns, n, &config)?;
    let mtu = status(lab, n)?
        .gateway
        .context("no gateway status")?
        .tunnel_mtu_advice;
    lab.exec(
        &c.ns,
        "ip",
        &[
            "link", "add", VXLAN_DEV, "type", "vxlan", "external", "dstport", "4789",
        ],
    )?;
    let addr = format!("{}/32", tenant(n));
    lab.exec(&c.ns, "ip", &["addr", "add", &addr, "dev", VXLAN_DEV])?;
    lab.exec(
        &c.ns,
        "ip",
        &["link", "set", VXLAN_DEV, "mtu", &mtu.to_string(), "up"],
    )?;
    Ok(c)
}

/// The MAC address of chassis `c`'s vxlan device.
fn vxlan_mac(lab: &Lab, c: &Chassis) -> anyhow::Result<String> {
    let out = lab.exec(
        &c.ns,
        "cat",
        &[&format!("/sys/class/net/{VXLAN_DEV}/address")],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Encap routes (and neighbours) on every chassis for the `remote_ip`s
/// of its tunnel rows: the part of the data plane that ovs-vswitchd's
/// flows would be.
fn build_routes(lab: &Lab, all: &[&Chassis]) -> anyhow::Result<()> {
    for c in all {
        for remote in c.tunnel_remotes()? {
            let Some(peer) = all.iter().find(|p| host_addr(p.n) == remote) else {
                continue;
            };
            let to = format!("{}/32", tenant(peer.n));
            lab.exec(
                &c.ns,
                "ip",
                &[
                    "route", "replace", &to, "encap", "ip", "id", "42", "dst", &remote, "dev",
                    VXLAN_DEV,
                ],
            )?;
            let mac = vxlan_mac(lab, peer)?;
            lab.exec(
                &c.ns,
                "ip",
                &[
                    "neigh",
                    "replace",
                    &tenant(peer.n),
                    "lladdr",
                    &mac,
                    "dev",
                    VXLAN_DEV,
                    "nud",
                    "permanent",
                ],
            )?;
        }
    }
    Ok(())
}

/// Whether chassis `n` has an established IKE SA with a Child SA for
/// each of `peers` (by system-id in the tunnel's `remote_name`, which
/// the status shows as its auth).
fn up_with(s: &Status, peers: &[u8]) -> bool {
    let Some(o) = s.gateway.as_ref().and_then(|g| g.ovsdb.as_ref()) else {
        return false;
    };
    peers.iter().all(|p| {
        let auth = format!("certificate, CA-signed peer chassis-{p}");
        o.tunnels
            .iter()
            .any(|t| t.auth == auth && t.state == "established")
    })
}

/// Waits until every chassis of `ns` is up with every other.
fn wait_mesh(lab: &Lab, ns: &[u8], within: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = lab.wait_for("every chassis pair's IKE SA", within, || {
        ns.iter().all(|&n| {
            let others: Vec<u8> = ns.iter().copied().filter(|&o| o != n).collect();
            status(lab, n).is_ok_and(|s| up_with(&s, &others))
        })
    });
    if r.is_err() {
        for &n in ns {
            if let Ok(s) = status(lab, n) {
                eprintln!("{}", s.render());
            }
        }
    }
    r.map(|()| t.elapsed())
}

#[test]
fn ovn_ipsec_across_chassis_joining_and_leaving() {
    with_lab("ovn1", preflight, |lab| {
        let ul = add_underlay(lab)?;
        let central = Central::start(lab, &ul)?;

        // Certificates, CN = the system-id: tunsec pki for c1, c2 and c4,
        // ovs-pki for c3; one CA bundle with both CAs.
        let pki = lab.dir.path().join("pki");
        let pki_s = pki.to_string_lossy().into_owned();
        run_ok(
            TUNSEC,
            &["pki", "init-ca", "--name", "ovn test CA", "--out", &pki_s],
        )?;
        for n in [1, 2, 4] {
            let name = format!("chassis-{n}");
            let ca = pki.to_string_lossy().into_owned();
            run_ok(
                TUNSEC,
                &[
                    "pki", "issue", "--ca", &ca, "--name", &name, "--out", &pki_s,
                ],
            )?;
        }
        let opki = lab.dir.path().join("ovs-pki");
        let opki_s = opki.to_string_lossy().into_owned();
        run_ok("ovs-pki", &["-d", &opki_s, "init"])?;
        let req = std::process::Command::new("ovs-pki")
            .current_dir(&pki)
            .args(["-d", &opki_s, "-u", "req+sign", "chassis-3", "switch"])
            .output()?;
        ensure!(
            req.status.success(),
            "ovs-pki req+sign: {}",
            String::from_utf8_lossy(&req.stderr)
        );
        let bundle = pki.join("cas.pem");
        std::fs::write(
            &bundle,
            [
                std::fs::read(pki.join("ca.pem"))?,
                std::fs::read(opki.join("switchca/cacert.pem"))?,
            ]
            .concat(),
        )?;
        let cert_of = |n: u8| -> (PathBuf, PathBuf) {
            if n == 3 {
                (
                    pki.join("chassis-3-cert.pem"),
                    pki.join("chassis-3-privkey.pem"),
                )
            } else {
                (
                    pki.join(format!("chassis-{n}.pem")),
                    pki.join(format!("chassis-{n}.key")),
                )
            }
        };

        let mut chassis = Vec::new();
        for n in [1, 2, 3] {
            let (cert, key) = cert_of(n);
            chassis.push(add_chassis(lab, &ul, &central, n, &cert, &key, &bundle)?);
        }
        lab.wait_for("three chassis in the SB", Duration::from_secs(20), || {
            central
                .sbctl(&["--bare", "--columns=name", "list", "chassis"])
                .is_ok_and(|o| o.lines().filter(|l| !l.is_empty()).count() == 3)
        })?;

        // IPsec on.
        central.nbctl(&["set", "nb_global", ".", "ipsec=true"])?;
        let took = wait_mesh(lab, &[1, 2, 3], UP_WITHIN)?;
        eprintln!(
            "  ipsec=true: every pair of 3 chassis up in {:.1} s",
            took.as_secs_f64()
        );
        build_routes(lab, &chassis.iter().collect::<Vec<_>>())?;
        let pcap = start_capture(lab, &ul, "capture")?;
        ping_ok(&chassis[0].ns, &tenant(2))?;
        ping_ok(&chassis[0].ns, &tenant(3))?;
        ping_ok(&chassis[1].ns, &tenant(3))?;

        // A paced transfer c1 -> c2 that spans the join and the leave.
        lab.exec(
            &chassis[0].ns,
            "tc",
            &[
                "qdisc", "add", "dev", VXLAN_DEV, "root", "tbf", "rate", "16mbit", "burst", "32kb",
                "latency", "400ms",
            ],
        )?;
        let sent = lab.dir.path().join("sent.bin");
        let received = lab.dir.path().join("received.bin");
        let ready = lab.dir.path().join("ready");
        std::fs::write(
            &sent,
            (0..TRANSFER_BYTES)
                .map(|i| (i * 7 + i / 4096) as u8)
                .collect::<Vec<_>>(),
        )?;
        let (received_s, ready_s, sent_s) = (
            received.to_string_lossy().into_owned(),
            ready.to_string_lossy().into_owned(),
            sent.to_string_lossy().into_owned(),
        );
        lab.spawn(
            "server",
            &chassis[1].ns,
            Path::new(PYTHON),
            &[TOOL, "server", &tenant(2), "5001", &received_s, &ready_s],
        )?;
        lab.wait_for("the TCP server", Duration::from_secs(10), || ready.exists())?;
        lab.spawn(
            "client",
            &chassis[0].ns,
            Path::new(PYTHON),
            &[TOOL, "client", &tenant(2), "5001", &sent_s],
        )?;
        let transfer_started = Instant::now();

        // c4 joins (the time counts from its namespace's creation).
        let joined = Instant::now();
        let (cert, key) = cert_of(4);
        chassis.push(add_chassis(lab, &ul, &central, 4, &cert, &key, &bundle)?);
        wait_mesh(lab, &[1, 2, 3, 4], UP_WITHIN)?;
        eprintln!(
            "  chassis-4 joined: every pair of 4 up {:.1} s after it started",
            joined.elapsed().as_secs_f64()
        );
        build_routes(lab, &chassis.iter().collect::<Vec<_>>())?;
        ping_ok(&chassis[3].ns, &tenant(1))?;

        // c3 leaves.
        lab.stop("ovn-controller3");
        central.sbctl(&["chassis-del", "chassis-3"])?;
        lab.wait_for(
            "the others to drop chassis-3",
            Duration::from_secs(15),
            || {
                [1u8, 2, 4].iter().all(|&n| {
                    status(lab, n).is_ok_and(|s| s.peers.iter().all(|p| p.underlay != host_addr(3)))
                })
            },
        )?;
        lab.wait_for(
            "chassis-3 to see the DELETEs",
            Duration::from_secs(5),
            || status(lab, 3).is_ok_and(|s| s.peers.iter().all(|p| p.sas.is_empty())),
        )?;
        wait_mesh(lab, &[1, 2, 4], Duration::from_secs(5))?;

        lab.wait_for("the transfer", Duration::from_secs(60), || {
            std::fs::metadata(&received).is_ok_and(|m| m.len() == TRANSFER_BYTES as u64)
        })?;
        eprintln!(
            "  transfer of {} MiB across the join and the leave: {:.1} s",
            TRANSFER_BYTES >> 20,
            transfer_started.elapsed().as_secs_f64()
        );
        ensure!(
            std::fs::read(&received)? == std::fs::read(&sent)?,
            "the transfer arrived changed"
        );
        stop_capture(lab, "capture");
        let clear: Vec<Frame> = frames(&pcap)?
            .into_iter()
            .filter(|f| f.vni.is_some())
            .collect();
        ensure!(
            clear.is_empty(),
            "{} cleartext VXLAN frames while IPsec was on:{}",
            clear.len(),
            describe(&clear.iter().collect::<Vec<_>>())
        );

        // IPsec off: as with the stock stack, the tunnels are no longer
        // protected and the tenant traffic flows in the clear.
        central.nbctl(&["set", "nb_global", ".", "ipsec=false"])?;
        lab.wait_for(
            "every chassis to drop its peers",
            Duration::from_secs(15),
            || {
                [1u8, 2, 4]
                    .iter()
                    .all(|&n| status(lab, n).is_ok_and(|s| s.peers.is_empty()))
            },
        )?;
        let pcap = start_capture(lab, &ul, "capture-off")?;
        ping_ok(&chassis[0].ns, &tenant(2))?;
        stop_capture(lab, "capture-off");
        let clear = frames(&pcap)?
            .into_iter()
            .filter(|f| f.vni == Some(42))
            .count();
        ensure!(clear > 0, "no cleartext VXLAN after ipsec=false");
        Ok(())
    });
}
