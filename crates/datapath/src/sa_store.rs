//! What the IKE driver needs of a data plane, whichever mode it runs in:
//! SAs to publish (read-copy-update, like every change of the tables), a
//! stop flag, and the inbox of IKE messages that arrived on the ESP-in-UDP
//! port. The SAs themselves, as the tables hold them, are
//! [`crate::shared_sa`]'s.

use std::sync::atomic::Ordering;

use crate::fast_map::FastMap;
use crate::gateway::GatewayTables;
use crate::overlay::Tables;
use crate::shared_sa::{InboundEntry, SharedSa};
use crate::worker::{IkeInbox, Shared};

/// The SAs of one table snapshot, by peer index (the config's order).
pub trait SaTables {
    /// Peer `peer`'s outbound SAs, one per Child SA; `None` for no such
    /// peer.
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>>;
    /// The inbound SAs by SPI.
    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry>;
    /// Brings the tables' own order up to date after their SAs changed
    /// ([`Tables::order_outbound`], [`GatewayTables::order_outbound`]).
    fn sas_changed(&mut self) {}
}

impl SaTables for Tables {
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>> {
        self.peers.get_mut(peer).map(|p| &mut p.outbound)
    }

    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry> {
        &mut self.inbound
    }

    fn sas_changed(&mut self) {
        self.order_outbound();
    }
}

impl SaTables for GatewayTables {
    fn outbound_mut(&mut self, peer: usize) -> Option<&mut Vec<SharedSa>> {
        self.peer_mut(peer).map(|p| &mut p.outbound)
    }

    fn inbound_mut(&mut self) -> &mut FastMap<u32, InboundEntry> {
        &mut self.inbound
    }

    fn sas_changed(&mut self) {
        self.order_outbound();
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

impl<T, F> SaStore for Shared<T, F>
where
    T: SaTables + Clone + Send + Sync,
    F: Send + Sync,
{
    fn edit(&self, f: &mut dyn FnMut(&mut dyn SaTables)) {
        Self::edit(self, &mut |t: &mut T| {
            f(t);
            t.sas_changed();
        });
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ike_inbox(&self) -> &IkeInbox {
        &self.ike_inbox
    }
}
