//! `tunsecd` in overlay mode: turns a [`Config`] into TAP devices, sockets,
//! SAs and workers, and serves the control socket until told to stop.
//!
//! Start-up order matters for failing closed: the tables (with their
//! policies and SAs) exist before any TAP device is opened, and only the
//! transmit worker reads from the TAP devices, through those tables. So
//! from the first frame on, a `require` policy without an SA drops.
//!
//! Peers change at run time with `tunsec reload` (`reconfigure.rs`).

mod reconfigure;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, bail};
use tunsec_datapath::fdb::DEFAULT_AGEING;
use tunsec_datapath::io::socket::DatagramSocket;
use tunsec_datapath::io::tap;
use tunsec_datapath::overlay::{EspLayout, NetworkSpec, PeerEntry, PeerSpec, Policy, Tables};
use tunsec_datapath::packet::EspTransport;
use tunsec_datapath::shared_sa::{InboundEntry, SharedSa};
use tunsec_datapath::stats::{PathDrop, Stats};
use tunsec_datapath::worker::overlay::{self as worker, OverlayShared};
use tunsec_datapath::worker::{FrameDevice, Sockets};
use tunsec_esp::{DropReason, LifetimeState, Mode, Sa};

use crate::config::{Config, EspEncapsulation, Network, NetworkLayout, Peer, PolicyKind};
use crate::control::server::ControlTarget;
use crate::ike::{IkeCommand, IkeCommands, IkeDriver, IkeStates, IkeView};
use crate::keys::KeyExport;
use crate::netlink::BridgeProblem;
use crate::peers::{PeerControl, PeerSlots};
use crate::service::{ControlSocket, PeerSas};
use crate::status::{FdbStatus, NetworkStatus, NodeStatus, PeerStatus, SaStatus, Status};

pub use crate::config::NetworkMtu;

/// Works out a network's MTU ([`Config::network_mtu`]): `auto` is the
/// underlay MTU minus the worst-case overhead and the inner Ethernet
/// header; a fixed MTU allows one 802.1Q tag on top.
pub fn network_mtu(config: &Config, net: &Network) -> anyhow::Result<NetworkMtu> {
    Ok(config.network_mtu(net)?)
}

fn policy(p: PolicyKind) -> Policy {
    match p {
        PolicyKind::Require => Policy::Require,
        PolicyKind::Prefer => Policy::Prefer,
        PolicyKind::Clear => Policy::Clear,
    }
}

/// Builds the data path's tables (with SAs) from a validated config.
pub fn build_tables(config: &Config, now: Instant) -> anyhow::Result<(Tables, Vec<NetworkMtu>)> {
    let mut networks = Vec::new();
    let mut mtus = Vec::new();
    for n in &config.networks {
        let m = network_mtu(config, n)?;
        networks.push(NetworkSpec {
            name: n.name.clone(),
            vni: n.vni,
            encap: n.encapsulation.datapath(),
            port: n.port,
            max_frame: m.max_frame,
            layout: match n.layout {
                NetworkLayout::EspInUdp => EspLayout::EspInUdp,
                NetworkLayout::EncryptedVxlan => EspLayout::EncryptedVxlan,
            },
        });
        mtus.push(m);
    }
    let mut peers = Vec::new();
    let mut inbound = tunsec_datapath::fast_map::FastMap::default();
    for (i, p) in config.peers.iter().enumerate() {
        let (entry, sa_in) = peer_entry(config, i, p, now)?;
        peers.push(entry);
        if let Some((spi, e)) = sa_in {
            inbound.insert(spi, e);
        }
    }
    let tables = Tables::new(
        config.node.underlay,
        config.esp.transport(),
        networks,
        peers,
        inbound,
    );
    Ok((tables, mtus))
}

