//! The gateway daemon's life: start-up in its fail-closed order, the
//! control socket, status, and the removal of everything it installed
//! (see the [parent module](super) for the order and why).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use tunsec_datapath::gateway::GatewayTables;
use tunsec_datapath::io::socket::DatagramSocket;
use tunsec_datapath::io::tun;
use tunsec_datapath::worker::gateway::{self as gateway_worker, GatewayShared};
use tunsec_datapath::worker::{FrameDevice, Sockets};
use tunsec_esp::Sa;

use super::{
    GatewayMtu, build_tables, guard_peers, install_guard, mtu, nft, selector_text, steering,
    steering_of,
};
use crate::config::{ChildMode, Config, EspEncapsulation, Gateway, GuardScopeKind, OnStop, Peer};
use crate::control::server::ControlTarget;
use crate::daemon::{node_status, peer_sa_status};
use crate::ike::{IkeCommand, IkeCommands, IkeDriver, IkeStates};
use crate::keys::KeyExport;
use crate::ovs::unixctl::Unixctl;
use crate::ovs::watch::{self, Reconcile, SharedOvsdbStatus};
use crate::peers::{PeerControl, PeerSlots};
use crate::service::{ControlSocket, PeerSas};
use crate::status::{
    GatewayPolicyStatus, GatewayStatus, IkeStatus, OvsdbStatus, PeerStatus, Status,
    TunnelDeviceStatus,
};

/// What gateway mode put in place on the host: the guard from the
/// start, the steering once the TUN device is up. Dropped at a clean
/// stop or a failed start. With `on_stop = "block"` (the default) all of
/// it stays, so the protected traffic stays blocked until a start adopts
/// it or `tunsec gateway release` removes it; with `"release"` it goes.
struct Entries {
    gw: Gateway,
}

impl Drop for Entries {
    fn drop(&mut self) {
        match self.gw.on_stop {
            OnStop::Block => tracing::info!(
                nft_table = %self.gw.nft_table,
                table = self.gw.table,
                "gateway entries left in place (on_stop = \"block\"): the protected traffic \
                 stays blocked until tunsecd starts again; `tunsec gateway release` removes them"
            ),
            OnStop::Release => {
                if let Err(e) = super::remove_entries(&self.gw) {
                    tracing::error!("gateway clean-up: {e:#}");
                }
            }
        }
    }
}

/// A running daemon in gateway mode.
pub struct GatewayDaemon {
    /// What the control socket and the housekeeping work on.
    control: GatewayControl,
    workers: Vec<JoinHandle<()>>,
    /// The control socket and the metrics endpoint.
    socket: ControlSocket,
    // Dropped after the workers stop (`run` joins them first), then the
    // TUN device closes with the last handle.
    entries: Option<Entries>,
    /// `ovs-appctl`'s endpoint, if `[ovsdb] unixctl` asks for one.
    unixctl: Option<Unixctl>,
}

/// The gateway daemon as its control socket sees it.
pub(super) struct GatewayControl {
    /// The configuration tunsecd started with (its peers are those of
    /// the start; `peers` has them now).
    pub(super) config: Config,
    pub(super) gw: Gateway,
    pub(super) shared: Arc<GatewayShared>,
    mtu: GatewayMtu,
    started: Instant,
    /// The file the configuration came from, for `reload`.
    config_path: Option<PathBuf>,
    /// The peers by slot (changed at run time by `reload` and the OVS
    /// database, see `super::reconfigure`) and the IKE driver's handles.
    pub(super) peers: PeerControl,
    /// Where the peers come from: the configuration file's (as of the
    /// last reload) and the OVS database's (`[ovsdb]`). Held across a
    /// change, so that a reload and a database update never apply a
    /// stale half of the other.
    pub(super) sources: Mutex<PeerSources>,
    /// With `[ovsdb]`: what the database watch reports.
    ovsdb: Option<SharedOvsdbStatus>,
}

/// The two sources of gateway peers.
#[derive(Default)]
pub(super) struct PeerSources {
    /// The configuration file's `[[peer]]`s.
    pub(super) file: Vec<Peer>,
    /// The OVS database's tunnels.
    pub(super) db: Vec<Peer>,
}

