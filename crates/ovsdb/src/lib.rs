//! A small OVSDB client: RFC 7047 JSON-RPC with Open vSwitch's
//! `monitor_cond`/`update2` extension (ovsdb-server(7)), enough to mirror
//! a few tables of a database such as `Open_vSwitch` and follow their
//! changes.
//!
//! The layers, bottom up:
//! - [`codec`]: framing of back-to-back JSON messages, with a size bound;
//! - [`jsonrpc`]: requests, notifications, responses;
//! - [`datum`] and [`schema`]: OVSDB atoms, sets and maps, read against
//!   the column types of the server's schema;
//! - [`cache`]: the monitored rows, and the rules of `update` and
//!   `update2` that change them;
//! - [`client`]: the sans-IO state machine of one connection after
//!   another (schema, monitor, updates, echo, probes).
//!
//! Nothing here panics on input from the network: malformed bytes, wrong
//! types and unknown ids are errors that reset the connection, or are
//! counted and dropped.

#![forbid(unsafe_code)]

pub mod cache;
pub mod client;
pub mod codec;
pub mod datum;
mod error;
pub mod jsonrpc;
pub mod schema;

pub use cache::{Cache, Notation, Row, Table};
pub use client::{Client, Config, Event, Phase, Stats};
pub use datum::{Atom, AtomicType, Datum, Uuid};
pub use error::{CodecError, DataError, Error, RemoteError};
pub use jsonrpc::Message;
pub use schema::{ColumnType, Schema};
