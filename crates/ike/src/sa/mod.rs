//! The IKE SA state machine (RFC 7296 sections 1 and 2): IKE_SA_INIT and
//! IKE_AUTH with a pre-shared key or certificates, then INFORMATIONAL and
//! CREATE_CHILD_SA exchanges.
//!
//! An [`IkeSa`] is one IKE SA with one peer, sans IO, in the style of
//! quinn-proto's `Connection`: datagrams and time go in
//! ([`IkeSa::handle_datagram`], [`IkeSa::handle_timeout`]); datagrams to
//! send, the next timer and events come out ([`IkeSa::poll_transmit`],
//! [`IkeSa::poll_timeout`], [`IkeSa::poll_event`]). It owns no socket, no
//! clock and no thread; SPIs and nonces come from an injected [`Random`].
//!
//! ```text
//! Initiator                         Responder
//! HDR, SAi1, KEi, Ni          -->                       (InitSent / ExpectInit)
//!                             <--   HDR, SAr1, KEr, Nr, [CERTREQ]
//!                                                       (AuthSent / ExpectAuth)
//! HDR, SK {IDi, [CERT+,]
//!   [CERTREQ,] [IDr,] AUTH,
//!   N(USE_TRANSPORT_MODE),
//!   SAi2, TSi, TSr}           -->
//!                             <--   HDR, SK {IDr, [CERT+,] AUTH,
//!                                     N(USE_TRANSPORT_MODE),
//!                                     SAr2, TSi, TSr}   (Established)
//! ```
//!
//! Once established, either side may send INFORMATIONAL requests: an
//! empty one checks liveness ([`IkeSa::check_liveness`]), a DELETE closes
//! the Child SA or the IKE SA ([`IkeSa::delete`]). CREATE_CHILD_SA rekeys
//! the Child SA ([`IkeSa::rekey_child`], or automatically with
//! [`Config::child_lifetime`]), make before break: [`Event::ChildSaRekeyed`]
//! for the new pair, then [`Event::ChildSaDown`] for the old one once the
//! rekey's initiator has deleted it; simultaneous rekeys are resolved by
//! the nonces (RFC 7296 section 2.8.1). CREATE_CHILD_SA also creates more
//! Child SAs (section 1.3.1): the IKE SA's initiator asks for
//! [`Config::additional_children`] after IKE_AUTH
//! ([`IkeSa::create_child`] on demand), and a responder accepts them
//! within its policy's selectors (or those of one configured Child SA,
//! [`Config::narrow_to_one_child`]) up to [`Config::max_child_sas`], with
//! NO_ADDITIONAL_SAS beyond. With
//! [`Config::create_missing_children`] the responder also creates those
//! the initiator did not (each side its own, as strongSwan does with
//! ovs-monitor-ipsec's two Child SAs per tunnel).
//!
//! Reliability (section 2.1): each side retransmits its own outstanding
//! request (one at a time: a window of 1) with exponential back-off and
//! gives up with [`Event::PeerDead`]; a retransmitted request gets the
//! cached response. Anything that does not belong (other SPIs, other
//! message IDs, bytes that do not parse or decrypt) is dropped and counted
//! in [`Stats`], and changes nothing.
//!
//! NAT detection (section 2.23, `nat`) runs in IKE_SA_INIT when
//! [`Config::local_addr`] is set: on a NAT, or with
//! [`Config::force_udp_encap`], IKE moves to the NAT-T port and the Child
//! SAs are `udp_encap`. INITIAL_CONTACT (section 2.4) is sent when
//! [`Config::initial_contact`] says so, and reported by
//! [`IkeSa::peer_initial_contact`].
//!
//! The IKE SA itself is rekeyed with CREATE_CHILD_SA (section 2.18,
//! `ike_rekey`): [`IkeSa::rekey_ike`], or automatically with
//! [`Config::ike_lifetime`]; it goes on under new SPIs and keys with the
//! same Child SAs ([`Event::IkeSaRekeyed`]) and [`Endpoint`] follows the
//! new SPIs under the same [`SaHandle`].
//!
//! Cookies (section 2.6, `cookie.rs`): an [`Endpoint`] with many half-open
//! IKE SAs answers new IKE_SA_INIT requests statelessly with N(COOKIE); an
//! initiator resends with it. A request with an unknown payload whose
//! critical bit is set is answered UNSUPPORTED_CRITICAL_PAYLOAD (sections
//! 2.5 and 3.2, `critical.rs`); unknown payloads without it are skipped.
//!
//! Certificates and signatures (`auth.rs`) authenticate instead of the
//! PSK when [`Config::cert`] is set.
//!
//! IKE fragmentation (RFC 7383, `fragment.rs`): when both sides announce
//! it in IKE_SA_INIT ([`Config::fragmentation`]), encrypted messages too
//! long for [`Config::fragment_size`] go as Encrypted Fragment payloads,
//! and the peer's are reassembled.
//!
//! Not yet: answers to malformed requests
//! (INVALID_SYNTAX, INVALID_MAJOR_VERSION: they are dropped).
//!
//! [`Endpoint`] holds many IKE SAs behind one socket: it hands each
//! datagram to the IKE SA its SPIs name, and a new IKE_SA_INIT request
//! back to the caller as an [`Incoming`] (quinn-style), which the caller
//! accepts with the configuration for that peer ([`Endpoint::accept`]: a
//! responder answers it) or refuses ([`Endpoint::refuse`]); with many
//! half-open IKE SAs, only requests that return its cookie get that far
//! (section 2.6, `cookie.rs`), which an initiator [`IkeSa`] does when
//! asked.
//!
//! The files, split the way rustls splits its handshake; imports run one
//! way, from the handlers to `state.rs` and the leaves below it:
//!
//! - `state.rs`: [`IkeSa`]'s fields, the state structs, and what only
//!   reads them.
//! - `exchange.rs`: `handle_*` and `poll_*`, routing by role and state,
//!   message IDs, the response cache, retransmission.
//! - `initiator.rs`, `responder.rs`: IKE_SA_INIT and IKE_AUTH of each
//!   role, and each role's half of a Child SA.
//! - `informational.rs`: liveness checks and DELETE.
//! - `child.rs`: CREATE_CHILD_SA for Child SAs (create, rekey,
//!   collisions) and the queue of our requests.
//! - `ike_rekey.rs`: the IKE SA's own rekey and the retiring IKE SA.
//! - `auth.rs`, `cookie.rs`, `critical.rs`, `fragment.rs`, `nat.rs`,
//!   `ts.rs`: AUTH, cookies, unknown critical payloads, fragmentation,
//!   NAT detection, traffic selectors.
//! - `config.rs`, `random.rs` (what an IKE SA is given), `event.rs` (what
//!   it hands back), `payloads.rs`, `logging.rs`.
//! - `endpoint.rs`: [`Endpoint`], many IKE SAs behind one socket.

