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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, bail};
use tunsec_datapath::fdb::DEFAULT_AGEING;
use tunsec_datapath::io::socket::DatagramSocket;
use tunsec_datapath::io::tap;
use tunsec_datapath::overlay::{NetworkSpec, PeerEntry, PeerSpec, Policy, Tables};
use tunsec_datapath::packet::EspTransport;
use tunsec_datapath::shared_sa::InboundEntry;
use tunsec_datapath::stats::PathDrop;
use tunsec_datapath::worker::overlay::{self as worker, OverlayShared};
use tunsec_datapath::worker::{FrameDevice, Sockets};
use tunsec_esp::{DropReason, LifetimeState, Mode, Sa};

use crate::config::{Config, EspEncapsulation, Network, Peer, PolicyKind};
use crate::control::server::ControlTarget;
use crate::ike::{CertRenewal, IkeCommand, IkeCommands, IkeDriver, IkeStates};
use crate::keys::KeyExport;
use crate::metrics::MetricsServer;
use crate::netlink::BridgeProblem;
use crate::peers::PeerSlots;
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
    listener: UnixListener,
    socket_path: PathBuf,
    /// Set by SIGHUP: reload.
    hangup: Arc<AtomicBool>,
    /// The metrics endpoint, if `[node] metrics_listen` asks for one.
    metrics: Option<MetricsServer>,
}

/// The overlay daemon as its control socket sees it.
struct OverlayControl {
    config: Config,
    shared: Arc<OverlayShared>,
    mtus: Vec<NetworkMtu>,
    started: Instant,
    ike_states: IkeStates,
    ike_commands: IkeCommands,
    /// The file the configuration came from, for `reload`.
    config_path: Option<PathBuf>,
    /// Re-authentication before our certificates expire.
    renewal: CertRenewal,
    /// The peers now, by slot: changed at run time by `reload`
    /// (`reconfigure`). Held while a change is carried out.
    peers: Mutex<PeerSlots>,
}

impl Daemon {
    /// Brings everything up. Nothing is left behind on failure: TAP
    /// devices and sockets close with their handles.
    pub fn start(config: Config) -> anyhow::Result<Self> {
        let now = Instant::now();
        let (tables, mtus) = build_tables(&config, now)?;
        let shared = Arc::new(OverlayShared::new(tables, now, DEFAULT_AGEING));
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
            worker_sockets.push(Arc::new(Sockets { esp, tunnels }));
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

        let listener = bind_control_socket(&config.node.control_socket)?;
        // `GET /metrics`, answered from the control socket.
        let metrics = config
            .node
            .metrics_listen
            .map(|listen| MetricsServer::start(listen, config.node.control_socket.clone()))
            .transpose()?;
        let socket_path = config.node.control_socket.clone();

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

        let mut workers = Vec::new();
        if let Some(driver) = ike {
            workers.push(
                std::thread::Builder::new()
                    .name("tunsec-ike".into())
                    .spawn(move || driver.run())?,
            );
        }
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
                    .spawn(move || worker::run_tx(s, d, k, udp_gso))?,
            );
            let (s, d, k) = (shared.clone(), all_queues.clone(), sockets);
            let (gro, udp_gro) = (config.offload.gro, config.offload.udp_gro);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tunsec-rx{w}"))
                    .spawn(move || worker::run_rx(s, d, k, gro, udp_gro))?,
            );
        }
        tracing::info!(node = %config.node.name, underlay = %underlay, "tunsecd running");
        let renewal = CertRenewal::new(&config);
        let config_peers = config.peers.clone();
        Ok(Self {
            control: OverlayControl {
                config,
                shared,
                mtus,
                started: now,
                ike_states,
                ike_commands,
                config_path: None,
                renewal,
                peers: Mutex::new(PeerSlots::new(&config_peers)),
            },
            workers,
            listener,
            socket_path,
            hangup: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// Names the file the configuration came from: `tunsec reload` and
    /// SIGHUP read it again.
    pub fn with_config_path(mut self, path: PathBuf) -> anyhow::Result<Self> {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, self.hangup.clone())
            .context("cannot handle SIGHUP")?;
        self.control.config_path = Some(path);
        Ok(self)
    }

    /// Serves the control socket and housekeeping until `term` is set,
    /// then stops the workers and removes the socket.
    pub fn run(mut self, term: &AtomicBool) -> anyhow::Result<()> {
        let shared = self.control.shared.clone();
        let control = Arc::new(self.control);
        crate::service::run(self.listener, control, term, &self.hangup)?;
        tracing::info!("stopping");
        crate::systemd::stopping();
        drop(self.metrics.take());
        shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        Ok(())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.control.status()
    }
}

