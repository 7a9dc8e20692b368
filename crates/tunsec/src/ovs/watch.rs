//! Following the OVS database: a thread that monitors the `Interface` and
//! `Open_vSwitch` tables ([`super::MONITORED`]) with `tunsec-ovsdb`, and
//! on every change takes the gateway's peers to the configuration file's
//! plus one per tunnel that needs IPsec ([`Reconcile::set_db_peers`]: new
//! tunnels start their IKE SA, changed ones are re-authenticated or
//! renewed, removed ones are deleted; nothing else is touched).
//!
//! A tunnel that is invalid (a missing option, a certificate that does
//! not load) is reported in status and the log, with the option at
//! fault, and becomes no peer; the other tunnels go on. When the database
//! goes away the peers stay as they are, SAs and all, and the client
//! reconnects with back-off and a full resync, after which the peers are
//! reconciled again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tunsec_ovsdb::{Driver, Event};

use super::peer::peer_of;
use super::{MONITORED, OvsTunnel, PeerTrust, TunnelAuth, from_cache, tunnel};
use crate::config::{Config, Ovsdb, Peer};
use crate::status::{OvsTunnelStatus, OvsdbStatus};

/// How long the thread waits for the database between looks at the stop
/// flag.
const TICK: Duration = Duration::from_millis(200);

/// After a failed reconciliation, when to try again.
const RETRY: Duration = Duration::from_secs(2);

/// What the watch drives: the daemon's peers.
pub trait Reconcile: Send + Sync {
    /// Takes the database's peers to `wanted` (the configuration file's
    /// stay), re-authenticating changed credentials at once; the answer
    /// says what changed.
    fn set_db_peers(&self, wanted: Vec<Peer>) -> Result<String, String>;
    /// Whether the daemon stops.
    fn stopping(&self) -> bool;
}

/// The OVSDB status that the thread keeps and `tunsec status` shows.
pub type SharedOvsdbStatus = Arc<Mutex<OvsdbStatus>>;

/// Starts the thread for `ovsdb`, with `running` as the configuration
/// (its peers stay, beside the database's).
pub fn spawn(
    ovsdb: &Ovsdb,
    running: Config,
    target: Arc<dyn Reconcile>,
    status: SharedOvsdbStatus,
) -> std::io::Result<JoinHandle<()>> {
    let mut config = tunsec_ovsdb::Config::new(ovsdb.database.clone());
    for (table, columns) in MONITORED {
        config = config.monitor(table, columns);
    }
    let driver = Driver::new(ovsdb.remote.clone(), config);
    if let Ok(mut s) = status.lock() {
        s.remote = ovsdb.remote.to_string();
    }
    std::thread::Builder::new()
        .name("tunsec-ovsdb".into())
        .spawn(move || run(driver, &running, &*target, &status))
}

fn run(mut driver: Driver, running: &Config, target: &dyn Reconcile, status: &SharedOvsdbStatus) {
    let mut pending: Option<Instant> = None;
    while !target.stopping() {
        match driver.poll_event(TICK) {
            Some(Event::Connected) => {
                tracing::info!(remote = %driver.remote(), "OVSDB: monitoring");
                update(status, |s| {
                    s.connected = true;
                    s.last_error = None;
                });
            }
            Some(Event::Changed) => pending = Some(Instant::now()),
            Some(Event::Disconnected { reason }) => {
                tracing::warn!(
                    remote = %driver.remote(),
                    "OVSDB: connection lost ({reason}); the tunnels stay as they are until it is back"
                );
                update(status, |s| {
                    s.connected = false;
                    s.last_error = Some(reason.to_string());
                });
            }
            None => {}
        }
        // A connection that failed before `Connected` (refused, or
        // garbage in answer to get_schema) says why here.
        if !driver.is_connected() {
            let why = driver.client().last_error().map(ToString::to_string);
            let failures = driver.connect_failures();
            update(status, |s| {
                s.connected = false;
                if let Some(why) = why {
                    s.last_error = Some(why);
                } else if failures > 0 {
                    s.last_error = Some(format!("cannot connect ({failures} attempts)"));
                }
            });
        }
        if pending.is_some_and(|t| t <= Instant::now()) {
            let (wanted, tunnels) = wanted_peers(driver.cache(), running);
            let result = target.set_db_peers(wanted);
            update(status, |s| {
                s.updates += 1;
                s.tunnels = tunnels;
            });
            match result {
                Ok(message) => {
                    tracing::info!("OVSDB: {message}");
                    pending = None;
                }
                Err(e) => {
                    tracing::error!(
                        "OVSDB: the tunnels could not be configured: {e}; again in {} s",
                        RETRY.as_secs()
                    );
                    pending = Some(Instant::now() + RETRY);
                }
            }
        }
    }
}

