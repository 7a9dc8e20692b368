//! What an IKE SA logs, at debug level, for an operator who debugs an
//! exchange: each message sent and received (the exchange, request or
//! response, the message ID, the I flag, the payloads by name, the IKE
//! SPIs and the peer's address), the proposals offered and chosen, the
//! traffic selectors offered and narrowed, and the ESP SPIs.
//!
//! Through the `tracing` facade, as rustls logs through `log` inside its
//! sans-IO core: a facade does no IO of its own (the program installs a
//! subscriber, or nothing happens), so the state machine stays
//! deterministic, while the log points sit where the decisions are made.
//! The alternative, events for the driver to log, would put a dozen
//! diagnostic variants into [`super::Event`] that every owner of an IKE SA
//! must poll and format. A disabled callsite costs one relaxed load; the
//! formatting below runs only when debug is on.
//!
//! Never logged: keys (SK_*, KEYMAT, the PSK), the D-H values and shared
//! secret, nonces, AUTH data. Payloads are named, never dumped.

use core::fmt;
use std::net::SocketAddr;

use crate::crypto::SkCipher;
use crate::error::Result;
use crate::message::{Header, Message, Payload, Proposal, TrafficSelector};
use crate::proposal;

use super::fragment;

/// A registry name as the RFCs write it, from its Rust name:
/// `NatDetectionSourceIp` gives `NAT_DETECTION_SOURCE_IP`, `IkeSaInit`
/// gives `IKE_SA_INIT` (digits stay with their word: `IKEV2_...`).
pub(crate) fn rfc_name(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A registry value's RFC name, or its number if it has none here
/// (`Unknown(n)`).
fn registry_name(debug: String) -> String {
    match debug
        .strip_prefix("Unknown(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(n) => n.to_owned(),
        None => rfc_name(&debug),
    }
}

/// The payloads of a message by strongSwan's short names, comma
/// separated: `SA,KE,No,N(NAT_DETECTION_SOURCE_IP)`; a Delete with its
/// protocol and SPIs, `D(ESP:0xc0ffee01)`; `-` for none (an empty
/// INFORMATIONAL, a liveness check).
pub(crate) struct PayloadNames<'a>(pub(crate) &'a [Payload]);

impl fmt::Display for PayloadNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        comma_separated(f, self.0, |f, p| match p {
            Payload::Sa(_) => f.write_str("SA"),
            Payload::KeyExchange(_) => f.write_str("KE"),
            Payload::IdInitiator(_) => f.write_str("IDi"),
            Payload::IdResponder(_) => f.write_str("IDr"),
            Payload::Certificate(_) => f.write_str("CERT"),
            Payload::CertificateRequest(_) => f.write_str("CERTREQ"),
            Payload::Auth(_) => f.write_str("AUTH"),
            Payload::Nonce(_) => f.write_str("No"),
            Payload::Notify(n) => write!(f, "N({})", registry_name(format!("{:?}", n.notify_type))),
            Payload::Delete(d) => {
                write!(f, "D({}", registry_name(format!("{:?}", d.protocol)))?;
                for spi in &d.spis {
                    f.write_str(":0x")?;
                    for b in spi {
                        write!(f, "{b:02x}")?;
                    }
                }
                f.write_str(")")
            }
            Payload::VendorId(_) => f.write_str("V"),
            Payload::TsInitiator(_) => f.write_str("TSi"),
            Payload::TsResponder(_) => f.write_str("TSr"),
            Payload::Encrypted(_) => f.write_str("SK"),
            Payload::Configuration(_) => f.write_str("CP"),
            Payload::Eap(_) => f.write_str("EAP"),
            Payload::EncryptedFragment(_) => f.write_str("SKF"),
        })
    }
}

/// Writes `items` comma separated, each with `each`.
fn comma_separated<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    mut each: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        each(f, item)?;
    }
    Ok(())
}

/// Proposals in strongSwan's syntax, comma separated
/// (`aes128gcm16-prfsha256-x25519,aes256-sha256-prfsha256-modp2048`).
pub(crate) struct Proposals<'a>(pub(crate) &'a [Proposal]);

impl fmt::Display for Proposals<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        comma_separated(f, self.0, |f, p| f.write_str(&proposal::to_strongswan(p)))
    }
}

/// Traffic selectors in strongSwan's notation, comma separated
/// (`192.0.2.1/32[udp/4789],192.0.2.1/32[udp/6081]`).
pub(crate) struct Selectors<'a>(pub(crate) &'a [TrafficSelector]);

impl fmt::Display for Selectors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        comma_separated(f, self.0, |f, ts| write!(f, "{ts}"))
    }
}

/// An SPI in hex, as `ip xfrm` and strongSwan print them.
pub(crate) struct Hex<T>(pub(crate) T);

