//! IKE fragmentation (RFC 7383): an encrypted message too long for one
//! unfragmented IP packet goes as several messages, each with one
//! Encrypted Fragment payload (SKF) protected on its own, so that no IKE
//! message depends on IP fragments, which middleboxes often drop.
//!
//! - Negotiation (section 2.3): both sides send an empty
//!   IKEV2_FRAGMENTATION_SUPPORTED notify in IKE_SA_INIT (the responder
//!   only if the initiator did, and only when `Config::fragmentation` is
//!   on); fragmentation is used only if both did.
//! - Sending (section 2.5, `seal`): a message longer than the limit
//!   (from `Config::fragment_size`, [`message_limit`]) is cut by
//!   [`SkCipher::seal_fragments`]; the IkeSa keeps every fragment, and
//!   retransmits them all.
//! - Receiving (section 2.6, `Reassembly`): each fragment's ICV is
//!   checked before it is kept; fragments are collected per message ID in
//!   any order, duplicates ignored, and the payloads decoded once all are
//!   in. A message of more than [`MAX_FRAGMENTS`] fragments or
//!   [`MAX_REASSEMBLED`] bytes is dropped, and so is a half-assembled one
//!   when another message ID arrives or after [`REASSEMBLY_TIMEOUT`].
//!
//! Not done: path MTU discovery (section 2.5.2) and refragmenting a
//! retransmission with a smaller size; messages on a retiring IKE SA
//! (after an IKE SA rekey) are never fragmented nor reassembled.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::crypto::SkCipher;
use crate::error::{Error, Result};
use crate::message::{Header, Message, Payload, PayloadType, decode_payloads};

/// The default of [`super::Config::fragment_size`]: the largest IP datagram an
/// IKE fragment makes, headers included.
///
/// RFC 7383 section 2.5.1 names 1280 octets (the IPv6 minimum MTU) and,
/// to be safe on any IPv4 path, 576; strongSwan's `fragment_size`
/// defaults to 1280 for both families, which is what we use: 576 would
/// cut a 3 KB IKE_AUTH into seven fragments instead of three, and an IPv4
/// path with an MTU below 1280 is rare enough to be configured for.
pub const DEFAULT_FRAGMENT_SIZE: usize = 1280;

/// The most fragments we reassemble one message from (strongSwan's cap,
/// too); a fragment claiming more is dropped.
pub const MAX_FRAGMENTS: u16 = 255;

/// The most plaintext bytes we reassemble into one message; beyond, the
/// half-assembled message is dropped.
pub const MAX_REASSEMBLED: usize = 64 * 1024;

/// How long a half-assembled message waits for its other fragments: as
/// long as a peer's whole retransmission schedule, and more.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The IPv4 header without options.
const IPV4_HEADER: usize = 20;
/// The IPv6 header without extension headers.
const IPV6_HEADER: usize = 40;
/// The UDP header.
const UDP_HEADER: usize = 8;
/// The non-ESP marker before IKE messages on the NAT-T port (RFC 3948
/// section 2.2).
const NON_ESP_MARKER: usize = 4;

/// The longest IKE message (from its header to its last byte) that makes
/// an IP datagram of at most `fragment_size` bytes towards `remote`: the
/// IP header of the remote's family, the UDP header, and the non-ESP
/// marker are taken off (the marker always, NAT-T port or not: 4 bytes
/// are not worth knowing which port the driver sends from).
pub fn message_limit(fragment_size: usize, remote: SocketAddr) -> usize {
    let ip = if remote.is_ipv4() {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    };
    fragment_size.saturating_sub(ip + UDP_HEADER + NON_ESP_MARKER)
}

/// Seals an encrypted message: one SK message, or, with `limit` (the
/// fragmentation both sides agreed to, [`message_limit`]) and a message
/// longer than it, its SKF fragments.
///
/// RFC 7383 section 2.5: only messages with an Encrypted payload are ever
/// fragmented (so never IKE_SA_INIT).
pub(super) fn seal(
    cipher: &SkCipher,
    limit: Option<usize>,
    header: &Header,
    payloads: &[Payload],
) -> Result<Vec<Vec<u8>>> {
    match limit {
        Some(max) => cipher.seal_fragments(header, payloads, max),
        None => Ok(vec![cipher.seal(header, payloads)?]),
    }
}

/// Whether a datagram carries an SKF payload (its first payload, as we
/// never put unencrypted payloads before it), and its fragment number.
pub(super) fn fragment_number(bytes: &[u8]) -> Option<u16> {
    let header = Header::decode(bytes).ok()?;
    if header.next_payload != PayloadType::EncryptedFragment {
        return None;
    }
    // Generic payload header (4), then the Fragment Number.
    let at = crate::message::HEADER_LEN + 4;
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// What one received fragment did.
#[derive(Debug)]
pub enum Added {
    /// It was the last one missing: the whole message.
    Complete(Message),
    /// It is kept; others are still missing.
    Pending,
    /// It was authentic but dropped: a duplicate, over a bound, or a
    /// Total Fragments smaller than before.
    Dropped,
}

/// A message being reassembled.
#[derive(Debug)]
struct Partial {
    message_id: u32,
    total: u16,
    /// Fragment 1's message, without its SKF payload (its header, and any
    /// unencrypted payloads before the SKF payload).
    first: Option<(Message, PayloadType)>,
    pieces: Vec<Option<Vec<u8>>>,
    have: u16,
    len: usize,
    started: Instant,
}

impl Partial {
    fn new(message_id: u32, total: u16, now: Instant) -> Self {
        Self {
            message_id,
            total,
            first: None,
            pieces: vec![None; usize::from(total)],
            have: 0,
            len: 0,
            started: now,
        }
    }
}

/// The fragments received so far: of at most one request and one
/// response (each side has one request outstanding at a time).
///
/// Public so that the `ike_fragments` fuzz target can feed it; an
/// [`super::IkeSa`] keeps its own.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// Indexed by the header's Response flag.
    slots: [Option<Partial>; 2],
}

