//! A small OVSDB client: RFC 7047 JSON-RPC with Open vSwitch's
//! `monitor_cond`/`update2` extension (ovsdb-server(7)), enough to mirror
//! a few tables of a database such as `Open_vSwitch` and follow their
//! changes.
//!
//! The layers, bottom up:
//! - [`codec`]: framing of back-to-back JSON messages, with a size bound;
//! - [`jsonrpc`]: requests, notifications, responses;
//! - [`schema`] and [`datum`]: the column types of the server's schema,
//!   and OVSDB atoms, sets and maps read against them;
//! - [`cache`]: the monitored rows, and the rules of `update` and
//!   `update2` that change them;
//! - [`client`]: the sans-IO state machine of one connection after
//!   another (schema, monitor, updates, echo, probes);
//! - [`remote`], [`backoff`] and [`driver`]: `unix:`/`tcp:` remotes, and
//!   a blocking loop that runs the client on a socket and reconnects.
//!
//! A reconciler drives a [`Driver`] (or its own loop around a
//! [`Client`]) and, on each [`Event::Changed`], diffs the state it wants
//! against [`Driver::cache`]. While the server is away the cache keeps
//! its last state ([`Event::Disconnected`]); after reconnecting, the
//! monitor's initial state replaces it ([`Event::Connected`], then
//! `Changed` if rows differ).
//!
//! Nothing here panics on input from the network: malformed bytes, wrong
//! types and unknown ids are errors that reset the connection, or are
//! counted and dropped.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cache;
pub mod client;
pub mod codec;
pub mod datum;
pub mod driver;
mod error;
pub mod jsonrpc;
pub mod remote;
pub mod schema;

pub use cache::{Cache, Notation, Row, Table};
pub use client::{Client, Config, Event, Phase, Stats};
pub use datum::{Atom, Datum, Uuid};
pub use driver::Driver;
pub use error::{CodecError, DataError, Error, RemoteError};
pub use jsonrpc::Message;
pub use remote::Remote;
pub use schema::{AtomicType, ColumnType, Schema};
