//! The Security Policy Database (RFC 4301 section 4.4.1): an ordered list
//! of policies; the first whose selector matches decides.

use crate::selector::{FlowKey, Selector};

/// A handle to an outbound SA held by an [`crate::Engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaId(pub u32);

/// What to do with a packet that a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Protect it with ESP. `None`, or an SA that is gone or expired, means
    /// the packet is dropped: it never leaves in the clear.
    Protect(Option<SaId>),
    /// Let it pass in the clear.
    Bypass,
    /// Drop it.
    Discard,
}

/// One policy: a selector and an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A name for status output.
    pub name: String,
    /// Which packets the policy covers.
    pub selector: Selector,
    /// What happens to them.
    pub action: Action,
}

/// An ordered list of policies.
#[derive(Debug, Clone, Default)]
pub struct Spd {
    policies: Vec<Policy>,
}

impl Spd {
    /// An empty SPD: every packet is discarded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a policy; earlier policies take precedence.
    pub fn push(&mut self, policy: Policy) {
        self.policies.push(policy);
    }

    /// Inserts a policy at a position.
    pub fn insert(&mut self, index: usize, policy: Policy) {
        self.policies.insert(index.min(self.policies.len()), policy);
    }

    /// Removes every policy with this name; returns how many.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.policies.len();
        self.policies.retain(|p| p.name != name);
        before - self.policies.len()
    }

    /// The policies, in order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Changes the action of every policy with this name (for example to
    /// point it at a new SA after a rekey); returns how many.
    pub fn set_action(&mut self, name: &str, action: Action) -> usize {
        let mut n = 0;
        for p in self.policies.iter_mut().filter(|p| p.name == name) {
            p.action = action;
            n += 1;
        }
        n
    }

    /// The policy for a packet this host sends.
    pub fn lookup_outbound(&self, flow: &FlowKey) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.selector.matches_outbound(flow))
    }

    /// The policy for a packet this host receives.
    pub fn lookup_inbound(&self, flow: &FlowKey) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.selector.matches_inbound(flow))
    }

    /// The action for a packet this host sends. No match is a discard.
    ///
    /// RFC 4301 section 5: traffic that no SPD entry covers is discarded
    /// (the SPD ends with an implicit discard-all entry).
    pub fn action_outbound(&self, flow: &FlowKey) -> Action {
        self.lookup_outbound(flow)
            .map_or(Action::Discard, |p| p.action)
    }

    /// The action for a cleartext packet this host receives. No match is a
    /// discard.
    pub fn action_inbound(&self, flow: &FlowKey) -> Action {
        self.lookup_inbound(flow)
            .map_or(Action::Discard, |p| p.action)
    }
}