impl GatewayDaemon {
    /// Brings gateway mode up (see the module documentation for the
    /// order). `config.gateway` must be set. With `config_path`, the
    /// file the configuration came from, `tunsec reload` and SIGHUP read
    /// it again (its peers; see `super::reconfigure`).
    pub fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        let gw = config
            .gateway
            .clone()
            .context("gateway: the config has no [gateway]")?;
        let now = Instant::now();
        let mtu = mtu(&config, &gw)?;
        let tables = build_tables(&config, &gw, now)?;
        let shared = Arc::new(GatewayShared::new(tables));

        // What a running daemon holds goes first: the control socket,
        // the ESP socket, the TUN device. Whatever fails there leaves a
        // running daemon's entries alone.
        let socket = ControlSocket::bind(&config.node)?;
        // `ovs-appctl -t PATH tunnels/show`, answered from the control
        // socket too.
        let unixctl = config
            .ovsdb
            .as_ref()
            .and_then(|o| o.unixctl.as_deref())
            .map(|path| Unixctl::start(path, config.node.control_socket.clone()))
            .transpose()?;

        let underlay = config.node.underlay;
        let esp = match config.esp.encapsulation {
            EspEncapsulation::Udp => {
                DatagramSocket::udp(SocketAddr::new(underlay, config.esp.port)).with_context(
                    || format!("esp.port: cannot bind {underlay} port {}", config.esp.port),
                )?
            }
            EspEncapsulation::Esp => DatagramSocket::raw_esp(underlay).with_context(|| {
                format!("esp.encapsulation: cannot open a raw ESP socket on {underlay}")
            })?,
        };
        esp.set_mark(gw.fwmark).with_context(|| {
            format!(
                "gateway.fwmark: cannot mark the ESP socket {:#x}",
                gw.fwmark
            )
        })?;
        // The packets of `clear` VNIs leave as they came, whole, from a
        // raw IP socket with the same mark.
        let clear = DatagramSocket::raw_ip(underlay)
            .and_then(|s| s.set_mark(gw.fwmark).map(|()| s))
            .with_context(|| {
                format!("gateway: cannot open the marked raw IP socket on {underlay}")
            })?;
        let sockets = Arc::new(Sockets {
            esp,
            tunnels: Vec::new(),
            clear: Some(clear),
        });

        // The guard goes in first, in one atomic replace of whatever a
        // stopped or killed daemon left: from here on, the selectors'
        // cleartext leaves by no device but the TUN device.
        let slots = PeerSlots::new(&config.peers);
        // A killed daemon's counters are not carried over: they counted
        // another set of slots.
        install_guard(&gw, &guard_peers(slots.iter()), &nft::Counters::default())?;
        let entries = Entries { gw: gw.clone() };

        // With `[offload] gro`, the receive worker writes runs of UDP
        // datagrams as one packet, behind a virtio-net header.
        let uso = config.offload.gro;
        let udp_gso = config.offload.udp_gso;
        let udp_gro = config.offload.udp_gro;
        let dev = tun::open(&gw.tun, mtu.tun, uso)
            .with_context(|| format!("gateway.tun: cannot create TUN device {:?}", gw.tun))?;
        prepare_tun(&gw.tun, underlay.is_ipv4())?;
        dev.enabled(true)
            .with_context(|| format!("gateway.tun: cannot bring {:?} up", gw.tun))?;
        let dev: Arc<dyn FrameDevice> = Arc::new(dev);

        // Then the steering, adopting the rules a stopped daemon left.
        let adopted = steering::adopt(&steering_of(&gw, underlay, slots.iter()))?;
        if adopted.kept + adopted.removed > 0 {
            tracing::info!(
                kept = adopted.kept,
                added = adopted.added,
                removed = adopted.removed,
                "adopted the steering rules left in place"
            );
        }

        let ike_states = IkeStates::default();
        let (ike_commands, commands) = IkeCommands::channel(shared.clone());
        let ike = IkeDriver::new(
            &config,
            shared.clone(),
            sockets.clone(),
            ike_states.clone(),
            commands,
            // Peers with IKE may come at run time.
            true,
        )?
        .map(|d| d.for_gateway(gw.mode, gw.fwmark))
        .transpose()?;

