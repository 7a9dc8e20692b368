//! Rotation: `tunsec reload` (and SIGHUP) hands the IKE driver new
//! `[peer.ike]` settings (a new certificate, key, CA, CRL or PSK); new IKE
//! SAs use them, and established IKE SAs are re-authenticated (a new IKE
//! SA beside the old one, RFC 7296 section 2.8.3) after their next IKE SA
//! rekey, or at once with `tunsec reauth PEER`. No tunnel is torn down:
//! the old IKE SA and its Child SAs carry the traffic until the new ones
//! are up.

use super::peer::{Beside, NextChild, Replacement};
use std::time::Instant;

use tunsec_ike::sa::{ChildSaParams, SaHandle, SystemRandom, Transmit};

use tunsec_datapath::sa_store::SaTables;

use super::install::spi_of;
use super::{INBOUND_GRACE, IkeDriver, SWITCH_WAIT};
use crate::config::IkePeer;

/// Whether two `[peer.ike]` sections authenticate alike: the same PSK, or
/// the same certificate chain and trust, and the same identities. (Key
/// files are compared through the chain they must match.)
pub(crate) fn same_auth(a: &IkePeer, b: &IkePeer) -> bool {
    let certs = match (&a.cert, &b.cert) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.credentials.chain == y.credentials.chain
                && format!("{:?}", x.trust) == format!("{:?}", y.trust)
        }
        _ => false,
    };
    certs
        && a.psk.expose() == b.psk.expose()
        && a.local_id == b.local_id
        && a.remote_id == b.remote_id
}

/// Whether two `[peer.ike]` sections negotiate alike (proposals, mode,
/// selectors and their layout, lifetimes, NAT keepalives). A change applies to new IKE
/// SAs, like new credentials.
pub(crate) fn same_negotiation(a: &IkePeer, b: &IkePeer) -> bool {
    a.ike_proposals == b.ike_proposals
        && a.esp_proposals == b.esp_proposals
        && a.mode == b.mode
        && a.selectors == b.selectors
        && a.layout == b.layout
        && a.child_lifetime == b.child_lifetime
        && a.ike_lifetime == b.ike_lifetime
        && a.nat_keepalive == b.nat_keepalive
}

impl IkeDriver {
    /// A new IKE SA without INITIAL_CONTACT (a re-authentication) has
    /// replaced `old`: if the re-authentication is `ours`, the old IKE SA
    /// is deleted (RFC 7296 section 2.8.3; the DELETE goes out in `out`),
    /// else the peer deletes it; either way it is forgotten now. Its Child
    /// SAs stay in the data path until the new IKE SA's Child SA is up
    /// (`replace_child`).
    pub(super) fn retire_replaced(
        &mut self,
        i: usize,
        old: Option<SaHandle>,
        ours: bool,
        out: &mut Vec<Transmit>,
    ) {
        if let Some(old) = old {
            if let Some(sa) = self.endpoint.sa_mut(old) {
                if ours && sa.is_established() {
                    let _ = sa.delete(Instant::now());
                }
                while let Some(t) = sa.poll_transmit() {
                    out.push(t);
                }
            }
            self.endpoint.remove(old);
        }
        self.peers[i].next_child = NextChild::MakeBeforeBreak { ours };
    }

