//! Lab helpers shared by the end-to-end tests: an underlay bridge, hosts
//! on it, and tenants behind a host's TAP device with the TAP's MTU. All
//! addresses live only inside the lab's namespaces.

// Each test crate compiles this module; not every crate uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context;
use tunsec::netns::Lab;

/// Host `n`'s underlay address.
pub(crate) fn host_addr(n: u8) -> String {
    format!("192.0.2.{n}")
}

/// The address of the tenant behind host `n`.
pub(crate) fn tenant_addr(n: u8) -> String {
    format!("198.51.100.{n}")
}

/// The underlay: namespace `ul` with bridge `br0` (no multicast snooping:
/// its IGMP queries would be noise in the captures).
pub(crate) fn add_underlay(lab: &mut Lab) -> anyhow::Result<String> {
    let ul = lab.add_ns("ul")?;
    lab.exec(
        &ul,
        "ip",
        &[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    lab.exec(&ul, "ip", &["link", "set", "br0", "up"])?;
    Ok(ul)
}

/// Host namespace `short` on the underlay with `eth0` at 192.0.2.`n`.
pub(crate) fn add_host(lab: &mut Lab, ul: &str, short: &str, n: u8) -> anyhow::Result<String> {
    let h = lab.add_ns(short)?;
    let port = format!("ul-{short}");
    lab.veth(&h, "eth0", ul, &port)?;
    lab.exec(ul, "ip", &["link", "set", &port, "master", "br0"])?;
    lab.exec(
        &h,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", host_addr(n)),
            "dev",
            "eth0",
        ],
    )?;
    Ok(h)
}

/// Tenant namespace `t<n>` (198.51.100.`n`) behind bridge `br-t` of
/// `host`, which also holds the TAP device `tap`. The tenant's MTU is the
/// TAP's, as a cloud would tell its VMs, so that full-size frames fit.
pub(crate) fn add_tenant(lab: &mut Lab, host: &str, n: u8, tap: &str) -> anyhow::Result<String> {
    let t = lab.add_ns(&format!("t{n}"))?;
    lab.exec(
        host,
        "ip",
        &[
            "link",
            "add",
            "br-t",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    lab.exec(host, "ip", &["link", "set", "br-t", "up"])?;
    lab.veth(host, "vt", &t, "eth0")?;
    lab.exec(host, "ip", &["link", "set", "vt", "master", "br-t"])?;
    lab.wait_for(&format!("{tap} in {host}"), Duration::from_secs(5), || {
        lab.try_exec(host, "ip", &["link", "show", tap])
    })?;
    lab.exec(host, "ip", &["link", "set", tap, "master", "br-t"])?;
    let mtu = link_mtu(lab, host, tap)?;
    lab.exec(&t, "ip", &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
    lab.exec(
        &t,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", tenant_addr(n)),
            "dev",
            "eth0",
        ],
    )?;
    Ok(t)
}

pub(crate) fn link_mtu(lab: &Lab, ns: &str, dev: &str) -> anyhow::Result<u16> {
    let out = lab.exec(ns, "ip", &["-o", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU for {dev} in {ns}: {text}"))
}