/// Peer `p`'s entry in the tables, in `slot`, with its manually keyed
/// outbound SA and its inbound one (by SPI), or none until IKE makes
/// them.
fn peer_entry(
    config: &Config,
    slot: usize,
    p: &Peer,
    now: Instant,
) -> anyhow::Result<(PeerEntry, Option<(u32, InboundEntry)>)> {
    let index_of = |name: &str| config.networks.iter().position(|n| n.name == name);
    let networks = p
        .networks
        .iter()
        .filter_map(|(name, pol)| index_of(name).map(|n| (n, policy(*pol))))
        .collect();
    let mut outbound = Vec::new();
    let mut inbound = None;
    if let Some((out, spi_in, sa_in)) = crate::peers::manual_sas(config, p, now)? {
        outbound.push(out);
        inbound = Some((
            spi_in,
            InboundEntry {
                peer: slot,
                sa: sa_in,
            },
        ));
    }
    let entry = PeerEntry {
        spec: PeerSpec {
            name: p.name.clone(),
            underlay: p.underlay,
            networks,
        },
        outbound,
    };
    Ok((entry, inbound))
}

/// Checks that every `[[network]] bridge` is an existing Linux bridge; the
/// error names the field and the value.
fn check_bridges(config: &Config) -> anyhow::Result<()> {
    for (i, n) in config.networks.iter().enumerate() {
        let Some(bridge) = &n.bridge else { continue };
        match crate::netlink::bridge_problem(bridge)? {
            None => {}
            Some(BridgeProblem::Missing) => bail!(
                "network[{i}].bridge: {bridge:?} does not exist: create the bridge first \
                 (ip link add {bridge} type bridge && ip link set {bridge} up), \
                 or remove the setting"
            ),
            Some(BridgeProblem::NotABridge(kind)) => bail!(
                "network[{i}].bridge: {bridge:?} is not a Linux bridge but a {kind} device: \
                 name a Linux bridge (an Open vSwitch bridge takes the TAP device with \
                 ovs-vsctl add-port instead)"
            ),
        }
    }
    Ok(())
}

/// A running daemon.
pub struct Daemon {
    /// What the control socket and the housekeeping work on.
    control: OverlayControl,
    workers: Vec<JoinHandle<()>>,
    /// The control socket and the metrics endpoint.
    socket: ControlSocket,
}

/// The overlay daemon as its control socket sees it.
struct OverlayControl {
    config: Config,
    shared: Arc<OverlayShared>,
    mtus: Vec<NetworkMtu>,
    started: Instant,
    /// The file the configuration came from, for `reload`.
    config_path: Option<PathBuf>,
    /// The peers by slot (changed at run time by `reload`, see
    /// `reconfigure`) and the IKE driver's handles.
    peers: PeerControl,
}

impl Daemon {
    /// Brings everything up. Nothing is left behind on failure: TAP
    /// devices and sockets close with their handles. With `config_path`,
    /// the file the configuration came from, `tunsec reload` and SIGHUP
    /// read it again.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        let now = Instant::now();
        let (tables, mtus) = build_tables(&config, now)?;
        let shared = Arc::new(OverlayShared::with_workers(
            tables,
            now,
            DEFAULT_AGEING,
            config.node.workers,
        ));
        for (i, n) in config.networks.iter().enumerate() {
            for (mac, peer) in &n.fdb {
                if let Some(p) = config.peers.iter().position(|p| &p.name == peer) {
                    shared.fdb.add_static(i, *mac, p);
                }
            }
        }

        let underlay = config.node.underlay;
        let workers = config.node.workers;
        // One set of sockets per worker: with several, each UDP port is
        // bound once per worker with SO_REUSEPORT, so the kernel spreads
        // the peers' flows over the workers.
        let udp = |addr| {
            if workers > 1 {
                DatagramSocket::udp_reuseport(addr)
            } else {
                DatagramSocket::udp(addr)
            }
        };
        let mut worker_sockets = Vec::new();
        for _ in 0..workers {
            let esp = match config.esp.encapsulation {
                EspEncapsulation::Udp => udp(SocketAddr::new(underlay, config.esp.port))
                    .with_context(|| {
                        format!("esp.port: cannot bind {underlay} port {}", config.esp.port)
                    })?,
                EspEncapsulation::Esp => DatagramSocket::raw_esp(underlay).with_context(|| {
                    format!("esp.encapsulation: cannot open a raw ESP socket on {underlay}")
                })?,
            };
            let mut tunnels = Vec::new();
            for (port, _) in shared.tables.load().tunnel_ports() {
                let sock = udp(SocketAddr::new(underlay, port))
                    .with_context(|| format!("network port: cannot bind {underlay} port {port}"))?;
                tunnels.push((port, sock));
            }
            worker_sockets.push(Arc::new(Sockets {
                esp,
                tunnels,
                clear: None,
            }));
        }

