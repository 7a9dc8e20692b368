//! The labs of `tunsec bench`: hosts and tenants in namespaces, and each
//! case's tunnel between them (veth, kernel vxlan, tunsecd in overlay or
//! gateway mode with manual keys).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tunsec::config::Config;
use tunsec::control::{self, Request, Response};
use tunsec_esp::Suite;
use tunsec_lab::Lab;

use super::*;

/// Hosts `h1` and `h2`, joined by a veth pair (`eth0` on both) with the
/// underlay addresses and the underlay MTU `mtu`.
pub(super) fn add_hosts(lab: &mut Lab, mtu: u16) -> anyhow::Result<[String; 2]> {
    let h1 = lab.add_ns("h1")?;
    let h2 = lab.add_ns("h2")?;
    lab.veth(&h1, "eth0", &h2, "eth0")?;
    for (h, addr) in [(&h1, HOST_ADDR[0]), (&h2, HOST_ADDR[1])] {
        lab.exec(h, "ip", &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        lab.exec(
            h,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
    }
    Ok([h1, h2])
}

/// Tenant `t<n>` behind bridge `br-t` of `host`, which also holds `dev`
/// (the TAP or vxlan device). The tenant's interface and its veth peer get
/// `mtu`.
fn add_tenant(lab: &mut Lab, host: &str, n: usize, dev: &str, mtu: u16) -> anyhow::Result<String> {
    let t = lab.add_ns(&format!("t{n}"))?;
    let mtu = mtu.to_string();
    lab.add_bridge(host, "br-t")?;
    lab.veth(host, "vt", &t, "eth0")?;
    lab.exec(host, "ip", &["link", "set", "vt", "mtu", &mtu])?;
    lab.exec(&t, "ip", &["link", "set", "eth0", "mtu", &mtu])?;
    lab.exec(host, "ip", &["link", "set", "vt", "master", "br-t"])?;
    lab.wait_for(&format!("{dev} in {host}"), Duration::from_secs(10), || {
        lab.try_exec(host, "ip", &["link", "show", dev])
    })?;
    lab.exec(host, "ip", &["link", "set", dev, "master", "br-t"])?;
    lab.exec(
        &t,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", TENANT_ADDR[n - 1]),
            "dev",
            "eth0",
        ],
    )?;
    Ok(t)
}

fn tenant_endpoints(tenants: [String; 2], mtu: u16) -> Endpoints {
    let [client_ns, server_ns] = tenants;
    Endpoints {
        client_ns,
        server_ns,
        client_ip: TENANT_ADDR[0],
        server_ip: TENANT_ADDR[1],
        mtu,
        daemon: None,
        daemon_labels: Vec::new(),
        hosts: Vec::new(),
        control_sockets: Vec::new(),
        files: Vec::new(),
        networks: None,
    }
}

pub(super) fn setup_veth(lab: &mut Lab, mtu: u16) -> anyhow::Result<Endpoints> {
    let t1 = lab.add_ns("t1")?;
    let t2 = lab.add_ns("t2")?;
    lab.veth(&t1, "eth0", &t2, "eth0")?;
    for (t, addr) in [(&t1, TENANT_ADDR[0]), (&t2, TENANT_ADDR[1])] {
        lab.exec(t, "ip", &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        lab.exec(
            t,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
    }
    Ok(tenant_endpoints([t1, t2], mtu))
}

pub(super) fn setup_kernel_vxlan(
    lab: &mut Lab,
    mtu: u16,
    underlay_mtu: u16,
) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab, underlay_mtu)?;
    let mut ep = vxlan_tenants(lab, &hosts, mtu, true)?;
    ep.hosts = hosts.to_vec();
    Ok(ep)
}

/// On each host a kernel vxlan device `vx0` (VNI 100, UDP 4789, to the
/// other host) with `mtu`, bridged to a tenant; bound to `eth0` with
/// `bound` (gateway mode needs it unbound: a route lookup with a fixed
/// output device never reaches the steering's TUN).
fn vxlan_tenants(
    lab: &mut Lab,
    hosts: &[String; 2],
    mtu: u16,
    bound: bool,
) -> anyhow::Result<Endpoints> {
    let mut tenants = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec![
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            VNI,
            "local",
            HOST_ADDR[i],
            "remote",
            HOST_ADDR[1 - i],
            "dstport",
            "4789",
            "nolearning",
        ];
        if bound {
            args.extend(["dev", "eth0"]);
        }
        lab.exec(h, "ip", &args)?;
        lab.exec(
            h,
            "ip",
            &["link", "set", "vx0", "mtu", &mtu.to_string(), "up"],
        )?;
        tenants.push(add_tenant(lab, h, i + 1, "vx0", mtu)?);
    }
    let [t1, t2]: [String; 2] = tenants
        .try_into()
        .map_err(|_| anyhow::anyhow!("two tenants expected"))?;
    Ok(tenant_endpoints([t1, t2], mtu))
}

