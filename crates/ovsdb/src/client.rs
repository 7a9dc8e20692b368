//! The client state machine, sans-IO in the style of quinn-proto: it is
//! told that a connection is up ([`Client::connected`]), given the bytes
//! read ([`Client::handle_input`]) and the time ([`Client::handle_timeout`]),
//! and hands back the bytes to write ([`Client::poll_transmit`]), events
//! ([`Client::poll_event`]) and its next deadline
//! ([`Client::poll_timeout`]). It owns no socket and reads no clock.
//!
//! One connection goes: `get_schema` (RFC 7047 §4.1.2), then
//! `monitor_cond` (ovsdb-server(7) §4.1.12) on the configured tables and
//! columns, or plain `monitor` (RFC 7047 §4.1.5) if the server does not
//! know `monitor_cond`; the reply is the initial state, which replaces the
//! cache (a full resync on every connection); then `update2` or `update`
//! notifications. The server's `echo` requests are answered (§4.1.11), and
//! our own echo probes a silent server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cache::{Cache, Notation};
use crate::codec::{self, DEFAULT_MAX_MESSAGE, Decoder};
use crate::error::{Error, excerpt};
use crate::jsonrpc::Message;
use crate::schema::{Schema, TableSchema};

/// The `<json-value>` that names our monitor in its updates.
const MONITOR_ID: &str = "tunsec";

/// What to monitor, and the connection's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The database, e.g. `Open_vSwitch`.
    pub database: String,
    /// Table name to the columns to monitor; an empty list means every
    /// column of the table.
    pub tables: BTreeMap<String, Vec<String>>,
    /// After this long without a byte from the server, send an echo; after
    /// twice this long, give the connection up. `None`: never probe.
    pub probe_interval: Option<Duration>,
    /// The longest message accepted, in bytes.
    pub max_message: usize,
}

impl Config {
    /// Monitors nothing yet in `database`; probes after 5 s of silence
    /// (OVS's default), accepts messages up to 64 MiB.
    pub fn new(database: impl Into<String>) -> Self {
        Self {
            database: database.into(),
            tables: BTreeMap::new(),
            probe_interval: Some(Duration::from_secs(5)),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// Adds a table and the columns to monitor in it (none: all).
    pub fn monitor(mut self, table: &str, columns: &[&str]) -> Self {
        self.tables.insert(
            table.to_owned(),
            columns.iter().map(|c| (*c).to_owned()).collect(),
        );
        self
    }
}

/// What the client tells its user.
#[derive(Debug, Clone)]
pub enum Event {
    /// The monitor is in place and the cache holds the server's state as
    /// of now: after the first connection and after every reconnection.
    /// A `Changed` follows if the rows differ from what the cache held.
    Connected,
    /// The cache's rows changed (an update, or a resync that found a
    /// different state). Read the new state with [`Client::cache`].
    Changed,
    /// The connection that sent `Connected` is gone. The cache is kept
    /// as it was, now possibly stale, until the next resync.
    Disconnected {
        /// Why.
        reason: Error,
    },
}

/// Where the client is in a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection.
    Disconnected,
    /// `get_schema` sent.
    AwaitSchema,
    /// `monitor_cond` (`cond`) or `monitor` sent.
    AwaitMonitor {
        /// `monitor_cond` rather than `monitor`.
        cond: bool,
    },
    /// The initial state is in the cache; updates follow.
    Monitoring {
        /// `update2` (from `monitor_cond`) rather than `update`.
        cond: bool,
    },
}

/// Counters, for logs and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections made (the transport came up).
    pub connections: u64,
    /// Connections given up because of the server or the transport.
    pub resets: u64,
    /// Messages received.
    pub messages: u64,
    /// Update notifications applied.
    pub updates: u64,
    /// Initial states loaded into the cache.
    pub resyncs: u64,
    /// Echo requests from the server answered.
    pub echoes_answered: u64,
    /// Echo probes we sent.
    pub probes: u64,
    /// Times the server refused `monitor_cond` and `monitor` was used.
    pub fallbacks: u64,
    /// Messages and updates dropped as irrelevant: responses to ids we
    /// did not send, unknown notifications, updates for another monitor or
    /// for tables we do not monitor, requests for methods we lack.
    pub ignored: u64,
    /// Monitored tables or columns that the server's schema lacks.
    pub missing_in_schema: u64,
}

