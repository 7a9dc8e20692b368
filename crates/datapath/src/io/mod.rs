//! Linux I/O: sockets with batched system calls, and TAP devices.

pub mod socket;
pub mod tap;