        // The bridges the TAP devices join must exist: checked before any
        // TAP device is made, so that a missing one leaves nothing half
        // configured.
        check_bridges(&config)?;
        // One queue of every TAP device per worker.
        let mut worker_devices: Vec<Vec<Arc<dyn FrameDevice>>> = vec![Vec::new(); workers];
        for (n, m) in config.networks.iter().zip(&mtus) {
            let queues = tap::open_queues(&n.tap, m.mtu, config.offload.tap, workers)
                .with_context(|| {
                    format!("network {:?}: cannot create TAP device {:?}", n.name, n.tap)
                })?;
            tracing::info!(
                network = %n.name,
                tap = %n.tap,
                mtu = m.mtu,
                offload = queues[0].tcp_gso(),
                queues = queues.len(),
                "TAP device up"
            );
            for (w, dev) in queues.into_iter().enumerate() {
                worker_devices[w].push(Arc::new(dev));
            }
            // A new TAP device at every start: it joins its bridge anew.
            if let Some(bridge) = &n.bridge {
                crate::netlink::enslave(&n.tap, bridge)
                    .with_context(|| format!("network {:?}: bridge {bridge:?}", n.name))?;
                tracing::info!(network = %n.name, tap = %n.tap, bridge = %bridge, "TAP device joined its bridge");
            }
        }

        let socket = ControlSocket::bind(&config.node)?;

        let ike_states = IkeStates::default();
        let (ike_commands, commands) = IkeCommands::channel(shared.clone());
        let ike = IkeDriver::new(
            &config,
            shared.clone(),
            worker_sockets[0].clone(),
            ike_states.clone(),
            commands,
            false,
        )?;

        let mut workers: Vec<JoinHandle<()>> =
            ike.map(IkeDriver::spawn).transpose()?.into_iter().collect();
        // Every queue of every network, for the receive workers' writes.
        let all_queues: Vec<Vec<Arc<dyn FrameDevice>>> = (0..config.networks.len())
            .map(|n| worker_devices.iter().map(|d| d[n].clone()).collect())
            .collect();
        for (w, (devices, sockets)) in worker_devices.into_iter().zip(worker_sockets).enumerate() {
            let (s, d, k) = (shared.clone(), devices, sockets.clone());
            let udp_gso = config.offload.udp_gso;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tunsec-tx{w}"))
                    .spawn(move || {
                        tunsec_datapath::stats::set_shard(worker::worker_shards(w).0);
                        worker::run_tx(s, d, k, udp_gso)
                    })?,
            );
            let (s, d, k) = (shared.clone(), all_queues.clone(), sockets);
            let (gro, udp_gro) = (config.offload.gro, config.offload.udp_gro);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tunsec-rx{w}"))
                    .spawn(move || {
                        tunsec_datapath::stats::set_shard(worker::worker_shards(w).1);
                        worker::run_rx(s, d, k, gro, udp_gro)
                    })?,
            );
        }
        tracing::info!(node = %config.node.name, underlay = %underlay, "tunsecd running");
        let peers = PeerSlots::new(&config.peers);
        let peers = PeerControl::new(&config, peers, ike_states, ike_commands);
        if config_path.is_some() {
            socket.reload_on_sighup()?;
        }
        Ok(Self {
            control: OverlayControl {
                config,
                shared,
                mtus,
                started: now,
                config_path,
                peers,
            },
            workers,
            socket,
        })
    }

    /// Serves the control socket and housekeeping until `term` is set,
    /// then stops the workers and removes the socket.
    pub fn run(mut self, term: &AtomicBool) -> anyhow::Result<()> {
        let shared = self.control.shared.clone();
        let control = Arc::new(self.control);
        let socket_path = self.socket.serve(control, term)?;
        shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let _ = std::fs::remove_file(socket_path);
        Ok(())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.control.status()
    }
}