fn update(status: &SharedOvsdbStatus, f: impl FnOnce(&mut OvsdbStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// The peers that the database's state asks for, one per valid tunnel,
/// and every tunnel's status. A tunnel is invalid
/// if the contract says so, if it cannot be a peer, if its name is a
/// file peer's, or if an earlier tunnel (by name) has its remote address
/// already (one peer per address).
pub fn wanted_peers(
    cache: &tunsec_ovsdb::Cache,
    running: &Config,
) -> (Vec<Peer>, Vec<OvsTunnelStatus>) {
    let (rows, pki) = from_cache(cache);
    let mut peers = Vec::new();
    let mut by_addr: HashMap<IpAddr, String> = running
        .peers
        .iter()
        .map(|p| (p.underlay, p.name.clone()))
        .collect();
    let mut tunnels = Vec::new();
    for row in &rows {
        let Some(t) = tunnel(row, &pki) else {
            continue;
        };
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mut st = OvsTunnelStatus {
            name: row.name.clone(),
            kind: row.kind.clone(),
            remote: row.options.get("remote_ip").cloned().unwrap_or_default(),
            options: row
                .options
                .iter()
                .map(|(k, v)| {
                    let v = if k == "psk" { "<redacted>" } else { v.as_str() };
                    (k.clone(), v.to_owned())
                })
                .collect(),
            local_cert: path(&pki.certificate),
            local_key: path(&pki.private_key),
            ca_cert: path(&pki.ca_cert),
            ..OvsTunnelStatus::default()
        };
        let peer = t.and_then(|t| {
            st.auth = auth_text(&t);
            check(&t, running, &by_addr)?;
            peer_of(&t, running)
        });
        match peer {
            Ok(p) => {
                by_addr.insert(p.underlay, p.name.clone());
                st.state = "configured".to_owned();
                peers.push(p);
            }
            Err(reason) => {
                tracing::warn!(interface = %row.name, "OVSDB: tunnel not configured: {reason}");
                st.state = "invalid".to_owned();
                st.reason = Some(reason);
            }
        }
        tunnels.push(st);
    }
    (peers, tunnels)
}

/// What a tunnel may not share with the peers before it.
fn check(t: &OvsTunnel, running: &Config, by_addr: &HashMap<IpAddr, String>) -> Result<(), String> {
    if running.peers.iter().any(|p| p.name == t.name) {
        return Err(format!(
            "the name {:?} is a [[peer]] of the configuration file",
            t.name
        ));
    }
    if let Some(other) = by_addr.get(&t.remote_ip) {
        return Err(format!(
            "options:remote_ip {} is protected by {other:?} already (one peer per address)",
            t.remote_ip
        ));
    }
    Ok(())
}

/// How a tunnel authenticates, in a few words.
fn auth_text(t: &OvsTunnel) -> String {
    match &t.auth {
        TunnelAuth::Psk(_) => "psk".to_owned(),
        TunnelAuth::Cert { peer, .. } => match peer {
            PeerTrust::Pinned { .. } => "certificate, pinned peer".to_owned(),
            PeerTrust::Ca { remote_name, .. } => {
                format!("certificate, CA-signed peer {remote_name}")
            }
        },
    }
}
