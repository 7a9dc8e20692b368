//! `[node]`, `[esp]` and `[offload]`: this host, the ESP settings every
//! peer shares, and the data path's offloads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    ConfigError, DEFAULT_CONTROL_SOCKET, DEFAULT_ESP_PORT, check_name, invalid, parse_addr, quoted,
};

/// How ESP travels between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EspEncapsulation {
    /// ESP in UDP (RFC 3948), the default: it passes NAT and lets the
    /// kernel spread load across cores by UDP ports.
    Udp,
    /// Raw ESP, IP protocol 50.
    Esp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) underlay: String,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) underlay_mtu: Option<u16>,
    pub(super) workers: Option<u16>,
    pub(super) metrics_listen: Option<String>,
    pub(super) log_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEsp {
    pub(super) encapsulation: Option<EspEncapsulation>,
    pub(super) port: Option<u16>,
    pub(super) replay_window: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOffload {
    pub(super) tap: Option<bool>,
    pub(super) gro: Option<bool>,
    pub(super) udp_gso: Option<bool>,
    pub(super) udp_gro: Option<bool>,
}

/// This host.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its name, for logs and status.
    pub name: String,
    /// Its underlay address: the source of its tunnels.
    pub underlay: IpAddr,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// The underlay MTU that `mtu = "auto"` starts from.
    pub underlay_mtu: u16,
    /// How many data-path worker pairs (transmit and receive) run, each
    /// with its own queue of every TAP device and its own UDP sockets.
    pub workers: usize,
    /// Where tunsecd serves its metrics over HTTP (`GET /metrics`), if
    /// anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// What tunsecd logs, unless `--log-level` or `RUST_LOG` says
    /// otherwise (see [`crate::logging`]).
    pub log_level: Option<crate::logging::LogLevel>,
}

/// The most worker pairs `node.workers` allows.
pub const MAX_WORKERS: u16 = 64;

/// The data path's offloads, each of which can be turned off (kernels have
/// had offload bugs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// TAP devices with a virtio-net header, TCP segmentation and checksum
    /// offload: the kernel hands over 64 KB TCP super-frames, which the
    /// transmit worker cuts into wire frames.
    pub tap: bool,
    /// Coalesce received TCP frames of one flow into super-frames before
    /// writing them to the TAP device (needs `tap`).
    pub gro: bool,
    /// Send runs of equal ESP datagrams to one peer as one message with
    /// UDP generic segmentation offload (`UDP_SEGMENT`).
    pub udp_gso: bool,
    /// Receive runs of equal datagrams of one flow as one buffer (UDP
    /// generic receive offload, `UDP_GRO`).
    pub udp_gro: bool,
}

/// ESP settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EspSettings {
    /// ESP in UDP or raw ESP.
    pub encapsulation: EspEncapsulation,
    /// The UDP port of ESP in UDP.
    pub port: u16,
    /// The anti-replay window of inbound SAs.
    pub replay_window: u32,
}

/// `[node]`, with its defaults.
pub(super) fn validate_node(raw: RawNode) -> Result<Node, ConfigError> {
    check_name("node.name", &raw.name)?;
    let underlay = parse_addr("node.underlay", &raw.underlay)?;
    let underlay_mtu = raw.underlay_mtu.unwrap_or(1500);
    let min = if underlay.is_ipv4() { 576 } else { 1280 };
    if underlay_mtu < min {
        return Err(invalid(
            "node.underlay_mtu",
            underlay_mtu,
            format!("is below the minimum of {min} for the underlay's address family"),
        ));
    }
    let workers = raw.workers.unwrap_or(1);
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(invalid(
            "node.workers",
            workers,
            format!("is not between 1 and {MAX_WORKERS}"),
        ));
    }
    let metrics_listen = raw
        .metrics_listen
        .map(|v| {
            let addr: SocketAddr = v.parse().map_err(|_| {
                invalid(
                    "node.metrics_listen",
                    quoted(&v),
                    "is not an address and port, such as \"127.0.0.1:9464\" or \"[::1]:9464\"",
                )
            })?;
            if addr.port() == 0 {
                return Err(invalid("node.metrics_listen", quoted(&v), "needs a port"));
            }
            Ok(addr)
        })
        .transpose()?;
    let log_level = raw
        .log_level
        .map(|v| {
            crate::logging::LogLevel::parse(&v)
                .map_err(|reason| invalid("node.log_level", quoted(&v), reason))
        })
        .transpose()?;
    Ok(Node {
        log_level,
        metrics_listen,
        workers: usize::from(workers),
        name: raw.name,
        underlay,
        control_socket: raw
            .control_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        underlay_mtu,
    })
}