/// Random keys for both directions, `dir/key-FROM-TO` (hex, as `[peer.sa]`
/// reads them); returns the path of a direction's key.
fn write_keys(dir: &Path, suite: Suite) -> anyhow::Result<impl Fn(usize, usize) -> PathBuf> {
    let dir = dir.to_owned();
    let key = move |from: usize, to: usize| dir.join(format!("key-{from}-{to}"));
    for (from, to) in [(1, 2), (2, 1)] {
        let len = suite.encryption_key_len() + suite.integrity_key_len();
        tunsec::config::write_secret(key(from, to), random_hex(len)?)?;
    }
    Ok(key)
}

/// Starts tunsecd on both hosts with `config(n)` for host `n` and waits
/// until each answers on its control socket; `mtu_of` reads from its
/// status the MTU the tenant side gets (`what` names it in an error).
/// Returns the daemons' lab labels, their control sockets and the MTUs.
fn start_tunsecds(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    hosts: &[String; 2],
    config: impl Fn(usize) -> String,
    mtu_of: impl Fn(&tunsec::status::Status) -> Option<u16>,
    what: &str,
) -> anyhow::Result<(Vec<String>, Vec<PathBuf>, [u16; 2])> {
    let tunsecd = ctx.tunsecd.as_deref().context("tunsecd was not found")?;
    let dir = lab.dir.path().to_owned();
    let mut labels = Vec::new();
    let mut sockets = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        let path = dir.join(format!("h{n}.toml"));
        std::fs::write(&path, with_underlay_mtu(config(n), ctx.args.underlay_mtu))?;
        let label = format!("tunsecd-h{n}");
        lab.spawn(&label, h, tunsecd, &["--config", &path.to_string_lossy()])?;
        labels.push(label);
        sockets.push(dir.join(format!("h{n}.sock")));
    }
    let mut mtus = [0; 2];
    for (i, sock) in sockets.iter().enumerate() {
        let mut mtu = None;
        lab.wait_for(
            &format!("tunsecd on h{} to answer", i + 1),
            Duration::from_secs(20),
            || match control::call(sock, &Request::Status) {
                Ok(Response::Status(s)) => {
                    mtu = mtu_of(&s);
                    true
                }
                _ => ctx.stop.load(Ordering::Relaxed),
            },
        )?;
        check_interrupted(ctx.stop)?;
        mtus[i] = mtu.with_context(|| format!("h{}: tunsec status shows no {what}", i + 1))?;
    }
    Ok((labels, sockets, mtus))
}

/// The config of host `n` (1 or 2): network `blue` (VXLAN, VNI 100), the
/// other host as its peer, with `sa` = (suite, key_in, key_out) under
/// `require` or no SA under `clear`.
fn tunsec_config(dir: &Path, n: usize, sa: Option<(Suite, &Path, &Path)>) -> String {
    let other = 3 - n;
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[network]]\nname = \"blue\"\nvni = {VNI}\nencapsulation = \"vxlan\"\ntap = \"{TAP}\"\n\n\
         [[peer]]\nname = \"h{other}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"{}\"\n",
        HOST_ADDR[n - 1],
        dir.join(format!("h{n}.sock")).display(),
        HOST_ADDR[other - 1],
        if sa.is_some() { "require" } else { "clear" }
    );
    if let Some((suite, key_in, key_out)) = sa {
        // SPI of packets from host a to host b: 0x1000 + 16 b + a.
        let spi = |from: usize, to: usize| 0x1000 + 16 * to + from;
        let _ = write!(
            c,
            "\n[peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
            spi(other, n),
            spi(n, other),
            suite.name(),
            key_in.display(),
            key_out.display()
        );
    }
    c
}

/// A config's `[node]` with `node.underlay_mtu = mtu` (left out at 1500,
/// the default).
fn with_underlay_mtu(text: String, mtu: u16) -> String {
    if mtu == 1500 {
        return text;
    }
    text.replacen("[node]\n", &format!("[node]\nunderlay_mtu = {mtu}\n"), 1)
}

/// The TAP MTU tunsecd works out for this topology (the daemon's own
/// rule) on an underlay of `underlay_mtu`, for the cases without tunsecd.
pub(super) fn expected_tap_mtu(underlay_mtu: u16) -> anyhow::Result<u16> {
    let dir = Path::new("/nonexistent");
    let text = with_underlay_mtu(tunsec_config(dir, 1, None), underlay_mtu);
    let config =
        Config::parse(&text, dir).map_err(|e| anyhow::anyhow!("the bench's own config: {e}"))?;
    let net = &config.networks[0];
    Ok(tunsec::daemon::network_mtu(&config, net)?.mtu)
}

