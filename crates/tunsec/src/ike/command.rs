//! What the control socket asks of the driver (`tunsec
//! up/down/rekey/reauth`, reload, key export).

use super::logging::transform_names;
use super::{DriverKeys, IkeCommand, IkeDriver, PeerIke, RETRY_MIN};
use crate::config::Peer;
use std::time::Instant;

use tunsec_datapath::io::socket::Batch;

impl IkeDriver {
    /// Carries out a command from the control socket.
    pub(super) fn command(&mut self, now: Instant, command: IkeCommand) {
        let index = match command {
            IkeCommand::Reload(updates, done) => {
                self.reload(updates);
                // The control thread may have given up waiting.
                let _ = done.send(());
                return;
            }
            IkeCommand::Reauth(index) => return self.reauth(now, index),
            IkeCommand::AddPeer(index, peer, ports, done) => {
                self.add_peer(now, index, &peer, ports);
                let _ = done.send(());
                return;
            }
            IkeCommand::RemovePeer(index, done) => {
                self.remove_peer(now, index);
                let _ = done.send(());
                return;
            }
            IkeCommand::ExportKeys(reply) => {
                // The control thread may have given up waiting.
                let _ = reply.send(self.export_keys());
                return;
            }
            IkeCommand::Down(index)
            | IkeCommand::Up(index)
            | IkeCommand::Rekey(index)
            | IkeCommand::RekeyIke(index)
            | IkeCommand::RekeyNetwork(index, _) => index,
        };
        let Some(i) = self.peers.iter().position(|p| p.index == index) else {
            return;
        };
        match command {
            IkeCommand::Down(_) => {
                let p = &mut self.peers[i];
                p.admin_down = true;
                p.retry_at = None;
                p.liveness_at = None;
                p.last_error = Some("down by request".to_owned());
                self.take_down(now, i);
                tracing::warn!(peer = %self.peers[i].name, "IKE: down by request");
            }
            IkeCommand::Up(_) => {
                let p = &mut self.peers[i];
                p.admin_down = false;
                p.last_error = None;
                p.retry_wait = RETRY_MIN;
                if p.handle.is_none() {
                    p.retry_at = Some(now);
                }
                tracing::info!(peer = %p.name, "IKE: up by request");
            }
            IkeCommand::Reload(..)
            | IkeCommand::Reauth(_)
            | IkeCommand::ExportKeys(_)
            | IkeCommand::AddPeer(..)
            | IkeCommand::RemovePeer(..) => {}
            IkeCommand::Rekey(_) | IkeCommand::RekeyIke(_) | IkeCommand::RekeyNetwork(..) => {
                let p = &self.peers[i];
                // A network's label: overlay mode names it, gateway mode
                // gives the label itself.
                let label = match &command {
                    IkeCommand::RekeyNetwork(_, n) => Some(
                        self.networks
                            .iter()
                            .find(|l| l.name == *n)
                            .map_or_else(|| n.as_bytes().to_vec(), |l| l.label.clone()),
                    ),
                    _ => None,
                };
                let result = p.handle.and_then(|h| self.endpoint.sa_mut(h)).map(|sa| {
                    match (&command, &label) {
                        (IkeCommand::RekeyIke(_), _) => sa.rekey_ike(now),
                        (_, Some(label)) => sa.rekey_child_labelled(now, label),
                        _ => sa.rekey_child(now),
                    }
                });
                match result {
                    Some(Ok(())) => tracing::info!(peer = %p.name, "IKE: rekeying by request"),
                    Some(Err(e)) => {
                        tracing::warn!(peer = %p.name, "IKE: cannot rekey: {e}");
                    }
                    None => tracing::warn!(peer = %p.name, "IKE: cannot rekey: no IKE SA"),
                }
            }
        }
        self.publish_status();
    }

    /// Deletes peer `i`'s IKE SA (one DELETE, which takes its Child SAs
    /// with it: RFC 7296 section 1.4.1) and forgets it, and its new one
    /// beside it and its half-open ones if any; its SAs leave the tables
    /// at once, so nothing waits on the peer's answer.
    fn take_down(&mut self, now: Instant, i: usize) {
        let p = &mut self.peers[i];
        if let Some(beside) = p.beside.take() {
            self.endpoint.remove(beside.handle);
        }
        for handle in std::mem::take(&mut p.half_open) {
            self.endpoint.remove(handle);
        }
        p.reauth_pending = false;
        if let Some(handle) = p.handle.take() {
            if let Some(sa) = self.endpoint.sa_mut(handle) {
                if sa.is_established() {
                    let _ = sa.delete(now);
                }
                let mut out = Vec::new();
                while let Some(t) = sa.poll_transmit() {
                    out.push(t);
                }
                self.send(&mut Batch::new(4), &out);
            }
            self.endpoint.remove(handle);
        }
        let (index, name) = (self.peers[i].index, self.peers[i].name.clone());
        self.remove_all(i, index, &name);
    }

    /// Takes up a peer configured at run time in slot `index` (replacing
    /// one the driver still knows there).
    fn add_peer(&mut self, now: Instant, index: usize, peer: &Peer, tunnel_ports: Vec<u16>) {
        self.remove_peer(now, index);
        let Some(p) = PeerIke::new(index, peer, tunnel_ports, self.local, now) else {
            return;
        };
        tracing::info!(peer = %p.name, initiator = p.initiator, "IKE: peer added");
        self.peers.push(p);
        self.publish_status();
    }

    /// Forgets the peer in slot `index`, after deleting its SAs.
    fn remove_peer(&mut self, now: Instant, index: usize) {
        let Some(i) = self.peers.iter().position(|p| p.index == index) else {
            return;
        };
        self.take_down(now, i);
        let p = self.peers.remove(i);
        tracing::info!(peer = %p.name, "IKE: peer removed");
        self.publish_status();
    }

    /// The keys of every IKE SA (each peer's current one, and a new one
    /// beside it), and the rekeyed outbound SAs that wait for their
    /// switch: for `tunsec keys export` only.
    pub(super) fn export_keys(&mut self) -> DriverKeys {
        use crate::keys::{EspSaExport, HexKey, IkeSaExport};
        let mut out = DriverKeys::default();
        for p in &self.peers {
            for handle in [p.handle, p.beside.as_ref().map(|b| b.handle)]
                .into_iter()
                .flatten()
            {
                let Some(k) = self.endpoint.sa_mut(handle).and_then(|sa| sa.export_keys()) else {
                    continue;
                };
                let (encryption, integrity) = transform_names(&k.suite);
                out.ike.push(IkeSaExport {
                    peer: p.name.clone(),
                    spi_i: k.spi_i,
                    spi_r: k.spi_r,
                    encryption: encryption.to_owned(),
                    integrity: integrity.map(str::to_owned),
                    sk_ei: HexKey::new(k.keys.sk_ei.expose()),
                    sk_er: HexKey::new(k.keys.sk_er.expose()),
                    sk_ai: HexKey::new(k.keys.sk_ai.expose()),
                    sk_ar: HexKey::new(k.keys.sk_ar.expose()),
                });
            }
            for pending in &p.pending_outbound {
                out.esp.push(EspSaExport::of(
                    &p.name,
                    self.local,
                    p.addr.ip(),
                    &pending.sa,
                ));
            }
        }
        out
    }
}