impl Reassembly {
    /// Checks and decrypts one fragment with `cipher`, and keeps it. The
    /// caller has checked the header (SPIs, message ID, exchange).
    ///
    /// Errors: the fragment does not decode or its ICV is wrong
    /// ([`Error::IntegrityCheckFailed`]), or the reassembled payloads do
    /// not decode.
    pub fn add(&mut self, now: Instant, cipher: &SkCipher, bytes: &[u8]) -> Result<Added> {
        // RFC 7383 section 2.6: each fragment's ICV is checked before it
        // is kept, so that forged fragments cannot take the place of
        // authentic ones (and an attacker cannot spoil a reassembly).
        let (outer, skf) = cipher.open_fragment(bytes)?;
        let header = outer.header;
        if skf.total > MAX_FRAGMENTS {
            return Ok(Added::Dropped);
        }
        let slot = &mut self.slots[usize::from(header.response)];
        // A new message ID, or a stale half-assembled message, starts over.
        let stale = slot.as_ref().is_some_and(|p| {
            p.message_id != header.message_id
                || now.saturating_duration_since(p.started) > REASSEMBLY_TIMEOUT
        });
        if stale {
            *slot = None;
        }
        let partial = slot.get_or_insert_with(|| Partial::new(header.message_id, skf.total, now));
        // RFC 7383 section 2.6: a larger Total Fragments means the sender
        // cut the message again, smaller: what was kept is discarded; a
        // smaller one belongs to an older cut, and the fragment is.
        if skf.total > partial.total {
            *partial = Partial::new(header.message_id, skf.total, now);
        } else if skf.total < partial.total {
            return Ok(Added::Dropped);
        }
        let index = usize::from(skf.number - 1);
        if partial.pieces[index].is_some() {
            return Ok(Added::Dropped);
        }
        if partial.len + skf.data.len() > MAX_REASSEMBLED {
            *slot = None;
            return Ok(Added::Dropped);
        }
        if skf.number == 1 {
            partial.first = Some((outer, skf.first_payload));
        }
        partial.len += skf.data.len();
        partial.pieces[index] = Some(skf.data);
        partial.have += 1;
        if partial.have < partial.total {
            return Ok(Added::Pending);
        }
        let Some(done) = slot.take() else {
            return Ok(Added::Pending);
        };
        let Some((mut message, first)) = done.first else {
            return Ok(Added::Pending);
        };
        let mut plaintext = Vec::with_capacity(done.len);
        for piece in done.pieces.into_iter().flatten() {
            plaintext.extend_from_slice(&piece);
        }
        message.payloads.extend(decode_payloads(first, &plaintext)?);
        Ok(Added::Complete(message))
    }

    /// What is held for the request and for the response being
    /// reassembled: the fragments kept and their plaintext bytes (at most
    /// [`MAX_FRAGMENTS`] and [`MAX_REASSEMBLED`] each).
    pub fn held(&self) -> [(u16, usize); 2] {
        self.slots
            .each_ref()
            .map(|slot| slot.as_ref().map_or((0, 0), |p| (p.have, p.len)))
    }
}

/// Opens a received encrypted message, or adds a fragment to
/// `reassembly` when `enabled` (fragmentation negotiated): `None` while
/// fragments are missing, or for an authentic fragment dropped.
pub(super) fn open(
    cipher: &SkCipher,
    reassembly: &mut Reassembly,
    enabled: bool,
    now: Instant,
    stats: &mut super::Stats,
    bytes: &[u8],
) -> Result<Option<Message>> {
    if fragment_number(bytes).is_none() {
        return cipher.open(bytes).map(Some);
    }
    // RFC 7383 section 2.3: fragments are only sent when both peers
    // announced support; from a peer that did not, one is refused.
    if !enabled {
        return Err(Error::InvalidValue {
            what: "Encrypted Fragment payload without IKE fragmentation",
            value: u64::from(PayloadType::EncryptedFragment.value()),
        });
    }
    match reassembly.add(now, cipher, bytes)? {
        Added::Complete(message) => {
            stats.fragments_received += 1;
            Ok(Some(message))
        }
        Added::Pending => {
            stats.fragments_received += 1;
            Ok(None)
        }
        Added::Dropped => {
            stats.fragments_dropped += 1;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn limits_by_family() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 500));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 500));
        assert_eq!(message_limit(1280, v4), 1280 - 20 - 8 - 4);
        assert_eq!(message_limit(1280, v6), 1280 - 40 - 8 - 4);
        assert_eq!(message_limit(10, v6), 0);
    }
}