pub(super) fn setup_tunsec(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    suite: Option<Suite>,
    offloads: Offloads,
) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab, ctx.args.underlay_mtu)?;
    let dir = lab.dir.path().to_owned();
    let key = suite.map(|s| write_keys(&dir, s)).transpose()?;
    let (labels, sockets, mtus) = start_tunsecds(
        ctx,
        lab,
        &hosts,
        |n| {
            let keys = key.as_ref().map(|k| (k(3 - n, n), k(n, 3 - n)));
            offloads.apply(tunsec_config(
                &dir,
                n,
                suite
                    .zip(keys.as_ref())
                    .map(|(s, (i, o))| (s, i.as_path(), o.as_path())),
            ))
        },
        |s| s.networks.iter().find(|n| n.tap == TAP).map(|n| n.mtu),
        TAP,
    )?;
    tunsecd_tenants(lab, &hosts, labels, sockets, mtus)
}

/// The gateway-mode config of host `n` (1 or 2): the other host as its
/// peer, its VXLAN (UDP 4789) protected with `suite` and manual keys.
fn gateway_config(dir: &Path, n: usize, suite: Suite, key_in: &Path, key_out: &Path) -> String {
    let other = 3 - n;
    let spi = |from: usize, to: usize| 0x3000 + 16 * to + from;
    format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [gateway]\ntunnel_devices = [\"vx0\"]\n\n\
         [[peer]]\nname = \"h{other}\"\nunderlay = \"{}\"\n\n\
         [[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n\n\
         [peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
        HOST_ADDR[n - 1],
        dir.join(format!("h{n}.sock")).display(),
        HOST_ADDR[other - 1],
        spi(other, n),
        spi(n, other),
        suite.name(),
        key_in.display(),
        key_out.display()
    )
}

/// tunsecd in gateway mode on both hosts, then on each a kernel vxlan
/// device (not bound to a lower device, so the steering sees its packets)
/// with the MTU tunsecd advises, bridged to the tenant.
pub(super) fn setup_gateway(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    suite: Suite,
) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab, ctx.args.underlay_mtu)?;
    let dir = lab.dir.path().to_owned();
    let key = write_keys(&dir, suite)?;
    let (labels, sockets, mtus) = start_tunsecds(
        ctx,
        lab,
        &hosts,
        |n| gateway_config(&dir, n, suite, &key(3 - n, n), &key(n, 3 - n)),
        |s| s.gateway.as_ref().map(|g| g.tunnel_mtu_advice),
        "gateway",
    )?;
    let mut ep = vxlan_tenants(lab, &hosts, mtus[0].min(mtus[1]), false)?;
    ep.daemon = Some("tunsecd");
    ep.daemon_labels = labels;
    ep.hosts = hosts.to_vec();
    ep.control_sockets = sockets;
    Ok(ep)
}

/// A tenant on each host behind tunsecd's TAP device `TAP` (with the MTU
/// each tunsecd gives it), and the endpoints that count tunsecd.
fn tunsecd_tenants(
    lab: &mut Lab,
    hosts: &[String; 2],
    labels: Vec<String>,
    sockets: Vec<PathBuf>,
    mtus: [u16; 2],
) -> anyhow::Result<Endpoints> {
    let mut tenants = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        tenants.push(add_tenant(lab, h, i + 1, TAP, mtus[i])?);
    }
    let [t1, t2]: [String; 2] = tenants
        .try_into()
        .map_err(|_| anyhow::anyhow!("two tenants expected"))?;
    let mut ep = tenant_endpoints([t1, t2], mtus[0].min(mtus[1]));
    ep.daemon = Some("tunsecd");
    ep.daemon_labels = labels;
    ep.hosts = hosts.to_vec();
    ep.control_sockets = sockets;
    Ok(ep)
}

/// The config of host `n` (1 or 2) with `count` networks (VXLAN, VNI
/// 1000 on, the first with the tenants' TAP device), all carried to the
/// other host with keys per network from IKEv2 (PSK, AES-128-GCM), in
/// the Encrypted VXLAN layout if `encrypted`.
fn networks_config(dir: &Path, n: usize, count: u16, encrypted: bool) -> String {
    let other = 3 - n;
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n",
        HOST_ADDR[n - 1],
        dir.join(format!("h{n}.sock")).display(),
    );
    let layout = if encrypted {
        "layout = \"encrypted_vxlan\"\n"
    } else {
        ""
    };
    let mut names = Vec::new();
    for i in 0..count {
        let tap = if i == 0 {
            TAP.to_owned()
        } else {
            format!("tsb{i}")
        };
        let _ = write!(
            c,
            "[[network]]\nname = \"n{i}\"\nvni = {}\nencapsulation = \"vxlan\"\ntap = \"{tap}\"\n{layout}\n",
            1000 + u32::from(i)
        );
        names.push(format!("\"n{i}\""));
    }
    let _ = write!(
        c,
        "[[peer]]\nname = \"h{other}\"\nunderlay = \"{}\"\nnetworks = [{}]\npolicy = \"require\"\n\n\
         [peer.ike]\npsk_file = \"{}\"\nkeys = \"per_network\"\n\
         ike_proposals = [\"aes128gcm16-prfsha256-x25519\"]\nesp_proposals = [\"aes128gcm16\"]\n",
        HOST_ADDR[other - 1],
        names.join(", "),
        dir.join("bench.psk").display()
    );
    c
}

