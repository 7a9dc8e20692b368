//! A blocking I/O loop around [`Client`]: it connects to the remote
//! (std's `UnixStream` or `TcpStream`), feeds the client what it reads,
//! writes what the client sends, keeps its clock with read timeouts, and
//! reconnects after a back-off when the connection goes.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::cache::Cache;
use crate::client::{Client, Config, Event};
use crate::error::Error;
use crate::remote::Remote;

/// The socket of one connection.
#[derive(Debug)]
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(Some(t)),
            Self::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_write_timeout(Some(t)),
            Self::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.write_all(buf),
            Self::Tcp(s) => s.write_all(buf),
        }
    }
}

/// Runs a [`Client`] against a [`Remote`], one blocking call at a time.
///
/// ```no_run
/// use std::time::Duration;
/// use tunsec_ovsdb::{Config, Driver, Event};
///
/// let remote = "unix:/var/run/openvswitch/db.sock".parse().unwrap();
/// let config = Config::new("Open_vSwitch")
///     .monitor("Interface", &["name", "type", "options"])
///     .monitor("Open_vSwitch", &["other_config"]);
/// let mut driver = Driver::new(remote, config);
/// loop {
///     match driver.poll_event(Duration::from_secs(1)) {
///         Some(Event::Changed) => { /* diff the wanted state against driver.cache() */ }
///         Some(Event::Disconnected { reason }) => eprintln!("OVSDB: {reason}"),
///         Some(Event::Connected) | None => {}
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Driver {
    remote: Remote,
    client: Client,
    conn: Option<Conn>,
    backoff: Backoff,
    /// When to try to connect again; `None`: now.
    retry_at: Option<Instant>,
    /// When the current connection came up, and the client's resync count
    /// then (to tell whether it got as far as a resync).
    conn_since: Option<(Instant, u64)>,
    io_timeout: Duration,
    random: RandomState,
    draws: u64,
    connect_failures: u64,
    buf: Vec<u8>,
}

impl Driver {
    /// A driver that connects at its first [`Driver::poll_event`], with a
    /// back-off of 100 ms doubling to 8 s and a 5 s timeout on connecting
    /// and on each write.
    pub fn new(remote: Remote, config: Config) -> Self {
        Self {
            remote,
            client: Client::new(config),
            conn: None,
            backoff: Backoff::new(Backoff::DEFAULT_MIN, Backoff::DEFAULT_MAX),
            retry_at: None,
            conn_since: None,
            io_timeout: Duration::from_secs(5),
            random: RandomState::new(),
            draws: 0,
            connect_failures: 0,
            buf: vec![0; 64 << 10],
        }
    }

    /// Sets the reconnection back-off: delays from `min` doubling to `max`.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(min, max);
        self
    }

    /// Sets the timeout on connecting and on each write.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// The rows as last received (kept while disconnected).
    pub fn cache(&self) -> &Cache {
        self.client.cache()
    }

    /// The client, for its phase and counters.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The remote.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// A transport is up (the client may still be syncing).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connection attempts that failed.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures
    }

    /// Does I/O for up to `max_wait` and returns the first event, or
    /// `None` if none came in that time. Connects and reconnects as
    /// needed.
    pub fn poll_event(&mut self, max_wait: Duration) -> Option<Event> {
        let deadline = Instant::now() + max_wait;
        loop {
            if let Some(ev) = self.client.poll_event() {
                return Some(ev);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let Some(conn) = self.conn.as_mut() else {
                match self.retry_at {
                    Some(at) if at > now => std::thread::sleep(at.min(deadline) - now),
                    _ => self.connect(now),
                }
                continue;
            };
            if let Some(bytes) = self.client.poll_transmit() {
                if let Err(e) = conn.write_all(&bytes) {
                    self.lose(self.io_error("write to", e));
                    continue;
                }
            }
            let wake = self
                .client
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let read = conn
                .set_read_timeout(wait)
                .and_then(|()| conn.read(&mut self.buf));
            match read {
                Ok(0) => self.lose(Error::Closed),
                Ok(n) => {
                    if self
                        .client
                        .handle_input(Instant::now(), &self.buf[..n])
                        .is_err()
                    {
                        self.drop_conn();
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => self.lose(self.io_error("read from", e)),
            }
            let now = Instant::now();
            if self.conn.is_some()
                && self.client.poll_timeout().is_some_and(|t| now >= t)
                && self.client.handle_timeout(now).is_err()
            {
                self.drop_conn();
            }
        }
    }

    fn io_error(&self, op: &'static str, e: io::Error) -> Error {
        Error::Io {
            op,
            remote: self.remote.to_string(),
            source: Arc::new(e),
        }
    }

    fn open(&self) -> io::Result<Conn> {
        let conn = match &self.remote {
            Remote::Unix(path) => Conn::Unix(UnixStream::connect(path)?),
            Remote::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, self.io_timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
        };
        conn.set_write_timeout(self.io_timeout)?;
        Ok(conn)
    }

    fn connect(&mut self, now: Instant) {
        match self.open() {
            Ok(conn) => {
                tracing::debug!(remote = %self.remote, "connected to OVSDB");
                self.conn = Some(conn);
                self.retry_at = None;
                self.conn_since = Some((now, self.client.stats().resyncs));
                self.client.connected(now);
            }
            Err(e) => {
                self.connect_failures += 1;
                let delay = self.next_delay();
                tracing::debug!(remote = %self.remote, error = %e, ?delay, "cannot connect to OVSDB");
                self.retry_at = Some(now + delay);
            }
        }
    }

    /// The transport failed or closed: tell the client, then drop it.
    fn lose(&mut self, reason: Error) {
        self.client.disconnected(reason);
        self.drop_conn();
    }

    /// Closes the socket and schedules the next attempt. A connection that
    /// resynced and then lasted at least the largest back-off step starts
    /// the back-off again from its smallest step; one that failed sooner
    /// keeps doubling it, so a server that accepts and drops at once is
    /// not hammered.
    fn drop_conn(&mut self) {
        self.conn = None;
        let now = Instant::now();
        if let Some((since, resyncs)) = self.conn_since.take() {
            if self.client.stats().resyncs > resyncs && now - since >= self.backoff.max() {
                self.backoff.reset();
            }
        }
        self.retry_at = Some(now + self.next_delay());
    }

    fn next_delay(&mut self) -> Duration {
        self.draws += 1;
        let r = self.random.hash_one(self.draws);
        self.backoff.next_delay(r)
    }
}
