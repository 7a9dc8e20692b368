//! `tunsec metrics` and tunsecd's metrics endpoint: a daemon's status as
//! OpenMetrics text, for Prometheus (scraped from `[node]
//! metrics_listen`, or through node_exporter's textfile collector).
//!
//! Every figure comes from one [`Status`] snapshot, which is what
//! `tunsec status` shows; nothing is counted twice or invented. What it
//! exports, all prefixed `tunsec_`:
//!
//! - per peer: whether its IKE SA is established (the state an overlay
//!   operator alerts on), its Child SAs, IKE rekeys, retransmissions and
//!   fragments, and the key exchanges of its IKE SA and of each Child SA
//!   (`x25519+mlkem768`, as info gauges);
//! - per SA (peer, direction, SPI): packets, bytes and drops by reason.
//!   An SA's series ends when a rekey replaces it, so its counters never
//!   go backwards;
//! - per virtual network: frames and bytes each way, and flooded frames;
//! - the data path's drops by reason, and in gateway mode each peer's
//!   packets and bytes and the guard's drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VniLabels {
    peer: String,
    tunnel: String,
    vnis: String,
    policy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyExchangeLabels {
    peer: String,
    key_exchange: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChildKeyExchangeLabels {
    peer: String,
    spi_in: String,
    spi_out: String,
    key_exchange: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SaLabels {
    peer: String,
    direction: String,
    spi: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SaDropLabels {
    peer: String,
    direction: String,
    spi: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// A family registered under `name` with `help`.
fn family<L, M>(registry: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<L, M>::default();
    registry.register(name, help, f.clone());
    f
}

/// The OpenMetrics text of `status`.
pub fn render(status: &Status) -> String {
    let mut r = Registry::with_prefix("tunsec");

    let uptime: Family<NodeLabels, Gauge> =
        family(&mut r, "uptime_seconds", "Seconds since tunsecd started");
    uptime
        .get_or_create(&NodeLabels {
            node: status.node.name.clone(),
        })
        .set(gauge_value(status.node.uptime_secs));

    let established: Family<PeerLabels, Gauge> = family(
        &mut r,
        "peer_ike_established",
        "1 when the peer's IKE SA is established, else 0 (peers with IKE only)",
    );
    let child_sas: Family<PeerLabels, Gauge> = family(
        &mut r,
        "peer_child_sas",
        "Child SA pairs of the peer's IKE SA",
    );
    let rekeys: Family<PeerLabels, Counter> = family(
        &mut r,
        "peer_ike_rekeys",
        "IKE SA rekeys of the peer's current IKE SA",
    );
    let retransmits: Family<PeerLabels, Counter> = family(
        &mut r,
        "peer_ike_retransmits",
        "IKE requests sent again (no answer in time)",
    );
    let frags_sent: Family<PeerLabels, Counter> = family(
        &mut r,
        "peer_ike_fragments_sent",
        "IKE fragments sent (RFC 7383)",
    );
    let frags_received: Family<PeerLabels, Counter> = family(
        &mut r,
        "peer_ike_fragments_received",
        "Authentic IKE fragments received (RFC 7383)",
    );
    let ike_kex: Family<KeyExchangeLabels, Gauge> = family(
        &mut r,
        "peer_ike_key_exchange_info",
        "1 for the key exchanges of the peer's IKE SA, in order, joined by + (x25519+mlkem768)",
    );
    let child_kex: Family<ChildKeyExchangeLabels, Gauge> = family(
        &mut r,
        "peer_child_sa_key_exchange_info",
        "1 for each Child SA pair of the peer's IKE SA, with the key exchanges its keys came from (none: SK_d alone)",
    );
    let sa_packets: Family<SaLabels, Counter> = family(
        &mut r,
        "sa_packets",
        "Packets sealed (out) or opened (in) with the SA",
    );
    let sa_bytes: Family<SaLabels, Counter> = family(
        &mut r,
        "sa_bytes",
        "Bytes sealed (out) or opened (in) with the SA",
    );
    let sa_drops: Family<SaDropLabels, Counter> =
        family(&mut r, "sa_drops", "Packets the SA refused, by reason");
    for p in &status.peers {
        let peer = PeerLabels {
            peer: p.name.clone(),
        };
        if let Some(ike) = &p.ike {
            established
                .get_or_create(&peer)
                .set(i64::from(ike.state == "established"));
            child_sas
                .get_or_create(&peer)
                .set(gauge_value(ike.child_sas));
            rekeys.get_or_create(&peer).inc_by(ike.ike_rekeys);
            retransmits.get_or_create(&peer).inc_by(ike.retransmits);
            frags_sent.get_or_create(&peer).inc_by(ike.fragments_sent);
            frags_received
                .get_or_create(&peer)
                .inc_by(ike.fragments_received);
            if let Some(kex) = &ike.key_exchange {
                ike_kex
                    .get_or_create(&KeyExchangeLabels {
                        peer: p.name.clone(),
                        key_exchange: kex.clone(),
                    })
                    .set(1);
            }
            for c in &ike.children {
                child_kex
                    .get_or_create(&ChildKeyExchangeLabels {
                        peer: p.name.clone(),
                        spi_in: c.spi_in.clone(),
                        spi_out: c.spi_out.clone(),
                        key_exchange: c.key_exchange.clone(),
                    })
                    .set(1);
            }
        }
        for sa in &p.sas {
            let labels = SaLabels {
                peer: p.name.clone(),
                direction: sa.direction.clone(),
                spi: sa.spi.clone(),
            };
            sa_packets.get_or_create(&labels).inc_by(sa.packets);
            sa_bytes.get_or_create(&labels).inc_by(sa.bytes);
            for (reason, n) in &sa.drops {
                sa_drops
                    .get_or_create(&SaDropLabels {
                        peer: p.name.clone(),
                        direction: sa.direction.clone(),
                        spi: sa.spi.clone(),
                        reason: reason.clone(),
                    })
                    .inc_by(*n);
            }
        }
    }

    let net = |r: &mut Registry, name: &str, help: &str| -> Family<NetworkLabels, Counter> {
        family(r, name, help)
    };
    let tx_frames = net(
        &mut r,
        "network_tx_frames",
        "Frames sent into the network's tunnels",
    );
    let tx_bytes = net(
        &mut r,
        "network_tx_bytes",
        "Bytes sent into the network's tunnels",
    );
    let rx_frames = net(
        &mut r,
        "network_rx_frames",
        "Frames received from the network's tunnels",
    );
    let rx_bytes = net(
        &mut r,
        "network_rx_bytes",
        "Bytes received from the network's tunnels",
    );
    let flooded = net(
        &mut r,
        "network_flooded_frames",
        "Broadcast and unknown-unicast frames replicated to every peer",
    );
    let mismatch = net(
        &mut r,
        "network_mismatch_frames",
        "Frames naming the network that came under another network's SA, dropped",
    );
    for n in &status.networks {
        let l = NetworkLabels {
            network: n.name.clone(),
        };
        tx_frames.get_or_create(&l).inc_by(n.tx_frames);
        tx_bytes.get_or_create(&l).inc_by(n.tx_bytes);
        rx_frames.get_or_create(&l).inc_by(n.rx_frames);
        rx_bytes.get_or_create(&l).inc_by(n.rx_bytes);
        flooded.get_or_create(&l).inc_by(n.flooded);
        mismatch.get_or_create(&l).inc_by(n.network_mismatch);
    }

    let drops: Family<ReasonLabels, Counter> = family(
        &mut r,
        "datapath_drops",
        "Packets the data path dropped, by reason",
    );
    for (reason, n) in &status.drops {
        drops
            .get_or_create(&ReasonLabels {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }

    if let Some(gw) = &status.gateway {
        let g = |r: &mut Registry, name: &str, help: &str| -> Family<PeerLabels, Counter> {
            family(r, name, help)
        };
        let tx_p = g(
            &mut r,
            "gateway_tx_packets",
            "Packets sealed and sent to the peer",
        );
        let tx_b = g(
            &mut r,
            "gateway_tx_bytes",
            "Bytes sealed and sent to the peer",
        );
        let rx_p = g(
            &mut r,
            "gateway_rx_packets",
            "Packets opened and handed to the kernel",
        );
        let rx_b = g(
            &mut r,
            "gateway_rx_bytes",
            "Bytes opened and handed to the kernel",
        );
        let guard = g(
            &mut r,
            "gateway_guard_drops",
            "Protected packets from the peer that arrived in the clear and were dropped",
        );
        for p in &gw.policies {
            let l = PeerLabels {
                peer: p.peer.clone(),
            };
            tx_p.get_or_create(&l).inc_by(p.tx_packets);
            tx_b.get_or_create(&l).inc_by(p.tx_bytes);
            rx_p.get_or_create(&l).inc_by(p.rx_packets);
            rx_b.get_or_create(&l).inc_by(p.rx_bytes);
            if let Some(n) = p.guard_drops {
                guard.get_or_create(&l).inc_by(n);
            }
        }
        let vni: Family<VniLabels, Counter> = family(
            &mut r,
            "gateway_vni_packets",
            "Packets of a peer's VNI rule (or default), by outcome: sealed, clear, discarded, opened",
        );
        for p in &gw.policies {
            for v in &p.vnis {
                for (outcome, n) in [
                    ("sealed", v.sealed),
                    ("clear", v.clear),
                    ("discarded", v.discarded),
                    ("opened", v.opened),
                    ("network_mismatch", v.network_mismatch),
                ] {
                    vni.get_or_create(&VniLabels {
                        peer: p.peer.clone(),
                        tunnel: v.tunnel.clone(),
                        vnis: v.vnis.clone(),
                        policy: v.policy.clone(),
                        outcome: outcome.to_owned(),
                    })
                    .inc_by(n);
                }
            }
        }
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// A count as a gauge value (saturating: gauges are signed).
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The content type of OpenMetrics text (OpenMetrics 1.0, section
/// "Protocol Negotiation").
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// tunsecd's metrics endpoint (`[node] metrics_listen`): an HTTP server on
/// its own thread that answers `GET /metrics` with [`render`] of the
/// status it asks the daemon's control socket for, like `tunsec
/// metrics`; anything else gets 404. It stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `listen` (an error names `node.metrics_listen`) and
    /// serves the status of the daemon behind `control_socket`.
    pub fn start(listen: SocketAddr, control_socket: PathBuf) -> anyhow::Result<Self> {
        let server = tiny_http::Server::http(listen)
            .map_err(|e| anyhow::anyhow!("node.metrics_listen: cannot listen on {listen}: {e}"))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("tunsec-metrics".into())
                .spawn(move || serve(&server, &control_socket, &stop))?
        };
        tracing::info!(%listen, "metrics on http://{listen}/metrics");
        Ok(Self {
            server,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, control_socket: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("metrics: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let response = if *request.method() != tiny_http::Method::Get
            || request.url().split('?').next() != Some("/metrics")
        {
            tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
                .with_status_code(404)
        } else {
            match crate::control::call(control_socket, &crate::control::Request::Status) {
                Ok(crate::control::Response::Status(status)) => {
                    let mut r = tiny_http::Response::from_string(render(&status));
                    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                        r = r.with_header(h);
                    }
                    r
                }
                Ok(other) => {
                    tiny_http::Response::from_string(format!("{other:?}\n")).with_status_code(500)
                }
                Err(e) => tiny_http::Response::from_string(format!("{e}\n")).with_status_code(503),
            }
        };
        let _ = request.respond(response);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A status as `tunsec status --json` prints it: one IKE peer with an
    /// SA pair (one drop reason), one network, one data path drop.
    fn status() -> Status {
        serde_json::from_str(
            r#"{
            "node": {"name": "h1", "underlay": "192.0.2.1", "esp": "udp/4500", "uptime_secs": 42},
            "networks": [{"name": "blue", "vni": 100, "encapsulation": "vxlan", "port": 4789,
                "tap": "tsblue", "mtu": 1385, "tx_frames": 10, "tx_bytes": 1000,
                "rx_frames": 9, "rx_bytes": 900, "flooded": 2}],
            "peers": [{"name": "h2", "underlay": "192.0.2.2", "policies": {"blue": "require"},
                "sas": [
                    {"direction": "out", "spi": "0x1001", "suite": "aes128gcm16", "esn": false,
                     "state": "live", "packets": 10, "bytes": 1400, "last_seq": 10, "drops": {}},
                    {"direction": "in", "spi": "0x2002", "suite": "aes128gcm16", "esn": false,
                     "state": "live", "packets": 9, "bytes": 1300, "last_seq": 9,
                     "drops": {"replay": 3}}
                ],
                "ike": {"state": "established", "role": "initiator", "child_sas": 1,
                    "ike_rekeys": 4, "retransmits": 5, "dropped": 0,
                    "fragments_sent": 6, "fragments_received": 7,
                    "key_exchange": "x25519+mlkem768",
                    "children": [{"spi_in": "0x2002", "spi_out": "0x1001",
                        "key_exchange": "x25519+mlkem768"}]}}],
            "drops": {"no_sa": 11, "policy": 0},
            "keepalives": 0,
            "ike_on_esp_port": 0,
            "fdb": []
        }"#,
        )
        .expect("the test status parses")
    }

    #[test]
    fn every_figure_of_the_status() {
        let text = render(&status());
        for line in [
            r#"tunsec_uptime_seconds{node="h1"} 42"#,
            r#"tunsec_peer_ike_established{peer="h2"} 1"#,
            r#"tunsec_peer_child_sas{peer="h2"} 1"#,
            r#"tunsec_peer_ike_rekeys_total{peer="h2"} 4"#,
            r#"tunsec_peer_ike_retransmits_total{peer="h2"} 5"#,
            r#"tunsec_peer_ike_fragments_sent_total{peer="h2"} 6"#,
            r#"tunsec_peer_ike_fragments_received_total{peer="h2"} 7"#,
            r#"tunsec_peer_ike_key_exchange_info{peer="h2",key_exchange="x25519+mlkem768"} 1"#,
            r#"tunsec_peer_child_sa_key_exchange_info{peer="h2",spi_in="0x2002",spi_out="0x1001",key_exchange="x25519+mlkem768"} 1"#,
            r#"tunsec_sa_packets_total{peer="h2",direction="out",spi="0x1001"} 10"#,
            r#"tunsec_sa_bytes_total{peer="h2",direction="in",spi="0x2002"} 1300"#,
            r#"tunsec_sa_drops_total{peer="h2",direction="in",spi="0x2002",reason="replay"} 3"#,
            r#"tunsec_network_rx_bytes_total{network="blue"} 900"#,
            r#"tunsec_network_flooded_frames_total{network="blue"} 2"#,
            r#"tunsec_datapath_drops_total{reason="no_sa"} 11"#,
            r#"tunsec_datapath_drops_total{reason="policy"} 0"#,
            "# TYPE tunsec_sa_packets counter",
            "# TYPE tunsec_peer_ike_established gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("gateway"),
            "no gateway figures without gateway mode"
        );
    }

    /// A peer whose IKE SA is down is 0, and the SAs it no longer has are
    /// gone.
    #[test]
    fn a_peer_that_is_down() {
        let mut s = status();
        let ike = s.peers[0].ike.as_mut().unwrap();
        ike.state = "connecting".into();
        ike.child_sas = 0;
        s.peers[0].sas.clear();
        let text = render(&s);
        assert!(
            text.contains("tunsec_peer_ike_established{peer=\"h2\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("tunsec_sa_packets_total{"), "{text}");
    }

    /// An address that cannot be listened on is an error that names the
    /// field and the address.
    #[test]
    fn a_busy_address_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(addr, PathBuf::from("/nonexistent.sock"))
            .err()
            .expect("the address is in use")
            .to_string();
        assert!(
            err.contains("node.metrics_listen") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}