impl ControlTarget for OverlayControl {
    fn ike_command(&self, peer: &str, command: fn(usize) -> IkeCommand) -> Result<String, String> {
        crate::peers::ike_command(&self.peers, &self.ike_commands, peer, command)
    }

    fn housekeeping(&self, now: Instant) {
        self.shared.fdb.expire(now);
        self.renewal.tick(
            now,
            &|| self.reload_file(),
            &|name| self.peers.lock().ok()?.slot_of(name),
            &self.ike_commands,
        );
        let tables = self.shared.tables.load();
        let outbound = tables
            .peers
            .iter()
            .flat_map(|p| p.outbound.iter().map(|sa| (p.spec.name.as_str(), &**sa)));
        let inbound = tables
            .inbound
            .values()
            .map(|e| (tables.peers[e.peer].spec.name.as_str(), &*e.sa));
        crate::service::poll_sa_lifetimes(now, outbound.chain(inbound));
    }

    /// Reads the configuration file again and takes the peers to the
    /// file's: added, removed, renewed, new `[peer.ike]` settings; see
    /// `reconfigure`. A configuration that does not load changes nothing.
    fn reload(&self) -> Result<String, String> {
        self.reload_file().map(|done| done.message)
    }

    /// Every SA in the tables (and the rekeyed outbound SAs the IKE
    /// driver holds), with the IKE SAs: see `ike::export_keys`.
    fn export_keys(&self) -> Result<KeyExport, String> {
        let tables = self.shared.tables.load();
        let outbound = tables.peers.iter().flat_map(|p| {
            p.outbound
                .iter()
                .map(|sa| (p.spec.name.as_str(), p.spec.underlay, &**sa))
        });
        let inbound = tables.inbound.values().map(|e| {
            let p = &tables.peers[e.peer].spec;
            (p.name.as_str(), p.underlay, &*e.sa)
        });
        let esp = crate::keys::esp_rows(tables.local, outbound.chain(inbound));
        crate::ike::export_keys(&self.ike_commands, esp)
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
                let c = stats.network(i);
                let get =
                    |f: fn(&tunsec_datapath::stats::NetworkCounters) -> u64| c.map(f).unwrap_or(0);
                NetworkStatus {
                    name: n.name.clone(),
                    vni: n.vni,
                    encapsulation: format!("{:?}", n.encapsulation).to_lowercase(),
                    port: n.port,
                    tap: n.tap.clone(),
                    mtu: m.mtu,
                    tx_frames: get(|c| c.tx_frames.load(Ordering::Relaxed)),
                    tx_bytes: get(|c| c.tx_bytes.load(Ordering::Relaxed)),
                    rx_frames: get(|c| c.rx_frames.load(Ordering::Relaxed)),
                    rx_bytes: get(|c| c.rx_bytes.load(Ordering::Relaxed)),
                    flooded: get(|c| c.flooded.load(Ordering::Relaxed)),
                }
            })
            .collect();
        let ike_states = self
            .ike_states
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let peers = tables
            .peers
            .iter()
            .enumerate()
            .filter(|&(i, _)| tables.is_occupied(i))
            .map(|(i, p)| {
                let mut sas = Vec::new();
                for sa in &p.outbound {
                    sas.push(sa_status("out", sa));
                }
                for e in tables.inbound.values().filter(|e| e.peer == i) {
                    sas.push(sa_status("in", &e.sa));
                }
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
        let drops: BTreeMap<String, u64> = PathDrop::ALL
            .iter()
            .map(|&d| (d.name().to_owned(), stats.drops(d)))
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
            ike_endpoint: ike_states.endpoint.clone(),
            node: NodeStatus {
                name: self.config.node.name.clone(),
                underlay: self.config.node.underlay.to_string(),
                esp: match tables.esp {
                    EspTransport::Udp(p) => format!("udp:{p}"),
                    EspTransport::Raw => "esp".to_owned(),
                },
                uptime_secs: self.started.elapsed().as_secs(),
            },
            networks,
            peers,
            drops,
            keepalives: stats.keepalives.load(Ordering::Relaxed),
            ike_on_esp_port: stats.ike_received.load(Ordering::Relaxed),
            fdb,
            gateway: None,
        }
    }
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

/// Binds the control socket with mode 0600. A stale socket file from a
/// crashed daemon is replaced; a live one is an error.
pub(crate) fn bind_control_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("node.control_socket: cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "node.control_socket: {} is in use: another tunsecd is running",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!(
                "node.control_socket: cannot remove stale {}",
                path.display()
            )
        })?;
    }
    // Created with a umask that keeps others out from the first moment,
    // then set to exactly 0600.
    let listener = UnixListener::bind(path)
        .with_context(|| format!("node.control_socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The address a status shows for a peer.
pub fn show_addr(addr: IpAddr) -> String {
    addr.to_string()
}
