//! tunsec's data path: the overlay's per-packet logic, and the Linux I/O
//! that feeds it.
//!
//! - [`overlay`]: sans IO. A frame from a network's TAP device becomes a
//!   tunnel datagram, protected with ESP or not by the peer's policy, and
//!   back. [`overlay::Tables`] is the immutable snapshot the workers read;
//!   the control plane publishes new ones read-copy-update style.
//! - [`gateway`]: sans IO. Gateway mode: the kernel's own tunnel packets,
//!   steered into a TUN device, protected for a peer, and back.
//! - [`esp_rx`]: sans IO. Receiving on the ESP socket in either mode:
//!   NAT-T classification, SPI lookup, the source check, the open.
//! - [`packet`]: what both modes' per-packet code shares: the buffer
//!   layout, the per-packet context [`packet::Ctx`], [`packet::Transmit`],
//!   the ESP seal step.
//! - [`fdb`]: the forwarding database (learning, ageing, static entries).
//! - [`early`]: ESP that arrives just before its SA, held and retried.
//! - [`offload`]: sans IO. TAP offloads: the virtio-net header, TCP
//!   segmentation of TSO super-frames, checksum completion, and coalescing
//!   of received TCP segments into one super-frame (GRO).
//! - [`shared_sa`]: the SAs as the tables hold them.
//! - [`sa_store`]: what the IKE driver needs of either mode's tables.
//! - [`stats`]: drop counters by reason, frame counters per network.
//! - [`io`]: sockets with recvmmsg/sendmmsg, TAP devices (tun-rs).
//! - [`worker`]: the transmit and receive threads: one skeleton, with
//!   each mode's part in [`worker::overlay`] and [`worker::gateway`].
//!
//! `unsafe` is allowed in this crate only, for system calls; every block
//! carries a `// SAFETY:` comment.

pub mod early;
pub mod esp_rx;
pub mod fast_map;
pub mod fdb;
pub mod gateway;
pub mod io;
pub mod offload;
pub mod overlay;
pub mod packet;
pub mod sa_store;
pub mod shared_sa;
pub mod stats;
pub mod steer;
pub mod worker;
