//! Linux I/O: sockets with batched system calls, TAP and TUN devices.

pub mod socket;
pub mod tap;
pub mod tun;
