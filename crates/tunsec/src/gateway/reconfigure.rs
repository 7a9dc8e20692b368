//! Peers that come and go while gateway mode runs, failing closed at
//! every step. A change ([`crate::peers::PeerPlan`]) is carried out in
//! this order:
//!
//! 1. The guard ([`nft`]) is replaced, in one transaction, by one that
//!    covers the old peers and the new ones: from here on no cleartext
//!    of either leaves or enters but through the TUN device.
//! 2. The IKE SAs of removed and renewed peers are deleted (a DELETE
//!    reaches the peer) and their SAs leave the tables.
//! 3. The tables: removed peers' slots are emptied, renewed peers get
//!    their new settings, added peers their slots, all with no SA (so
//!    their steered traffic is dropped, `no_sa`, until IKE installs one).
//! 4. The steering ([`steering::adopt`]) takes the rules to the new set:
//!    added peers' traffic goes into the TUN device, removed peers' no
//!    longer does (the guard still drops it).
//! 5. The IKE driver takes up the added and renewed peers (they initiate
//!    as at start-up) and the new credentials of re-authenticated ones.
//! 6. The guard is replaced by the new set's: a removed peer's traffic
//!    now flows as it did before it was configured, in the clear.
//!
//! Other peers' SAs, rules and traffic are untouched throughout: the
//! tables change by read-copy-update, the rules by adding and removing
//! only the changed peers' (adopt never removes a rule it keeps), and the
//! guard's replacement is atomic and covers them at every moment.

use std::time::Instant;

use anyhow::Result;

use super::daemon::{GatewayControl, PeerSources};
use super::{guard_peers, insert_peer, install_guard, nft, steering, steering_of};
use crate::config::{Config, Peer};
use crate::ike::Reloaded;
use crate::peers::{self, PeerPlan, PeerTables};
use tunsec_datapath::gateway::GatewayTables;

impl GatewayControl {
    /// Takes the peers to `wanted` (see the module documentation for the
    /// order). New `[peer.ike]` settings are re-authenticated at once
    /// with `reauth_now`, else at the peer's next IKE SA rekey. An error
    /// says which step failed; the guard then still covers every peer,
    /// old and new.
    pub(crate) fn set_peers(&self, wanted: &[Peer], reauth_now: bool) -> Result<PeerPlan, String> {
        let mut slots = self
            .peers
            .slots
            .lock()
            .map_err(|_| "the peer table is poisoned".to_owned())?;
        let plan = slots.plan(wanted);
        if plan.is_empty() {
            return Ok(plan);
        }
        let started = Instant::now();
        let gw = &self.gw;
        let most_slots = slots.len() + plan.add.len();
        let carry = || nft::counters(&gw.nft_table, most_slots).unwrap_or_default();

        // 1. The guard: old and new.
        let mut both = guard_peers(slots.iter());
        both.extend(guard_peers(by_slot(&plan.add)));
        both.extend(guard_peers(by_slot(&plan.renew)));
        install_guard(gw, &both, &carry()).map_err(|e| format!("guard: {e:#}"))?;

        // 2. The IKE SAs of peers that go or change.
        peers::ike_remove(&slots, &plan, &self.peers.ike_commands)?;

        // 3. The tables.
        let mut failed = None;
        self.shared.edit(&mut |t: &mut GatewayTables| {
            failed = plan.apply_to_tables(t, &self.config, started).err();
        });
        if let Some(e) = failed {
            return Err(format!("tables: {e:#}"));
        }
        slots.apply(&plan);

        // 4. The steering.
        let adopted = steering::adopt(&steering_of(gw, self.config.node.underlay, slots.iter()))
            .map_err(|e| format!("steering: {e:#}"))?;

        // 5. IKE for the new and renewed peers (the Child SAs' selectors
        // are the peers' own, not tunnel ports), new settings for others.
        peers::ike_add(&plan, &self.peers.ike_commands, |_| Vec::new(), reauth_now)?;

        // 6. The guard: the new set only.
        install_guard(gw, &guard_peers(slots.iter()), &carry())
            .map_err(|e| format!("guard: {e:#}"))?;
        tracing::info!(
            rules_added = adopted.added,
            rules_removed = adopted.removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "peers changed: {}",
            plan.summary()
        );
        Ok(plan)
    }

    /// `tunsec reload` and SIGHUP: the file's peers, taken up with
    /// [`Self::set_peers`]; new credentials apply at the next IKE SA
    /// rekey (or `tunsec reauth`). A file that does not load changes
    /// nothing. Settings other than the peers need a restart, and are
    /// named in the answer.
    pub(super) fn reload_file(&self) -> Result<Reloaded, String> {
        let _reloading = crate::systemd::reloading();
        let (new, _) = peers::load_for_reload(self.config_path(), true)?;
        let plan = {
            let mut sources = self
                .sources
                .lock()
                .map_err(|_| "the peer sources are poisoned".to_owned())?;
            sources.file.clone_from(&new.peers);
            self.set_peers(&sources.combined(), false)?
        };
        Ok(peers::reloaded(&plan, &self.config, new))
    }
}

impl PeerSources {
    /// The file's peers, then the database's that take neither a file
    /// peer's name nor its address (the file wins; each is logged).
    pub(super) fn combined(&self) -> Vec<Peer> {
        let mut all = self.file.clone();
        for p in &self.db {
            match self
                .file
                .iter()
                .find(|f| f.name == p.name || f.underlay == p.underlay)
            {
                Some(f) => tracing::warn!(
                    tunnel = %p.name,
                    "OVSDB: tunnel not configured: [[peer]] {:?} of the file has its name or address {}",
                    f.name,
                    p.underlay
                ),
                None => all.push(p.clone()),
            }
        }
        all
    }
}

fn by_slot(list: &[(usize, Peer)]) -> impl Iterator<Item = (usize, &Peer)> {
    list.iter().map(|(s, p)| (*s, p))
}

/// Step 3: the plan's changes to the tables.
impl PeerTables for GatewayTables {
    fn remove_slot(&mut self, slot: usize) {
        self.remove_peer(slot);
    }

    fn insert_slot(&mut self, config: &Config, slot: usize, p: &Peer, now: Instant) -> Result<()> {
        insert_peer(self, config, slot, p, now)
    }

    fn rename_slot(&mut self, slot: usize, name: &str) {
        if let Some(entry) = self.peer_mut(slot) {
            entry.name = name.to_owned();
        }
    }
}