impl fmt::Display for Hex<u32> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl fmt::Display for Hex<u64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// The SPI of a proposal (4 bytes for ESP, 8 for IKE), in hex; empty if
/// it has none.
pub(crate) fn proposal_spi(p: &Proposal) -> String {
    if p.spi.is_empty() {
        return String::new();
    }
    let mut s = String::from("0x");
    for b in &p.spi {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The peer's address, or `-` while a responder does not know it yet.
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Sent,
    Received,
}

/// Logs one IKE message at debug level: `sent IKE_AUTH request 1` with
/// the peer's address, the I flag, the IKE SPIs, the payloads by name
/// (inside the SK payload: what was sealed or opened) and, for a message
/// that went as several fragments (RFC 7383), how many.
pub(crate) fn message(
    direction: Direction,
    peer: Option<SocketAddr>,
    header: &Header,
    payloads: &[Payload],
    fragments: usize,
) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let exchange = registry_name(format!("{:?}", header.exchange_type));
    let kind = if header.response {
        "response"
    } else {
        "request"
    };
    let verb = match direction {
        Direction::Sent => "sent",
        Direction::Received => "received",
    };
    tracing::debug!(
        peer = %Peer(peer),
        exchange = %exchange,
        message_id = header.message_id,
        response = header.response,
        initiator = header.initiator,
        spi_i = %Hex(header.initiator_spi),
        spi_r = %Hex(header.responder_spi),
        payloads = %PayloadNames(payloads),
        fragments,
        "IKE {verb} {exchange} {kind} {}",
        header.message_id
    );
}

/// Logs a plaintext message we send (IKE_SA_INIT and its refusals), from
/// its bytes: it is decoded again only when debug is on.
pub(crate) fn sent_plain(peer: Option<SocketAddr>, bytes: &[u8]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Ok(m) = Message::decode(bytes) {
        message(Direction::Sent, peer, &m.header, &m.payloads, 1);
    }
}

/// Seals an encrypted message ([`fragment::seal`]) and logs what went into
/// it, for `peer`.
pub(crate) fn seal(
    peer: Option<SocketAddr>,
    cipher: &SkCipher,
    limit: Option<usize>,
    header: &Header,
    payloads: &[Payload],
) -> Result<Vec<Vec<u8>>> {
    let sealed = fragment::seal(cipher, limit, header, payloads)?;
    message(Direction::Sent, peer, header, payloads, sealed.len());
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Delete, Notify, NotifyType, ProtocolId};

    #[test]
    fn rfc_names() {
        assert_eq!(rfc_name("IkeSaInit"), "IKE_SA_INIT");
        assert_eq!(rfc_name("CreateChildSa"), "CREATE_CHILD_SA");
        assert_eq!(
            rfc_name("Ikev2FragmentationSupported"),
            "IKEV2_FRAGMENTATION_SUPPORTED"
        );
        assert_eq!(registry_name("Unknown(40000)".to_owned()), "40000");
    }

    #[test]
    fn payload_names_are_strongswan_short_names() {
        let payloads = [
            Payload::Nonce(vec![1; 32]),
            Payload::Notify(Notify::new(NotifyType::NatDetectionSourceIp, vec![2; 20])),
            Payload::Notify(Notify::new(NotifyType::Unknown(40000), Vec::new())),
            Payload::Delete(Delete::esp(&[0xc0ff_ee01])),
            Payload::Delete(Delete::ike()),
            Payload::TsInitiator(Vec::new()),
        ];
        assert_eq!(
            PayloadNames(&payloads).to_string(),
            "No,N(NAT_DETECTION_SOURCE_IP),N(40000),D(ESP:0xc0ffee01),D(IKE),TSi"
        );
        assert_eq!(PayloadNames(&[]).to_string(), "-");
        // The nonce's bytes are not shown.
        assert!(!PayloadNames(&payloads).to_string().contains("0101"));
    }

    #[test]
    fn proposals_and_spis() {
        let p = proposal::parse_list(
            "aes128gcm16-prfsha256-x25519,aes256-sha256-modp2048",
            ProtocolId::Ike,
        )
        .unwrap();
        assert_eq!(
            Proposals(&p).to_string(),
            "aes128gcm16-prfsha256-x25519,aes256-sha256-prfsha256-modp2048"
        );
        let mut esp = proposal::parse_list("aes128gcm16", ProtocolId::Esp).unwrap();
        esp[0].spi = 0xc0ff_ee01u32.to_be_bytes().to_vec();
        assert_eq!(proposal_spi(&esp[0]), "0xc0ffee01");
        assert_eq!(Hex(0x1234u32).to_string(), "0x00001234");
        assert_eq!(Hex(0x1234u64).to_string(), "0x0000000000001234");
    }
}
