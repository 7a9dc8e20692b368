//! Re-authentication before our certificate expires.
//!
//! A peer authenticated with `auth = "cert"` whose end-entity certificate
//! comes within its margin of notAfter (`[peer.ike]
//! reauth_before_expiry`; by default a third of the certificate's
//! validity, at most 7 days) makes tunsecd read its configuration file
//! again, as `tunsec reload` does. If the file now names a certificate
//! that lasts longer (the operator or an ACME client renewed it), the
//! IKE driver takes it up and re-authenticates that peer at once
//! (`tunsec reauth`), so the peer never sees an expired certificate. If
//! not, a warning says when it expires, every hour, and the check runs
//! again every 10 s until a renewal turns up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IkeCommand, IkeCommands, Reloaded};
use crate::config::Config;

/// The longest default margin.
const MAX_MARGIN: Duration = Duration::from_secs(7 * 86_400);
/// How often the certificates are looked at.
const CHECK: Duration = Duration::from_secs(60);
/// How often a due certificate without a renewal is looked for again.
const RETRY: Duration = Duration::from_secs(10);
/// How often the warning about a due certificate repeats.
const WARN_EVERY: Duration = Duration::from_secs(3600);

/// The validity period of a DER certificate, in Unix seconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When a certificate valid from `not_before` to `not_after` (Unix
/// seconds) is due for renewal, with the configured `margin` or the
/// default one.
fn due_at(not_before: i64, not_after: i64, margin: Option<Duration>) -> i64 {
    let span = u64::try_from(not_after.saturating_sub(not_before)).unwrap_or(0);
    let margin = margin.unwrap_or_else(|| Duration::from_secs(span / 3).min(MAX_MARGIN));
    not_after.saturating_sub(i64::try_from(margin.as_secs()).unwrap_or(i64::MAX))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A certificate peer's state.
#[derive(Debug, Clone, Copy)]
struct Watched {
    /// Our certificate's notAfter, Unix seconds.
    not_after: i64,
    /// When it is due, Unix seconds.
    due_at: i64,
    /// When we last warned that no renewal was found.
    warned: Option<Instant>,
}

/// Watches our certificate of each `auth = "cert"` peer (see the module
/// documentation); driven by the daemon's housekeeping tick.
#[derive(Debug)]
pub(crate) struct CertRenewal {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_check: Instant,
    /// By peer name (a peer keeps its name across reloads; its slot may
    /// change).
    peers: HashMap<String, Watched>,
}

impl CertRenewal {
    /// Watches the certificates `config` names.
    pub(crate) fn new(config: &Config) -> Self {
        let peers = config
            .peers
            .iter()
            .filter_map(|p| {
                let ike = p.ike.as_ref()?;
                let cert = ike.cert.as_ref()?;
                let (nb, na) = validity(cert.credentials.end_entity())?;
                Some((
                    p.name.clone(),
                    Watched {
                        not_after: na,
                        due_at: due_at(nb, na, ike.reauth_before_expiry),
                        warned: None,
                    },
                ))
            })
            .collect();
        Self {
            state: Mutex::new(State {
                next_check: Instant::now(),
                peers,
            }),
        }
    }

    /// Looks at the certificates when it is time: reloads the file when
    /// one is due (`reload`, the daemon's own `tunsec reload`), and
    /// re-authenticates the peers whose certificate was renewed, in the
    /// slot `slot_of` gives for their name.
    pub(crate) fn tick(
        &self,
        now: Instant,
        reload: &dyn Fn() -> Result<Reloaded, String>,
        slot_of: &dyn Fn(&str) -> Option<usize>,
        commands: &IkeCommands,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.peers.is_empty() || now < st.next_check {
            return;
        }
        let unix = unix_now();
        let due: Vec<String> = st
            .peers
            .iter()
            .filter(|(_, w)| unix >= w.due_at)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            st.next_check = now + CHECK;
            return;
        }
        st.next_check = now + RETRY;
        // The file may hold renewed certificates.
        let reloaded = match reload() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("certificate renewal: {e}");
                None
            }
        };
        for name in due {
            let renewed = reloaded.as_ref().and_then(|r| {
                let peer = r.config.peers.iter().find(|p| p.name == name)?;
                let ike = peer.ike.as_ref()?;
                let (nb, na) = validity(ike.cert.as_ref()?.credentials.end_entity())?;
                Some((nb, na, ike.reauth_before_expiry))
            });
            let Some(w) = st.peers.get_mut(&name) else {
                continue;
            };
            match renewed {
                Some((nb, na, margin)) if na > w.not_after => {
                    tracing::info!(
                        peer = %name,
                        old_not_after = w.not_after,
                        new_not_after = na,
                        "our certificate is due for renewal and a renewed one is in place: \
                         re-authenticating"
                    );
                    *w = Watched {
                        not_after: na,
                        due_at: due_at(nb, na, margin),
                        warned: None,
                    };
                    let Some(slot) = slot_of(&name) else {
                        continue;
                    };
                    if commands.send(IkeCommand::Reauth(slot)).is_err() {
                        tracing::warn!(peer = %name, "certificate renewal: the IKE driver is gone");
                    }
                }
                _ => {
                    if w.warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                        w.warned = Some(now);
                        tracing::warn!(
                            peer = %name,
                            not_after = w.not_after,
                            seconds_left = w.not_after - unix,
                            "our certificate expires soon and the configuration names no renewed \
                             one: renew it (same path, or a new path and tunsec reload); tunsecd \
                             re-authenticates as soon as it finds it"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_margin_is_a_third_at_most_a_week() {
        // A 90-day certificate: 7 days before its end.
        assert_eq!(due_at(0, 90 * 86_400, None), 83 * 86_400);
        // A 1-day certificate: 8 hours before.
        assert_eq!(due_at(0, 86_400, None), 16 * 3600);
        // A chosen margin wins.
        assert_eq!(
            due_at(0, 90 * 86_400, Some(Duration::from_secs(86_400))),
            89 * 86_400
        );
        // A margin beyond the validity: due at once.
        assert!(due_at(0, 100, Some(Duration::from_secs(1000))) < 0);
    }
}
