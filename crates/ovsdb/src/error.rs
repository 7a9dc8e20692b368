//! The crate's error types: one per layer, all `Clone` so that an event
//! can carry the reason a connection went down.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why the stream decoder refused the bytes it was given. Every variant
/// is fatal for the connection: the stream cannot be resynchronised, so
/// the caller resets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// One message grew beyond the configured limit before it ended.
    #[error("a JSON-RPC message is longer than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Something other than a JSON object or array starts a message.
    #[error(
        "a JSON-RPC message must be a JSON object, found byte 0x{byte:02x} at stream offset {offset}"
    )]
    NotAnObject {
        /// The byte found.
        byte: u8,
        /// Its offset from the start of the stream.
        offset: u64,
    },
    /// serde_json refused a complete message (bad syntax, bad UTF-8,
    /// nesting too deep).
    #[error("malformed JSON: {0}")]
    Syntax(String),
}

/// A JSON value that is not the OVSDB value it should be (RFC 7047 §3.1
/// types, §5.1 notation), or a schema that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

impl DataError {
    /// "expected WHAT, found VALUE", with the value cut short.
    pub(crate) fn expected(what: &str, found: &serde_json::Value) -> Self {
        Self(format!("expected {what}, found {}", excerpt(found)))
    }
}

/// A remote string that is not `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OVSDB remote {value:?}: {reason}")]
pub struct RemoteError {
    /// The remote as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a connection to the server was given up. The client has already
/// forgotten the connection when it hands one back; the driver then
/// closes the socket and reconnects after a back-off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The byte stream is not a sequence of JSON objects.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A well-formed JSON value that breaks JSON-RPC or OVSDB rules (a
    /// response without an id, an update before the monitor reply, a
    /// modify of a row we do not have, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A value of the wrong type in a reply or update.
    #[error("bad data from the server: {0}")]
    Data(#[from] DataError),
    /// The server answered one of our requests with an error.
    #[error("the server refused {method}: {error}")]
    Refused {
        /// The method we sent.
        method: &'static str,
        /// The server's error, as JSON text.
        error: String,
    },
    /// The server sent nothing, not even the answer to our echo, for two
    /// probe intervals (RFC 7047 §4.1.11 echo as a liveness check).
    #[error("the server sent nothing for {0:?}, not even an echo reply")]
    ProbeTimeout(Duration),
    /// The server cancelled our monitor (ovsdb-server(7) §4.1.7).
    #[error("the server cancelled the monitor")]
    MonitorCanceled,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// A socket call failed.
    #[error("{op} {remote}: {source}")]
    Io {
        /// What was being done: "connect to", "read from", "write to".
        op: &'static str,
        /// The remote, as configured.
        remote: String,
        /// The system error.
        source: Arc<io::Error>,
    },
}

/// The start of a JSON value's text, for error messages: enough to
/// recognise it, never a whole update (only the first bytes are written).
pub(crate) fn excerpt(v: &serde_json::Value) -> String {
    const MAX: usize = 80;
    /// A writer that takes `MAX` bytes and then refuses more, which stops
    /// serde_json early.
    struct Bounded(Vec<u8>);
    impl io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = MAX + 1 - self.0.len();
            if room == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let n = buf.len().min(room);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut w = Bounded(Vec::with_capacity(MAX + 1));
    // An error here only means the value was longer than MAX.
    let _ = serde_json::to_writer(&mut w, v);
    let mut s = String::from_utf8_lossy(&w.0).into_owned();
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_long_values() {
        let v = serde_json::json!({"k": "x".repeat(1000)});
        let e = excerpt(&v);
        assert!(e.starts_with("{\"k\":\"xxx"), "{e}");
        assert!(e.ends_with("...") && e.len() == 83, "{e}");
        assert_eq!(excerpt(&serde_json::json!([1, "a"])), "[1,\"a\"]");
        // A multi-byte character at the cut is not split.
        let v = serde_json::Value::String("é".repeat(100));
        assert!(excerpt(&v).ends_with("..."));
    }
}