impl PeerSas for Tables {
    fn local(&self) -> IpAddr {
        self.local
    }

    fn peer_sas(&self) -> Vec<(&str, IpAddr, &Mutex<Sa>)> {
        let outbound = self.peers.iter().flat_map(|p| {
            p.outbound
                .iter()
                .map(|sa| (p.spec.name.as_str(), p.spec.underlay, &**sa))
        });
        let inbound = self.inbound.values().map(|e| {
            let p = &self.peers[e.peer].spec;
            (p.name.as_str(), p.underlay, &*e.sa)
        });
        outbound.chain(inbound).collect()
    }
}

impl ControlTarget for OverlayControl {
    fn ike_command(
        &self,
        peer: &str,
        command: &dyn Fn(usize) -> IkeCommand,
    ) -> Result<String, String> {
        self.peers.ike_command(peer, command)
    }

    fn housekeeping(&self, now: Instant) {
        self.shared.fdb.expire(now);
        self.peers.renew_certificates(now, &|| self.reload_file());
        crate::service::poll_sa_lifetimes(now, &**self.shared.tables.load());
    }

    /// Reads the configuration file again and takes the peers to the
    /// file's: added, removed, renewed, new `[peer.ike]` settings; see
    /// `reconfigure`. A configuration that does not load changes nothing.
    fn reload(&self) -> Result<String, String> {
        self.reload_file().map(|done| done.message)
    }

    fn export_keys(&self) -> Result<KeyExport, String> {
        self.peers.export_keys(&**self.shared.tables.load())
    }

    fn delete_sas(&self, peer: &str) -> bool {
        // Read-copy-update, one writer at a time (the IKE driver edits
        // too): the workers keep using the old tables until they load the
        // new ones; no packet waits.
        let mut found = false;
        self.shared.edit(&mut |t: &mut Tables| {
            let Some(index) = t.peers.iter().position(|p| p.spec.name == peer) else {
                return;
            };
            found = true;
            t.peers[index].outbound.clear();
            t.inbound.retain(|_, e| e.peer != index);
        });
        found
    }

    fn status(&self) -> Status {
        let tables = self.shared.tables.load();
        let stats = &self.shared.stats;
        let now = Instant::now();
        let networks = self
            .config
            .networks
            .iter()
            .zip(&self.mtus)
            .enumerate()
            .map(|(i, (n, m))| {
                let t = stats.network_total(i).unwrap_or_default();
                NetworkStatus {
                    name: n.name.clone(),
                    vni: n.vni,
                    encapsulation: format!("{:?}", n.encapsulation).to_lowercase(),
                    port: n.port,
                    tap: n.tap.clone(),
                    mtu: m.mtu,
                    tx_frames: t.tx_frames,
                    tx_bytes: t.tx_bytes,
                    rx_frames: t.rx_frames,
                    rx_bytes: t.rx_bytes,
                    flooded: t.flooded,
                    network_mismatch: t.network_mismatch,
                    layout: (n.layout == NetworkLayout::EncryptedVxlan)
                        .then(|| "encrypted_vxlan".to_owned()),
                }
            })
            .collect();
        let ike_states = self.peers.ike_view();
        let peers = tables
            .peers
            .iter()
            .enumerate()
            .filter(|&(i, _)| tables.is_occupied(i))
            .map(|(i, p)| {
                let sas = peer_sa_status(i, &p.outbound, tables.inbound.values());
                PeerStatus {
                    name: p.spec.name.clone(),
                    underlay: p.spec.underlay.to_string(),
                    policies: p
                        .spec
                        .networks
                        .iter()
                        .map(|&(n, pol)| {
                            (
                                tables.networks[n].name.clone(),
                                format!("{pol:?}").to_lowercase(),
                            )
                        })
                        .collect(),
                    sas,
                    ike: ike_states.peers.get(&i).cloned(),
                }
            })
            .collect();
        let fdb = self
            .shared
            .fdb
            .entries(now)
            .into_iter()
            .map(|e| FdbStatus {
                network: tables
                    .networks
                    .get(e.network)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                mac: e.mac.to_string(),
                peer: tables
                    .peers
                    .get(e.peer)
                    .map(|p| p.spec.name.clone())
                    .unwrap_or_default(),
                kind: if e.is_static { "static" } else { "learned" }.to_owned(),
                age_secs: e.age.as_secs(),
            })
            .collect();
        Status {
            networks,
            peers,
            fdb,
            ..node_status(&self.config, tables.esp, self.started, stats, &ike_states)
        }
    }
}

