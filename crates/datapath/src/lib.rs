//! tunsec's data path: the overlay's per-packet logic, and the Linux I/O
//! that feeds it.
//!
//! - [`overlay`]: sans IO. A frame from a network's TAP device becomes a
//!   tunnel datagram, protected with ESP or not by the peer's policy, and
//!   back. [`overlay::Tables`] is the immutable snapshot the workers read;
//!   the control plane publishes new ones read-copy-update style.
//! - [`fdb`]: the forwarding database (learning, ageing, static entries).
//! - [`gateway`]: sans IO. Gateway mode: the kernel's own tunnel packets,
//!   steered into a TUN device, protected for a peer, and back.
//! - [`gateway_worker`]: gateway mode's transmit and receive threads (TUN
//!   device and ESP socket).
//! - [`offload`]: sans IO. TAP offloads: the virtio-net header, TCP
//!   segmentation of TSO super-frames, checksum completion, and coalescing
//!   of received TCP segments into one super-frame (GRO).
//! - [`sa_store`]: the SA tables and inbox the IKE driver works with, in
//!   either mode.
//! - [`stats`]: drop counters by reason, frame counters per network.
//! - [`io`]: sockets with recvmmsg/sendmmsg, TAP devices (tun-rs).
//! - [`worker`]: the transmit and receive threads.
//!
//! `unsafe` is allowed in this crate only, for system calls; every block
//! carries a `// SAFETY:` comment.

pub mod early;
pub mod fast_map;
pub mod fdb;
pub mod gateway;
pub mod gateway_worker;
pub mod io;
pub mod offload;
pub mod overlay;
pub mod sa_store;
pub mod stats;
pub mod steer;
pub mod worker;
