//! The Geneve header and its options (RFC 8926 sections 3.4 and 3.5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! ~                    Variable-Length Options                    ~
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Each option is a TLV:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Option Class         |      Type     |R|R|R| Length  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! ~                  Variable-Length Option Data                  ~
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Opt Len and Length count 4-byte words, excluding the 8-byte base header
//! and the 4-byte option header respectively. [`Packet::options`] walks the
//! options without allocating; [`Repr`] holds the base header and the
//! length of the options, which the caller copies or rewrites as bytes
//! ([`Packet::options_bytes`]). To build options, use [`emit_options`].

use crate::vxlan::Vni;
use crate::{Error, Result};

mod field {
    use crate::Field;
    pub(crate) const VER_OPT_LEN: usize = 0;
    pub(crate) const FLAGS: usize = 1;
    pub(crate) const PROTOCOL_TYPE: Field = 2..4;
    pub(crate) const VNI: Field = 4..7;
    pub(crate) const RESERVED: usize = 7;
    pub(crate) const OPTIONS: usize = 8;

    // Within an option.
    pub(crate) const OPT_CLASS: Field = 0..2;
    pub(crate) const OPT_TYPE: usize = 2;
    pub(crate) const OPT_LEN: usize = 3;
    pub(crate) const OPT_DATA: usize = 4;
}

/// Length of the Geneve base header.
pub const HEADER_LEN: usize = field::OPTIONS;
/// The longest options field: Opt Len 63, in 4-byte words.
pub const MAX_OPTIONS_LEN: usize = 63 * 4;
/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = field::OPT_DATA;
/// The longest option data: Length 31, in 4-byte words.
pub const MAX_OPTION_DATA_LEN: usize = 31 * 4;

/// The IANA-assigned Geneve UDP port.
//= https://www.rfc-editor.org/rfc/rfc8926#section-3.3
//# Dest port: IANA has assigned port 6081 as the fixed well-known
//# destination port for Geneve.
pub const PORT: u16 = 6081;

/// The Protocol Type of an Ethernet payload (Transparent Ethernet
/// Bridging).
pub const PROTOCOL_ETHERNET: u16 = 0x6558;

const OPT_CRITICAL: u8 = 0x80;
const OPT_LEN_MASK: u8 = 0x1f;

crate::view::packet_view! {
    /// A read/write view of a Geneve packet (base header, options, payload).
    fields {
        /// The Protocol Type: an EtherType, or [`PROTOCOL_ETHERNET`].
        pub protocol_type, set_protocol_type: u16 = field::PROTOCOL_TYPE;
        /// The Virtual Network Identifier.
        pub vni, set_vni: Vni = field::VNI;
    }
    /// Checks that the buffer holds the base header and the options that
    /// Opt Len announces; returns [`Error::Truncated`] if not.
    ///
    /// The options themselves are checked by [`Repr::parse`], and
    /// [`Self::options`] reports malformed ones as errors.
    //
    // The announced length is never below HEADER_LEN.
    check_len: HEADER_LEN, |p| p.header_len();
    bits {
        /// The version (0 is the only one defined).
        pub version, set_version: u8 = field::VER_OPT_LEN, mask 0xc0_u8;
        /// Opt Len: the options' length in 4-byte words.
        opt_len, set_opt_len: u8 = field::VER_OPT_LEN, mask 0x3f_u8;
        /// The O bit: the packet carries a control message.
        pub oam, set_oam: bool = field::FLAGS, mask 0x80_u8;
        /// The C bit: critical options are present.
        pub critical, set_critical: bool = field::FLAGS, mask 0x40_u8;
    }
    slices {
        /// The options as raw bytes; see [`emit_options`] for writing them.
        pub options_bytes, options_bytes_mut = |p| HEADER_LEN..p.header_len();
        /// The payload after the options.
        pub payload, payload_mut = |p| p.header_len()..;
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The length of the options in bytes: Opt Len times 4.
    pub fn options_len(&self) -> usize {
        usize::from(self.opt_len()) * 4
    }

    /// The header length: base header and options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// An iterator over the options. It yields an error, then stops, at an
    /// option that overruns the options field.
    pub fn options(&self) -> OptionIter<'_> {
        OptionIter::new(self.options_bytes())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets Opt Len from a length in bytes (a multiple of 4, at most
    /// [`MAX_OPTIONS_LEN`]).
    pub fn set_options_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && len <= MAX_OPTIONS_LEN);
        self.set_opt_len((len / 4) as u8);
    }
}

