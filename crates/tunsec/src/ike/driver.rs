//! The driver thread's loop: the IKE socket, the inbox, the timers, new IKE
//! SAs from peers, and shutdown.

use super::networks::{self, NetworkLabel};
use super::peer::Replacement;
use super::selectors::{gateway_selectors, selectors, tunnel_ports};
use super::{
    HALF_OPEN_PER_PEER, IDLE, IKE_PORT, IkeCommand, IkeStates, KEEPALIVE_PACKET, LIVENESS,
    MAX_DATAGRAM, PeerIke, RETRY_MAX,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tunsec_datapath::io::socket::{Batch, DatagramSocket, Poller};
use tunsec_datapath::sa_store::SaStore;
use tunsec_datapath::worker::Sockets;
use tunsec_ike::sa::{
    Config as IkeConfig, DatagramEvent, Endpoint, Incoming, Random, SystemRandom,
};
use tunsec_wire::natt::NON_ESP_MARKER;

use crate::config::{ChildKeys, ChildLayout, ChildMode, Config, EspEncapsulation};

/// The IKE driver thread's state.
pub struct IkeDriver {
    /// The data plane's tables (overlay or gateway mode).
    pub(super) shared: Arc<dyn SaStore>,
    pub(super) socket: DatagramSocket,
    /// The data path's sockets: replies to a peer that spoke on the
    /// ESP-in-UDP port leave from that port, behind the non-ESP marker.
    pub(super) sockets: Arc<Sockets>,
    /// The ESP-in-UDP port, when ESP travels in UDP.
    pub(super) esp_port: Option<u16>,
    pub(super) endpoint: Endpoint,
    pub(super) peers: Vec<PeerIke>,
    pub(super) local: IpAddr,
    pub(super) replay_window: u32,
    pub(super) states: IkeStates,
    pub(super) commands: mpsc::Receiver<IkeCommand>,
    /// Gateway mode: the ESP mode every Child SA must have (its tables
    /// have one mode for all peers).
    pub(super) gateway_mode: Option<ChildMode>,
    /// This host's networks, for keys per network (fixed at start).
    pub(super) networks: Vec<NetworkLabel>,
    /// When the status view was last published ([`Self::publish_status`]);
    /// a quiet driver republishes it once a second.
    pub(super) published_at: Instant,
}

impl IkeDriver {
    /// The driver for `config`'s IKE peers, or `None` if no peer uses
    /// IKE (then no socket is opened).
    pub fn new(
        config: &Config,
        shared: Arc<dyn SaStore>,
        sockets: Arc<Sockets>,
        states: IkeStates,
        commands: mpsc::Receiver<IkeCommand>,
        always: bool,
    ) -> anyhow::Result<Option<Self>> {
        let local = config.node.underlay;
        let now = Instant::now();
        let peers: Vec<PeerIke> = config
            .peers
            .iter()
            .enumerate()
            .filter_map(|(index, p)| {
                PeerIke::new(index, p, tunnel_ports(config, &p.networks), local, now)
            })
            .collect();
        if peers.is_empty() && !always {
            return Ok(None);
        }
        let socket = DatagramSocket::udp(SocketAddr::new(local, IKE_PORT))
            .with_context(|| format!("IKE: cannot bind {local} port {IKE_PORT}"))?;
        // From now on IKE on the ESP-in-UDP port comes to us.
        shared
            .ike_inbox()
            .open()
            .context("IKE: cannot make the inbox's eventfd")?;
        let mut driver = Self {
            shared,
            socket,
            sockets,
            esp_port: (config.esp.encapsulation == EspEncapsulation::Udp)
                .then_some(config.esp.port),
            endpoint: Endpoint::new(),
            peers,
            local,
            replay_window: config.esp.replay_window,
            states,
            commands,
            gateway_mode: None,
            networks: networks::labels(config),
            published_at: now,
        };
        driver.publish_status();
        Ok(Some(driver))
    }

    /// Gateway mode: every Child SA must be in `mode` (one installed in
    /// the other is refused, and counted in the peer's last error), and
    /// the IKE socket carries the steering's bypass `mark`.
    pub fn for_gateway(mut self, mode: ChildMode, mark: u32) -> anyhow::Result<Self> {
        self.gateway_mode = Some(mode);
        self.socket
            .set_mark(mark)
            .with_context(|| format!("gateway.fwmark: cannot mark the IKE socket {mark:#x}"))?;
        Ok(self)
    }

    pub(super) fn ike_config(
        local: IpAddr,
        peer: &PeerIke,
        esp_port: Option<u16>,
        networks: &[NetworkLabel],
    ) -> IkeConfig {
        // The overlay's tunnel datagrams between the two underlay
        // addresses (`selectors`), in transport mode unless the config
        // asks for tunnel mode. RFC 7296 section 1.3.1: an initiator asks
        // for transport mode with USE_TRANSPORT_MODE; a responder that
        // allows it follows the request, and one without it answers in
        // tunnel mode.
        let ((local_ts, remote_ts), additional) = if peer.gateway_selectors.is_empty() {
            selectors(
                local,
                peer.addr.ip(),
                peer.ike.selectors,
                &peer.tunnel_ports,
            )
        } else {
            gateway_selectors(
                local,
                peer.addr.ip(),
                &peer.gateway_selectors,
                peer.ike.layout,
            )
        };
        let mut c = IkeConfig::new(
            peer.ike.local_id.clone(),
            peer.ike.remote_id.clone(),
            peer.ike.psk.clone(),
        )
        .with_selectors(local_ts, remote_ts);
        c.additional_children = additional;
        // Keys per network: a labelled Child SA for each network the peer
        // carries, in place of the selectors above (ike/networks.rs).
        if peer.ike.keys == ChildKeys::PerNetwork && peer.gateway_selectors.is_empty() {
            let children = networks::children(
                local,
                peer.addr.ip(),
                peer.ike.selectors,
                &peer.networks,
                networks,
            );
            if let Some(((first_local, first_remote), _)) = children.first() {
                c.local_ts.clone_from(first_local);
                c.remote_ts.clone_from(first_remote);
                c.additional_children = children[1..].iter().map(|(ts, _)| ts.clone()).collect();
                c.child_labels = children.iter().map(|(_, label)| label.clone()).collect();
                c.max_child_sas = tunsec_ike::sa::DEFAULT_MAX_CHILD_SAS + children.len();
            }
        }
        // Gateway mode: a labelled Child SA for each keyed VNI rule, with
        // its selector's traffic selectors, ahead of the shared ones
        // (labels go to the first Child SAs, in order).
        if peer.ike.keys == ChildKeys::PerNetwork && !peer.gateway_selectors.is_empty() {
            let children = networks::gateway_children(local, peer.addr.ip(), &peer.gateway_vnis);
            if let Some(((first_local, first_remote), _)) = children.first() {
                let shared = (
                    std::mem::take(&mut c.local_ts),
                    std::mem::take(&mut c.remote_ts),
                );
                c.local_ts.clone_from(first_local);
                c.remote_ts.clone_from(first_remote);
                let mut more: Vec<_> = children[1..].iter().map(|(ts, _)| ts.clone()).collect();
                more.push(shared);
                more.append(&mut c.additional_children);
                c.additional_children = more;
                c.child_labels = children.iter().map(|(_, label)| label.clone()).collect();
                c.max_child_sas = tunsec_ike::sa::DEFAULT_MAX_CHILD_SAS + children.len();
            }
        }
        // Each side creates the Child SA it sends with (see ChildLayout).
        c.create_missing_children = peer.ike.layout == ChildLayout::Split;
        c.narrow_to_one_child = peer.ike.layout == ChildLayout::Split;
        c.cert = peer.ike.cert.clone();
        c.ike_proposals = peer.ike.ike_proposals.clone();
        c.esp_proposals = peer.ike.esp_proposals.clone();
        c.transport_mode = peer.ike.mode == ChildMode::Transport;
        c.child_lifetime = peer.ike.child_lifetime;
        c.ike_lifetime = peer.ike.ike_lifetime;
        c.fragmentation = peer.ike.fragmentation;
        c.fragment_size = peer.ike.fragment_size;
        // Our data path sends ESP in UDP: NAT detection, and forced
        // encapsulation so that the peer sends ESP in UDP too. With raw
        // ESP, no NAT traversal (IKE could not move to a port we serve).
        if let Some(port) = esp_port {
            c.local_addr = Some(SocketAddr::new(local, IKE_PORT));
            c.natt_port = port;
            c.force_udp_encap = true;
        }
        // We hold at most one IKE SA per peer, and none when we initiate.
        c.initial_contact = true;
        c
    }

    /// Runs the driver on a thread of its own, `tunsec-ike` ([`Self::run`]).
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tunsec-ike".into())
            .spawn(move || self.run())
    }

    /// Runs until `shared.stop` is set, then deletes every IKE SA.
    pub fn run(mut self) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        // The inbox of IKE from the ESP-in-UDP port: readable when the
        // receive worker queued a message (opened in `new`).
        let inbox = match self.shared.ike_inbox().open() {
            Ok(wake) => std::os::fd::AsRawFd::as_raw_fd(&wake),
            Err(e) => {
                tracing::error!("IKE: the inbox has no eventfd: {e}");
                return;
            }
        };
        let mut poller = Poller::new(&[fd, inbox]);
        let mut batch = Batch::new(8);
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
        let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); 8];
        while !self.shared.stopping() {
            let now = Instant::now();
            let next = [
                self.endpoint.poll_timeout(),
                self.peers.iter().filter_map(|p| p.retry_at).min(),
                self.peers.iter().filter_map(|p| p.liveness_at).min(),
                self.peers.iter().filter_map(|p| p.keepalive_at).min(),
                self.peers
                    .iter()
                    .flat_map(|p| p.pending_outbound.iter().map(|o| o.deadline))
                    .min(),
                self.peers
                    .iter()
                    .flat_map(|p| p.expiring_inbound.iter().map(|&(_, t)| t))
                    .min(),
                self.peers
                    .iter()
                    .filter_map(|p| p.replacement.as_ref().map(Replacement::until))
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(IDLE)
                .min(IDLE);
            if poller.wait(wait.as_millis() as i32).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            loop {
                let n = batch.recv(&self.socket, &mut bufs, &mut meta).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for (buf, &(len, src)) in bufs.iter().zip(&meta[..n]) {
                    self.handle_datagram(now, src, &buf[..len]);
                }
            }
            // IKE that came on the ESP-in-UDP port: the receive worker
            // queued it and woke the poll. Cleared before popping, so a
            // message queued meanwhile wakes the next poll.
            if poller.is_ready(1) {
                self.shared.ike_inbox().clear_wake();
            }
            while let Some((src, message)) = self.shared.ike_inbox().pop() {
                self.handle_datagram(Instant::now(), src, &message);
            }
            while let Ok(command) = self.commands.try_recv() {
                self.command(Instant::now(), command);
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.start_due(now);
            self.check_liveness(now);
            self.send_keepalives(now);
            self.rekey_housekeeping(now);
            self.drain(&mut batch);
        }
        self.shutdown(&mut batch);
    }

    pub(super) fn handle_datagram(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        let incoming = match self.endpoint.handle_datagram(now, src, bytes) {
            DatagramEvent::NewSa(incoming) => incoming,
            DatagramEvent::Refused => {
                tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
                return;
            }
            DatagramEvent::Sa(_) | DatagramEvent::Dropped => return,
        };
        let Some(i) = self.accepts(&incoming) else {
            self.endpoint.refuse(incoming);
            tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
            return;
        };
        let config = Self::ike_config(self.local, &self.peers[i], self.esp_port, &self.networks);
        let rng: Box<dyn Random + Send> = Box::new(SystemRandom);
        match self.endpoint.accept(incoming, now, config, rng) {
            Some(handle) => {
                // The request may be spoofed with the peer's address: it
                // waits among the peer's half-open IKE SAs and replaces
                // nothing until its IKE_AUTH authenticates (drain_half_open).
                let p = &mut self.peers[i];
                p.retry_at = None;
                if p.half_open.len() >= HALF_OPEN_PER_PEER {
                    let oldest = p.half_open.remove(0);
                    self.endpoint.remove(oldest);
                    p.handshakes_failed += 1;
                }
                p.half_open.push(handle);
                tracing::info!(peer = %p.name, half_open = p.half_open.len(), "IKE: responding to IKE_SA_INIT");
            }
            None => {
                tracing::debug!(%src, "IKE: IKE_SA_INIT refused");
            }
        }
    }

    /// Whether to answer a new IKE_SA_INIT request, and for which peer:
    /// known peers only, by underlay address, unless down; not when our
    /// own attempt crosses it with a lower nonce, nor when we
    /// re-authenticate as the designated initiator.
    pub(super) fn accepts(&mut self, incoming: &Incoming) -> Option<usize> {
        let remote = incoming.remote();
        let peers = &self.peers;
        let i = peers
            .iter()
            .position(|p| p.addr.ip() == remote.ip() && !p.admin_down)?;
        // The peer's attempt crosses ours: both sides keep the attempt
        // with the lower nonce (as RFC 7296 section 2.8.1 settles
        // colliding rekeys), so exactly one gives way and the two
        // converge on one IKE SA, whoever started first.
        let ours = peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
        if let Some(sa) = ours {
            if let (Some(ours), Some(theirs)) = (sa.pending_init_nonce(), incoming.nonce()) {
                if ours < theirs {
                    tracing::debug!(peer = %peers[i].name, "IKE: the peer's IKE_SA_INIT crosses ours, whose nonce is lower: ours goes on");
                    // The peer gives its attempt up when it sees ours:
                    // now, not at our next retransmission.
                    sa.send_init_again();
                    return None;
                }
            }
        }
        // Both sides re-authenticate at once (each reloaded, and the
        // IKE SA rekey set both off): the designated initiator's new
        // IKE SA is the one both keep, so it refuses the peer's, and
        // the peer gives up its own for ours once ours authenticates
        // (`authenticated` in events.rs).
        let p = &peers[i];
        if p.initiator && p.beside.as_ref().is_some_and(|b| b.ours) {
            return None;
        }
        Some(i)
    }
}