/// tunsecd on both hosts with `count` networks and keys per network;
/// waits until each shows a Child SA per network, and reports how long
/// that took and the daemons' memory then.
pub(super) fn setup_networks(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    count: u16,
    encrypted: bool,
) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab, ctx.args.underlay_mtu)?;
    let dir = lab.dir.path().to_owned();
    tunsec::config::write_secret(dir.join("bench.psk"), "a bench key, long enough to use\n")?;
    let t0 = Instant::now();
    let (labels, sockets, mtus) = start_tunsecds(
        ctx,
        lab,
        &hosts,
        |n| networks_config(&dir, n, count, encrypted),
        |s| s.networks.iter().find(|n| n.tap == TAP).map(|n| n.mtu),
        TAP,
    )?;
    let children = |sock: &Path| match control::call(sock, &Request::Status) {
        Ok(Response::Status(s)) => s
            .peers
            .first()
            .and_then(|p| p.ike.as_ref())
            .map_or(0, |i| i.children.len()),
        _ => 0,
    };
    lab.wait_for(
        &format!("a Child SA for each of {count} networks on both hosts"),
        Duration::from_secs(300),
        || {
            ctx.stop.load(Ordering::Relaxed)
                || sockets.iter().all(|s| children(s) >= usize::from(count))
        },
    )?;
    check_interrupted(ctx.stop)?;
    let up_secs = t0.elapsed().as_secs_f64();
    let mut rss_kib = [0; 2];
    for (i, label) in labels.iter().enumerate() {
        let pid = lab
            .pid(label)
            .with_context(|| format!("{label} was not started"))?;
        rss_kib[i] = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .with_context(|| format!("the VmRSS of {label}"))?;
    }
    let mut ep = tunsecd_tenants(lab, &hosts, labels, sockets, mtus)?;
    ep.networks = Some(report::NetworksReport {
        count,
        up_secs,
        rss_kib,
    });
    Ok(ep)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn configs_parse() {
        assert_eq!(expected_tap_mtu(1500).unwrap(), 1385);
        assert_eq!(expected_tap_mtu(9000).unwrap(), 8885);
        let dir = tempfile::tempdir().unwrap();
        for suite in Suite::ALL {
            let len = suite.encryption_key_len() + suite.integrity_key_len();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            tunsec::config::write_secret(&a, random_hex(len).unwrap()).unwrap();
            tunsec::config::write_secret(&b, random_hex(len).unwrap()).unwrap();
            let text = tunsec_config(dir.path(), 2, Some((suite, &a, &b)));
            let c = Config::parse(&text, dir.path()).unwrap();
            let sa = c.peers[0].sa.as_ref().unwrap();
            assert_eq!(sa.suite, suite);
            assert_eq!((sa.spi_in, sa.spi_out), (0x1021, 0x1012));
            let all = |c: &Config| {
                let o = c.offload;
                (o.tap, o.gro, o.udp_gso, o.udp_gro)
            };
            assert_eq!(all(&c), (true, true, true, true));
            for (o, expect) in [
                (Offloads::NoUdpGro, (true, true, true, false)),
                (Offloads::NoUdpGso, (true, true, false, true)),
                (Offloads::NoGro, (true, false, true, true)),
                (Offloads::None, (false, false, false, false)),
            ] {
                let c = Config::parse(&o.apply(text.clone()), dir.path()).unwrap();
                assert_eq!(all(&c), expect, "{o:?}");
            }
            let c = Config::parse(&Offloads::TwoWorkers.apply(text.clone()), dir.path()).unwrap();
            assert_eq!((all(&c), c.node.workers), ((true, true, true, true), 2));
            let c =
                Config::parse(&gateway_config(dir.path(), 1, suite, &a, &b), dir.path()).unwrap();
            let gw = c.gateway.as_ref().unwrap();
            assert_eq!(gw.tunnel_devices, ["vx0"]);
            assert_eq!(c.peers[0].sa.as_ref().unwrap().suite, suite);
        }
    }
}