/// One Geneve option, borrowed from a packet or from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOption<'a> {
    /// The Option Class.
    pub class: u16,
    /// The Type; its high bit is the critical bit.
    pub type_: u8,
    /// The option data: a multiple of 4 bytes, at most
    /// [`MAX_OPTION_DATA_LEN`].
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// Whether the critical bit (the high bit of the Type) is set.
    //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
    //# The high-order bit of the option type indicates that this is a
    //# critical option.
    pub const fn critical(&self) -> bool {
        self.type_ & OPT_CRITICAL != 0
    }

    /// The length of the option on the wire: header and data.
    pub const fn wire_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }
}

/// An iterator over the options of a Geneve packet.
///
/// Yields `Ok(option)` for each well-formed option. At an option whose
/// header or data would run past the end of the options field it yields
/// `Err(Error::BadLength)` once and then stops.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> OptionIter<'a> {
    /// Iterates over the options in `options` (the bytes of the options
    /// field, as [`Packet::options_bytes`] returns them).
    pub const fn new(options: &'a [u8]) -> Self {
        Self {
            rest: options,
            failed: false,
        }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<GeneveOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
        //# Packets in which the total length of all options is not equal to
        //# the 'Opt Len' in the base header are invalid and MUST be silently
        //# dropped if received by a tunnel endpoint that processes the
        //# options.
        let Some(header) = rest.get(..OPTION_HEADER_LEN) else {
            self.failed = true;
            return Some(Err(Error::BadLength));
        };
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
        //# Length (5 bits):  Length of the option, expressed in 4-byte
        //# multiples, excluding the option header.
        //
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
        //# R (3 bits):  Option control flags reserved for future use.  These
        //# bits MUST be zero on transmission and MUST be ignored on receipt.
        let data_len = usize::from(header[field::OPT_LEN] & OPT_LEN_MASK) * 4;
        let end = OPTION_HEADER_LEN + data_len;
        let Some(data) = rest.get(OPTION_HEADER_LEN..end) else {
            self.failed = true;
            return Some(Err(Error::BadLength));
        };
        self.rest = &rest[end..];
        let class = &header[field::OPT_CLASS];
        Some(Ok(GeneveOption {
            class: u16::from_be_bytes([class[0], class[1]]),
            type_: header[field::OPT_TYPE],
            data,
        }))
    }
}

impl core::iter::FusedIterator for OptionIter<'_> {}

