//! A security association: one direction of one ESP flow, with its keys,
//! sequence numbers, replay window, lifetimes and counters.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tunsec_wire::esp::{self as esp_wire, TrailerRepr};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, natt, udp};

use crate::Error;
use crate::buf::PacketBuf;
use crate::counters::{DropReason, SaCounters};
use crate::crypto::{CryptoProvider, EspCipher};
use crate::direction::Direction;
use crate::keys::SaKeys;
use crate::lifetime::{Lifetime, LifetimeState, LifetimeTracker};
use crate::replay::ReplayWindow;
use crate::selector::{FlowKey, Selector};
use crate::suite::Suite;

/// ESP mode (RFC 4303 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// ESP goes between the IP header and the upper-layer payload; the
    /// packet keeps its addresses.
    Transport,
    /// The whole inner IP packet is the payload, under a new outer header
    /// between the two tunnel endpoints.
    Tunnel {
        /// This host's tunnel endpoint (the outer source when sending).
        local: IpAddr,
        /// The peer's tunnel endpoint.
        remote: IpAddr,
    },
}

/// How ESP packets travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// Raw ESP, IP protocol 50.
    Esp,
    /// ESP in UDP (RFC 3948), usually on port 4500 at both ends.
    Udp {
        /// This host's UDP port.
        local_port: u16,
        /// The peer's UDP port.
        remote_port: u16,
    },
}

impl Encapsulation {
    /// ESP in UDP on port 4500 at both ends.
    pub const UDP_4500: Self = Self::Udp {
        local_port: natt::PORT,
        remote_port: natt::PORT,
    };
}

/// Everything needed to create an SA.
#[derive(Debug, Clone)]
pub struct SaConfig {
    /// The SPI, chosen by the receiver. Never 0.
    pub spi: u32,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Transport or tunnel mode.
    pub mode: Mode,
    /// Raw ESP or ESP in UDP.
    pub encapsulation: Encapsulation,
    /// The cipher suite.
    pub suite: Suite,
    /// The keys.
    pub keys: SaKeys,
    /// Extended (64-bit) sequence numbers on the wire (RFC 4304).
    pub esn: bool,
    /// The anti-replay window, in packets (inbound only).
    pub replay_window: u32,
    /// Soft and hard lifetimes.
    pub lifetime: Lifetime,
    /// The traffic this SA may carry. Inbound, a decrypted packet that
    /// matches none of them is dropped. Empty means any.
    pub selectors: Vec<Selector>,
    /// What the owner binds the SA to, opaque here (tunsecd: the one
    /// virtual network it carries); `None`: nothing.
    pub binding: Option<u32>,
}

impl SaConfig {
    /// A transport-mode SA in ESP-in-UDP on port 4500, without ESN, with the
    /// default replay window, no lifetimes and no selectors.
    pub fn new(spi: u32, direction: Direction, suite: Suite, keys: SaKeys) -> Self {
        Self {
            spi,
            direction,
            mode: Mode::Transport,
            encapsulation: Encapsulation::UDP_4500,
            suite,
            keys,
            esn: false,
            replay_window: ReplayWindow::DEFAULT_SIZE,
            lifetime: Lifetime::default(),
            selectors: Vec::new(),
            binding: None,
        }
    }
}

/// Something an SA wants its owner to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaEvent {
    /// A soft lifetime was reached: rekey now.
    SoftLifetime,
    /// A hard lifetime was reached, or the sequence space ran out: the SA
    /// stopped and must be replaced.
    HardLifetime,
}

/// Room a caller must reserve around a packet for [`Sa::seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhead {
    /// Bytes needed before the packet.
    pub head: usize,
    /// Bytes needed after the packet, at most.
    pub tail: usize,
}

impl Overhead {
    /// The worst-case growth of a packet.
    pub fn total(&self) -> usize {
        self.head + self.tail
    }
}

const UDP_HEADER_LEN: usize = 8;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// The longest IP header kept aside while ESP is inserted or removed.
const MAX_IP_HEADER_LEN: usize = 60;

