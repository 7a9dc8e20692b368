//! What both daemons share while they run: the control socket (and the
//! metrics endpoint answered from it), the control server, the
//! housekeeping tick and the signals.
//!
//! [`run`] serves the control socket on its own thread
//! ([`crate::control::server`]) and keeps the main thread for the
//! periodic work: once a second [`ControlTarget::housekeeping`] (SA
//! lifetimes, FDB ageing), and a reload on SIGHUP. No control client can
//! delay either.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tunsec_esp::Sa;

use crate::config::Node;
use crate::control::server::{ControlServer, ControlTarget, Limits};
use crate::metrics::MetricsServer;

/// How often the run loop looks at its flags.
const TICK: Duration = Duration::from_millis(50);
/// How often housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// A daemon's control socket, bound, with the metrics endpoint that
/// answers from it and the SIGHUP flag that asks for a reload.
pub(crate) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Set by SIGHUP: reload.
    hangup: Arc<AtomicBool>,
    /// The metrics endpoint, if `[node] metrics_listen` asks for one.
    metrics: Option<MetricsServer>,
}

impl ControlSocket {
    /// Binds `node.control_socket` ([`bind_control_socket`]), then starts
    /// `GET /metrics`, answered from the control socket, if `[node]
    /// metrics_listen` asks for it.
    pub(crate) fn bind(node: &Node) -> anyhow::Result<Self> {
        let listener = bind_control_socket(&node.control_socket)?;
        let metrics = node
            .metrics_listen
            .map(|listen| MetricsServer::start(listen, node.control_socket.clone()))
            .transpose()?;
        Ok(Self {
            listener,
            path: node.control_socket.clone(),
            hangup: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// From now on SIGHUP reloads (`tunsec reload` and SIGHUP read the
    /// configuration file again).
    pub(crate) fn reload_on_sighup(&self) -> anyhow::Result<()> {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, self.hangup.clone())
            .context("cannot handle SIGHUP")?;
        Ok(())
    }

    /// Serves the control socket for `target` until `term` is set
    /// ([`run`]), then says it is stopping and stops the metrics
    /// endpoint. Returns the socket's path, for the caller to remove
    /// once its workers are stopped.
    pub(crate) fn serve(
        self,
        target: Arc<dyn ControlTarget>,
        term: &AtomicBool,
    ) -> anyhow::Result<PathBuf> {
        run(self.listener, target, term, &self.hangup)?;
        tracing::info!("stopping");
        crate::systemd::stopping();
        drop(self.metrics);
        Ok(self.path)
    }
}

/// Binds the control socket with mode 0600. A stale socket file from a
/// crashed daemon is replaced; a live one is an error.
fn bind_control_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("node.control_socket: cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "node.control_socket: {} is in use: another tunsecd is running",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!(
                "node.control_socket: cannot remove stale {}",
                path.display()
            )
        })?;
    }
    // Created with a umask that keeps others out from the first moment,
    // then set to exactly 0600.
    let listener = UnixListener::bind(path)
        .with_context(|| format!("node.control_socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

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

/// A mode's tables, as the housekeeping and the key export read them.
pub(crate) trait PeerSas {
    /// This host's underlay address.
    fn local(&self) -> IpAddr;
    /// Every SA in the tables, the outbound ones first, each with its
    /// peer's name and underlay address.
    fn peer_sas(&self) -> Vec<(&str, IpAddr, &Mutex<Sa>)>;
}

/// Lets the SAs of `tables` see the time (their lifetimes, RFC 4301
/// section 4.4.2.1) and logs each lifetime event with its peer.
pub(crate) fn poll_sa_lifetimes(now: Instant, tables: &impl PeerSas) {
    for (peer, _, sa) in tables.peer_sas() {
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
