//! The IKE SAs' transmits and events: closed SAs, a new IKE SA that
//! replaces the old one, Child SAs to install.

use super::logging::{describe_events, log_child, suite_name};
use super::peer::{Beside, NextChild};
use super::{CONFIRM_WAIT, INBOUND_GRACE, IkeDriver, LIVENESS, RETRY_MAX, RETRY_MIN, hint};
use std::time::Instant;

use tunsec_datapath::io::socket::Batch;
use tunsec_ike::message::NotifyType;
use tunsec_ike::sa::{ChildSaParams, Event};

/// The log messages of a Child SA pair installed, or not.
const CHILD_INSTALLED: (&str, &str) = ("Child SA installed", "Child SA not installed");
/// The log messages of a rekeyed Child SA pair installed, or not.
const REKEYED_CHILD_INSTALLED: (&str, &str) = (
    "Child SA installed (rekey)",
    "rekeyed Child SA not installed",
);

/// How often a quiet driver republishes its status view.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl IkeDriver {
    /// Sends every pending datagram and handles every pending event.
    pub(super) fn drain(&mut self, batch: &mut Batch) {
        let mut out = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            out.push(t);
        }
        let now = Instant::now();
        let mut changed = false;
        for i in 0..self.peers.len() {
            self.drain_half_open(i, &mut out);
            self.drain_incoming(i, &mut out);
            let Some(handle) = self.peers[i].handle else {
                continue;
            };
            let mut events = Vec::new();
            let closed = match self.endpoint.sa_mut(handle) {
                Some(sa) => {
                    while let Some(t) = sa.poll_transmit() {
                        out.push(t);
                    }
                    while let Some(e) = sa.poll_event() {
                        events.push(e);
                    }
                    sa.is_closed()
                }
                None => true,
            };
            changed |= !events.is_empty() || closed;
            for e in events {
                self.handle_event(i, e);
            }
            if closed {
                self.endpoint.remove(handle);
                self.peers[i].handle = None;
                self.peers[i].liveness_at = None;
                self.peers[i].keepalive_at = None;
                let (index, name) = (self.peers[i].index, self.peers[i].name.clone());
                self.remove_all(i, index, &name);
                let p = &mut self.peers[i];
                if p.initiator && !p.admin_down {
                    p.retry_at = Some(now + p.retry_wait);
                    p.retry_wait = (p.retry_wait * 2).min(RETRY_MAX);
                }
            }
        }
        changed |= !out.is_empty();
        self.send(batch, &out);
        // The view's times are in whole seconds: a quiet driver (a
        // thousand Child SAs, nothing happening) republishes it once a
        // second, not at every wake-up.
        if changed || now.saturating_duration_since(self.published_at) >= STATUS_EVERY {
            self.publish_status();
        }
    }

    /// Polls peer `i`'s half-open IKE SAs (the IKE_SA_INIT requests from
    /// its address that we answered): sends what they send; one that
    /// failed goes, counted; the first that authenticates is the peer's
    /// (a spoofed request cannot: it has no key) and becomes its IKE SA,
    /// or waits beside the established one, which it replaces
    /// (`drain_incoming`); the others go.
    fn drain_half_open(&mut self, i: usize, out: &mut Vec<tunsec_ike::sa::Transmit>) {
        let mut k = 0;
        while k < self.peers[i].half_open.len() {
            let handle = self.peers[i].half_open[k];
            let Some(sa) = self.endpoint.sa_mut(handle) else {
                self.peers[i].half_open.remove(k);
                continue;
            };
            while let Some(t) = sa.poll_transmit() {
                out.push(t);
            }
            if sa.is_closed() {
                let events: Vec<Event> = std::iter::from_fn(|| sa.poll_event()).collect();
                self.peers[i].half_open.remove(k);
                self.endpoint.remove(handle);
                self.half_open_failed(i, events);
                continue;
            }
            if sa.is_established() {
                self.peers[i].half_open.remove(k);
                for other in std::mem::take(&mut self.peers[i].half_open) {
                    self.endpoint.remove(other);
                }
                self.authenticated(i, handle);
                return;
            }
            k += 1;
        }
    }

    /// The peer's IKE SA `handle`, which we answered, has authenticated.
    /// Beside an established IKE SA, the peer restarted, lost its IKE SA
    /// or re-authenticates: the new one replaces the old one in
    /// `drain_incoming`, and a re-authentication of our own gives way to
    /// it (the peer has the lower address, see `accepts`). Else it is the
    /// peer's IKE SA, and our own attempt, if any, goes.
    fn authenticated(&mut self, i: usize, handle: tunsec_ike::sa::SaHandle) {
        let established = self.peers[i]
            .handle
            .and_then(|h| self.endpoint.sa_mut(h))
            .is_some_and(|sa| sa.is_established());
        let p = &mut self.peers[i];
        if established {
            let theirs = Beside::new(handle, false);
            let (name, index) = (p.name.clone(), p.index);
            if let Some(older) = p.beside.replace(theirs) {
                self.endpoint.remove(older.handle);
                self.remove_inbound(index, &older.early_inbound);
                if older.ours {
                    tracing::info!(peer = %name, "IKE: both sides re-authenticate: ours gives way to the peer's");
                }
            }
            tracing::info!(peer = %name, "IKE: the peer starts a new IKE SA");
        } else if let Some(ours) = p.handle.replace(handle) {
            tracing::info!(peer = %p.name, "IKE: the peer's IKE SA is up: our own attempt gives way");
            self.endpoint.remove(ours);
        }
    }

    /// One of peer `i`'s half-open IKE SAs closed with `events` before it
    /// authenticated. Beside an established IKE SA that one stays. Else a
    /// failure the peer's IKE_AUTH caused (authentication, a notify) is
    /// handled as the peer's IKE SA's. One that never got an IKE_AUTH (a
    /// spoofed IKE_SA_INIT, or a peer that gave up) is only counted
    /// (`handshakes_failed` in status) and logged: `last_error` says
    /// `peer dead` only when our own requests got no answer.
    fn half_open_failed(&mut self, i: usize, events: Vec<Event>) {
        let up = self.peers[i]
            .handle
            .and_then(|h| self.endpoint.sa_mut(h))
            .is_some_and(|sa| sa.is_established());
        let p = &mut self.peers[i];
        p.handshakes_failed += 1;
        let unanswered = events.iter().all(|e| matches!(e, Event::PeerDead));
        if up {
            let why = describe_events(&events);
            tracing::info!(peer = %p.name, handshakes_failed = p.handshakes_failed, "IKE: an IKE_SA_INIT from the peer's address we answered failed ({why}); the established IKE SA stays");
        } else if unanswered {
            tracing::warn!(
                peer = %p.name,
                handshakes_failed = p.handshakes_failed,
                "IKE: an IKE_SA_INIT from the peer's address we answered got no IKE_AUTH within {} s (a spoofed request, or the peer gave up)",
                tunsec_ike::sa::HALF_OPEN_TIMEOUT.as_secs()
            );
        } else {
            for e in events {
                self.handle_event(i, e);
            }
        }
        let p = &mut self.peers[i];
        if p.initiator
            && !p.admin_down
            && p.handle.is_none()
            && p.half_open.is_empty()
            && p.retry_at.is_none()
        {
            p.retry_at = Some(Instant::now() + p.retry_wait);
            p.retry_wait = (p.retry_wait * 2).min(RETRY_MAX);
        }
    }

    /// Polls a peer's new IKE SA that waits beside the established one:
    /// once authenticated it replaces the old one, whose Child SAs go with
    /// it (the peer restarted: RFC 7296 section 2.4); if it fails, the old
    /// one stays.
    pub(super) fn drain_incoming(&mut self, i: usize, out: &mut Vec<tunsec_ike::sa::Transmit>) {
        let Some((incoming, ours, established_at)) = self.peers[i]
            .beside
            .as_ref()
            .map(|b| (b.handle, b.ours, b.established_at))
        else {
            return;
        };
        let Some(sa) = self.endpoint.sa_mut(incoming) else {
            self.peers[i].beside = None;
            return;
        };
        while let Some(t) = sa.poll_transmit() {
            out.push(t);
        }
        if sa.is_closed() {
            let mut events = Vec::new();
            while let Some(e) = sa.poll_event() {
                events.push(e);
            }
            let why = describe_events(&events);
            tracing::warn!(peer = %self.peers[i].name, "IKE: the new IKE SA failed ({why}); the old one stays");
            self.peers[i].last_error =
                Some(format!("a new IKE SA failed ({why}); the old one stays"));
            self.endpoint.remove(incoming);
            let early = self.peers[i]
                .beside
                .take()
                .map(|b| b.early_inbound)
                .unwrap_or_default();
            // The inbound SAs it put into the data path early
            // (`hold_events`) go.
            self.remove_inbound(self.peers[i].index, &early);
            self.reauth_if_pending(i);
            return;
        }
        if !sa.is_established() {
            return;
        }
        let initial_contact = sa.peer_initial_contact();
        if !ours && !initial_contact && !self.peer_took_it(i, established_at) {
            self.hold_events(i, incoming);
            return;
        }
        let p = &mut self.peers[i];
        let (held, early) = p
            .beside
            .take()
            .map(|b| (b.held, b.early_inbound))
            .unwrap_or_default();
        p.early_inbound = early;
        let old = p.handle.replace(incoming);
        let (index, name) = (p.index, p.name.clone());
        tracing::info!(peer = %name, initial_contact, "IKE: a new IKE SA replaces the old one and its Child SAs");
        if !initial_contact {
            // A re-authentication: make before break (ike/reload.rs).
            self.retire_replaced(i, old, ours, out);
            self.defer_pending_reauth(i);
            // What it reported while it waited comes first.
            for e in held {
                self.handle_event(i, e);
            }
            // A peer's re-authentication replaces the old IKE SA only once
            // the peer took it (`peer_took_it`): it has the new Child SAs'
            // inbound SAs by then, so outbound switches now, not after
            // `SWITCH_WAIT` (by which time an old SA near its hard lifetime
            // may have expired and dropped traffic).
            if !ours {
                while !self.peers[i].pending_outbound.is_empty() {
                    self.switch_outbound(i, 0);
                }
            }
            return;
        }
        if let Some(old) = old {
            self.endpoint.remove(old);
        }
        self.remove_all(i, index, &name);
        self.defer_pending_reauth(i);
        // Its events (IkeSaEstablished, ChildSaUp) are handled with the
        // current IKE SA's, below.
    }

    /// Whether the peer took the re-authenticating IKE SA it started
    /// beside the established one, which we answered: RFC 7296 section
    /// 2.21.2, it may still refuse our AUTH, with an INFORMATIONAL
    /// AUTHENTICATION_FAILED on the new IKE SA (which then closes, and
    /// the old one stays). It took it once it deletes the old IKE SA
    /// (section 2.8.3), or `CONFIRM_WAIT` after the new one came up
    /// without a refusal. Until then the old IKE SA and its Child SAs
    /// stay as they are.
    fn peer_took_it(&mut self, i: usize, established_at: Option<Instant>) -> bool {
        let now = Instant::now();
        let Some(since) = established_at else {
            if let Some(b) = self.peers[i].beside.as_mut() {
                b.established_at = Some(now);
            }
            tracing::debug!(peer = %self.peers[i].name, "IKE: the peer's new IKE SA is up; waiting for the peer to take it");
            return self.old_ike_sa_closed(i);
        };
        self.old_ike_sa_closed(i) || now >= since + CONFIRM_WAIT
    }

    /// While the peer's re-authenticating IKE SA waits for the peer to
    /// take it (`peer_took_it`), its events wait too; but the inbound SA
    /// of each Child SA it brings up goes into the data path at once: the
    /// peer may send on it as soon as it has our IKE_AUTH response.
    fn hold_events(&mut self, i: usize, handle: tunsec_ike::sa::SaHandle) {
        let Some(sa) = self.endpoint.sa_mut(handle) else {
            return;
        };
        let mut events = Vec::new();
        while let Some(e) = sa.poll_event() {
            events.push(e);
        }
        for e in events {
            if let Event::ChildSaUp { inbound, outbound } = &e {
                let (remote, lifetime, index) = {
                    let p = &self.peers[i];
                    (p.addr.ip(), p.ike.child_lifetime, p.index)
                };
                match self.new_pair(remote, lifetime, inbound, outbound) {
                    Ok((sa_in, _)) => {
                        self.publish_inbound(index, inbound.spi, sa_in);
                        if let Some(b) = self.peers[i].beside.as_mut() {
                            b.early_inbound.push(inbound.spi);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(peer = %self.peers[i].name, "inbound SA not installed early: {err:#}");
                    }
                }
            }
            if let Some(b) = self.peers[i].beside.as_mut() {
                b.held.push(e);
            }
        }
    }

    /// Whether peer `i`'s established IKE SA is gone or closed (the peer
    /// deleted it).
    fn old_ike_sa_closed(&mut self, i: usize) -> bool {
        self.peers[i]
            .handle
            .and_then(|h| self.endpoint.sa_mut(h))
            .is_none_or(|sa| sa.is_closed())
    }

    /// The new IKE SA beside the established one came up while a
    /// re-authentication waited for it (`reauth_pending`): it may have
    /// been accepted with the settings before, so the next IKE SA rekey
    /// re-authenticates (not at once: its Child SAs are being installed).
    fn defer_pending_reauth(&mut self, i: usize) {
        if std::mem::take(&mut self.peers[i].reauth_pending) {
            self.peers[i].reauth_on_rekey = true;
        }
    }

    /// The new IKE SA beside the established one failed while a
    /// re-authentication waited for it (`reauth_pending`): it starts now.
    fn reauth_if_pending(&mut self, i: usize) {
        if std::mem::take(&mut self.peers[i].reauth_pending) {
            let index = self.peers[i].index;
            self.reauth(Instant::now(), index);
        }
    }

    pub(super) fn handle_event(&mut self, i: usize, event: Event) {
        let (index, name) = (self.peers[i].index, self.peers[i].name.clone());
        match event {
            Event::IkeSaEstablished => {
                let sa = self.peers[i].handle.and_then(|h| self.endpoint.sa_mut(h));
                let (spis, suite, remote, initiator) = sa.map_or((None, None, None, None), |sa| {
                    (
                        Some(sa.spis()),
                        sa.ike_suite(),
                        sa.remote(),
                        Some(sa.is_initiator()),
                    )
                });
                let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
                tracing::info!(
                    peer = %name,
                    addr = %or_dash(remote.map(|r| r.to_string())),
                    role = %match initiator {
                        Some(true) => "initiator",
                        Some(false) => "responder",
                        None => "-",
                    },
                    spi_i = %or_dash(spis.map(|s| format!("{:#018x}", s.0))),
                    spi_r = %or_dash(spis.map(|s| format!("{:#018x}", s.1))),
                    suite = %or_dash(suite.as_ref().map(suite_name)),
                    "IKE SA established"
                );
                let p = &mut self.peers[i];
                // A fresh IKE SA's first Child SA replaces every SA of the
                // peer, but a re-authentication's (`retire_replaced`, just
                // before this event) is made before the old ones break.
                if !matches!(p.next_child, NextChild::MakeBeforeBreak { .. }) {
                    p.next_child = NextChild::ReplaceAll;
                }
                p.last_error = None;
                p.retry_wait = RETRY_MIN;
                p.liveness_at = Some(Instant::now() + LIVENESS);
                let nat = p
                    .handle
                    .and_then(|h| self.endpoint.sa_mut(h))
                    .and_then(|sa| sa.nat());
                if let Some(nat) = nat {
                    tracing::info!(
                        peer = %name,
                        local_behind_nat = nat.local_behind_nat,
                        remote_behind_nat = nat.remote_behind_nat,
                        forced = nat.forced,
                        "IKE: NAT detection"
                    );
                }
                let p = &mut self.peers[i];
                p.keepalive_at = nat
                    .filter(|n| n.local_behind_nat)
                    .map(|_| Instant::now() + p.ike.nat_keepalive);
            }
            Event::ChildSaUp { inbound, outbound } => {
                // A re-authentication's Child SAs replace the old IKE SA's
                // ones, make before break (ike/reload.rs).
                let next = std::mem::replace(&mut self.peers[i].next_child, NextChild::Join);
                if let NextChild::MakeBeforeBreak { ours } = next {
                    self.begin_replacement(i, ours);
                }
                if self.peers[i].replacement.is_some() && self.replace_child(i, &inbound, &outbound)
                {
                    return;
                }
                // A fresh IKE SA's first Child SA: nothing of an older
                // rekey carries over, and the older SAs go. An additional
                // Child SA joins the ones there are.
                let fresh = next == NextChild::ReplaceAll;
                if fresh {
                    self.peers[i].pending_outbound.clear();
                    self.peers[i].expiring_inbound.clear();
                }
                let result = self.install(index, &inbound, &outbound, fresh);
                self.child_installed(i, result, CHILD_INSTALLED, &inbound, &outbound);
            }
            Event::ChildSaRekeyed {
                old_inbound_spi,
                old_outbound_spi,
                inbound,
                outbound,
            } => {
                let result = self.install_rekeyed(i, old_outbound_spi, &inbound, &outbound);
                if result.is_ok() {
                    tracing::info!(
                        peer = %name,
                        old_spi_in = format_args!("{old_inbound_spi:#010x}"),
                        old_spi_out = format_args!("{old_outbound_spi:#010x}"),
                        spi_in = format_args!("{:#010x}", inbound.spi),
                        spi_out = format_args!("{:#010x}", outbound.spi),
                        "Child SA rekeyed"
                    );
                }
                self.child_installed(i, result, REKEYED_CHILD_INSTALLED, &inbound, &outbound);
            }
            Event::ChildSaDown {
                inbound_spi,
                outbound_spi,
            } => {
                tracing::info!(
                    peer = %name,
                    spi_in = format_args!("{inbound_spi:#010x}"),
                    spi_out = format_args!("{outbound_spi:#010x}"),
                    "Child SA deleted"
                );
                let rekeyed = self.peers[i].switch_from(outbound_spi);
                if let Some(k) = rekeyed {
                    // The old pair of a rekey: both sides have the new one
                    // now. Switch outbound, and let the old inbound SA take
                    // the packets still in flight for a little while.
                    self.switch_outbound(i, k);
                    self.peers[i]
                        .expiring_inbound
                        .push((inbound_spi, Instant::now() + INBOUND_GRACE));
                } else {
                    self.remove_pair(index, inbound_spi, outbound_spi);
                }
            }
            Event::AuthFailed { reason } => {
                let cert = self.peers[i].ike.cert.is_some();
                let reason = hint::auth_failure(&name, &reason, cert);
                tracing::warn!(peer = %name, "IKE authentication failed: {reason}");
                self.peers[i].last_error = Some(format!("authentication failed: {reason}"));
                self.remove_all(i, index, &name);
            }
            Event::Failed { notify, by_peer } => {
                let who = if by_peer { "the peer sent" } else { "we sent" };
                let hint = (by_peer && notify == NotifyType::NoProposalChosen)
                    .then(|| hint::proposals_refused(&self.peers[i].ike.ike_proposals))
                    .flatten()
                    .map(|h| format!(": {h}"))
                    .unwrap_or_default();
                tracing::warn!(peer = %name, "IKE exchange failed: {who} {notify:?}{hint}");
                self.peers[i].last_error = Some(format!("{who} {notify:?}{hint}"));
            }
            Event::IkeSaRekeyed { old_spis, spis } => {
                tracing::info!(
                    peer = %name,
                    old_spi_i = format_args!("{:#018x}", old_spis.0),
                    spi_i = format_args!("{:#018x}", spis.0),
                    spi_r = format_args!("{:#018x}", spis.1),
                    "IKE SA rekeyed"
                );
                self.peers[i].ike_rekeys += 1;
                // Reloaded credentials: the rekeyed IKE SA still stands on
                // the old ones; a new IKE SA takes them up.
                if std::mem::take(&mut self.peers[i].reauth_on_rekey) {
                    self.reauth(Instant::now(), index);
                }
            }
            Event::PeerDead => {
                tracing::warn!(peer = %name, "IKE: peer dead (no answer)");
                self.peers[i].last_error = Some("peer dead: no answer".to_owned());
                self.remove_all(i, index, &name);
            }
            Event::IkeSaDeleted => {
                tracing::info!(peer = %name, "IKE SA deleted by the peer");
                self.peers[i].last_error = Some("deleted by the peer".to_owned());
                self.remove_all(i, index, &name);
            }
            Event::LocalError(e) => {
                tracing::warn!(peer = %name, "IKE: local error: {e}");
                self.peers[i].last_error = Some(format!("local error: {e}"));
                self.remove_all(i, index, &name);
            }
            other => tracing::debug!(peer = %name, ?other, "IKE event"),
        }
    }

    /// After a Child SA pair's installation: counted, and logged as
    /// `messages.0` ([`log_child`]); or its error logged and kept as the
    /// peer's last, after `messages.1`.
    fn child_installed(
        &mut self,
        i: usize,
        result: anyhow::Result<()>,
        messages: (&str, &str),
        inbound: &ChildSaParams,
        outbound: &ChildSaParams,
    ) {
        let (installed, not_installed) = messages;
        let p = &mut self.peers[i];
        match result {
            Ok(()) => {
                p.child_sas += 1;
                log_child(&p.name, p.addr.ip(), installed, inbound, outbound);
            }
            Err(e) => {
                tracing::warn!(peer = %p.name, "{not_installed}: {e:#}");
                p.last_error = Some(format!("{not_installed}: {e:#}"));
            }
        }
    }
}
