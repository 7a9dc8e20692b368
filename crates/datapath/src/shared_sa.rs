//! The SAs as the tables hold them: shared between the control plane and
//! the workers, and the inbound ones with the peer they belong to.

use std::sync::{Arc, Mutex};

use tunsec_esp::Sa;

/// An SA shared between the control plane (which installs it and reads its
/// counters) and the workers that use it. The data path holds the lock
/// only to take a sequence number ([`Sa::reserve_seal`]) or to check and
/// update the replay window ([`Sa::reserve_open`], [`Sa::finish_open`]);
/// encryption and decryption run without it, so several workers share
/// an SA without waiting on each other's crypto.
pub type SharedSa = Arc<Mutex<Sa>>;

/// An inbound SA and the peer it belongs to.
#[derive(Debug, Clone)]
pub struct InboundEntry {
    /// The peer index.
    pub peer: usize,
    /// The SA.
    pub sa: SharedSa,
}
