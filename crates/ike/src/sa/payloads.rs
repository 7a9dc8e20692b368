//! Reading a decoded message's payloads by type ([`Payloads`]), and the
//! few payload helpers that several exchanges share.

use crate::message::{
    Auth, DhGroup, Identity, Notify, NotifyType, Payload, Proposal, SaPayload, TrafficSelector,
    TransformId,
};

/// The payloads of a decoded message, by type.
pub(super) struct Payloads<'a>(pub(super) &'a [Payload]);

/// Declares the getters of [`Payloads`] that return the first payload of
/// one variant: `name: Variant -> Type`.
macro_rules! first_of_variant {
    ($($name:ident: $variant:ident -> $ty:ty,)*) => {
        $(
            pub(super) fn $name(&self) -> Option<&'a $ty> {
                self.0.iter().find_map(|p| -> Option<&'a $ty> {
                    match p {
                        Payload::$variant(x) => Some(x),
                        _ => None,
                    }
                })
            }
        )*
    };
}

impl<'a> Payloads<'a> {
    first_of_variant! {
        sa: Sa -> SaPayload,
        ke: KeyExchange -> crate::message::KeyExchange,
        nonce: Nonce -> [u8],
        idi: IdInitiator -> Identity,
        idr: IdResponder -> Identity,
        auth: Auth -> Auth,
        tsi: TsInitiator -> [TrafficSelector],
        tsr: TsResponder -> [TrafficSelector],
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
    Payload::Notify(Notify::empty(NotifyType::Ikev2FragmentationSupported))
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
