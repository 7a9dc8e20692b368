//! Reading a decoded message's payloads by type ([`Payloads`]), and the
//! few payload helpers that several exchanges share.

use crate::message::{
    Auth, DhGroup, Identity, Notify, NotifyType, Payload, Proposal, SaPayload, TrafficSelector,
    TransformId,
};

/// The payloads of a decoded message, by type.
pub(super) struct Payloads<'a>(pub(super) &'a [Payload]);

impl<'a> Payloads<'a> {
    pub(super) fn sa(&self) -> Option<&'a SaPayload> {
        self.0.iter().find_map(|p| match p {
            Payload::Sa(sa) => Some(sa),
            _ => None,
        })
    }
    pub(super) fn ke(&self) -> Option<&'a crate::message::KeyExchange> {
        self.0.iter().find_map(|p| match p {
            Payload::KeyExchange(ke) => Some(ke),
            _ => None,
        })
    }
    pub(super) fn nonce(&self) -> Option<&'a [u8]> {
        self.0.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        })
    }
    pub(super) fn idi(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdInitiator(id) => Some(id),
            _ => None,
        })
    }
    pub(super) fn idr(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdResponder(id) => Some(id),
            _ => None,
        })
    }
    pub(super) fn auth(&self) -> Option<&'a Auth> {
        self.0.iter().find_map(|p| match p {
            Payload::Auth(a) => Some(a),
            _ => None,
        })
    }
    pub(super) fn tsi(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsInitiator(ts) => Some(ts.as_slice()),
            _ => None,
        })
    }
    pub(super) fn tsr(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsResponder(ts) => Some(ts.as_slice()),
            _ => None,
        })
    }
    pub(super) fn notify(&self, notify_type: NotifyType) -> Option<&'a Notify> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type == notify_type => Some(n),
            _ => None,
        })
    }
    /// The first error notify (RFC 7296 section 3.10.1: types below 16384).
    pub(super) fn error(&self) -> Option<NotifyType> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type.is_error() => Some(n.notify_type),
            _ => None,
        })
    }
}

/// The empty IKEV2_FRAGMENTATION_SUPPORTED notify (RFC 7383 section 2.3).
pub(super) fn fragmentation_supported() -> Payload {
    Payload::Notify(Notify::new(
        NotifyType::Ikev2FragmentationSupported,
        Vec::new(),
    ))
}

/// The first D-H group of the first proposal: the one the initiator
/// guesses for its KE payload (RFC 7296 section 1.2).
pub(super) fn first_group(proposals: &[Proposal]) -> Option<DhGroup> {
    proposals
        .iter()
        .flat_map(|p| &p.transforms)
        .find_map(|t| match t.id {
            TransformId::Dh(g) if g != DhGroup::None => Some(g),
            _ => None,
        })
}

pub(super) fn offers_group(proposals: &[Proposal], group: DhGroup) -> bool {
    proposals
        .iter()
        .flat_map(|p| &p.transforms)
        .any(|t| t.id == TransformId::Dh(group))
}
