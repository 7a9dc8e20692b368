//! The `ovs-appctl` endpoint of `ovs-monitor-ipsec`, so that operators'
//! scripts keep working: `ovs-appctl -t SOCKET tunnels/show` (and
//! `list-commands`, `version`) on the socket `[ovsdb] unixctl` names.
//!
//! OVS's unixctl protocol is JSON-RPC 1.0 over a stream socket
//! (`lib/unixctl.c`): a request `{"method": "tunnels/show", "params": [],
//! "id": 0}`, an answer `{"result": TEXT, "error": null, "id": 0}`, or
//! `{"result": null, "error": TEXT, "id": 0}` for a command it does not
//! know. Messages come back to back, with no delimiter. Every answer is
//! made from one status snapshot asked of the control socket, as `tunsec
//! metrics` does, so it shares no state with the daemon.
//!
//! `tunnels/show` prints each tunnel in the stock layout (`Interface
//! name: tun0 v1 (CONFIGURED)`, then its configuration), with tunsecd's
//! state in place of the kernel's XFRM policies and SAs: `ESTABLISHED`
//! for a tunnel whose IKE SA and Child SA are up. A PSK is shown as
//! `<redacted>`, where the stock script prints it.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::control::{self, Request, Response};
use crate::status::{OvsTunnelStatus, Status};

/// The commands served, as `list-commands` prints them.
const COMMANDS: [&str; 3] = ["list-commands", "tunnels/show", "version"];