impl IkeDriver {
    /// Initiates to every peer whose retry time has come.
    pub(super) fn start_due(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if p.admin_down || p.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            if p.handle.is_some() {
                // The peer initiated first (the responder's start-up grace).
                self.peers[i].retry_at = None;
                continue;
            }
            let config = Self::ike_config(self.local, p, self.esp_port, &self.networks);
            let addr = p.addr;
            let result = self
                .endpoint
                .connect(config, addr, now, Box::new(SystemRandom));
            let p = &mut self.peers[i];
            match result {
                Ok(handle) => {
                    p.handle = Some(handle);
                    p.retry_at = None;
                    tracing::info!(peer = %p.name, "IKE: initiating");
                }
                Err(e) => {
                    p.last_error = Some(format!("cannot initiate: {e}"));
                    p.retry_at = Some(now + p.retry_wait);
                    p.retry_wait = (p.retry_wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Sends an empty INFORMATIONAL on every established IKE SA whose
    /// liveness check is due (skipped while another request is out).
    pub(super) fn check_liveness(&mut self, now: Instant) {
        for p in &mut self.peers {
            if p.liveness_at.is_none_or(|t| t > now) {
                continue;
            }
            p.liveness_at = Some(now + LIVENESS);
            if let Some(sa) = p.handle.and_then(|h| self.endpoint.sa_mut(h)) {
                if sa.is_established() {
                    let _ = sa.check_liveness(now);
                }
            }
        }
    }

    /// Sends a NAT keepalive (RFC 3948 section 2.3) from the ESP-in-UDP
    /// socket to every peer whose IKE SA found us behind a NAT.
    pub(super) fn send_keepalives(&mut self, now: Instant) {
        for p in &mut self.peers {
            if p.keepalive_at.is_none_or(|t| t > now) {
                continue;
            }
            p.keepalive_at = Some(now + p.ike.nat_keepalive);
            let dst = p
                .handle
                .and_then(|h| self.endpoint.sa_mut(h))
                .and_then(|sa| sa.remote());
            if let Some(dst) = dst {
                let sent = Batch::new(1).send(&self.sockets.esp, [(&KEEPALIVE_PACKET[..], dst)]);
                if sent.refused > 0 {
                    tracing::debug!(peer = %p.name, "NAT keepalive not sent");
                }
            }
        }
    }
}

impl IkeDriver {
    /// Deletes every IKE SA (one DELETE each, not retransmitted) and
    /// removes the SAs from the tables.
    pub(super) fn shutdown(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            let Some(handle) = self.peers[i].handle else {
                continue;
            };
            if let Some(sa) = self.endpoint.sa_mut(handle) {
                if sa.is_established() && sa.delete(now).is_ok() {
                    while let Some(t) = sa.poll_transmit() {
                        out.push(t);
                    }
                    tracing::info!(peer = %self.peers[i].name, "IKE SA deleted on shutdown");
                }
            }
        }
        self.send(batch, &out);
    }

    /// Sends IKE messages: from port 500, or from the ESP-in-UDP port with
    /// the non-ESP marker to a peer that spoke to us there.
    pub(super) fn send(&self, batch: &mut Batch, out: &[tunsec_ike::sa::Transmit]) {
        if out.is_empty() {
            return;
        }
        let on_esp = |t: &&tunsec_ike::sa::Transmit| Some(t.dst.port()) == self.esp_port;
        let marked: Vec<(Vec<u8>, SocketAddr)> = out
            .iter()
            .filter(on_esp)
            .map(|t| ([&NON_ESP_MARKER[..], &t.bytes].concat(), t.dst))
            .collect();
        let plain = batch.send(
            &self.socket,
            out.iter()
                .filter(|t| !on_esp(t))
                .map(|t| (&t.bytes[..], t.dst)),
        );
        let on_esp_port = if marked.is_empty() {
            Default::default()
        } else {
            batch.send(
                &self.sockets.esp,
                marked.iter().map(|(b, dst)| (&b[..], *dst)),
            )
        };
        for (port, r) in [("500", plain), ("ESP", on_esp_port)] {
            if r.refused > 0 {
                let dsts: Vec<SocketAddr> = out.iter().map(|t| t.dst).collect();
                tracing::debug!(
                    refused = r.refused,
                    port,
                    error = ?r.error.map(std::io::Error::from_raw_os_error),
                    ?dsts,
                    "IKE: datagrams not sent"
                );
            }
        }
    }
}
