//! systemd's notification protocol (sd_notify(3)), for tunsecd.service
//! (`Type=notify`, `WatchdogSec=`; `dist/tunsecd.service`), with the
//! sd-notify crate:
//!
//! - [`ready`]: `READY=1` once tunsecd has loaded its configuration,
//!   bound its sockets and brought up its devices (tunsecd.rs, after
//!   `start`);
//! - [`watchdog`]: `WATCHDOG=1` from each daemon's main loop, at half the
//!   interval systemd asks for (`WATCHDOG_USEC`), however often it is
//!   called;
//! - [`reloading`]: `RELOADING=1` (with `MONOTONIC_USEC`) when a reload
//!   starts, `READY=1` when it is done, whatever its outcome;
//! - [`stopping`]: `STOPPING=1` when a daemon's loop ends.
//!
//! Without `NOTIFY_SOCKET` in the environment every call does nothing (the
//! watchdog also needs `WATCHDOG_USEC`, and `WATCHDOG_PID`, when set, must
//! be ours). A notification that cannot be sent is logged (the first as
//! a warning) and otherwise ignored: tunsecd never stops for systemd's
//! sake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells the service manager that tunsecd is up.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// Tells the service manager that tunsecd is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the service manager's watchdog if it asked for one and half its
/// interval has passed since the last ping. Cheap enough for every turn of
/// a loop.
pub fn watchdog() {
    let Some(interval) = *WATCHDOG_INTERVAL.get_or_init(sd_notify::watchdog_enabled) else {
        return;
    };
    let now = Instant::now();
    {
        let mut last = LAST_PING.lock().unwrap_or_else(|e| e.into_inner());
        if !ping_due(*last, now, interval) {
            return;
        }
        *last = Some(now);
    }
    send(&[NotifyState::Watchdog]);
}

/// Tells the service manager that a reload has started; the guard tells
/// it that the reload is over (`READY=1`) when dropped.
#[must_use = "the reload is over when the guard is dropped"]
pub fn reloading() -> Reloading {
    // systemd (from v253, Type=notify-reload) wants the time of the
    // reload with RELOADING=1; older ones ignore it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
    Reloading { _private: () }
}

/// A reload in progress: [`ready`] again when dropped.
#[derive(Debug)]
pub struct Reloading {
    _private: (),
}

impl Drop for Reloading {
    fn drop(&mut self) {
        ready();
    }
}

/// The watchdog interval systemd asked for, read once.
static WATCHDOG_INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
/// When the watchdog was last pinged.
static LAST_PING: Mutex<Option<Instant>> = Mutex::new(None);

/// Whether the watchdog is due a ping at `now`: never pinged yet, or half
/// of `interval` gone since the last ping (sd_watchdog_enabled(3)
/// advises pinging at half the interval).
fn ping_due(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= interval / 2)
}

/// Whether a notification has failed before: only the first failure is
/// a warning, so that a broken NOTIFY_SOCKET does not flood the log with
/// one line per watchdog ping.
static FAILED: AtomicBool = AtomicBool::new(false);

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        if FAILED.swap(true, Ordering::Relaxed) {
            tracing::debug!("systemd notification {state:?}: {e}");
        } else {
            tracing::warn!("systemd notification {state:?}: {e} (further failures at debug level)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(30);
        assert!(ping_due(None, t0, interval));
        assert!(!ping_due(Some(t0), t0, interval));
        assert!(!ping_due(
            Some(t0),
            t0 + Duration::from_millis(14_999),
            interval
        ));
        assert!(ping_due(Some(t0), t0 + Duration::from_secs(15), interval));
        assert!(ping_due(Some(t0), t0 + Duration::from_secs(60), interval));
        // A clock that seems to go back never pings early.
        assert!(!ping_due(Some(t0 + Duration::from_secs(1)), t0, interval));
    }
}
