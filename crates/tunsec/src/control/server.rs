//! The control socket's server, shared by both daemons.
//!
//! One thread runs a [`mio`] event loop over the listening socket and
//! every client, all non-blocking: a client that connects and says
//! nothing, or sends half a line, or never reads its answer, holds one
//! slot and delays nobody. A complete request goes to a short-lived
//! handler thread (a reload waits for the IKE driver), whose answer comes
//! back through a channel and a [`mio::Waker`]. One request and one
//! answer per connection, as [`super::call`] speaks it.
//!
//! Bounds ([`Limits`]): clients at once (when full, the oldest client
//! still sending its request is dropped for the new one, so a flood of
//! idle connections cannot lock the operator out), the size of a request,
//! the time a client has to send it (and to read its answer), and the
//! requests being handled at once (beyond that: `busy`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Request, Response};
use crate::ike::IkeCommand;
use crate::keys::KeyExport;
use crate::status::Status;

/// What a daemon answers on its control socket, and the periodic work
/// of its run loop ([`crate::service`]). [`answer`] turns what it returns
/// into a [`Response`]: `Ok` into `Done` (or `Keys`), `Err` into `Error`.
pub trait ControlTarget: Send + Sync + 'static {
    /// The current status.
    fn status(&self) -> Status;
    /// Removes a peer's SAs (both directions); `false` if no peer has
    /// that name.
    fn delete_sas(&self, peer: &str) -> bool;
    /// Hands the IKE driver a command for the named peer.
    fn ike_command(
        &self,
        peer: &str,
        command: &dyn Fn(usize) -> IkeCommand,
    ) -> Result<String, String>;
    /// Reads the configuration file again (`tunsec reload`, SIGHUP).
    fn reload(&self) -> Result<String, String>;
    /// The keys of every live SA (`tunsec keys export`): the data path's
    /// ESP SAs and the IKE driver's IKE SAs.
    fn export_keys(&self) -> Result<KeyExport, String>;
    /// Periodic work, about once a second: SA lifetimes, FDB ageing.
    fn housekeeping(&self, now: Instant);
}

/// Answers one request.
pub fn answer(target: &dyn ControlTarget, request: Request) -> Response {
    let done = match request {
        Request::Status => return Response::Status(Box::new(target.status())),
        Request::ExportKeys => {
            return match target.export_keys() {
                Ok(keys) => Response::Keys(Box::new(keys)),
                Err(message) => Response::Error { message },
            };
        }
        Request::DeleteSa { peer } => delete_sa(target, &peer),
        Request::Down { peer } => target.ike_command(&peer, &IkeCommand::Down),
        Request::Up { peer } => target.ike_command(&peer, &IkeCommand::Up),
        Request::Rekey {
            peer,
            ike: false,
            network: None,
        } => target.ike_command(&peer, &IkeCommand::Rekey),
        Request::Rekey {
            peer,
            ike: false,
            network: Some(n),
        } => target.ike_command(&peer, &|i| IkeCommand::RekeyNetwork(i, n.clone())),
        Request::Rekey {
            ike: true,
            network: Some(n),
            ..
        } => Err(format!(
            "network: {n:?}: a network's Child SA is rekeyed, not the IKE SA (leave out --ike)"
        )),
        Request::Rekey {
            peer,
            ike: true,
            network: None,
        } => target.ike_command(&peer, &IkeCommand::RekeyIke),
        Request::Reauth { peer } => target.ike_command(&peer, &IkeCommand::Reauth),
        Request::Reload => target.reload(),
    };
    match done {
        Ok(message) => Response::Done { message },
        Err(message) => Response::Error { message },
    }
}

/// `tunsec sa delete PEER`: the peer's SAs go, as `ip xfrm state delete`
/// would; a warning says so.
fn delete_sa(target: &dyn ControlTarget, peer: &str) -> Result<String, String> {
    if !target.delete_sas(peer) {
        return Err(format!("peer: {peer:?} is not a configured peer"));
    }
    tracing::warn!(peer = %peer, "SAs deleted by request");
    Ok(format!("deleted the SAs of peer {peer:?}"))
}

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Clients connected at once.
    pub max_clients: usize,
    /// The longest request line, newline included.
    pub max_request: usize,
    /// How long a client has to send its request, and to read its answer.
    pub timeout: Duration,
    /// Requests being handled at once.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clients: 1024,
            max_request: 64 * 1024,
            timeout: Duration::from_secs(5),
            max_in_flight: 32,
        }
    }
}