/// The endpoint's thread, and its socket (removed when dropped).
pub struct Unixctl {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Unixctl {
    /// Listens on `path` (a stale socket there is replaced) and answers
    /// from the status of the tunsecd at `control_socket`.
    pub fn start(path: &Path, control_socket: PathBuf) -> anyhow::Result<Self> {
        use anyhow::Context;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("ovsdb.unixctl: cannot listen on {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tunsec-unixctl".into())
            .spawn(move || serve(&listener, &control_socket, &flag))?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Unixctl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, control_socket: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let sock = control_socket.to_owned();
                // One short-lived thread per client, so a slow one holds
                // up nobody.
                let _ = std::thread::Builder::new()
                    .name("tunsec-unixctl-client".into())
                    .spawn(move || {
                        if let Err(e) = answer(conn, &sock) {
                            tracing::debug!("unixctl client: {e}");
                        }
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("unixctl: accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Answers every request of one connection until it closes, or sends
/// something that is not JSON (then it is closed).
fn answer(conn: UnixStream, control_socket: &Path) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let requests = serde_json::Deserializer::from_reader(BufReader::new(conn)).into_iter::<Value>();
    for request in requests {
        let Ok(request) = request else {
            break;
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let reply = match method {
            "tunnels/show" => match status(control_socket) {
                Ok(s) => json!({"result": tunnels_show(&s), "error": null, "id": id}),
                Err(e) => json!({"result": null, "error": e, "id": id}),
            },
            "list-commands" => {
                let text: String = COMMANDS.iter().map(|c| format!("  {c}\n")).collect();
                json!({"result": format!("The available commands are:\n{text}"), "error": null, "id": id})
            }
            "version" => json!({
                "result": format!("tunsecd {}\n", env!("CARGO_PKG_VERSION")),
                "error": null,
                "id": id,
            }),
            other => json!({
                "result": null,
                "error": format!("\"{other}\" is not a valid command (use \"list-commands\" to see a list of valid commands)"),
                "id": id,
            }),
        };
        out.write_all(reply.to_string().as_bytes())?;
    }
    Ok(())
}

fn status(control_socket: &Path) -> Result<Status, String> {
    match control::call(control_socket, &Request::Status) {
        Ok(Response::Status(s)) => Ok(*s),
        Ok(other) => Err(format!("tunsecd answered {other:?}")),
        Err(e) => Err(format!("tunsecd does not answer: {e}")),
    }
}

/// The text of `tunnels/show`.
pub fn tunnels_show(s: &Status) -> String {
    let tunnels = s
        .gateway
        .as_ref()
        .and_then(|g| g.ovsdb.as_ref())
        .map(|o| o.tunnels.as_slice())
        .unwrap_or_default();
    if tunnels.is_empty() {
        return "No tunnels configured with IPsec\n".to_owned();
    }
    tunnels.iter().map(|t| tunnel_text(s, t)).collect()
}

fn tunnel_text(s: &Status, t: &OvsTunnelStatus) -> String {
    let none = || "None".to_owned();
    let opt = |k: &str| t.options.get(k).cloned().unwrap_or_else(none);
    let state = match (t.state.as_str(), &t.reason) {
        ("invalid", Some(r)) => format!("INVALID: {r}"),
        (other, _) => other.to_uppercase(),
    };
    let family = if t.remote.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    };
    let custom: Vec<String> = t
        .options
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("ipsec_").map(|k| format!("'{k}': '{v}'")))
        .collect();
    let mut text = format!(
        "Interface name: {} v1 ({state})\n\
         \x20 Tunnel Type:    {}\n\
         \x20 Local IP:       {}\n\
         \x20 Remote IP:      {}\n\
         \x20 Address Family: {family}\n\
         \x20 SKB mark:       None\n\
         \x20 Local cert:     {}\n\
         \x20 Local name:     None\n\
         \x20 Local key:      {}\n\
         \x20 Remote cert:    {}\n\
         \x20 Remote name:    {}\n\
         \x20 CA cert:        {}\n\
         \x20 PSK:            {}\n\
         \x20 Custom Options: {{{}}}\n",
        t.name,
        t.kind,
        t.options
            .get("local_ip")
            .cloned()
            .unwrap_or_else(|| "%defaultroute".to_owned()),
        t.remote,
        t.local_cert.clone().unwrap_or_else(none),
        t.local_key.clone().unwrap_or_else(none),
        opt("remote_cert"),
        opt("remote_name"),
        t.ca_cert.clone().unwrap_or_else(none),
        if t.options.contains_key("psk") {
            "<redacted>".to_owned()
        } else {
            none()
        },
        custom.join(", "),
    );
    let peer = s.peers.iter().find(|p| p.name == t.name);
    text.push_str("tunsecd SAs installed:\n");
    for sa in peer.map(|p| p.sas.as_slice()).unwrap_or_default() {
        text.push_str(&format!(
            "  {} spi {} {} {} packets {} bytes {}\n",
            sa.direction, sa.spi, sa.suite, sa.state, sa.packets, sa.bytes
        ));
    }
    text.push_str("IKE SA:\n");
    if let Some(ike) = peer.and_then(|p| p.ike.as_ref()) {
        text.push_str(&format!(
            "  {} {} spi_i {} spi_r {}{}\n",
            ike.state,
            ike.role,
            ike.spi_i.as_deref().unwrap_or("-"),
            ike.spi_r.as_deref().unwrap_or("-"),
            ike.last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GatewayStatus, OvsdbStatus};

    #[test]
    fn shows_tunnels_in_the_stock_layout_without_the_psk() {
        let mut s: Status = serde_json::from_value(json!({
            "node": {"name": "c1", "underlay": "192.0.2.1", "esp": "udp:4500", "uptime_secs": 1},
            "networks": [], "peers": [], "drops": {}, "keepalives": 0,
            "ike_on_esp_port": 0, "fdb": []
        }))
        .unwrap();
        assert_eq!(tunnels_show(&s), "No tunnels configured with IPsec\n");
        let tunnel = OvsTunnelStatus {
            name: "tun0".into(),
            kind: "vxlan".into(),
            remote: "192.0.2.2".into(),
            auth: "psk".into(),
            state: "established".into(),
            options: [
                ("remote_ip", "192.0.2.2"),
                ("psk", "swordfish"),
                ("ipsec_encapsulation", "yes"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
            ..OvsTunnelStatus::default()
        };
        let mut g: GatewayStatus = serde_json::from_value(json!({
            "tun": "tunsec-gw", "mode": "transport", "table": 1, "rule_priority": 2,
            "fwmark": 3, "nft_table": "t", "tun_mtu": 1400, "tunnel_mtu_advice": 1350,
            "tunnel_devices": [], "policies": []
        }))
        .unwrap();
        g.ovsdb = Some(OvsdbStatus {
            tunnels: vec![tunnel],
            ..OvsdbStatus::default()
        });
        s.gateway = Some(g);
        let text = tunnels_show(&s);
        assert!(
            text.starts_with("Interface name: tun0 v1 (ESTABLISHED)\n"),
            "{text}"
        );
        assert!(text.contains("  Tunnel Type:    vxlan\n"), "{text}");
        assert!(text.contains("  Remote IP:      192.0.2.2\n"), "{text}");
        assert!(text.contains("  PSK:            <redacted>\n"), "{text}");
        assert!(
            text.contains("  Custom Options: {'encapsulation': 'yes'}\n"),
            "{text}"
        );
        assert!(!text.contains("swordfish"), "{text}");
    }
}
