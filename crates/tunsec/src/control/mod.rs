//! The control API: JSON over a Unix socket, one request and one response
//! per line. The socket is created with mode 0600, so only its owner (root)
//! can talk to the daemon. [`server`] serves it, for both daemons.

pub mod server;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The full status.
    Status,
    /// Removes a peer's SAs (both directions), as `ip xfrm state delete`
    /// would. Under a `require` policy the peer's traffic then stops.
    DeleteSa {
        /// The peer's name.
        peer: String,
    },
    /// Takes an IKE peer down: its IKE SA is deleted (the peer is told) and
    /// no new one is made until `up`. Its `require` traffic is dropped.
    Down {
        /// The peer's name.
        peer: String,
    },
    /// Brings an IKE peer up: initiates at once.
    Up {
        /// The peer's name.
        peer: String,
    },
    /// Rekeys an IKE peer's Child SA now (CREATE_CHILD_SA, make before
    /// break).
    Rekey {
        /// The peer's name.
        peer: String,
        /// Rekey the IKE SA instead (RFC 7296 section 2.18).
        #[serde(default)]
        ike: bool,
        /// Rekey only this network's Child SA (keys per network): its
        /// name in overlay mode, its label (`vxlan/100`) in gateway mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Re-authenticates an IKE peer now: a new IKE SA with the current
    /// credentials replaces the established one, make before break.
    Reauth {
        /// The peer's name.
        peer: String,
    },
    /// Reads the configuration file again and takes up new IKE
    /// credentials (certificate, key, CA, CRL, PSK) for new IKE SAs.
    Reload,
    /// The keys of every live IKE and ESP SA, for Wireshark (`tunsec keys
    /// export`). The daemon logs a warning naming the SAs, never a key.
    ExportKeys,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The status.
    Status(Box<Status>),
    /// The keys of the live SAs (the answer to [`Request::ExportKeys`]).
    Keys(Box<crate::keys::KeyExport>),
    /// The request was carried out.
    Done {
        /// What happened.
        message: String,
    },
    /// The request was refused.
    Error {
        /// Why, naming the field and value.
        message: String,
    },
}

/// Sends one request and reads the response.
pub fn call(socket: &Path, request: &Request) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach tunsecd at {}: {e} (is it running? see --socket)",
                socket.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"delete_sa","peer":"b"}"#).unwrap(),
            Request::DeleteSa { peer: "b".into() }
        );
        assert_eq!(
            serde_json::to_string(&Request::Reload).unwrap(),
            r#"{"cmd":"reload"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reauth","peer":"b"}"#).unwrap(),
            Request::Reauth { peer: "b".into() }
        );
        assert_eq!(
            serde_json::to_string(&Request::ExportKeys).unwrap(),
            r#"{"cmd":"export_keys"}"#
        );
        let keys = Response::Keys(Box::default());
        assert_eq!(
            serde_json::to_string(&keys).unwrap(),
            r#"{"result":"keys","ike":[],"esp":[]}"#
        );
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"result":"keys","ike":[],"esp":[]}"#).unwrap(),
            keys
        );
        let done = Response::Done {
            message: "ok".into(),
        };
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"result":"done","message":"ok"}"#
        );
    }
}