/// A running control server; [`ControlServer::stop`] ends it.
pub struct ControlServer {
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    /// Serves `listener` on a thread of its own.
    pub fn start(
        listener: StdUnixListener,
        target: Arc<dyn ControlTarget>,
        limits: Limits,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            poll,
            listener: UnixListener::from_std(listener),
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            target,
            limits,
            waker: waker.clone(),
            answers: mpsc::channel(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            stop: stop.clone(),
            last_full_warning: None,
        };
        server
            .poll
            .registry()
            .register(&mut server.listener, LISTENER, Interest::READABLE)?;
        let thread = std::thread::Builder::new()
            .name("tunsec-control".into())
            .spawn(move || server.run())?;
        Ok(Self {
            thread: Some(thread),
            waker,
            stop,
        })
    }

    /// Stops the server and waits for its thread; clients still
    /// connected are closed.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A handler's answer: the client and its encoded response.
type Answer = (Token, Vec<u8>);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CLIENT: usize = 2;

/// Where a client is in its one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sending its request.
    Reading,
    /// Its request is with a handler thread.
    Handling,
    /// Its answer is being written.
    Writing,
}

struct Client {
    stream: UnixStream,
    phase: Phase,
    /// The request so far, or the answer and how much of it is written.
    buf: Vec<u8>,
    written: usize,
    /// When it is closed unless it has moved on.
    deadline: Instant,
    accepted: Instant,
}

