//! The code behind tunsec's binaries: `tunsecd`, the daemon, and `tunsec`,
//! the CLI.
//!
//! - [`config`]: the TOML configuration, validated in full.
//! - [`daemon`]: overlay mode: TAP devices, sockets, SAs, workers, and the
//!   control socket.
//! - [`gateway`]: gateway mode: a TUN device, policy routing and an
//!   nftables guard around the kernel's own tunnels.
//! - [`ike`]: the IKE driver thread: IKEv2 with pre-shared keys or
//!   certificates on UDP port 500, installing the negotiated SAs.
//! - [`peers`]: the peers by slot, and the plan from one set to another
//!   (reload, OVSDB) that both modes carry out at run time.
//! - [`ovs`]: Open vSwitch's IPsec contract, the OVSDB watch that turns
//!   tunnel rows into gateway peers, and the `ovs-appctl` endpoint.
//! - [`cli`]: the command lines of both binaries (clap), for man pages
//!   and completions too.
//! - [`control`]: the control API (JSON lines over a Unix socket).
//! - [`keys`]: key export for Wireshark (`tunsec keys export`).
//! - [`logging`]: tunsecd's log level and format.
//! - [`status`]: what `tunsec status` shows.
//! - [`netlink`]: rtnetlink calls (links, bridge ports) on a short-lived
//!   runtime.
//! - [`pki`]: `tunsec pki`, a small CA built on rcgen.
//! - [`systemd`]: systemd's notify protocol (ready, watchdog, reload,
//!   stop) for tunsecd.service.
//!
//! `tunsec demo` and `tunsec bench` live in the `tunsec` binary
//! (`src/bin/tunsec/`), and the network namespace labs they and the
//! tests build in the `tunsec-lab` crate: none of it is in this library,
//! which `tunsecd` links.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gateway;
pub mod ike;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod ovs;
pub mod peers;
pub mod pki;
pub mod service;
pub mod status;
pub mod systemd;