/// Our requests still waiting for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    GetSchema,
    Monitor { cond: bool },
    Echo,
}

/// The OVSDB client core. See the module documentation.
#[derive(Debug)]
pub struct Client {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    cache: Cache,
    /// The monitored tables and columns, as the server's schema types them.
    monitored: BTreeMap<String, TableSchema>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    out: Vec<u8>,
    events: VecDeque<Event>,
    last_rx: Option<Instant>,
    probe_sent: bool,
    /// `Connected` was sent for the current connection.
    announced: bool,
    stats: Stats,
    /// Why the last connection was given up.
    last_error: Option<Error>,
}

impl Client {
    /// A disconnected client with an empty cache.
    pub fn new(config: Config) -> Self {
        Self {
            decoder: Decoder::new(config.max_message),
            config,
            phase: Phase::Disconnected,
            cache: Cache::new(BTreeMap::new()),
            monitored: BTreeMap::new(),
            pending: HashMap::new(),
            next_id: 0,
            out: Vec::new(),
            events: VecDeque::new(),
            last_rx: None,
            probe_sent: false,
            announced: false,
            stats: Stats::default(),
            last_error: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The rows as last received. Before the first `Connected` it has no
    /// tables; after a `Disconnected` it keeps the last state.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the last connection was given up (whether or not it got as far
    /// as `Connected`), for status.
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A transport to the server is up: start over on it (schema, monitor,
    /// initial state). Any previous connection is forgotten first.
    pub fn connected(&mut self, now: Instant) {
        if self.phase != Phase::Disconnected {
            self.disconnected(Error::Closed);
        }
        self.stats.connections += 1;
        self.last_rx = Some(now);
        self.probe_sent = false;
        self.phase = Phase::AwaitSchema;
        let db = self.config.database.clone();
        self.request("get_schema", vec![json!(db)], Pending::GetSchema);
    }

    /// The transport is gone (closed, failed). The cache is kept.
    pub fn disconnected(&mut self, reason: Error) {
        if self.phase != Phase::Disconnected {
            self.fail(reason);
        }
    }

    /// Bytes read from the server. An `Err` means the connection must be
    /// closed: the client has already dropped it (and sent
    /// `Disconnected` if it had sent `Connected`).
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), Error> {
        if self.phase == Phase::Disconnected {
            return Ok(());
        }
        // Any byte shows the server is alive.
        self.last_rx = Some(now);
        self.probe_sent = false;
        if let Err(e) = self.decoder.feed(data) {
            // Messages that came before the fault are still handled; the
            // fault then ends the connection.
            self.drain_messages()?;
            return Err(self.fail(e.into()));
        }
        self.drain_messages()
    }

    /// The clock reached [`Client::poll_timeout`] (or any later time): send
    /// a probe, or give up a silent server.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        let (Some(probe), Some(last)) = (self.config.probe_interval, self.last_rx) else {
            return Ok(());
        };
        if self.phase == Phase::Disconnected {
            return Ok(());
        }
        let idle = now.saturating_duration_since(last);
        if idle >= probe * 2 {
            return Err(self.fail(Error::ProbeTimeout(probe * 2)));
        }
        if idle >= probe && !self.probe_sent {
            // RFC 7047 §4.1.11: "used by both clients and servers to verify
            // the liveness of a database connection".
            self.probe_sent = true;
            self.stats.probes += 1;
            self.request("echo", vec![], Pending::Echo);
        }
        Ok(())
    }