/// What the status of both modes shows alike: the node, the data path's
/// drops, keepalives and IKE on the ESP port, and the IKE endpoint; no
/// network, peer, FDB entry or gateway.
pub(crate) fn node_status(
    config: &Config,
    esp: EspTransport,
    started: Instant,
    stats: &Stats,
    ike: &IkeView,
) -> Status {
    Status {
        ike_endpoint: ike.endpoint.clone(),
        node: NodeStatus {
            name: config.node.name.clone(),
            underlay: config.node.underlay.to_string(),
            esp: match esp {
                EspTransport::Udp(p) => format!("udp:{p}"),
                EspTransport::Raw => "esp".to_owned(),
            },
            uptime_secs: started.elapsed().as_secs(),
        },
        networks: Vec::new(),
        peers: Vec::new(),
        drops: PathDrop::ALL
            .iter()
            .map(|&d| (d.name().to_owned(), stats.drops(d)))
            .collect(),
        keepalives: stats.keepalives.load(Ordering::Relaxed),
        ike_on_esp_port: stats.ike_received.load(Ordering::Relaxed),
        fdb: Vec::new(),
        gateway: None,
    }
}

/// The SAs of the peer in `slot`: its `outbound` ones, then those of
/// `inbound` (every peer's) that lead to it.
pub(crate) fn peer_sa_status<'a>(
    slot: usize,
    outbound: &[SharedSa],
    inbound: impl IntoIterator<Item = &'a InboundEntry>,
) -> Vec<SaStatus> {
    let outbound = outbound.iter().map(|sa| sa_status("out", sa));
    let inbound = inbound
        .into_iter()
        .filter(|e| e.peer == slot)
        .map(|e| sa_status("in", &e.sa));
    outbound.chain(inbound).collect()
}

/// An SA's status.
pub(crate) fn sa_status(direction: &str, sa: &Mutex<Sa>) -> SaStatus {
    let sa = sa.lock().unwrap_or_else(|e| e.into_inner());
    let c = sa.counters();
    SaStatus {
        direction: direction.to_owned(),
        spi: format!("{:#010x}", sa.spi()),
        suite: sa.suite().to_string(),
        esn: sa.esn(),
        mode: Some(
            match sa.mode() {
                Mode::Transport => "transport",
                Mode::Tunnel { .. } => "tunnel",
            }
            .to_owned(),
        ),
        selectors: (!sa.selectors().is_empty()).then(|| {
            sa.selectors()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }),
        state: match sa.lifetime_state() {
            LifetimeState::Live => "live",
            LifetimeState::Soft => "soft",
            LifetimeState::Expired => "expired",
        }
        .to_owned(),
        packets: c.packets,
        bytes: c.bytes,
        last_seq: sa.last_seq(),
        age_secs: sa.created().elapsed().as_secs(),
        drops: DropReason::ALL
            .iter()
            .map(|&r| (r.name().to_owned(), c.drops.get(r)))
            .collect(),
    }
}

/// The address a status shows for a peer.
pub fn show_addr(addr: IpAddr) -> String {
    addr.to_string()
}