        let mut workers: Vec<JoinHandle<()>> =
            ike.map(IkeDriver::spawn).transpose()?.into_iter().collect();
        {
            let (s, d, e) = (shared.clone(), dev.clone(), sockets.clone());
            workers.push(
                std::thread::Builder::new()
                    .name("tunsec-gw-tx".into())
                    .spawn(move || gateway_worker::run_tx(s, d, e, udp_gso))?,
            );
        }
        {
            let (s, d, e) = (shared.clone(), dev, sockets);
            workers.push(
                std::thread::Builder::new()
                    .name("tunsec-gw-rx".into())
                    .spawn(move || gateway_worker::run_rx(s, d, e, uso, udp_gro))?,
            );
        }
        tracing::info!(
            node = %config.node.name,
            tun = %gw.tun,
            tun_mtu = mtu.tun,
            kernel_tunnel_mtu = mtu.kernel_tunnel,
            "tunsecd running in gateway mode"
        );
        let config_peers = config.peers.clone();
        let peers = PeerControl::new(&config, slots, ike_states, ike_commands);
        if config_path.is_some() {
            socket.reload_on_sighup()?;
        }
        let ovsdb_status = config.ovsdb.as_ref().map(|o| {
            Arc::new(Mutex::new(OvsdbStatus {
                remote: o.remote.to_string(),
                ..OvsdbStatus::default()
            }))
        });
        Ok(Self {
            control: GatewayControl {
                config,
                gw,
                shared,
                mtu,
                started: now,
                config_path,
                peers,
                sources: Mutex::new(PeerSources {
                    file: config_peers,
                    db: Vec::new(),
                }),
                ovsdb: ovsdb_status,
            },
            workers,
            socket,
            entries: Some(entries),
            unixctl,
        })
    }

    /// Serves the control socket until `term` is set, then stops the
    /// workers and the IKE driver and closes the TUN device; the guard
    /// and the steering stay unless `on_stop = "release"`.
    pub fn run(mut self, term: &AtomicBool) -> anyhow::Result<()> {
        let shared = self.control.shared.clone();
        let control = Arc::new(self.control);
        // The OVS database's tunnels, once the control socket is served.
        if let (Some(o), Some(status)) = (&control.config.ovsdb, &control.ovsdb) {
            let target: Arc<dyn Reconcile> = control.clone();
            self.workers.push(
                watch::spawn(o, control.config.clone(), target, status.clone())
                    .context("cannot start the OVSDB thread")?,
            );
        }
        let socket_path = self.socket.serve(control, term)?;
        drop(self.unixctl.take());
        // The workers and the IKE driver stop first (the driver deletes
        // its IKE SAs with the peers); whatever is steered into the TUN
        // device meanwhile is dropped. Then the entries: they stay (the
        // TUN device's route goes with it, the `unreachable` route and
        // the guard block the steered traffic), or with `on_stop =
        // "release"` they go and the kernel's tunnels are as they were.
        shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        drop(self.entries.take());
        let _ = std::fs::remove_file(socket_path);
        Ok(())
    }
}

impl GatewayControl {
    /// The file the configuration came from, if any.
    pub(super) fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// The OVSDB status, with `established` for the tunnels whose peer
    /// has its IKE SA and a Child SA up.
    fn ovsdb_status(&self, ike: &HashMap<usize, IkeStatus>) -> Option<OvsdbStatus> {
        let mut s = self.ovsdb.as_ref()?.lock().ok()?.clone();
        let tables = self.shared.tables.load();
        for t in &mut s.tunnels {
            let up = tables.peers().any(|(slot, p)| {
                p.name == t.name
                    && !p.outbound.is_empty()
                    && ike.get(&slot).is_some_and(|i| i.state == "established")
            });
            if up && t.state == "configured" {
                t.state = "established".to_owned();
            }
        }
        Some(s)
    }
}