mod auth;
mod child;
mod config;
mod cookie;
mod critical;
mod endpoint;
mod event;
mod exchange;
pub mod export;
mod followup;
pub mod fragment;
mod ike_rekey;
mod informational;
mod initiator;
mod intermediate;
mod labels;
mod logging;
mod nat;
mod payloads;
mod peer_child;
mod random;
mod responder;
mod state;
pub mod ts;

#[cfg(test)]
mod tests;

pub use config::{CHILD_COMPLETION_DELAY, CertAuth, Config, DEFAULT_MAX_CHILD_SAS, WallClock};
pub use cookie::{
    COOKIE_GRACE, COOKIE_SECRET_LIFETIME, DEFAULT_COOKIE_THRESHOLD,
    DEFAULT_PER_SOURCE_COOKIE_THRESHOLD,
};
pub use endpoint::{DatagramEvent, Endpoint, EndpointStats, Incoming, SaHandle};
pub use event::{AuthFailure, ChildSaParams, ChildSummary, Event, Stats, Transmit};
pub use exchange::{
    MAX_EXTRA_TRANSMISSIONS, MAX_TRANSMISSIONS, RETRANSMIT_TIMEOUT, RETRANSMIT_TIMEOUT_LIMIT,
};
pub use labels::CHILD_LABEL;
pub use nat::{NATT_PORT, NatState};
pub use random::{Random, SeededRandom, SystemRandom};
pub use responder::HALF_OPEN_TIMEOUT;
pub use state::IkeSa;
