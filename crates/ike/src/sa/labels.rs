//! Child SA labels: a Child SA bound to something its owner names, such
//! as one virtual network of an overlay (tunsecd's keys per network), in
//! a private-use status notify (RFC 7296 section 3.10.1: types 40960 to
//! 65535) that the request carries and the answer repeats.
//!
//! > 40960 - 65535    Reserved for private use
//!
//! - The initiator of a Child SA (in IKE_AUTH or CREATE_CHILD_SA) sends
//!   the label configured for it ([`super::Config::child_labels`]).
//! - A responder with labels configured takes a Child SA whose label is
//!   among them and repeats the label; one with another label it refuses
//!   with NO_PROPOSAL_CHOSEN, so a peer never gets a Child SA for a label
//!   the responder does not have. A responder with no labels configured
//!   ignores the notify, as any peer that does not know it does (an
//!   unknown status notify is ignored, RFC 7296 section 3.10.1).
//! - An initiator whose label is not repeated has a peer without the
//!   mechanism: the Child SA stands unlabelled (shared), and of the
//!   configured Child SAs after the first only those with selectors of
//!   their own are created, unlabelled (the others would all be the same
//!   Child SA). A rekey keeps the label: its request carries the old
//!   Child SA's, and the answer must repeat it.

use super::config::Config;
use super::event::Event;
use super::payloads::Payloads;
use crate::message::{Notify, NotifyType, Payload};

/// The notify type: private use, status (above strongSwan's private
/// notifies, 40961 to 40969).
pub const CHILD_LABEL: u16 = 46080;

/// The label notify for `label`.
pub(super) fn notify(label: &[u8]) -> Payload {
    Payload::Notify(Notify::new(NotifyType::from(CHILD_LABEL), label.to_vec()))
}

/// The label a message carries, if any.
pub(super) fn of(p: &Payloads<'_>) -> Option<Vec<u8>> {
    p.notify(NotifyType::from(CHILD_LABEL))
        .map(|n| n.data.clone())
}

/// Responder: the label of the peer's Child SA, as `config` takes it:
/// `None` without one (or without labels configured), the label if it is
/// one of ours; NO_PROPOSAL_CHOSEN for any other.
pub(super) fn agree(config: &Config, p: &Payloads<'_>) -> Result<Option<Vec<u8>>, NotifyType> {
    let Some(label) = of(p) else {
        return Ok(None);
    };
    if config.child_labels.is_empty() {
        return Ok(None);
    }
    if config.child_labels.contains(&label) {
        Ok(Some(label))
    } else {
        Err(NotifyType::NoProposalChosen)
    }
}

/// Initiator: the label of the Child SA, from the answer `p` to our
/// request that carried `sent`: the label if the answer repeats it;
/// `None` if it does not (a peer without labels), unless the label is
/// `required` (a rekey of a labelled Child SA); NO_PROPOSAL_CHOSEN for
/// another label, or a missing required one.
pub(super) fn check(
    sent: Option<&[u8]>,
    required: bool,
    p: &Payloads<'_>,
) -> Result<Option<Vec<u8>>, NotifyType> {
    let Some(sent) = sent else {
        return Ok(None);
    };
    match of(p) {
        Some(echo) if echo == sent => Ok(Some(echo)),
        None if !required => Ok(None),
        _ => Err(NotifyType::NoProposalChosen),
    }
}

/// Gives both halves of a Child SA that `event` brings up the agreed
/// `label`.
pub(super) fn set(event: &mut Event, label: Option<Vec<u8>>) {
    if let Event::ChildSaUp { inbound, outbound } = event {
        inbound.label.clone_from(&label);
        outbound.label = label;
    }
}