    /// When [`Client::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.config.probe_interval?;
        if self.phase == Phase::Disconnected {
            return None;
        }
        let last = self.last_rx?;
        Some(last + if self.probe_sent { probe * 2 } else { probe })
    }

    /// The bytes to write to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn drain_messages(&mut self) -> Result<(), Error> {
        while let Some(v) = self.decoder.next_message() {
            self.stats.messages += 1;
            let r = Message::from_value(v).and_then(|m| self.handle_message(m));
            if let Err(e) = r {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Drops the connection: the cache stays as it is.
    fn fail(&mut self, reason: Error) -> Error {
        tracing::warn!(database = %self.config.database, error = %reason, "OVSDB connection dropped");
        self.stats.resets += 1;
        self.last_error = Some(reason.clone());
        self.phase = Phase::Disconnected;
        self.decoder.reset();
        self.pending.clear();
        self.out.clear();
        self.last_rx = None;
        if std::mem::take(&mut self.announced) {
            self.events.push_back(Event::Disconnected {
                reason: reason.clone(),
            });
        }
        reason
    }

    fn request(&mut self, method: &str, params: Vec<Value>, kind: Pending) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, kind);
        let m = Message::Request {
            method: method.to_owned(),
            params,
            id: json!(id),
        };
        codec::encode(&m.to_value(), &mut self.out);
    }

    fn respond(&mut self, id: Value, result: Result<Value, Value>) {
        codec::encode(&Message::Response { id, result }.to_value(), &mut self.out);
    }

    fn handle_message(&mut self, m: Message) -> Result<(), Error> {
        match m {
            Message::Request { method, params, id } => {
                if method == "echo" {
                    // RFC 7047 §4.1.11: the reply's result is the request's
                    // params.
                    self.stats.echoes_answered += 1;
                    self.respond(id, Ok(Value::Array(params)));
                } else {
                    self.stats.ignored += 1;
                    self.respond(id, Err(json!("unknown method")));
                }
                Ok(())
            }
            Message::Notification { method, params } => self.handle_notification(&method, params),
            Message::Response { id, result } => {
                let Some(kind) = id.as_u64().and_then(|id| self.pending.remove(&id)) else {
                    self.stats.ignored += 1;
                    return Ok(());
                };
                match kind {
                    Pending::GetSchema => self.handle_schema(result),
                    Pending::Monitor { cond } => self.handle_monitor_reply(cond, result),
                    Pending::Echo => Ok(()),
                }
            }
        }
    }

    fn handle_notification(&mut self, method: &str, params: Vec<Value>) -> Result<(), Error> {
        let notation = match method {
            "update2" => Notation::Update2,
            "update" => Notation::Update,
            // ovsdb-server(7) §4.1.7: our monitor is gone; a new
            // connection sets it up again.
            "monitor_canceled" => return Err(Error::MonitorCanceled),
            _ => {
                self.stats.ignored += 1;
                return Ok(());
            }
        };
        // RFC 7047 §4.1.6, ovsdb-server(7) §4.1.14: params are
        // [<json-value>, <table-updates>].
        let [monitor, updates] = params.as_slice() else {
            return Err(Error::Protocol(format!(
                "{method} params are not [monitor-id, updates]"
            )));
        };
        if *monitor != json!(MONITOR_ID) {
            self.stats.ignored += 1;
            return Ok(());
        }
        let expected = match self.phase {
            Phase::Monitoring { cond: true } => Notation::Update2,
            Phase::Monitoring { cond: false } => Notation::Update,
            _ => {
                return Err(Error::Protocol(format!(
                    "{method} before the monitor reply"
                )));
            }
        };
        if notation != expected {
            return Err(Error::Protocol(format!(
                "{method} on a monitor of the other kind"
            )));
        }
        let applied = self.cache.apply(notation, updates)?;
        self.stats.updates += 1;
        self.stats.ignored += applied.ignored_tables;
        if applied.rows > 0 {
            self.events.push_back(Event::Changed);
        }
        Ok(())
    }

    fn handle_schema(&mut self, result: Result<Value, Value>) -> Result<(), Error> {
        let schema = result.map_err(|e| Error::Refused {
            method: "get_schema",
            error: excerpt(&e),
        })?;
        let schema = Schema::from_json(&schema)?;
        self.monitored = self.pick_columns(&schema);
        let cond = true;
        self.send_monitor(cond);
        Ok(())
    }

    /// The configured tables and columns that the schema has, with their
    /// types. What it lacks is logged and counted, and left out: the
    /// accessors then read it as absent.
    fn pick_columns(&mut self, schema: &Schema) -> BTreeMap<String, TableSchema> {
        let mut monitored = BTreeMap::new();
        for (table, columns) in &self.config.tables {
            let Some(ts) = schema.tables.get(table) else {
                tracing::warn!(table, "the OVSDB schema has no such table");
                self.stats.missing_in_schema += 1;
                continue;
            };
            let mut picked = TableSchema::new();
            if columns.is_empty() {
                picked = ts.clone();
            }
            for c in columns {
                match ts.get(c) {
                    Some(ty) => {
                        picked.insert(c.clone(), ty.clone());
                    }
                    None => {
                        tracing::warn!(table, column = c, "the OVSDB schema has no such column");
                        self.stats.missing_in_schema += 1;
                    }
                }
            }
            monitored.insert(table.clone(), picked);
        }
        monitored
    }

    fn send_monitor(&mut self, cond: bool) {
        // RFC 7047 §4.1.5 <monitor-requests>: table -> [<monitor-request>];
        // monitor_cond takes the same, without a "where" here (every row).
        let requests: serde_json::Map<String, Value> = self
            .monitored
            .iter()
            .map(|(t, cols)| {
                (
                    t.clone(),
                    json!([{ "columns": cols.keys().collect::<Vec<_>>() }]),
                )
            })
            .collect();
        let method = if cond { "monitor_cond" } else { "monitor" };
        let params = vec![
            json!(self.config.database),
            json!(MONITOR_ID),
            Value::Object(requests),
        ];
        self.phase = Phase::AwaitMonitor { cond };
        self.request(method, params, Pending::Monitor { cond });
    }

    fn handle_monitor_reply(
        &mut self,
        cond: bool,
        result: Result<Value, Value>,
    ) -> Result<(), Error> {
        let initial = match result {
            Ok(r) => r,
            Err(e) if cond && is_unknown_method(&e) => {
                // A server older than OVS 2.6: plain monitor, full rows.
                tracing::info!("the OVSDB server lacks monitor_cond; using monitor");
                self.stats.fallbacks += 1;
                self.send_monitor(false);
                return Ok(());
            }
            Err(e) => {
                return Err(Error::Refused {
                    method: if cond { "monitor_cond" } else { "monitor" },
                    error: excerpt(&e),
                });
            }
        };
        let notation = if cond {
            Notation::Update2
        } else {
            Notation::Update
        };
        // The reply is the whole state: a fresh cache replaces the old one
        // (which may hold rows deleted while we were away).
        let mut fresh = Cache::new(self.monitored.clone());
        let applied = fresh.apply(notation, &initial)?;
        self.stats.ignored += applied.ignored_tables;
        let changed = fresh != self.cache;
        fresh.set_generation(self.cache.generation() + u64::from(changed));
        self.cache = fresh;
        self.stats.resyncs += 1;
        self.phase = Phase::Monitoring { cond };
        self.announced = true;
        self.events.push_back(Event::Connected);
        if changed {
            self.events.push_back(Event::Changed);
        }
        Ok(())
    }
}

/// ovsdb-server answers an unknown method with the error string
/// "unknown method"; accept it also as an `{"error": ...}` object.
fn is_unknown_method(e: &Value) -> bool {
    e == "unknown method" || e.get("error").is_some_and(|x| x == "unknown method")
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
