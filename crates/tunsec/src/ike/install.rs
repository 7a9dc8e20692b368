//! SAs into the data plane's tables, read-copy-update: new pairs, rekeyed
//! ones (make before break), and their removal.

use super::networks;
use super::{IkeDriver, PendingOutbound, SWITCH_WAIT};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tunsec_datapath::gateway::VniPolicy;
use tunsec_datapath::sa_store::SaTables;
use tunsec_datapath::shared_sa::{InboundEntry, SharedSa};
use tunsec_esp::{Mode, Sa};
use tunsec_ike::sa::ChildSaParams;

use crate::config::ChildMode;

/// The SPI of an installed SA.
pub(super) fn spi_of(sa: &SharedSa) -> Option<u32> {
    sa.lock().ok().map(|sa| sa.spi())
}

impl IkeDriver {
    /// Publishes the inbound SA, then the outbound one: with `replace`
    /// (a fresh IKE SA's first Child SA), instead of all of this peer's
    /// older SAs; else beside them (an additional Child SA).
    pub(super) fn install(
        &self,
        index: usize,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
        replace: bool,
    ) -> anyhow::Result<()> {
        let (remote, lifetime) = self
            .peers
            .iter()
            .find(|p| p.index == index)
            .map(|p| (p.addr.ip(), p.ike.child_lifetime))
            .context("no such IKE peer")?;
        let (sa_in, sa_out) = self.new_pair(remote, lifetime, inbound, outbound)?;
        self.publish_inbound(index, inbound.spi, sa_in);

        let sa_out = Arc::new(Mutex::new(sa_out));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(outbound) = t.outbound_mut(index) {
                if replace {
                    *outbound = vec![sa_out.clone()];
                } else {
                    outbound.push(sa_out.clone());
                }
            }
            if replace {
                // The peer's older inbound SAs go at once.
                t.inbound_mut()
                    .retain(|spi, e| e.peer != index || *spi == inbound.spi);
            }
        });
        Ok(())
    }

    /// Make before break (RFC 7296 section 2.8). The new inbound SA joins
    /// the old one at once. Outbound switches to the new SA only when the
    /// old pair is deleted (by the rekey's initiator, once it has the new
    /// keys: so the peer can open what we send), or after `SWITCH_WAIT`.
    /// The old inbound SA then lingers for `INBOUND_GRACE`.
    pub(super) fn install_rekeyed(
        &mut self,
        i: usize,
        old_outbound_spi: u32,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) -> anyhow::Result<()> {
        let index = self.peers[i].index;
        let (sa_in, sa_out) = self.new_pair(
            self.peers[i].addr.ip(),
            self.peers[i].ike.child_lifetime,
            inbound,
            outbound,
        )?;
        self.publish_inbound(index, inbound.spi, sa_in);
        // A pending switch of an earlier rekey of this Child SA (whose new
        // SA is now the old one) happens now.
        let earlier = self.peers[i].switch_to(old_outbound_spi);
        if let Some(k) = earlier {
            self.switch_outbound(i, k);
        }
        self.peers[i].pending_outbound.push(PendingOutbound {
            old_spi: old_outbound_spi,
            spi: outbound.spi,
            sa: sa_out,
            deadline: Instant::now() + SWITCH_WAIT,
        });
        Ok(())
    }

    /// The data plane's SAs for a negotiated Child SA pair with the peer
    /// at `remote` (the inbound one with the configured replay window):
    /// in transport mode, or, when USE_TRANSPORT_MODE was not agreed
    /// (RFC 7296 section 1.3.1), in tunnel mode between the two underlay
    /// addresses.
    ///
    /// With a `child_lifetime`, both SAs stop at its end (their hard time
    /// limit, RFC 4301 section 4.4.2.1): the IKE SA rekeys them at 80 to
    /// 90% of it, and a pair that was not rekeyed in time carries nothing
    /// more. The soft limit stays unset: the IKE SA's own timer asks for
    /// the rekey.
    pub(super) fn new_pair(
        &self,
        remote: IpAddr,
        child_lifetime: Option<Duration>,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) -> anyhow::Result<(Sa, Sa)> {
        let now = Instant::now();
        if let Some(want) = self.gateway_mode {
            let transport = want == ChildMode::Transport;
            anyhow::ensure!(
                inbound.transport == transport && outbound.transport == transport,
                "the Child SA is in {} mode, gateway.mode is {want:?}",
                if inbound.transport {
                    "transport"
                } else {
                    "tunnel"
                }
            );
        }
        let mode = |p: &ChildSaParams| {
            if p.transport {
                Mode::Transport
            } else {
                Mode::Tunnel {
                    local: self.local,
                    remote,
                }
            }
        };
        // Keys per network: the pair carries only its network's frames.
        let binding = match (self.gateway_mode, inbound.label.as_deref()) {
            // Gateway mode: the label names a VNI rule (which the IKE
            // layer took only if it is one of this peer's).
            (Some(_), Some(label)) => {
                Some(VniPolicy::binding_of_label(label).with_context(|| {
                    format!(
                        "the Child SA's label {:?} names no VNI rule",
                        String::from_utf8_lossy(label)
                    )
                })?)
            }
            (Some(_), None) => None,
            (None, label) => networks::binding(&self.networks, label)?,
        };
        let mut cin = inbound.sa_config();
        cin.binding = binding;
        cin.mode = mode(inbound);
        cin.replay_window = self.replay_window;
        cin.lifetime.hard.time = child_lifetime;
        let sa_in = Sa::new(cin, now).context("inbound SA")?;
        let mut cout = outbound.sa_config();
        cout.binding = binding;
        cout.mode = mode(outbound);
        cout.lifetime.hard.time = child_lifetime;
        let sa_out = Sa::new(cout, now).context("outbound SA")?;
        Ok((sa_in, sa_out))
    }

    /// Publishes new tables with an inbound SA added for peer `index`. One
    /// already there with this SPI for this peer stays, with its replay
    /// window: it went in early (`hold_events`) for the same Child SA.
    pub(super) fn publish_inbound(&self, index: usize, spi: u32, sa: Sa) {
        let sa = Arc::new(Mutex::new(sa));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            let inbound = t.inbound_mut();
            if inbound.get(&spi).is_some_and(|e| e.peer == index) {
                return;
            }
            inbound.insert(
                spi,
                InboundEntry {
                    peer: index,
                    sa: sa.clone(),
                },
            );
        });
    }

    /// Publishes the pending rekeyed outbound SA `k` in place of the one
    /// it replaces (or beside the others, if that one is gone).
    pub(super) fn switch_outbound(&mut self, i: usize, k: usize) {
        let pending = self.peers[i].pending_outbound.remove(k);
        let index = self.peers[i].index;
        tracing::debug!(
            peer = %self.peers[i].name,
            old_spi_out = format_args!("{:#010x}", pending.old_spi),
            spi_out = format_args!("{:#010x}", pending.spi),
            "outbound SA switched to the rekeyed one"
        );
        let sa = Arc::new(Mutex::new(pending.sa));
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(outbound) = t.outbound_mut(index) {
                match outbound
                    .iter()
                    .position(|o| spi_of(o) == Some(pending.old_spi))
                {
                    Some(at) => outbound[at] = sa.clone(),
                    None => outbound.push(sa.clone()),
                }
            }
        });
    }

    /// Switches outbound SAs whose wait is over, and removes old inbound
    /// SAs whose grace period is over.
    pub(super) fn rekey_housekeeping(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            self.end_replacement(i, now);
            while let Some(k) = self.peers[i]
                .pending_outbound
                .iter()
                .position(|o| o.deadline <= now)
            {
                self.switch_outbound(i, k);
            }
            let (due, keep): (Vec<_>, Vec<_>) = self.peers[i]
                .expiring_inbound
                .iter()
                .partition(|&&(_, t)| t <= now);
            if due.is_empty() {
                continue;
            }
            self.peers[i].expiring_inbound = keep;
            let index = self.peers[i].index;
            for (spi, _) in &due {
                tracing::debug!(
                    peer = %self.peers[i].name,
                    spi_in = format_args!("{spi:#010x}"),
                    "old inbound SA removed after its grace period"
                );
            }
            self.shared.edit(&mut |t: &mut dyn SaTables| {
                t.inbound_mut()
                    .retain(|spi, e| !(e.peer == index && due.iter().any(|&(d, _)| d == *spi)));
            });
        }
    }

    /// Removes one Child SA pair: the inbound SA, and the outbound one if
    /// it is still installed (after a rekey it no longer is).
    pub(super) fn remove_pair(&self, index: usize, inbound_spi: u32, outbound_spi: u32) {
        tracing::debug!(
            peer = %self
                .peers
                .iter()
                .find(|p| p.index == index)
                .map_or("?", |p| p.name.as_str()),
            spi_in = format_args!("{inbound_spi:#010x}"),
            spi_out = format_args!("{outbound_spi:#010x}"),
            "Child SA removed"
        );
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            t.inbound_mut()
                .retain(|spi, e| !(e.peer == index && *spi == inbound_spi));
            if let Some(outbound) = t.outbound_mut(index) {
                outbound.retain(|sa| spi_of(sa) != Some(outbound_spi));
            }
        });
    }

    /// Removes some of peer `index`'s inbound SAs, by SPI.
    pub(super) fn remove_inbound(&self, index: usize, spis: &[u32]) {
        if spis.is_empty() {
            return;
        }
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            t.inbound_mut()
                .retain(|spi, e| !(e.peer == index && spis.contains(spi)));
        });
    }

    /// Removes every SA of a peer, and forgets its rekeys in progress.
    pub(super) fn remove_all(&mut self, i: usize, index: usize, name: &str) {
        self.peers[i].pending_outbound.clear();
        self.peers[i].replacement = None;
        self.peers[i].expiring_inbound.clear();
        self.peers[i].early_inbound.clear();
        self.remove_sas(index, name);
    }

    /// Removes every SA of a peer: its `require` traffic is dropped.
    pub(super) fn remove_sas(&self, index: usize, name: &str) {
        let mut spis_in = Vec::new();
        let mut spis_out = Vec::new();
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            spis_out.clear();
            spis_in.clear();
            if let Some(slot) = t.outbound_mut(index) {
                spis_out.extend(slot.iter().filter_map(spi_of));
                slot.clear();
            }
            t.inbound_mut().retain(|spi, e| {
                if e.peer == index {
                    spis_in.push(*spi);
                }
                e.peer != index
            });
        });
        if !spis_in.is_empty() || !spis_out.is_empty() {
            let hex = |spis: &[u32]| {
                spis.iter()
                    .map(|s| format!("{s:#010x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::warn!(
                peer = %name,
                spis_in = %hex(&spis_in),
                spis_out = %hex(&spis_out),
                "SAs removed"
            );
        }
    }
}