/// A security association.
pub struct Sa {
    spi: u32,
    direction: Direction,
    mode: Mode,
    encapsulation: Encapsulation,
    suite: Suite,
    esn: bool,
    /// Shared with the [`SealJob`]s and [`OpenJob`]s in flight.
    cipher: Arc<dyn EspCipher>,
    /// The raw keys, kept only for [`Sa::export_keys`] (the cipher holds
    /// its own key schedule); zeroized on drop, never printed.
    keys: SaKeys,
    /// The next outbound sequence number; 0 once the space is used up.
    next_seq: u64,
    replay: Option<ReplayWindow>,
    lifetime: LifetimeTracker,
    counters: SaCounters,
    selectors: Vec<Selector>,
    binding: Option<u32>,
    soft_event: bool,
    hard_event: bool,
}

impl core::fmt::Debug for Sa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("direction", &self.direction)
            .field("mode", &self.mode)
            .field("encapsulation", &self.encapsulation)
            .field("suite", &self.suite)
            .field("esn", &self.esn)
            .field("keys", &"<redacted>")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Sa {
    /// Creates an SA with the default crypto provider. `now` starts its
    /// time lifetimes.
    pub fn new(config: SaConfig, now: Instant) -> Result<Self, Error> {
        Self::with_provider(config, now, &CryptoProvider::default())
    }

    /// Creates an SA with a given crypto provider.
    pub fn with_provider(
        config: SaConfig,
        now: Instant,
        provider: &CryptoProvider,
    ) -> Result<Self, Error> {
        if config.spi == 0 {
            //= https://www.rfc-editor.org/rfc/rfc4303#section-2.1
            //# The SPI value of zero (0) is reserved [...] and MUST NOT be sent
            //# on the wire.
            return Err(Error::ZeroSpi);
        }
        if let Mode::Tunnel { local, remote } = config.mode {
            if local.is_ipv4() != remote.is_ipv4() {
                return Err(Error::TunnelFamilies { local, remote });
            }
        }
        let replay = match config.direction {
            Direction::Inbound => Some(ReplayWindow::new(config.replay_window)?),
            Direction::Outbound => None,
        };
        let cipher: Arc<dyn EspCipher> =
            Arc::from((provider.new_cipher)(config.suite, &config.keys)?);
        Ok(Self {
            spi: config.spi,
            direction: config.direction,
            mode: config.mode,
            encapsulation: config.encapsulation,
            suite: config.suite,
            esn: config.esn,
            cipher,
            keys: config.keys,
            next_seq: 1,
            replay,
            lifetime: LifetimeTracker::new(config.lifetime, now),
            counters: SaCounters::default(),
            selectors: config.selectors,
            binding: config.binding,
            soft_event: false,
            hard_event: false,
        })
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The encapsulation.
    pub fn encapsulation(&self) -> Encapsulation {
        self.encapsulation
    }

    /// The cipher suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Whether extended sequence numbers are on.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The SA's raw keys (the encryption key with the AEAD salt at its
    /// end, as RFC 4106 section 8.1 and RFC 7634 section 2 derive it, then
    /// the integrity key), with [`Sa::suite`] what a dissector needs to
    /// decrypt the SA's packets.
    ///
    /// For key export only: `tunsec keys export --wireshark`, which an
    /// operator asks for explicitly to debug with Wireshark. Nothing else
    /// may read them; the data path uses the cipher, never these bytes.
    pub fn export_keys(&self) -> &SaKeys {
        &self.keys
    }

    /// The traffic selectors.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// What the owner bound the SA to ([`SaConfig::binding`]).
    pub fn binding(&self) -> Option<u32> {
        self.binding
    }

    /// The counters.
    pub fn counters(&self) -> &SaCounters {
        &self.counters
    }

    /// When the SA was created.
    pub fn created(&self) -> Instant {
        self.lifetime.created()
    }

    /// The lifetime state.
    pub fn lifetime_state(&self) -> LifetimeState {
        self.lifetime.state()
    }

    /// Whether the SA still processes packets.
    pub fn is_usable(&self) -> bool {
        self.lifetime.state() != LifetimeState::Expired
    }

    /// The highest sequence number sent (outbound) or accepted (inbound).
    pub fn last_seq(&self) -> u64 {
        match &self.replay {
            Some(w) => w.top(),
            None if self.next_seq == 0 => u64::MAX,
            None => self.next_seq - 1,
        }
    }

    /// Moves the outbound sequence number forward, so that the next packet
    /// carries `next_seq`: the equivalent of `ip xfrm state ... replay-oseq`,
    /// for manually keyed SAs that resume where they left off. It never
    /// moves backwards (that would repeat IVs under the same key).
    pub fn advance_seq(&mut self, next_seq: u64) -> Result<(), Error> {
        if self.direction != Direction::Outbound || next_seq == 0 || next_seq < self.next_seq {
            return Err(Error::SequenceNumber(next_seq));
        }
        self.next_seq = next_seq;
        Ok(())
    }

    /// Marks every sequence number up to `top` as received on an inbound SA
    /// (the equivalent of `ip xfrm state ... replay-seq`).
    pub fn advance_replay_window(&mut self, top: u64) -> Result<(), Error> {
        match self.replay.as_mut() {
            Some(w) if top >= w.top() => {
                w.update(top);
                Ok(())
            }
            _ => Err(Error::SequenceNumber(top)),
        }
    }

    /// The anti-replay window size (inbound SAs).
    pub fn replay_window(&self) -> Option<u32> {
        self.replay.as_ref().map(ReplayWindow::size)
    }

    /// The next event, if any: quinn-style polling.
    pub fn poll_event(&mut self) -> Option<SaEvent> {
        if std::mem::take(&mut self.soft_event) {
            return Some(SaEvent::SoftLifetime);
        }
        if std::mem::take(&mut self.hard_event) {
            return Some(SaEvent::HardLifetime);
        }
        None
    }

    /// When [`Self::handle_timeout`] should next be called, for time
    /// lifetimes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lifetime.next_deadline()
    }

    /// Moves the lifetime forward to `now`, with no packet.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.update_lifetime(now);
    }

    /// The room [`Self::seal`] needs around an IP packet.
    pub fn overhead(&self) -> Overhead {
        let esp = self.esp_overhead();
        let udp = match self.encapsulation {
            Encapsulation::Esp => 0,
            Encapsulation::Udp { .. } => UDP_HEADER_LEN,
        };
        let outer_ip = match self.mode {
            Mode::Transport => 0,
            Mode::Tunnel { local, .. } if local.is_ipv4() => IPV4_HEADER_LEN,
            Mode::Tunnel { .. } => IPV6_HEADER_LEN,
        };
        Overhead {
            head: esp.head + udp + outer_ip,
            tail: esp.tail,
        }
    }

    /// The room [`Self::seal_esp`] needs around a payload.
    pub fn esp_overhead(&self) -> Overhead {
        Overhead {
            head: esp_wire::HEADER_LEN + self.suite.iv_len(),
            tail: self.suite.align() - 1 + esp_wire::TRAILER_LEN + self.suite.icv_len(),
        }
    }

    fn drop(&mut self, reason: DropReason) -> DropReason {
        self.counters.drops.incr(reason);
        reason
    }

    fn update_lifetime(&mut self, now: Instant) {
        let (bytes, packets) = (self.counters.bytes, self.counters.packets);
        if !self.lifetime.due(bytes, packets, now) {
            return;
        }
        match self.lifetime.update(bytes, packets, now) {
            Some(LifetimeState::Soft) => self.soft_event = true,
            Some(LifetimeState::Expired) => self.hard_event = true,
            _ => {}
        }
    }

    /// Drops the packet if the SA can no longer be used at `now`.
    fn ensure_usable(&mut self, now: Instant) -> Result<(), DropReason> {
        self.update_lifetime(now);
        if self.is_usable() {
            Ok(())
        } else {
            Err(self.drop(DropReason::SaExpired))
        }
    }

    /// Counts a packet dropped for `reason` on this SA: for the failures
    /// of a [`SealJob`] or [`OpenJob`], which run without the SA.
    pub fn record_drop(&mut self, reason: DropReason) {
        self.counters.drops.incr(reason);
    }

    /// Protects a payload: `buf` holds the payload (an upper-layer segment
    /// in transport mode, an IP packet in tunnel mode) and is turned, in
    /// place, into the ESP packet from the SPI to the ICV.
    ///
    /// `buf` needs [`Self::esp_overhead`] bytes of headroom and tailroom.
    pub fn seal_esp(
        &mut self,
        buf: &mut PacketBuf<'_>,
        next_header: u8,
        now: Instant,
    ) -> Result<(), DropReason> {
        let job = self.reserve_seal(buf, now)?;
        job.seal(buf, next_header).map_err(|r| self.drop(r))
    }

    /// The first half of [`Self::seal_esp`], for an SA that several
    /// threads send with: checks the SA and the room in `buf`, takes the
    /// next sequence number and counts the packet. The SA's lock (if any)
    /// is needed only for this; [`SealJob::seal`] encrypts without it, so
    /// threads encrypt in parallel and each packet still has a number of
    /// its own under the key.
    pub fn reserve_seal(
        &mut self,
        buf: &PacketBuf<'_>,
        now: Instant,
    ) -> Result<SealJob, DropReason> {
        debug_assert_eq!(self.direction, Direction::Outbound);
        self.ensure_usable(now)?;
        //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.3
        //# the transmitted sequence number must never be allowed to cycle.
        //# Thus, the sender's counter and the receiver's counter MUST be
        //# reset (by establishing a new SA and thus a new key) prior to the
        //# transmission of the 2^32nd packet on an SA.
        let seq = self.next_seq;
        let max = if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if seq == 0 || seq > max {
            self.lifetime.expire();
            self.hard_event = true;
            return Err(self.drop(DropReason::SeqExhausted));
        }
        let payload_len = buf.len();
        let job = SealJob {
            cipher: Arc::clone(&self.cipher),
            spi: self.spi,
            seq,
            esn: self.esn,
            suite: self.suite,
        };
        let (head, tail) = job.room(payload_len);
        if buf.headroom() < head || buf.tailroom() < tail {
            return Err(self.drop(DropReason::NoRoom));
        }
        self.next_seq = seq.wrapping_add(1);
        self.counters.packets += 1;
        self.counters.bytes += payload_len as u64;
        self.update_lifetime(now);
        Ok(job)
    }

    /// Opens an ESP packet: `buf` holds the ESP packet from the SPI to the
    /// ICV and is turned, in place, into the payload. Returns the next
    /// header (the payload's IP protocol number).
    ///
    /// The order is RFC 4303 section 3.4: the replay window is checked
    /// before decryption and updated only once the ICV verifies.
    pub fn open_esp(&mut self, buf: &mut PacketBuf<'_>, now: Instant) -> Result<u8, DropReason> {
        let job = self.reserve_open(buf, now)?;
        job.decrypt(buf).map_err(|r| self.drop(r))?;
        self.finish_open(&job, buf, now)
    }

    /// The first third of [`Self::open_esp`], for an SA that several
    /// threads receive on: checks the packet's length, SPI and sequence
    /// number against the replay window (RFC 4303 section 3.4.3: before
    /// any time is spent on decryption). [`OpenJob::decrypt`] then runs
    /// without the SA, and [`Self::finish_open`] updates the window.
    pub fn reserve_open(
        &mut self,
        buf: &PacketBuf<'_>,
        now: Instant,
    ) -> Result<OpenJob, DropReason> {
        debug_assert_eq!(self.direction, Direction::Inbound);
        self.ensure_usable(now)?;
        let head = esp_wire::HEADER_LEN + self.suite.iv_len();
        let icv_len = self.suite.icv_len();
        let len = buf.len();
        if len < head + esp_wire::TRAILER_LEN + icv_len {
            return Err(self.drop(DropReason::Malformed));
        }
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# the Padding field is used to ensure that the Pad Length and Next
        //# Header fields are right aligned within a 4-byte word
        if !(len - head - icv_len).is_multiple_of(self.suite.align()) {
            return Err(self.drop(DropReason::Malformed));
        }
        let (spi, seq_low) = match esp_wire::Packet::new_checked(buf.data()) {
            Ok(p) => (p.spi(), p.sequence_number()),
            Err(_) => return Err(self.drop(DropReason::Malformed)),
        };
        if spi != self.spi {
            return Err(self.drop(DropReason::NoSa));
        }
        let Some(window) = self.replay.as_ref() else {
            return Err(self.drop(DropReason::NoSa));
        };
        let seq = if self.esn {
            window.infer_esn(seq_low)
        } else {
            Some(u64::from(seq_low))
        };
        let Some(seq) = seq.filter(|&s| window.check(s)) else {
            let reason = match seq {
                Some(s) if window.is_too_old(s) => DropReason::TooOld,
                _ => DropReason::Replay,
            };
            return Err(self.drop(reason));
        };
        Ok(OpenJob {
            cipher: Arc::clone(&self.cipher),
            seq,
            esn: self.esn,
            len,
        })
    }

    /// The last third of [`Self::open_esp`], once [`OpenJob::decrypt`]
    /// verified the ICV: records the sequence number in the replay window,
    /// which refuses it if another thread recorded it meanwhile (a
    /// duplicate received twice at once), strips the header and trailer
    /// and counts the packet. Returns the next header.
    pub fn finish_open(
        &mut self,
        job: &OpenJob,
        buf: &mut PacketBuf<'_>,
        now: Instant,
    ) -> Result<u8, DropReason> {
        let head = esp_wire::HEADER_LEN + self.suite.iv_len();
        let icv_len = self.suite.icv_len();
        let len = job.len;
        if buf.len() != len {
            return Err(self.drop(DropReason::Malformed));
        }
        let Some(window) = self.replay.as_mut() else {
            return Err(self.drop(DropReason::NoSa));
        };
        //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
        //# The receive window is updated only if the integrity verification
        //# succeeds.
        if !window.update(job.seq) {
            let reason = if window.is_too_old(job.seq) {
                DropReason::TooOld
            } else {
                DropReason::Replay
            };
            return Err(self.drop(reason));
        }
        let Ok((trailer, payload_len)) = TrailerRepr::parse(&buf.data()[head..len - icv_len])
        else {
            return Err(self.drop(DropReason::BadPadding));
        };
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.6
        //# A transmitter MUST be capable of generating dummy packets marked
        //# with this value in the next protocol field, and a receiver MUST be
        //# prepared to discard such packets
        if trailer.next_header == u8::from(IpProtocol::NoNextHeader) {
            return Err(self.drop(DropReason::Dummy));
        }
        buf.pull_front(head)?;
        buf.trim_back(len - head - payload_len)?;
        self.counters.packets += 1;
        self.counters.bytes += payload_len as u64;
        self.update_lifetime(now);
        Ok(trailer.next_header)
    }

    /// Protects an IP packet by the SA's mode and encapsulation: `buf`
    /// holds an IPv4 or IPv6 packet and becomes, in place, the IP packet
    /// that carries it in ESP (or ESP in UDP).
    ///
    /// `buf` needs [`Self::overhead`] bytes of headroom and tailroom.
    pub fn seal(&mut self, buf: &mut PacketBuf<'_>, now: Instant) -> Result<(), DropReason> {
        let Ok(inner) = IpHeader::read(buf.data()) else {
            return Err(self.drop(DropReason::Malformed));
        };
        if inner.total_len > buf.len() {
            return Err(self.drop(DropReason::Malformed));
        }
        // Link-layer padding after the IP packet is not part of it.
        buf.trim_back(buf.len() - inner.total_len)?;
        match self.mode {
            Mode::Transport => {
                //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.1
                //# In transport mode, ESP is applied only to whole IP
                //# datagrams (not to IP fragments).
                if inner.is_fragment || inner.has_extension_headers() {
                    return Err(self.drop(DropReason::Malformed));
                }
                let mut saved = [0u8; MAX_IP_HEADER_LEN];
                let hlen = inner.header_len;
                saved[..hlen].copy_from_slice(&buf.data()[..hlen]);
                buf.pull_front(hlen)?;
                self.seal_esp(buf, inner.protocol, now)?;
                let protocol = self.push_udp_encap(buf, inner.src, inner.dst)?;
                if buf.headroom() < hlen {
                    return Err(self.drop(DropReason::NoRoom));
                }
                buf.push_front(hlen)?;
                if !fits_in_ip(inner.version, buf.len()) {
                    return Err(self.drop(DropReason::NoRoom));
                }
                buf.data_mut()[..hlen].copy_from_slice(&saved[..hlen]);
                rewrite_ip_header(buf.data_mut(), inner.version, protocol);
                Ok(())
            }
            Mode::Tunnel { local, remote } => {
                if local.is_ipv4() != (inner.version == 4) {
                    // Mixed families (IPv6 in IPv4 and back) are valid ESP
                    // but not supported here yet.
                    return Err(self.drop(DropReason::Policy));
                }
                let next_header = if inner.version == 4 {
                    IpProtocol::Ipip
                } else {
                    IpProtocol::Ipv6
                };
                self.seal_esp(buf, next_header.into(), now)?;
                let protocol = self.push_udp_encap(buf, local, remote)?;
                let payload_len = buf.len();
                let outer_version = if local.is_ipv4() { 4 } else { 6 };
                let outer_header = if local.is_ipv4() {
                    IPV4_HEADER_LEN
                } else {
                    IPV6_HEADER_LEN
                };
                if !fits_in_ip(outer_version, outer_header + payload_len) {
                    return Err(self.drop(DropReason::NoRoom));
                }
                let ok = match (local, remote) {
                    (IpAddr::V4(src), IpAddr::V4(dst)) => {
                        let repr = ipv4::Repr {
                            src_addr: src,
                            dst_addr: dst,
                            next_header: protocol.into(),
                            payload_len,
                            hop_limit: 64,
                            // RFC 4301 section 5.1.2.1: DSCP is copied from
                            // the inner header; ECN per RFC 6040 normal mode.
                            dscp_ecn: inner.tos,
                            dont_frag: false,
                            ident: 0,
                        };
                        buf.push_front(repr.buffer_len()).is_ok() && {
                            repr.emit(&mut ipv4::Packet::new_unchecked(buf.data_mut()));
                            true
                        }
                    }
                    (IpAddr::V6(src), IpAddr::V6(dst)) => {
                        let repr = ipv6::Repr {
                            src_addr: src,
                            dst_addr: dst,
                            next_header: protocol.into(),
                            payload_len,
                            hop_limit: 64,
                            traffic_class: inner.tos,
                            flow_label: 0,
                        };
                        buf.push_front(repr.buffer_len()).is_ok() && {
                            repr.emit(&mut ipv6::Packet::new_unchecked(buf.data_mut()));
                            true
                        }
                    }
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(self.drop(DropReason::NoRoom))
                }
            }
        }
    }

    /// Opens an IP packet that carries ESP (or ESP in UDP) for this SA:
    /// `buf` becomes, in place, the protected IP packet, which must match
    /// the SA's selectors.
    pub fn open(&mut self, buf: &mut PacketBuf<'_>, now: Instant) -> Result<(), DropReason> {
        let Ok(outer) = IpHeader::read(buf.data()) else {
            return Err(self.drop(DropReason::Malformed));
        };
        if outer.total_len > buf.len() || outer.is_fragment || outer.has_extension_headers() {
            return Err(self.drop(DropReason::Malformed));
        }
        buf.trim_back(buf.len() - outer.total_len)?;
        let hlen = outer.header_len;
        let esp_offset = match (IpProtocol::from(outer.protocol), self.encapsulation) {
            (IpProtocol::Esp, Encapsulation::Esp) => hlen,
            (IpProtocol::Udp, Encapsulation::Udp { .. }) => {
                let payload = &buf.data()[hlen..];
                let udp_ok = udp::Packet::new_checked(payload).is_ok_and(|u| {
                    matches!(
                        natt::classify(u.payload()),
                        Ok(natt::UdpEncapPayload::Esp(_))
                    ) && u.payload().len() + UDP_HEADER_LEN == payload.len()
                });
                if !udp_ok {
                    return Err(self.drop(DropReason::Malformed));
                }
                hlen + UDP_HEADER_LEN
            }
            _ => return Err(self.drop(DropReason::Malformed)),
        };
        let mut saved = [0u8; MAX_IP_HEADER_LEN];
        saved[..hlen].copy_from_slice(&buf.data()[..hlen]);
        buf.pull_front(esp_offset)?;
        let next_header = self.open_esp(buf, now)?;
        match self.mode {
            Mode::Transport => {
                buf.push_front(hlen)?;
                buf.data_mut()[..hlen].copy_from_slice(&saved[..hlen]);
                rewrite_ip_header(buf.data_mut(), outer.version, next_header);
            }
            Mode::Tunnel { .. } => {
                let expected = match IpProtocol::from(next_header) {
                    IpProtocol::Ipip => 4,
                    IpProtocol::Ipv6 => 6,
                    _ => 0,
                };
                let inner = IpHeader::read(buf.data());
                if !inner.is_ok_and(|h| h.version == expected && h.total_len == buf.len()) {
                    return Err(self.drop(DropReason::Malformed));
                }
            }
        }
        self.check_selectors(buf.data())
    }

    /// Inbound policy check on a decrypted packet (RFC 4301 section 5.2).
    fn check_selectors(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        if self.selectors.is_empty() {
            return Ok(());
        }
        match FlowKey::from_ip_packet(packet) {
            Ok(flow) => self.check_inbound(&flow),
            Err(_) => Err(self.drop(DropReason::Policy)),
        }
    }

    /// The inbound policy check of RFC 4301 section 5.2 for a caller of
    /// [`Self::open_esp`] that reads the decrypted packet's selector
    /// fields itself (the overlay reads the ports of the UDP datagram a
    /// transport-mode SA carries): `Ok` if `flow` matches one of the
    /// SA's selectors, or the SA has none (manual SAs); otherwise the
    /// drop is counted as [`DropReason::Policy`] and returned.
    pub fn check_inbound(&mut self, flow: &FlowKey) -> Result<(), DropReason> {
        // RFC 4301 section 5.2, step 4: after ESP processing, the packet
        // must match the selectors of the SA that opened it, or it is
        // discarded.
        if self.selectors.is_empty() || self.selectors.iter().any(|s| s.matches_inbound(flow)) {
            Ok(())
        } else {
            Err(self.drop(DropReason::Policy))
        }
    }

    /// Puts a UDP header in front of the ESP packet if the SA uses ESP in
    /// UDP, and returns the IP protocol number the outer header carries.
    fn push_udp_encap(
        &mut self,
        buf: &mut PacketBuf<'_>,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<u8, DropReason> {
        let Encapsulation::Udp {
            local_port,
            remote_port,
        } = self.encapsulation
        else {
            return Ok(IpProtocol::Esp.into());
        };
        if buf.push_front(UDP_HEADER_LEN).is_err() {
            return Err(self.drop(DropReason::NoRoom));
        }
        let payload_len = buf.len() - UDP_HEADER_LEN;
        let mut packet = udp::Packet::new_unchecked(buf.data_mut());
        udp::Repr {
            src_port: local_port,
            dst_port: remote_port,
            payload_len,
        }
        .emit(&mut packet);
        //= https://www.rfc-editor.org/rfc/rfc3948#section-2.1
        //# the UDP checksum SHOULD be transmitted as a zero value
        // IPv6 has no zero UDP checksum (RFC 8200 section 8.1), so it gets a
        // real one.
        if src.is_ipv4() {
            packet.set_checksum(0);
        } else if packet.fill_checksum(src, dst).is_err() {
            return Err(self.drop(DropReason::Malformed));
        }
        Ok(IpProtocol::Udp.into())
    }
}