impl Reconcile for GatewayControl {
    fn set_db_peers(&self, wanted: Vec<Peer>) -> Result<String, String> {
        let mut sources = self
            .sources
            .lock()
            .map_err(|_| "the peer sources are poisoned".to_owned())?;
        sources.db = wanted;
        self.set_peers(&sources.combined(), true)
            .map(|plan| plan.summary())
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

impl PeerSas for GatewayTables {
    fn local(&self) -> IpAddr {
        self.local
    }

    fn peer_sas(&self) -> Vec<(&str, IpAddr, &Mutex<Sa>)> {
        let outbound = self.peers().flat_map(|(_, p)| {
            p.outbound
                .iter()
                .map(|sa| (p.name.as_str(), p.underlay, &**sa))
        });
        let inbound = self.inbound.values().filter_map(|e| {
            let p = self.peer(e.peer)?;
            Some((p.name.as_str(), p.underlay, &*e.sa))
        });
        outbound.chain(inbound).collect()
    }
}

impl ControlTarget for GatewayControl {
    fn ike_command(
        &self,
        peer: &str,
        command: &dyn Fn(usize) -> IkeCommand,
    ) -> Result<String, String> {
        self.peers.ike_command(peer, command)
    }

    /// Reads the configuration file again and takes the peers to the
    /// file's: added, removed, renewed, new credentials; see
    /// `super::reconfigure`.
    fn reload(&self) -> Result<String, String> {
        self.reload_file().map(|done| done.message)
    }

    /// SA lifetimes (gateway mode has no FDB), certificate renewal.
    fn housekeeping(&self, now: Instant) {
        self.peers.renew_certificates(now, &|| self.reload_file());
        crate::service::poll_sa_lifetimes(now, &**self.shared.tables.load());
    }

    fn export_keys(&self) -> Result<KeyExport, String> {
        self.peers.export_keys(&**self.shared.tables.load())
    }

    fn delete_sas(&self, peer: &str) -> bool {
        let mut found = false;
        self.shared.edit(&mut |t: &mut GatewayTables| {
            let slot = t.peers().find(|(_, p)| p.name == peer).map(|(i, _)| i);
            found = slot.is_some();
            if let Some(slot) = slot {
                if let Some(p) = t.peer_mut(slot) {
                    p.outbound.clear();
                }
                t.inbound.retain(|_, e| e.peer != slot);
            }
        });
        found
    }

    fn status(&self) -> Status {
        let tables = self.shared.tables.load();
        let stats = &self.shared.stats;
        let slots = tables.peers().last().map_or(0, |(i, _)| i + 1);
        let guard = nft::counters(&self.gw.nft_table, slots).ok();
        let ike_states = self.peers.ike_view();
        let mut peers = Vec::new();
        let mut policies = Vec::new();
        for (i, p) in tables.peers() {
            let sas = peer_sa_status(i, &p.outbound, tables.inbound.values());
            peers.push(PeerStatus {
                name: p.name.clone(),
                underlay: p.underlay.to_string(),
                policies: Default::default(),
                sas,
                ike: ike_states.peers.get(&i).cloned(),
            });
            let c = &p.counters;
            let get = |f: fn(
                &tunsec_datapath::stats::NetworkCounters,
            ) -> &std::sync::atomic::AtomicU64| {
                f(c).load(Ordering::Relaxed)
            };
            policies.push(GatewayPolicyStatus {
                peer: p.name.clone(),
                underlay: p.underlay.to_string(),
                policy: "require".to_owned(),
                selectors: p.selectors.iter().map(selector_text).collect(),
                tx_packets: get(|c| &c.tx_frames),
                tx_bytes: get(|c| &c.tx_bytes),
                rx_packets: get(|c| &c.rx_frames),
                rx_bytes: get(|c| &c.rx_bytes),
                guard_drops: guard.as_ref().and_then(|g| g.peers.get(i).copied()),
                vnis: super::vni_status(&p.vnis),
            });
        }
        let tunnel_devices = self
            .gw
            .tunnel_devices
            .iter()
            .map(|name| tunnel_device(name, self.mtu.kernel_tunnel))
            .collect();
        Status {
            peers,
            gateway: Some(GatewayStatus {
                tun: self.gw.tun.clone(),
                mode: match self.gw.mode {
                    ChildMode::Transport => "transport",
                    ChildMode::Tunnel => "tunnel",
                }
                .to_owned(),
                table: self.gw.table,
                rule_priority: self.gw.rule_priority,
                fwmark: self.gw.fwmark,
                nft_table: self.gw.nft_table.clone(),
                guard: format!("{:?}", self.gw.guard).to_lowercase(),
                guard_others: guard
                    .as_ref()
                    .filter(|_| self.gw.guard == GuardScopeKind::All)
                    .map(|g| g.others),
                clear_out: guard.as_ref().map(|g| g.clear_out),
                tun_mtu: self.mtu.tun,
                tunnel_mtu_advice: self.mtu.kernel_tunnel,
                tunnel_devices,
                policies,
                ovsdb: self.ovsdb_status(&ike_states.peers),
            }),
            ..node_status(&self.config, tables.esp, self.started, stats, &ike_states)
        }
    }
}

/// Sets the TUN device's sysctls in the daemon's namespace.
///
/// Decrypted packets arrive on the TUN device from the peer's underlay
/// address, and the device has no IPv4 address of its own: the kernel's
/// reverse-path filter drops everything that arrives on an interface
/// without an address (`last_resort` in `fib_validate_source`), in loose
/// mode as well as strict. So `rp_filter` is 0 on the TUN device; since
/// the kernel applies the larger of `conf/all` and the device's value,
/// a host with `net.ipv4.conf.all.rp_filter` set is refused with a clear
/// error rather than dropping every packet in silence. The device is
/// still down: IPv6 is turned off on it for an IPv4 underlay, and for an
/// IPv6 underlay it gets no link-local address (`addr_gen_mode` 1), so
/// no router solicitations or MLD reports go into the data path.
fn prepare_tun(tun: &str, ipv4: bool) -> anyhow::Result<()> {
    if ipv4 {
        let all =
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
        let all = all.trim();
        if !all.is_empty() && all != "0" {
            anyhow::bail!(
                "gateway: net.ipv4.conf.all.rp_filter is {all}: reverse-path filtering would drop \
                 every decrypted packet on the TUN device {tun:?} (it has no address); set it to 0 \
                 (sysctl -w net.ipv4.conf.all.rp_filter=0; per-device values still apply)"
            );
        }
        let path = format!("/proc/sys/net/ipv4/conf/{tun}/rp_filter");
        std::fs::write(&path, "0").with_context(|| format!("cannot set {path}"))?;
        // Absent when IPv6 is off altogether.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tun}/disable_ipv6"), "1");
    } else {
        let path = format!("/proc/sys/net/ipv6/conf/{tun}/addr_gen_mode");
        std::fs::write(&path, "1").with_context(|| format!("cannot set {path}"))?;
    }
    Ok(())
}

/// A kernel tunnel device's MTU against the advice, and whether the
/// steering can catch its packets at all.
fn tunnel_device(name: &str, advice: u16) -> TunnelDeviceStatus {
    let link = steering::tunnel_link(name).ok().flatten();
    let mtu = link.map(|l| u16::try_from(l.mtu).unwrap_or(u16::MAX));
    TunnelDeviceStatus {
        name: name.to_owned(),
        mtu,
        warning: tunnel_warning(name, link, advice),
    }
}

/// What is wrong with a kernel tunnel device, if anything.
fn tunnel_warning(name: &str, link: Option<steering::TunnelLink>, advice: u16) -> Option<String> {
    let Some(link) = link else {
        return Some("no such device".to_owned());
    };
    if link.vxlan_lower.is_some() {
        return Some(
            "it is bound to a lower device (`dev ...`): its route lookups name that device, \
             the steering's route via the TUN device never matches, and the guard drops its \
             packets on their way out (clear_out); create it without `dev`"
                .to_owned(),
        );
    }
    if link.mtu > u32::from(advice) {
        return Some(format!(
            "MTU {} is larger than {advice}: its full-size packets do not fit the TUN device \
             after ESP and are fragmented or dropped; set `ip link set {name} mtu {advice}`",
            link.mtu
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_device_warnings() {
        assert_eq!(
            tunnel_warning("vx", None, 1385).as_deref(),
            Some("no such device")
        );
        let ok = steering::TunnelLink {
            mtu: 1385,
            vxlan_lower: None,
        };
        assert_eq!(tunnel_warning("vx", Some(ok), 1385), None);
        let big = steering::TunnelLink { mtu: 1450, ..ok };
        assert!(
            tunnel_warning("vx", Some(big), 1385)
                .unwrap()
                .contains("ip link set vx mtu 1385")
        );
        let bound = steering::TunnelLink {
            vxlan_lower: Some(2),
            ..ok
        };
        assert!(
            tunnel_warning("vx", Some(bound), 1385)
                .unwrap()
                .contains("lower device")
        );
    }
}