/// `[esp]`, with its defaults; raw ESP allows only one worker.
pub(super) fn validate_esp(raw: RawEsp, node: &Node) -> Result<EspSettings, ConfigError> {
    let esp = EspSettings {
        encapsulation: raw.encapsulation.unwrap_or(EspEncapsulation::Udp),
        port: raw.port.unwrap_or(DEFAULT_ESP_PORT),
        replay_window: raw
            .replay_window
            .unwrap_or(tunsec_esp::ReplayWindow::DEFAULT_SIZE),
    };

    if esp.port == 0 {
        return Err(invalid("esp.port", 0, "is not a usable port"));
    }
    if node.workers > 1 && esp.encapsulation == EspEncapsulation::Esp {
        // Every raw ESP socket receives a copy of every ESP packet:
        // per-worker sockets would open each packet several times.
        return Err(invalid(
            "node.workers",
            node.workers,
            "needs esp.encapsulation = \"udp\": raw ESP sockets cannot share the packets between workers",
        ));
    }
    if tunsec_esp::ReplayWindow::new(esp.replay_window).is_err() {
        return Err(invalid(
            "esp.replay_window",
            esp.replay_window,
            "is outside 64..=65536",
        ));
    }

    Ok(esp)
}

/// `[offload]`: every offload is on unless turned off, and `gro` needs
/// `tap`.
pub(super) fn validate_offload(raw: RawOffload) -> Result<Offload, ConfigError> {
    let offload = Offload {
        tap: raw.tap.unwrap_or(true),
        gro: raw.gro.unwrap_or(true),
        udp_gso: raw.udp_gso.unwrap_or(true),
        udp_gro: raw.udp_gro.unwrap_or(true),
    };
    if offload.gro && !offload.tap && raw.gro == Some(true) {
        return Err(invalid(
            "offload.gro",
            true,
            "needs offload.tap = true (coalesced frames travel behind a virtio-net header)",
        ));
    }
    Ok(Offload {
        gro: offload.gro && offload.tap,
        ..offload
    })
}

#[cfg(test)]
mod test {
    use super::super::testing::*;

    #[test]
    fn metrics_listen() {
        assert_eq!(parse(BASE).unwrap().node.metrics_listen, None);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        let c = parse(&with("metrics_listen = \"[::1]:9464\"")).unwrap();
        assert_eq!(c.node.metrics_listen, Some("[::1]:9464".parse().unwrap()));
        assert_invalid(
            &with("metrics_listen = \"localhost\""),
            "node.metrics_listen",
            "\"localhost\"",
        );
        assert_invalid(
            &with("metrics_listen = \"127.0.0.1:0\""),
            "node.metrics_listen",
            "\"127.0.0.1:0\"",
        );
    }

    #[test]
    fn workers() {
        assert_eq!(parse(BASE).unwrap().node.workers, 1);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        assert_eq!(parse(&with("workers = 4")).unwrap().node.workers, 4);
        assert_invalid(&with("workers = 0"), "node.workers", "0");
        assert_invalid(&with("workers = 65"), "node.workers", "65");
        let raw_esp = with("workers = 2") + "\n[esp]\nencapsulation = \"esp\"\n";
        assert_invalid(&raw_esp, "node.workers", "2");
    }

    #[test]
    fn log_level() {
        assert_eq!(parse(BASE).unwrap().node.log_level, None);
        let with = |line: &str| BASE.replacen("[node]\n", &format!("[node]\n{line}\n"), 1);
        let c = parse(&with("log_level = \"debug\"")).unwrap();
        assert_eq!(c.node.log_level.unwrap().as_str(), "debug");
        let c = parse(&with("log_level = \"info,tunsec_ike=trace\"")).unwrap();
        assert_eq!(c.node.log_level.unwrap().as_str(), "info,tunsec_ike=trace");
        assert_invalid(
            &with("log_level = \"verbose\""),
            "node.log_level",
            "\"verbose\"",
        );
        let e = parse(&with("log_level = \"verbose\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.log_level") && e.contains("debug, trace"),
            "{e}"
        );
    }

    #[test]
    fn node_errors_name_the_field_and_value() {
        assert_invalid(
            &format!("{BASE}\n[offload]\ntap = false\ngro = true\n"),
            "offload.gro",
            "true",
        );
        assert_invalid(
            &BASE.replace("name = \"host-a\"", "name = \"host a\""),
            "node.name",
            "\"host a\"",
        );
        assert_invalid(
            &format!("{BASE}\n[esp]\nreplay_window = 10\n"),
            "esp.replay_window",
            "10",
        );
    }
}