/// The fields of an IP header that ESP processing needs.
#[derive(Debug, Clone, Copy)]
struct IpHeader {
    version: u8,
    header_len: usize,
    total_len: usize,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    tos: u8,
    is_fragment: bool,
}

impl IpHeader {
    fn read(packet: &[u8]) -> Result<Self, tunsec_wire::Error> {
        match tunsec_wire::ip::version(packet)? {
            4 => {
                let p = ipv4::Packet::new_checked(packet)?;
                if !p.verify_checksum() {
                    return Err(tunsec_wire::Error::BadChecksum);
                }
                Ok(Self {
                    version: 4,
                    header_len: p.header_len(),
                    total_len: usize::from(p.total_len()),
                    protocol: p.next_header().into(),
                    src: p.src_addr().into(),
                    dst: p.dst_addr().into(),
                    tos: p.dscp_ecn(),
                    is_fragment: p.more_frags() || p.frag_offset() != 0,
                })
            }
            6 => {
                let p = ipv6::Packet::new_checked(packet)?;
                Ok(Self {
                    version: 6,
                    header_len: IPV6_HEADER_LEN,
                    total_len: IPV6_HEADER_LEN + usize::from(p.payload_len()),
                    protocol: p.next_header().into(),
                    src: p.src_addr().into(),
                    dst: p.dst_addr().into(),
                    tos: p.traffic_class(),
                    is_fragment: false,
                })
            }
            _ => Err(tunsec_wire::Error::BadVersion),
        }
    }