/// The length in bytes of `options` on the wire.
///
/// Fails with [`Error::BadLength`] if an option's data is not a multiple of
/// 4 bytes or is longer than [`MAX_OPTION_DATA_LEN`], or if the options do
/// not fit in [`MAX_OPTIONS_LEN`].
pub fn options_len(options: &[GeneveOption<'_>]) -> Result<usize> {
    let mut total = 0usize;
    for option in options {
        if option.data.len() % 4 != 0 || option.data.len() > MAX_OPTION_DATA_LEN {
            return Err(Error::BadLength);
        }
        total += option.wire_len();
        if total > MAX_OPTIONS_LEN {
            return Err(Error::BadLength);
        }
    }
    Ok(total)
}

/// Writes `options` at the start of `buf` (for instance
/// [`Packet::options_bytes_mut`]) and returns how many bytes they took.
///
/// The R bits are written as zero; each `type_` is written as given, so its
/// critical bit is the caller's. Fails as [`options_len`] does, or with
/// [`Error::Truncated`] if `buf` is too short; `buf` is left untouched on
/// failure.
pub fn emit_options(buf: &mut [u8], options: &[GeneveOption<'_>]) -> Result<usize> {
    let total = options_len(options)?;
    let Some(out) = buf.get_mut(..total) else {
        return Err(Error::Truncated);
    };
    let mut at = 0;
    for option in options {
        let o = &mut out[at..at + option.wire_len()];
        o[field::OPT_CLASS].copy_from_slice(&option.class.to_be_bytes());
        o[field::OPT_TYPE] = option.type_;
        // data.len() <= 124, checked by options_len.
        o[field::OPT_LEN] = (option.data.len() / 4) as u8;
        o[field::OPT_DATA..].copy_from_slice(option.data);
        at += option.wire_len();
    }
    Ok(total)
}

/// The Geneve base header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Virtual Network Identifier.
    pub vni: Vni,
    /// The O bit: a control message.
    pub oam: bool,
    /// The C bit: some option is critical.
    pub critical: bool,
    /// The Protocol Type of the payload.
    pub protocol_type: u16,
    /// The length of the options in bytes (a multiple of 4, at most
    /// [`MAX_OPTIONS_LEN`]).
    pub options_len: usize,
}

impl Repr {
    /// A `Repr` for a packet that will carry `options`: sets
    /// `options_len`, and sets `critical` if any option is critical.
    pub fn with_options(
        vni: Vni,
        oam: bool,
        protocol_type: u16,
        options: &[GeneveOption<'_>],
    ) -> Result<Self> {
        Ok(Self {
            vni,
            oam,
            critical: options.iter().any(GeneveOption::critical),
            protocol_type,
            options_len: options_len(options)?,
        })
    }

    /// Parses a checked packet: checks the version, walks the options, and
    /// checks that the C bit agrees with them.
    ///
    /// Errors: [`Error::BadVersion`] for a version other than 0,
    /// [`Error::BadLength`] when the options do not exactly fill Opt Len,
    /// [`Error::Malformed`] when the C bit is set without a critical option
    /// or clear with one. The reserved bits are ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.4
        //# Ver (2 bits):  The current version number is 0.  Packets received
        //# by a tunnel endpoint with an unknown version MUST be dropped.
        if packet.version() != 0 {
            return Err(Error::BadVersion);
        }
        let mut any_critical = false;
        for option in packet.options() {
            any_critical |= option?.critical();
        }
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
        //# If this bit is set in any option, then the 'C' bit in the Geneve
        //# base header MUST also be set.  Otherwise, the 'C' bit MUST NOT be
        //# set.
        //
        // Both directions are a sender's MUST; a packet that breaks either
        // is malformed. A clear C bit over a critical option is the
        // dangerous case: an endpoint that skips options on a clear C bit
        // would ignore the critical option.
        if any_critical != packet.critical() {
            return Err(Error::Malformed);
        }
        //= https://www.rfc-editor.org/rfc/rfc8926#section-3.4
        //# Rsvd. (6 bits):  Reserved field, which MUST be zero on transmission
        //# and MUST be ignored on receipt.
        Ok(Self {
            vni: packet.vni(),
            oam: packet.oam(),
            critical: packet.critical(),
            protocol_type: packet.protocol_type(),
            options_len: packet.options_len(),
        })
    }

    /// The header length: base header and options.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options_len
    }

    /// Writes the base header, with zero reserved fields. The options field
    /// (`options_len` bytes after the base header) is left for the caller,
    /// e.g. [`emit_options`] into [`Packet::options_bytes_mut`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let buf = packet.buffer.as_mut();
        buf[field::FLAGS] = 0;
        buf[field::RESERVED] = 0;
        packet.set_version(0);
        packet.set_options_len(self.options_len);
        packet.set_oam(self.oam);
        packet.set_critical(self.critical);
        packet.set_protocol_type(self.protocol_type);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // Opt Len 5 (20 bytes), C bit, Ethernet, VNI 0x00abcd; then
    //   option 1: class 0x0102, type 0x03, length 1: de ad be ef
    //   option 2: class 0xffff, type 0x85 (critical), length 2:
    //             00 11 22 33 44 55 66 77
    // then 4 bytes of payload. tshark decodes the header and both options
    // the same way (option 2 "Critical", flags "Critical Options Present").
    static PACKET_BYTES: [u8; 32] = [
        0x05, 0x40, 0x65, 0x58, 0x00, 0xab, 0xcd, 0x00, // base header
        0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef, // option 1
        0xff, 0xff, 0x85, 0x02, 0x00, 0x11, 0x22, 0x33, // option 2
        0x44, 0x55, 0x66, 0x77, //
        0xaa, 0xbb, 0xcc, 0xdd, // payload
    ];

    const OPT1: GeneveOption<'static> = GeneveOption {
        class: 0x0102,
        type_: 0x03,
        data: &[0xde, 0xad, 0xbe, 0xef],
    };
    const OPT2: GeneveOption<'static> = GeneveOption {
        class: 0xffff,
        type_: 0x85,
        data: &[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77],
    };

    fn repr() -> Repr {
        Repr {
            vni: Vni::new(0xabcd).unwrap(),
            oam: false,
            critical: true,
            protocol_type: PROTOCOL_ETHERNET,
            options_len: 20,
        }
    }

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.options_len(), 20);
        assert_eq!(packet.header_len(), 28);
        assert!(!packet.oam());
        assert!(packet.critical());
        assert_eq!(packet.protocol_type(), 0x6558);
        assert_eq!(packet.vni().get(), 0xabcd);
        assert_eq!(packet.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        let options: Vec<_> = packet.options().collect();
        assert_eq!(options, vec![Ok(OPT1), Ok(OPT2)]);
        assert!(!OPT1.critical());
        assert!(OPT2.critical());
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
    }

    #[test]
    fn test_construct() {
        let options = [OPT1, OPT2];
        let repr = Repr::with_options(
            Vni::new(0xabcd).unwrap(),
            false,
            PROTOCOL_ETHERNET,
            &options,
        )
        .unwrap();
        assert_eq!(repr, self::repr());
        let mut bytes = [0xa5u8; 32];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        assert_eq!(emit_options(packet.options_bytes_mut(), &options), Ok(20));
        packet
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn c_bit_must_match_options() {
        // Critical option, C clear.
        let mut bytes = PACKET_BYTES;
        bytes[1] = 0x00;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
        // C set, no critical option.
        let mut bytes = PACKET_BYTES;
        bytes[18] = 0x05;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
        // Neither: fine.
        bytes[1] = 0x00;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!Repr::parse(&packet).unwrap().critical);
    }

    #[test]
    fn reserved_bits_ignored() {
        let mut bytes = PACKET_BYTES;
        bytes[1] |= 0x3f; // Rsvd.
        bytes[7] = 0xff; // Reserved
        bytes[11] |= 0xe0; // option 1's R bits
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
        assert_eq!(packet.options().next(), Some(Ok(OPT1)));
    }

    #[test]
    fn bad_version() {
        let mut bytes = PACKET_BYTES;
        bytes[0] |= 0x40;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::BadVersion));
    }

    #[test]
    fn options_must_fill_opt_len() {
        // Option 2 claims 3 words of data; only 2 are left in Opt Len.
        let mut bytes = PACKET_BYTES;
        bytes[19] = 0x03;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let options: Vec<_> = packet.options().collect();
        assert_eq!(options, vec![Ok(OPT1), Err(Error::BadLength)]);
        assert_eq!(Repr::parse(&packet), Err(Error::BadLength));

        // Opt Len 3 (12 bytes): option 1, then option 2's header claiming 8
        // bytes of data that lie outside the options field.
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x03;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.options().count(), 2);
        assert_eq!(Repr::parse(&packet), Err(Error::BadLength));

        // An option header cut short (only possible on a raw slice, since
        // Opt Len counts whole words).
        let options: Vec<_> = OptionIter::new(&[0x01, 0x02, 0x03]).collect();
        assert_eq!(options, vec![Err(Error::BadLength)]);
        assert_eq!(OptionIter::new(&[]).next(), None);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
        // Opt Len says 20 bytes of options; 19 are there.
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..27]).unwrap_err(),
            Error::Truncated
        );
        let packet = Packet::new_checked(&PACKET_BYTES[..28]).unwrap();
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn emit_options_checks() {
        let odd = GeneveOption {
            class: 1,
            type_: 1,
            data: &[1, 2, 3],
        };
        let mut buf = [0u8; 64];
        assert_eq!(emit_options(&mut buf, &[odd]), Err(Error::BadLength));
        let long = GeneveOption {
            class: 1,
            type_: 1,
            data: &[0; 128],
        };
        assert_eq!(options_len(&[long]), Err(Error::BadLength));
        let max = GeneveOption {
            class: 1,
            type_: 1,
            data: &[0; 124],
        };
        // 2 * 128 = 256 bytes > 252.
        assert_eq!(options_len(&[max, max]), Err(Error::BadLength));
        assert_eq!(options_len(&[max, OPT2]), Ok(128 + 12));
        assert_eq!(
            emit_options(&mut buf[..19], &[OPT1, OPT2]),
            Err(Error::Truncated)
        );
        assert_eq!(buf, [0u8; 64]);
        assert_eq!(options_len(&[]), Ok(0));
    }

    fn arb_options() -> impl Strategy<Value = Vec<(u16, u8, Vec<u8>)>> {
        let option =
            (any::<u16>(), any::<u8>(), 0usize..=31).prop_flat_map(|(class, type_, words)| {
                (
                    Just(class),
                    Just(type_),
                    proptest::collection::vec(any::<u8>(), words * 4),
                )
            });
        proptest::collection::vec(option, 0..5).prop_filter("fits in Opt Len", |opts| {
            opts.iter().map(|o| 4 + o.2.len()).sum::<usize>() <= MAX_OPTIONS_LEN
        })
    }

    proptest! {
        #[test]
        fn parse_emit(
            vni in 0u32..=0xff_ffff,
            oam: bool,
            protocol_type: u16,
            owned in arb_options(),
        ) {
            let options: Vec<GeneveOption<'_>> = owned
                .iter()
                .map(|(class, type_, data)| GeneveOption { class: *class, type_: *type_, data })
                .collect();
            let repr = Repr::with_options(Vni::new(vni).unwrap(), oam, protocol_type, &options)
                .unwrap();
            let mut bytes = vec![0xffu8; repr.buffer_len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            prop_assert_eq!(
                emit_options(packet.options_bytes_mut(), &options).unwrap(),
                repr.options_len
            );
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet).unwrap(), repr);
            let parsed: Vec<_> = packet.options().collect::<Result<_>>().unwrap();
            prop_assert_eq!(parsed, options);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                let mut seen = 0;
                for option in packet.options() {
                    match option {
                        Ok(o) => seen += o.wire_len(),
                        Err(_) => break,
                    }
                }
                prop_assert!(seen <= packet.options_len());
                prop_assert!(packet.options().count() <= MAX_OPTIONS_LEN / 4);
            }
        }

        #[test]
        fn never_panics_steered(
            opt_words in 0u8..64,
            options in proptest::collection::vec(any::<u8>(), 0..260),
        ) {
            // Version 0 with random options: exercises the TLV walk.
            let mut bytes = vec![opt_words, 0, 0x65, 0x58, 0, 0, 1, 0];
            bytes.extend_from_slice(&options);
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                if let Ok(repr) = Repr::parse(&packet) {
                    let total: usize = packet
                        .options()
                        .map(|o| o.map(|o| o.wire_len()))
                        .sum::<Result<usize>>()
                        .unwrap();
                    prop_assert_eq!(total, repr.options_len);
                }
            }
        }
    }
}