    /// A re-authenticating IKE SA's first Child SA is up: its Child SAs
    /// replace the old IKE SA's ones (`replace_child`), whose inbound SAs
    /// go after `SWITCH_WAIT` + `INBOUND_GRACE`, and whose outbound SAs
    /// that nothing replaced go then too.
    ///
    /// The old IKE SA's switches still pending (a rekey's, or an earlier
    /// re-authentication's whose peer started it) are dropped: their new
    /// outbound SA never sent, and its IKE SA is gone. The outbound SA
    /// they would have left is the one the new Child SA replaces; the
    /// peer keeps taking it until its own grace ends. (A pending switch
    /// left behind would later put an SA of a replaced IKE SA back.) An
    /// earlier replacement that is not over yet is taken over: its old
    /// outbound SAs are still in the table, so they are in `old_out`.
    pub(super) fn begin_replacement(&mut self, i: usize, ours: bool) {
        let index = self.peers[i].index;
        let p = &mut self.peers[i];
        for dropped in p.pending_outbound.drain(..) {
            tracing::debug!(
                peer = %p.name,
                old_spi_out = format_args!("{:#010x}", dropped.old_spi),
                spi_out = format_args!("{:#010x}", dropped.spi),
                "pending outbound switch dropped: its IKE SA is replaced"
            );
        }
        let early = std::mem::take(&mut p.early_inbound);
        let mut old_out = Vec::new();
        let mut old_in = Vec::new();
        // A read: the copy it publishes is the same tables.
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(outbound) = t.outbound_mut(index) {
                old_out = outbound.iter().filter_map(spi_of).collect();
            }
            old_in = t
                .inbound_mut()
                .iter()
                .filter(|(spi, e)| e.peer == index && !early.contains(spi))
                .map(|(spi, _)| *spi)
                .collect();
        });
        let until = Instant::now() + SWITCH_WAIT + INBOUND_GRACE;
        let p = &mut self.peers[i];
        p.expiring_inbound
            .extend(old_in.into_iter().map(|spi| (spi, until)));
        p.replacement = Some(Replacement {
            ours,
            old_out,
            until,
        });
    }

    /// A Child SA of a re-authenticating IKE SA, make before break: it
    /// replaces the old outbound SA with the same selectors (or the only
    /// one), beside whose inbound SA its own joins. Outbound switches at
    /// once if the re-authentication is `ours` (the peer answered, so it
    /// has the new inbound SA already); for the peer's, `drain_incoming`
    /// switches the first Child SA's once the peer took the new IKE SA,
    /// and a later one's switches after `SWITCH_WAIT`, by which time the
    /// initiator has it. Whether it was done (else the caller installs the
    /// Child SA as an additional one).
    pub(super) fn replace_child(
        &mut self,
        i: usize,
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) -> bool {
        let index = self.peers[i].index;
        let Some(r) = self.peers[i].replacement.as_ref() else {
            return false;
        };
        let (ours, candidates) = (r.ours, r.old_out.clone());
        let wanted = outbound.sa_config().selectors;
        let mut same = None;
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            let Some(out) = t.outbound_mut(index) else {
                return;
            };
            let old: Vec<(u32, bool)> = out
                .iter()
                .filter_map(|sa| {
                    let sa = sa.lock().ok()?;
                    candidates
                        .contains(&sa.spi())
                        .then(|| (sa.spi(), sa.selectors() == wanted.as_slice()))
                })
                .collect();
            same = old
                .iter()
                .find(|(_, eq)| *eq)
                .or(if old.len() == 1 { old.first() } else { None })
                .map(|(spi, _)| *spi);
        });
        let Some(old_spi) = same else {
            return false;
        };
        let name = self.peers[i].name.clone();
        if let Err(e) = self.install_rekeyed(i, old_spi, inbound, outbound) {
            tracing::warn!(peer = %name, "Child SA not installed: {e:#}");
            return false;
        }
        if ours {
            if let Some(k) = self.peers[i].switch_to(outbound.spi) {
                self.switch_outbound(i, k);
            }
        }
        let p = &mut self.peers[i];
        if let Some(r) = p.replacement.as_mut() {
            r.old_out.retain(|&spi| spi != old_spi);
        }
        p.child_sas += 1;
        tracing::info!(
            peer = %name,
            spi_in = format_args!("{:#010x}", inbound.spi),
            spi_out = format_args!("{:#010x}", outbound.spi),
            switched = ours,
            "Child SA up (re-authentication, make before break)"
        );
        super::logging::log_child(
            &name,
            self.peers[i].addr.ip(),
            "Child SA installed (re-authentication)",
            inbound,
            outbound,
        );
        true
    }

    /// Ends a re-authentication's replacement when its time is up: the
    /// old outbound SAs that no new Child SA replaced go.
    pub(super) fn end_replacement(&mut self, i: usize, now: Instant) {
        let due = self.peers[i]
            .replacement
            .as_ref()
            .is_some_and(|r| r.until <= now);
        if !due {
            return;
        }
        let Some(r) = self.peers[i].replacement.take() else {
            return;
        };
        let index = self.peers[i].index;
        tracing::debug!(
            peer = %self.peers[i].name,
            spis_out = ?r.old_out.iter().map(|s| format!("{s:#010x}")).collect::<Vec<_>>(),
            "re-authentication over: old outbound SAs removed"
        );
        self.shared.edit(&mut |t: &mut dyn SaTables| {
            if let Some(out) = t.outbound_mut(index) {
                out.retain(|sa| spi_of(sa).is_none_or(|spi| !r.old_out.contains(&spi)));
            }
        });
    }

    /// Takes up reloaded settings: new IKE SAs use them; an established
    /// IKE SA is re-authenticated after its next rekey.
    pub(super) fn reload(&mut self, updates: Vec<(usize, Box<IkePeer>)>) {
        let local = self.local;
        for (index, ike) in updates {
            let Some(p) = self.peers.iter_mut().find(|p| p.index == index) else {
                continue;
            };
            p.initiator = super::peer::designated_initiator(&ike, local, p.addr.ip());
            p.ike = *ike;
            p.reauth_on_rekey = p.handle.is_some();
            tracing::info!(
                peer = %p.name,
                "IKE: credentials reloaded; new IKE SAs use them, the current one is re-authenticated at its next rekey (or tunsec reauth)"
            );
        }
        self.publish_status();
    }

    /// Re-authenticates peer `index` now: initiates a new IKE SA with the
    /// current settings beside the established one; once it is up it
    /// replaces the old IKE SA and its Child SAs (see `drain_incoming`),
    /// and the peer, seeing a new IKE SA with INITIAL_CONTACT, does the
    /// same. Without an established IKE SA, this is `up`.
    pub(super) fn reauth(&mut self, now: Instant, index: usize) {
        let Some(i) = self.peers.iter().position(|p| p.index == index) else {
            return;
        };
        let established = self.peers[i]
            .handle
            .and_then(|h| self.endpoint.sa_mut(h))
            .is_some_and(|sa| sa.is_established());
        let p = &mut self.peers[i];
        p.reauth_on_rekey = false;
        if !established {
            p.admin_down = false;
            if p.handle.is_none() {
                p.retry_at = Some(now);
            }
            tracing::info!(peer = %p.name, "IKE: re-authentication: no IKE SA up, initiating");
            return;
        }
        if p.beside.is_some() {
            // That IKE SA may have been set up with the settings before
            // this re-authentication's (a responder keeps the settings it
            // was accepted with): ours follows once it is done, whether
            // it came up or failed (`drain_incoming`).
            p.reauth_pending = true;
            tracing::info!(peer = %p.name, "IKE: re-authentication: a new IKE SA is already on its way; ours follows once it is done");
            return;
        }
        let mut config = Self::ike_config(self.local, p, self.esp_port, &self.networks);
        // RFC 7296 section 2.4: INITIAL_CONTACT says we hold no other IKE
        // SA with the peer; here we do, until the new one replaces it.
        config.initial_contact = false;
        let addr = p.addr;
        match self
            .endpoint
            .connect(config, addr, now, Box::new(SystemRandom))
        {
            Ok(handle) => {
                let p = &mut self.peers[i];
                p.beside = Some(Beside::new(handle, true));
                tracing::info!(peer = %p.name, "IKE: re-authenticating: a new IKE SA beside the current one");
            }
            Err(e) => {
                let p = &mut self.peers[i];
                tracing::warn!(peer = %p.name, "IKE: cannot re-authenticate: {e}");
                p.last_error = Some(format!("cannot re-authenticate: {e}"));
            }
        }
        self.publish_status();
    }
}