    /// IPv6 extension headers sit between the fixed header and ESP; this
    /// engine does not walk them yet, so such packets are refused.
    fn has_extension_headers(&self) -> bool {
        self.version == 6
            && matches!(
                IpProtocol::from(self.protocol),
                IpProtocol::HopByHop
                    | IpProtocol::Ipv6Route
                    | IpProtocol::Ipv6Frag
                    | IpProtocol::Ipv6Opts
            )
    }
}

/// Whether an IP packet of `len` bytes (header included) can be expressed
/// in its length field: 65535 bytes for IPv4, 65535 after the fixed header
/// for IPv6 (no jumbograms).
fn fits_in_ip(version: u8, len: usize) -> bool {
    let max = if version == 4 {
        0xffff
    } else {
        0xffff + IPV6_HEADER_LEN
    };
    len <= max
}

/// After the payload behind an IP header changed: sets the protocol and
/// the length, and the IPv4 header checksum.
fn rewrite_ip_header(packet: &mut [u8], version: u8, protocol: u8) {
    let len = packet.len();
    if version == 4 {
        let mut ip = ipv4::Packet::new_unchecked(packet);
        ip.set_next_header(protocol.into());
        // Callers check `fits_in_ip` first.
        ip.set_total_len(len as u16);
        ip.fill_checksum();
    } else {
        let mut ip = ipv6::Packet::new_unchecked(packet);
        ip.set_next_header(protocol.into());
        ip.set_payload_len((len - IPV6_HEADER_LEN) as u16);
    }
}

