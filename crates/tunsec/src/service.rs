//! What both daemons share while they run: the control server, the
//! housekeeping tick and the signals.
//!
//! [`run`] serves the control socket on its own thread
//! ([`crate::control::server`]) and keeps the main thread for the
//! periodic work: once a second [`ControlTarget::housekeeping`] (SA
//! lifetimes, FDB ageing), and a reload on SIGHUP. No control client can
//! delay either.

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunsec_esp::Sa;

use crate::control::server::{ControlServer, ControlTarget, Limits};

/// How often the run loop looks at its flags.
const TICK: Duration = Duration::from_millis(50);
/// How often housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Serves `listener` for `target` and runs its housekeeping until `term`
/// is set; SIGHUP (`hangup`) reloads. Returns once the control server has
/// stopped.
pub fn run(
    listener: UnixListener,
    target: Arc<dyn ControlTarget>,
    term: &AtomicBool,
    hangup: &AtomicBool,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let server = ControlServer::start(listener, target.clone(), Limits::default())?;
    let mut last = Instant::now();
    while !term.load(Ordering::Relaxed) {
        if hangup.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: reloading");
            match target.reload() {
                Err(message) => tracing::error!("reload: {message}"),
                Ok(message) => tracing::info!("reload: {message}"),
            }
        }
        crate::systemd::watchdog();
        let now = Instant::now();
        if now.duration_since(last) >= HOUSEKEEPING {
            target.housekeeping(now);
            last = now;
        }
        std::thread::sleep(TICK);
    }
    server.stop();
    Ok(())
}

/// Lets the SAs see the time (their lifetimes, RFC 4301 section
/// 4.4.2.1) and logs each lifetime event with its peer.
pub fn poll_sa_lifetimes<'a>(
    now: Instant,
    sas: impl IntoIterator<Item = (&'a str, &'a Mutex<Sa>)>,
) {
    for (peer, sa) in sas {
        let Ok(mut sa) = sa.lock() else { continue };
        sa.handle_timeout(now);
        while let Some(event) = sa.poll_event() {
            tracing::warn!(peer = %peer, spi = format_args!("{:#x}", sa.spi()), ?event, "SA lifetime");
        }
    }
}

/// Raises the soft limit on open files to the hard limit (at most
/// 65536): each control client holds a descriptor, and the default soft
/// limit of 1024 would run out under a few hundred idle clients.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.min(65_536);
    if soft < want {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            tracing::warn!("cannot raise the open-file limit from {soft} to {want}: {e}");
        }
    }
}
