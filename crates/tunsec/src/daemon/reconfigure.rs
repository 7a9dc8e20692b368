//! Peers that come and go while overlay mode runs: `tunsec reload` of a
//! file whose `[[peer]]`s changed ([`crate::peers::PeerPlan`]). In this
//! order:
//!
//! 1. The IKE SAs of removed and renewed peers are deleted (a DELETE
//!    reaches the peer) and their SAs leave the tables.
//! 2. The tables: removed peers' slots are emptied (no address, network
//!    or SA leads to them), renewed and added peers get their entries,
//!    with manual SAs or none (a `require` network then drops their
//!    frames until IKE installs one); the FDB forgets the removed slots'
//!    MACs and takes the new peers' static entries.
//! 3. The IKE driver takes up the added and renewed peers, and the new
//!    `[peer.ike]` settings of the others.
//!
//! Other peers' SAs and traffic are untouched: the tables change by
//! read-copy-update, one writer at a time. The networks themselves
//! change only with a restart (their TAP devices and sockets are made
//! at start), so a file whose networks differ is refused.

use std::time::Instant;

use anyhow::Result;

use super::{OverlayControl, peer_entry};
use crate::config::{Config, Network, Peer};
use crate::ike::Reloaded;
use crate::peers::{self, PeerPlan, PeerTables};
use tunsec_datapath::overlay::Tables;

impl OverlayControl {
    /// Takes the peers to `config`'s (see the module documentation for
    /// the order). New `[peer.ike]` settings apply to new IKE SAs, and to
    /// established ones at their next rekey (or `tunsec reauth`).
    pub(super) fn set_peers(&self, config: &Config) -> Result<PeerPlan, String> {
        let mut slots = self
            .peers
            .slots
            .lock()
            .map_err(|_| "the peer table is poisoned".to_owned())?;
        let plan = slots.plan(&config.peers);
        if plan.is_empty() {
            return Ok(plan);
        }
        let now = Instant::now();

        // 1. The IKE SAs of peers that go or change.
        peers::ike_remove(&slots, &plan, &self.peers.ike_commands)?;

        // 2. The tables and the FDB.
        let mut failed = None;
        self.shared.edit(&mut |t: &mut Tables| {
            failed = plan.apply_to_tables(t, config, now).err();
        });
        if let Some(e) = failed {
            return Err(format!("tables: {e:#}"));
        }
        for (slot, _) in plan.remove.iter().chain(&plan.renew) {
            self.shared.fdb.forget_peer(*slot);
        }
        for (slot, p) in plan.add.iter().chain(&plan.renew) {
            for (i, n) in config.networks.iter().enumerate() {
                for (mac, _) in n.fdb.iter().filter(|(_, name)| *name == p.name) {
                    self.shared.fdb.add_static(i, *mac, *slot);
                }
            }
        }
        slots.apply(&plan);

        // 3. IKE for the new and renewed peers, new settings for others.
        let ports = |p: &Peer| crate::ike::tunnel_ports(config, &p.networks);
        peers::ike_add(&plan, &self.peers.ike_commands, ports, false)?;
        tracing::info!("peers changed: {}", plan.summary());
        Ok(plan)
    }

    /// `tunsec reload` and SIGHUP: the file's peers, taken up with
    /// [`Self::set_peers`]. A file that does not load, or whose networks
    /// differ from the running ones, changes nothing.
    pub(super) fn reload_file(&self) -> Result<Reloaded, String> {
        let _reloading = crate::systemd::reloading();
        let (new, path) = peers::load_for_reload(self.config_path.as_deref(), false)?;
        if let Some(what) = network_change(&self.config.networks, &new.networks) {
            return Err(format!(
                "reload: {}: {what}: networks change with a restart; nothing changed",
                path.display()
            ));
        }
        let plan = self.set_peers(&new)?;
        Ok(peers::reloaded(&plan, &self.config, new))
    }
}

/// What differs between the running networks and a reloaded file's,
/// other than their static FDB entries (which follow the peers).
fn network_change(old: &[Network], new: &[Network]) -> Option<String> {
    if old.len() != new.len() {
        return Some(format!("{} networks, not {}", new.len(), old.len()));
    }
    old.iter().zip(new).enumerate().find_map(|(i, (a, b))| {
        let same = a.name == b.name
            && a.vni == b.vni
            && a.port == b.port
            && a.tap == b.tap
            && a.bridge == b.bridge
            && format!("{:?}{:?}", a.encapsulation, a.mtu)
                == format!("{:?}{:?}", b.encapsulation, b.mtu);
        (!same).then(|| format!("network[{i}] ({:?}) changed", b.name))
    })
}

/// Step 2: the plan's changes to the tables.
impl PeerTables for Tables {
    fn remove_slot(&mut self, slot: usize) {
        self.remove_peer(slot);
    }

    fn insert_slot(&mut self, config: &Config, slot: usize, p: &Peer, now: Instant) -> Result<()> {
        let (entry, inbound) = peer_entry(config, slot, p, now)?;
        if let Err(other) = self.insert_peer(slot, entry) {
            anyhow::bail!(
                "peer {:?}: its underlay {} is peer slot {other}'s",
                p.name,
                p.underlay
            );
        }
        if let Some((spi, e)) = inbound {
            self.inbound.insert(spi, e);
        }
        Ok(())
    }

    fn rename_slot(&mut self, slot: usize, name: &str) {
        if let Some(entry) = self.peers.get_mut(slot) {
            entry.spec.name = name.to_owned();
        }
    }
}