struct Server {
    poll: Poll,
    listener: UnixListener,
    clients: HashMap<Token, Client>,
    next_token: usize,
    target: Arc<dyn ControlTarget>,
    limits: Limits,
    waker: Arc<Waker>,
    answers: (mpsc::Sender<Answer>, mpsc::Receiver<Answer>),
    in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    last_full_warning: Option<Instant>,
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .clients
                .values()
                .filter(|c| c.phase != Phase::Handling)
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("control socket: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.collect_answers(),
                    token => {
                        if event.is_readable() || event.is_read_closed() {
                            self.read(token);
                        }
                        if event.is_writable() {
                            self.write(token);
                        }
                    }
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Accepts every waiting client (the poll is edge-triggered).
    fn accept(&mut self) {
        loop {
            if self.clients.len() >= self.limits.max_clients && !self.evict_oldest() {
                // Every slot is being answered: leave the rest in the
                // backlog until one frees (`collect_answers` retries).
                return;
            }
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        tracing::warn!("control socket: cannot watch a client: {e}");
                        continue;
                    }
                    let now = Instant::now();
                    self.clients.insert(
                        token,
                        Client {
                            stream,
                            phase: Phase::Reading,
                            buf: Vec::new(),
                            written: 0,
                            deadline: now + self.limits.timeout,
                            accepted: now,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE): make room
                    // and try again; give up for now if there is none.
                    self.warn_full(&format!("cannot accept a client: {e}"));
                    if !self.evict_oldest() {
                        return;
                    }
                }
            }
        }
    }

    /// Drops the oldest client still sending its request; `false` if
    /// there is none.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase == Phase::Reading)
            .min_by_key(|(_, c)| c.accepted)
            .map(|(t, _)| *t);
        let Some(token) = oldest else {
            return false;
        };
        self.warn_full("full: the oldest client that has not sent its request is dropped");
        self.close(token);
        true
    }

    /// A warning at most every 10 s, so a flood does not flood the log.
    fn warn_full(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_full_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_full_warning = Some(now);
            tracing::warn!(clients = self.clients.len(), "control socket: {what}");
        }
    }

    fn read(&mut self, token: Token) {
        let max = self.limits.max_request;
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.phase != Phase::Reading {
            return;
        }
        let mut chunk = [0u8; 4096];
        let line = loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => {
                    // Gone before its request was complete.
                    self.close(token);
                    return;
                }
                Ok(n) => {
                    client.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = client.buf.iter().position(|&b| b == b'\n') {
                        break Ok(client.buf[..end].to_vec());
                    }
                    if client.buf.len() >= max {
                        break Err(format!(
                            "request: longer than {max} bytes without a newline"
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        };
        let request = line.and_then(|l| {
            serde_json::from_slice::<Request>(&l).map_err(|e| format!("request: {e}"))
        });
        match request {
            Err(message) => self.respond(token, &Response::Error { message }),
            Ok(_) if self.in_flight.load(Ordering::Relaxed) >= self.limits.max_in_flight => self
                .respond(
                    token,
                    &Response::Error {
                        message: format!(
                            "busy: {} requests are being handled; try again",
                            self.limits.max_in_flight
                        ),
                    },
                ),
            Ok(request) => self.dispatch(token, request),
        }
    }

    /// Hands a request to a handler thread.
    fn dispatch(&mut self, token: Token, request: Request) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        client.phase = Phase::Handling;
        client.buf.clear();
        let target = self.target.clone();
        let tx = self.answers.0.clone();
        let waker = self.waker.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("tunsec-request".into())
            .spawn(move || {
                let response = answer(&*target, request);
                let _ = tx.send((token, encode(&response)));
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.respond(
                token,
                &Response::Error {
                    message: format!("cannot handle the request: {e}"),
                },
            );
        }
    }

    fn collect_answers(&mut self) {
        while let Ok((token, bytes)) = self.answers.1.try_recv() {
            self.start_writing(token, bytes);
        }
        // Clients left in the backlog while every slot was busy.
        self.accept();
    }

    fn respond(&mut self, token: Token, response: &Response) {
        self.start_writing(token, encode(response));
    }

    fn start_writing(&mut self, token: Token, bytes: Vec<u8>) {
        let timeout = self.limits.timeout;
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        client.phase = Phase::Writing;
        client.buf = bytes;
        client.written = 0;
        client.deadline = Instant::now() + timeout;
        if self
            .poll
            .registry()
            .reregister(&mut client.stream, token, Interest::WRITABLE)
            .is_err()
        {
            self.close(token);
            return;
        }
        self.write(token);
    }

    fn write(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.phase != Phase::Writing {
            return;
        }
        while client.written < client.buf.len() {
            match client.stream.write(&client.buf[client.written..]) {
                Ok(n) => client.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(token);
    }

    /// Closes the clients that ran out of time.
    fn expire(&mut self, now: Instant) {
        let late: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase != Phase::Handling && c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            tracing::debug!(?token, "control client timed out");
            self.close(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut c) = self.clients.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

/// A response as one line of JSON.
fn encode(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::Error {
            message: format!("cannot encode the answer: {e}"),
        })
        .unwrap_or_default()
    });
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::sync::Mutex;

    /// A target that answers status at once and holds `reload` until
    /// told, and counts housekeeping.
    #[derive(Default)]
    struct Fake {
        reload_gate: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl ControlTarget for Fake {
        fn status(&self) -> Status {
            serde_json::from_value(serde_json::json!({
                "node": {"name": "n1", "underlay": "192.0.2.1", "esp": "udp:4500", "uptime_secs": 1},
                "networks": [], "peers": [], "drops": {}, "keepalives": 0,
                "ike_on_esp_port": 0, "fdb": []
            }))
            .expect("a minimal status")
        }
        fn delete_sas(&self, _peer: &str) -> bool {
            true
        }
        fn ike_command(
            &self,
            peer: &str,
            _command: &dyn Fn(usize) -> IkeCommand,
        ) -> Result<String, String> {
            Err(format!("peer: {peer:?} is not an IKE peer"))
        }
        fn reload(&self) -> Result<String, String> {
            if let Some(gate) = self.reload_gate.lock().unwrap().take() {
                let _ = gate.recv();
            }
            Ok("reloaded".into())
        }
        fn export_keys(&self) -> Result<KeyExport, String> {
            Ok(KeyExport::default())
        }
        fn housekeeping(&self, _now: Instant) {}
    }

    fn serve(
        target: Arc<Fake>,
        limits: Limits,
    ) -> (tempfile::TempDir, std::path::PathBuf, ControlServer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = StdUnixListener::bind(&path).unwrap();
        let server = ControlServer::start(listener, target, limits).unwrap();
        (dir, path, server)
    }

    fn raw_call(path: &std::path::Path, bytes: &[u8]) -> String {
        let mut s = StdUnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn answers_each_request_kind() {
        let (_d, path, server) = serve(Arc::new(Fake::default()), Limits::default());
        assert!(matches!(
            super::super::call(&path, &Request::Status).unwrap(),
            Response::Status(s) if s.node.name == "n1"
        ));
        assert_eq!(
            super::super::call(&path, &Request::DeleteSa { peer: "b".into() }).unwrap(),
            Response::Done {
                message: "deleted the SAs of peer \"b\"".into()
            }
        );
        assert_eq!(
            super::super::call(&path, &Request::ExportKeys).unwrap(),
            Response::Keys(Box::default())
        );
        let bad = raw_call(&path, b"{\"cmd\":\"nonsense\"}\n");
        assert!(
            bad.contains("\"result\":\"error\"") && bad.contains("request:"),
            "{bad}"
        );
        server.stop();
    }

    /// Idle clients, a client that sent half a request, and a request
    /// that is slow to answer delay no one else.
    #[test]
    fn idle_and_slow_clients_delay_no_one() {
        let (gate_tx, gate_rx) = mpsc::channel();
        let target = Arc::new(Fake {
            reload_gate: Mutex::new(Some(gate_rx)),
        });
        let (_d, path, server) = serve(target, Limits::default());
        let idle: Vec<StdUnixStream> = (0..200)
            .map(|_| StdUnixStream::connect(&path).unwrap())
            .collect();
        let mut half = StdUnixStream::connect(&path).unwrap();
        half.write_all(b"{\"cmd\":\"sta").unwrap();
        let reload = {
            let path = path.clone();
            std::thread::spawn(move || super::super::call(&path, &Request::Reload))
        };
        for _ in 0..20 {
            let r = super::super::call(&path, &Request::Status).unwrap();
            assert!(matches!(r, Response::Status(_)));
        }
        gate_tx.send(()).unwrap();
        assert_eq!(
            reload.join().unwrap().unwrap(),
            Response::Done {
                message: "reloaded".into()
            }
        );
        drop((idle, half));
        server.stop();
    }

    #[test]
    fn an_overlong_request_is_refused() {
        let limits = Limits {
            max_request: 100,
            ..Limits::default()
        };
        let (_d, path, server) = serve(Arc::new(Fake::default()), limits);
        let answer = raw_call(&path, &[b'x'; 300]);
        assert!(answer.contains("longer than 100 bytes"), "{answer}");
        server.stop();
    }

    /// When every slot is taken by a client that sends nothing, a new
    /// client still gets its answer: the oldest idle one makes room.
    #[test]
    fn a_full_server_drops_the_oldest_idle_client() {
        let limits = Limits {
            max_clients: 8,
            ..Limits::default()
        };
        let (_d, path, server) = serve(Arc::new(Fake::default()), limits);
        let mut idle: Vec<StdUnixStream> = (0..8)
            .map(|_| StdUnixStream::connect(&path).unwrap())
            .collect();
        // Let the server accept them all before the next one.
        std::thread::sleep(Duration::from_millis(100));
        let r = super::super::call(&path, &Request::Status).unwrap();
        assert!(matches!(r, Response::Status(_)));
        // The first idle client was the one dropped: it reads EOF.
        idle[0]
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            idle[0].read(&mut buf).unwrap(),
            0,
            "the oldest client was closed"
        );
        server.stop();
    }

    /// A client that never completes its request is closed at the
    /// deadline.
    #[test]
    fn a_silent_client_times_out() {
        let limits = Limits {
            timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (_d, path, server) = serve(Arc::new(Fake::default()), limits);
        let mut silent = StdUnixStream::connect(&path).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed by the server");
        server.stop();
    }
}