/// The encryption of one outbound packet, with its sequence number
/// already taken by [`Sa::reserve_seal`]; runs without the SA.
pub struct SealJob {
    cipher: Arc<dyn EspCipher>,
    spi: u32,
    seq: u64,
    esn: bool,
    suite: Suite,
}

impl SealJob {
    /// The sequence number this packet carries.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The room around a payload of `payload_len` bytes: the ESP header
    /// and IV in front, the padding, trailer and ICV behind.
    fn room(&self, payload_len: usize) -> (usize, usize) {
        let trailer = TrailerRepr {
            pad_len: TrailerRepr::pad_len_for(payload_len, self.suite.align()),
            next_header: 0,
        };
        (
            esp_wire::HEADER_LEN + self.suite.iv_len(),
            trailer.buffer_len() + self.suite.icv_len(),
        )
    }

    /// Turns the payload in `buf` (which [`Sa::reserve_seal`] checked for
    /// room) into the ESP packet, in place. A failure is the caller's to
    /// count ([`Sa::record_drop`]).
    pub fn seal(self, buf: &mut PacketBuf<'_>, next_header: u8) -> Result<(), DropReason> {
        let payload_len = buf.len();
        let trailer = TrailerRepr {
            pad_len: TrailerRepr::pad_len_for(payload_len, self.suite.align()),
            next_header,
        };
        let (head, tail) = self.room(payload_len);
        if buf.headroom() < head || buf.tailroom() < tail {
            return Err(DropReason::NoRoom);
        }
        buf.push_back(tail)?;
        trailer.emit(&mut buf.data_mut()[payload_len..payload_len + trailer.buffer_len()]);
        buf.push_front(head)?;
        let mut header = esp_wire::Packet::new_unchecked(buf.data_mut());
        esp_wire::Repr {
            spi: self.spi,
            // The low 32 bits; with ESN the high half is only authenticated.
            sequence_number: self.seq as u32,
        }
        .emit(&mut header);
        self.cipher
            .seal(buf.data_mut(), self.seq, self.esn)
            .map_err(|_| DropReason::NoRoom)
    }
}

/// The decryption of one inbound packet that passed the replay check of
/// [`Sa::reserve_open`]; runs without the SA.
pub struct OpenJob {
    cipher: Arc<dyn EspCipher>,
    seq: u64,
    esn: bool,
    /// The ESP packet's length, from the SPI to the ICV.
    len: usize,
}

impl OpenJob {
    /// The packet's full sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Verifies the ICV and decrypts in place
    /// ([`DropReason::IcvFailure`] otherwise, the caller's to count with
    /// [`Sa::record_drop`]).
    pub fn decrypt(&self, buf: &mut PacketBuf<'_>) -> Result<(), DropReason> {
        if buf.len() != self.len {
            return Err(DropReason::Malformed);
        }
        self.cipher
            .open(buf.data_mut(), self.seq, self.esn)
            .map_err(|_| DropReason::IcvFailure)
    }
}

#[cfg(test)]
#[path = "sa_tests.rs"]
pub(crate) mod tests;
