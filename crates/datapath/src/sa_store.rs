//! What the IKE driver needs of a data plane, whichever mode it runs in:
//! SAs to publish (read-copy-update, like every change of the tables), a
//! stop flag, and the inbox of IKE messages that arrived on the
//! ESP-in-UDP port.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fast_map::FastMap;
use crate::gateway::GatewayTables;
use crate::gateway_worker::GatewayShared;
use crate::overlay::{InboundEntry, SharedSa, Tables};
use crate::worker::{IkeInbox, Shared};

/// The SAs of one table snapshot, by peer index (the config's order).
pub trait SaTables {
    /// Peer `peer`'s outbound SAs, one per Child SA; `None` for no such
    /// peer.
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>>;
    /// The inbound SAs by SPI.
    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry>;
}

impl SaTables for Tables {
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>> {
        self.peers.get_mut(peer).map(|p| &mut p.outbound)
    }

    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry> {
        &mut self.inbound
    }
}

impl SaTables for GatewayTables {
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>> {
        self.peer_mut(peer).map(|p| &mut p.outbound)
    }

    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry> {
        &mut self.inbound
    }
}

/// A data plane the IKE driver installs SAs into.
pub trait SaStore: Send + Sync {
    /// Copies the current tables, lets `f` change their SAs, and
    /// publishes the copy; the workers pick it up with their next batch.
    fn edit(&self, f: &mut dyn FnMut(&mut dyn SaTables));
    /// Whether the workers are told to stop.
    fn stopping(&self) -> bool;
    /// IKE messages from the ESP-in-UDP port.
    fn ike_inbox(&self) -> &IkeInbox;
}

impl SaStore for Shared {
    fn edit(&self, f: &mut dyn FnMut(&mut dyn SaTables)) {
        let mut next = (**self.tables.load()).clone();
        f(&mut next);
        self.tables.store(Arc::new(next));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ike_inbox(&self) -> &IkeInbox {
        &self.ike_inbox
    }
}

impl SaStore for GatewayShared {
    fn edit(&self, f: &mut dyn FnMut(&mut dyn SaTables)) {
        Self::edit(self, &mut |t: &mut GatewayTables| f(t));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ike_inbox(&self) -> &IkeInbox {
        &self.ike_inbox
    }
}
