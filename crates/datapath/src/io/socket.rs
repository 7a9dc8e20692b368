//! UDP and raw-ESP sockets with batched receive and send (recvmmsg,
//! sendmmsg), UDP GSO ([`Batch::send_gso`], `UDP_SEGMENT`) and GRO
//! ([`Batch::recv_gro`], `UDP_GRO`), and a `poll(2)` [`Poller`].
//!
//! Opening, binding and socket options go through socket2 (and nix for
//! the options socket2 lacks: `SO_*BUFFORCE`, `UDP_GRO`). The batching is
//! written here over libc, with preallocated headers so that a batch
//! allocates nothing: quinn-udp covers recvmmsg with GRO, but it sends one
//! `Transmit` (one destination) per call, where a worker's batch goes to
//! many peers at once, as several GSO runs in one `sendmmsg`.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

/// Socket buffer size asked for (the kernel caps it at `rmem_max` /
/// `wmem_max` unless the process may override).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// What kind of datagrams a socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// UDP on a port.
    Udp,
    /// Raw ESP (IP protocol 50). IPv4 raw sockets deliver the IP header
    /// in front of the ESP packet.
    RawEsp,
    /// Raw IP (`IPPROTO_RAW`), send only: each datagram is a whole IP
    /// packet, header included (`IP_HDRINCL`, implied by the protocol).
    RawIp,
}

/// A non-blocking datagram socket bound to the underlay address.
#[derive(Debug)]
pub struct DatagramSocket {
    sock: Socket,
    kind: SocketKind,
    v4: bool,
}

impl DatagramSocket {
    /// A UDP socket bound to `addr`.
    pub fn udp(addr: SocketAddr) -> io::Result<Self> {
        Self::open(addr, SocketKind::Udp, false)
    }

    /// One of several UDP sockets bound to `addr` with `SO_REUSEPORT`, one
    /// per worker: the kernel spreads the datagrams over them by a hash of
    /// their addresses and ports, so one flow always reaches the same
    /// socket (and worker).
    pub fn udp_reuseport(addr: SocketAddr) -> io::Result<Self> {
        Self::open(addr, SocketKind::Udp, true)
    }

    /// A raw ESP socket bound to `addr`'s IP address.
    pub fn raw_esp(addr: IpAddr) -> io::Result<Self> {
        Self::open(SocketAddr::new(addr, 0), SocketKind::RawEsp, false)
    }

    /// A raw IP socket bound to `addr`, that sends whole IP packets as
    /// they are (gateway mode's cleartext path); it receives nothing.
    pub fn raw_ip(addr: IpAddr) -> io::Result<Self> {
        Self::open(SocketAddr::new(addr, 0), SocketKind::RawIp, false)
    }

    fn open(addr: SocketAddr, kind: SocketKind, reuse_port: bool) -> io::Result<Self> {
        let (ty, proto) = match kind {
            SocketKind::Udp => (Type::DGRAM, Protocol::UDP),
            SocketKind::RawEsp => (Type::RAW, Protocol::from(libc::IPPROTO_ESP)),
            SocketKind::RawIp => (Type::RAW, Protocol::from(libc::IPPROTO_RAW)),
        };
        let sock = Socket::new(
            Domain::for_address(addr),
            ty.nonblocking().cloexec(),
            Some(proto),
        )?;
        // Larger buffers: a burst must not overflow the receive queue.
        // SO_*BUFFORCE works as root; fall back to the capped variant.
        let size = SOCKET_BUFFER;
        if setsockopt(&sock, sockopt::RcvBufForce, &size).is_err() {
            sock.set_recv_buffer_size(size)?;
        }
        if setsockopt(&sock, sockopt::SndBufForce, &size).is_err() {
            sock.set_send_buffer_size(size)?;
        }
        // A raw socket is of one family already, and Linux refuses
        // IPV6_V6ONLY on it (its protocol counts as a bound port).
        if addr.is_ipv6() && kind == SocketKind::Udp {
            sock.set_only_v6(true)?;
        }
        if reuse_port {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        Ok(Self {
            sock,
            kind,
            v4: addr.is_ipv4(),
        })
    }

    /// The kind of socket.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Whether received datagrams start with an IPv4 header (raw IPv4).
    pub fn has_ip_header(&self) -> bool {
        self.kind == SocketKind::RawEsp && self.v4
    }

    /// Turns on UDP generic receive offload (`UDP_GRO`, Linux 5.0): the
    /// kernel may hand over several datagrams of one flow, all of one size
    /// but the last, as one buffer; [`Batch::recv_gro`] reports that size.
    pub fn set_udp_gro(&self, on: bool) -> io::Result<()> {
        setsockopt(&self.sock, sockopt::UdpGroSegment, &on)?;
        Ok(())
    }

    /// Sets the firewall mark of the socket's packets (`SO_MARK`, needs
    /// `CAP_NET_ADMIN`). Gateway mode marks its own sockets so that the
    /// policy-routing rules that steer the kernel's tunnels into the TUN
    /// device never catch tunsecd's own ESP.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        self.sock.set_mark(mark)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
    }
}

impl AsRawFd for DatagramSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Preallocated message headers for one batch.
pub struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// Destinations of a send.
    dests: Vec<SockAddr>,
    /// Sources of a receive, as the kernel writes them.
    sources: Vec<SockAddrStorage>,
    /// One control message (UDP_SEGMENT) per header, 8-byte aligned.
    cmsgs: Vec<[u64; 4]>,
}

/// The most segments one UDP GSO send may carry (the kernel's
/// `UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// The most payload bytes one UDP GSO send may carry (an IP datagram of
/// 64 KB, less the IPv6 and UDP headers).
pub const GSO_MAX_BYTES: usize = 65_535 - 40 - 8;

// SAFETY: the raw pointers inside are rebuilt before every system call
// and never dereferenced outside it; the struct holds no borrowed data
// between calls.
unsafe impl Send for Batch {}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl Batch {
    /// Room for `n` datagrams per call.
    pub fn new(n: usize) -> Self {
        Self::with_iovecs(n, n)
    }

    /// Room for `n` messages and `iovecs` datagrams in all: with
    /// [`Self::send_gso`], one system call can then carry several GSO
    /// messages of many datagrams each.
    pub fn with_iovecs(n: usize, iovecs: usize) -> Self {
        // SAFETY: all-zero is valid for these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        Self {
            hdrs: vec![zero_hdr; n],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                iovecs.max(n)
            ],
            dests: vec![SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))); n],
            sources: (0..n).map(|_| SockAddrStorage::zeroed()).collect(),
            cmsgs: vec![[0u64; 4]; n],
        }
    }

    /// How many datagrams a call handles at most.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to `bufs.len()` datagrams; each `(len, source)` goes to
    /// `out`. Returns how many arrived (0 when none is waiting).
    pub fn recv<B: AsMut<[u8]>>(
        &mut self,
        sock: &DatagramSocket,
        bufs: &mut [B],
        out: &mut [(usize, SocketAddr)],
    ) -> io::Result<usize> {
        let n = bufs.len().min(out.len());
        let got = self.recv_into(sock, &mut bufs[..n], 0)?;
        for (i, slot) in out.iter_mut().take(got).enumerate() {
            let src = self.source(i);
            *slot = (self.hdrs[i].msg_len as usize, src);
        }
        Ok(got)
    }

    /// Sends datagrams, each to its own destination, `capacity()` per
    /// system call. Returns how many the kernel took and how many it
    /// refused (each refused datagram is skipped, and the rest still go).
    pub fn send<'a, I>(&mut self, sock: &DatagramSocket, datagrams: I) -> SendResult
    where
        I: IntoIterator<Item = (&'a [u8], SocketAddr)>,
    {
        let mut items = datagrams.into_iter();
        let mut result = SendResult::default();
        loop {
            let mut filled = 0;
            while filled < self.hdrs.len() {
                let Some((data, dst)) = items.next() else {
                    break;
                };
                self.dests[filled] = dst.into();
                self.iovs[filled] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                filled += 1;
            }
            if filled == 0 {
                return result;
            }
            for i in 0..filled {
                let hdr = &mut self.hdrs[i].msg_hdr;
                // sendmmsg only reads the name.
                hdr.msg_name = self.dests[i].as_ptr().cast_mut().cast();
                hdr.msg_namelen = self.dests[i].len();
                hdr.msg_iov = &mut self.iovs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
            }
            let mut off = 0;
            while off < filled {
                // SAFETY: headers `off..filled` point at live iovecs and
                // addresses in `self` and at the caller's datagrams, which
                // outlive the call.
                let n = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        self.hdrs[off..].as_mut_ptr(),
                        (filled - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    // The first datagram was refused (a full socket buffer,
                    // an unreachable destination): skip it, send the rest.
                    result.refused += 1;
                    result.error = io::Error::last_os_error().raw_os_error();
                    off += 1;
                } else {
                    result.sent += n as usize;
                    off += n as usize;
                }
            }
        }
    }
}

impl Batch {
    /// Sends datagrams like [`Self::send`], but with UDP generic
    /// segmentation offload (`UDP_SEGMENT`, Linux 4.18): a run of
    /// consecutive datagrams to one destination, all of one length but
    /// the last (which may be shorter), leaves in one message whose iovecs
    /// are the datagrams, and the kernel cuts it into datagrams late, after
    /// one trip through the UDP and IP stacks. Up to [`GSO_MAX_SEGMENTS`]
    /// datagrams and [`GSO_MAX_BYTES`] per run; a run of one is sent as
    /// is. Nothing is copied.
    ///
    /// If the kernel refuses a segmented message, its datagrams are sent
    /// one by one and `gso_failed` says so (the caller may stop using
    /// GSO).
    pub fn send_gso(
        &mut self,
        sock: &DatagramSocket,
        datagrams: &[(&[u8], SocketAddr)],
    ) -> SendResult {
        let mut result = SendResult::default();
        let mut next = 0;
        while next < datagrams.len() {
            // Fill the headers: one per run, the iovecs in datagram order.
            let mut hdr_count = 0;
            let mut iov_count = 0;
            let mut runs: [(usize, usize); 64] = [(0, 0); 64];
            while next < datagrams.len() && hdr_count < self.hdrs.len().min(runs.len()) {
                let (first, dst) = datagrams[next];
                let seg = first.len();
                let mut end = next + 1;
                let mut bytes = seg;
                while end < datagrams.len()
                    && end - next < GSO_MAX_SEGMENTS
                    && iov_count + (end - next) < self.iovs.len()
                    && datagrams[end].1 == dst
                    && datagrams[end].0.len() <= seg
                    && bytes + datagrams[end].0.len() <= GSO_MAX_BYTES
                    && seg > 0
                {
                    bytes += datagrams[end].0.len();
                    end += 1;
                    // Only the last of a run may be shorter.
                    if datagrams[end - 1].0.len() < seg {
                        break;
                    }
                }
                if iov_count + (end - next) > self.iovs.len() {
                    break;
                }
                for (k, (data, _)) in datagrams[next..end].iter().enumerate() {
                    self.iovs[iov_count + k] = libc::iovec {
                        iov_base: data.as_ptr() as *mut libc::c_void,
                        iov_len: data.len(),
                    };
                }
                self.dests[hdr_count] = dst.into();
                runs[hdr_count] = (iov_count, end - next);
                iov_count += end - next;
                hdr_count += 1;
                next = end;
            }
            for (h, &(first_iov, count)) in runs.iter().enumerate().take(hdr_count) {
                let seg = self.iovs[first_iov].iov_len;
                let hdr = &mut self.hdrs[h].msg_hdr;
                hdr.msg_name = self.dests[h].as_ptr().cast_mut().cast();
                hdr.msg_namelen = self.dests[h].len();
                hdr.msg_iov = &mut self.iovs[first_iov];
                hdr.msg_iovlen = count;
                hdr.msg_flags = 0;
                if count > 1 {
                    let space = cmsg_space(size_of::<u16>());
                    let buf = &mut self.cmsgs[h];
                    *buf = [0; 4];
                    hdr.msg_control = buf.as_mut_ptr().cast();
                    hdr.msg_controllen = space;
                    // SAFETY: the control buffer is 32 bytes, 8-byte
                    // aligned, and `msg_controllen` covers one cmsghdr with
                    // a u16 of data (24 bytes).
                    unsafe {
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = libc::SOL_UDP;
                        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg as u16);
                    }
                } else {
                    hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_controllen = 0;
                }
            }
            let mut off = 0;
            while off < hdr_count {
                // SAFETY: headers `off..hdr_count` point at live iovecs,
                // addresses and control buffers in `self` and at the
                // caller's datagrams, which outlive the call.
                let n = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        self.hdrs[off..].as_mut_ptr(),
                        (hdr_count - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    let err = io::Error::last_os_error();
                    let (first_iov, count) = runs[off];
                    if count > 1 && err.raw_os_error() != Some(libc::EAGAIN) {
                        // The kernel will not segment this: one by one.
                        result.gso_failed = true;
                        let one: Vec<(&[u8], SocketAddr)> = (first_iov..first_iov + count)
                            .map(|k| {
                                let iov = self.iovs[k];
                                // SAFETY: the iovec was built above from a
                                // caller's slice that is still borrowed.
                                let data = unsafe {
                                    std::slice::from_raw_parts(
                                        iov.iov_base as *const u8,
                                        iov.iov_len,
                                    )
                                };
                                (
                                    data,
                                    self.dests[off]
                                        .as_socket()
                                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                                )
                            })
                            .collect();
                        let mut single = Self::new(count);
                        let r = single.send(sock, one.iter().copied());
                        result.sent += r.sent;
                        result.refused += r.refused;
                        result.error = r.error.or(result.error);
                    } else {
                        result.refused += count;
                        result.error = err.raw_os_error();
                    }
                    off += 1;
                } else {
                    for &(_, count) in &runs[off..off + n as usize] {
                        result.sent += count;
                    }
                    off += n as usize;
                }
            }
        }
        result
    }
}

/// The datagrams of a run that [`Batch::recv_runs`] received: `total`
/// bytes cut every `segment` (the last may be shorter), as index ranges.
pub fn runs(total: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let segment = segment.max(1);
    (0..total)
        .step_by(segment)
        .map(move |start| start..(start + segment).min(total))
}

impl Batch {
    /// Receives like [`Self::recv_gro`] when `gro` (the socket has UDP GRO
    /// on), else like [`Self::recv`] with each datagram a run of one: each
    /// `(len, source, segment)` in `out` describes `bufs[i][..len]`, which
    /// [`runs`] cuts into its datagrams.
    pub fn recv_runs<B: AsMut<[u8]>>(
        &mut self,
        sock: &DatagramSocket,
        bufs: &mut [B],
        gro: bool,
        out: &mut [(usize, SocketAddr, usize)],
    ) -> io::Result<usize> {
        if gro {
            return self.recv_gro(sock, bufs, out);
        }
        let n = bufs.len().min(out.len());
        let got = self.recv_into(sock, &mut bufs[..n], 0)?;
        for (i, slot) in out.iter_mut().take(got).enumerate() {
            let len = self.hdrs[i].msg_len as usize;
            let src = self.source(i);
            *slot = (len, src, len.max(1));
        }
        Ok(got)
    }

    /// Receives like [`Self::recv`], on a socket with UDP GRO on
    /// ([`DatagramSocket::set_udp_gro`]): each `(len, source, segment)` in
    /// `out` says that `bufs[i][..len]` holds datagrams of `segment` bytes
    /// each (the last may be shorter); `segment == len` for a lone
    /// datagram. Buffers should hold 64 KB.
    pub fn recv_gro<B: AsMut<[u8]>>(
        &mut self,
        sock: &DatagramSocket,
        bufs: &mut [B],
        out: &mut [(usize, SocketAddr, usize)],
    ) -> io::Result<usize> {
        let n = bufs.len().min(out.len());
        let got = self.recv_into(sock, &mut bufs[..n], size_of::<libc::c_int>())?;
        for (i, slot) in out.iter_mut().take(got).enumerate() {
            let len = self.hdrs[i].msg_len as usize;
            let mut segment = len;
            let hdr = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled `msg_controllen` bytes of our
            // control buffer; the CMSG macros stay within it.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                        let size =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            let src = self.source(i);
            *slot = (len, src, segment.max(1));
        }
        Ok(got)
    }
}

impl Batch {
    /// One `recvmmsg` into `bufs` (at most `capacity()` of them), with
    /// room for a control message of `control` bytes per datagram (0:
    /// none). Returns how many arrived (0 when none is waiting); the
    /// lengths, addresses and control messages are in `self`.
    fn recv_into<B: AsMut<[u8]>>(
        &mut self,
        sock: &DatagramSocket,
        bufs: &mut [B],
        control: usize,
    ) -> io::Result<usize> {
        let n = bufs.len().min(self.hdrs.len());
        let space = if control > 0 { cmsg_space(control) } else { 0 };
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            let buf = buf.as_mut();
            self.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            self.cmsgs[i] = [0; 4];
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.sources[i] as *mut SockAddrStorage).cast();
            hdr.msg_namelen = self.sources[i].size_of();
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = if space > 0 {
                self.cmsgs[i].as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            hdr.msg_controllen = space;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: the first `n` headers point at live iovecs, addresses,
        // control buffers (32 bytes each, enough for `space`) and data
        // buffers owned by `self` and `bufs`, which outlive the call.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(err)
            };
        }
        Ok(got as usize)
    }
}

impl Batch {
    /// The source address that the last receive wrote for message `i`
    /// (0.0.0.0:0 for a family other than IPv4 and IPv6).
    fn source(&mut self, i: usize) -> SocketAddr {
        let storage = mem::replace(&mut self.sources[i], SockAddrStorage::zeroed());
        // SAFETY: recvmmsg wrote a sockaddr of the family it names and of
        // `msg_namelen` bytes into `sources[i]`.
        let addr = unsafe { SockAddr::new(storage, self.hdrs[i].msg_hdr.msg_namelen) };
        addr.as_socket()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// `CMSG_SPACE(len)` as the `msg_controllen` type.
fn cmsg_space(len: usize) -> usize {
    // SAFETY: a pure size computation.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// What [`Batch::send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendResult {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams it refused.
    pub refused: usize,
    /// The OS error of the last refusal (`EAGAIN` for a full socket
    /// buffer, `ECONNREFUSED` after an ICMP port unreachable...).
    pub error: Option<i32>,
    /// [`Batch::send_gso`]: the kernel refused a segmented send, whose
    /// datagrams then went one by one.
    pub gso_failed: bool,
}

/// Waits for readability on a fixed set of descriptors, through epoll
/// (level-triggered, like `poll(2)`): a wait costs the same with one
/// descriptor or a thousand (a TAP device per network), where `poll(2)`
/// walks every descriptor on every call.
#[derive(Debug)]
pub struct Poller {
    epoll: std::os::fd::OwnedFd,
    /// What the last wait returned.
    events: Vec<libc::epoll_event>,
    /// Whether descriptor `i` was readable at the last wait.
    ready: Vec<bool>,
    /// The indices set in `ready`, in the order epoll gave them.
    ready_list: Vec<usize>,
}

/// The most events one wait takes; the rest stay pending
/// (level-triggered) for the next.
const MAX_EVENTS: usize = 256;

impl Poller {
    /// A poller over `fds`. Panics only if the kernel cannot make an
    /// epoll instance or take a descriptor (out of memory, or a closed
    /// descriptor: a bug of the caller).
    pub fn new(fds: &[RawFd]) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 takes no pointer; its result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(raw >= 0, "epoll_create1: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` is a live epoll_event; the descriptors are the
            // caller's, open for the poller's life.
            let r = unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            assert!(r == 0, "epoll_ctl ADD {fd}: {}", io::Error::last_os_error());
        }
        Self {
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; fds.len().clamp(1, MAX_EVENTS)],
            ready: vec![false; fds.len()],
            ready_list: Vec::with_capacity(fds.len().min(MAX_EVENTS)),
        }
    }

    /// Waits until a descriptor is readable or `timeout_ms` passes; then
    /// [`Self::is_ready`] and [`Self::ready`] say which. An interrupted
    /// wait counts as a timeout.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        for &i in &self.ready_list {
            self.ready[i] = false;
        }
        self.ready_list.clear();
        // SAFETY: `events` is a live array of `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            return Ok(());
        }
        for ev in &self.events[..n as usize] {
            let i = ev.u64 as usize;
            if ev.events & (libc::EPOLLIN | libc::EPOLLERR) as u32 != 0 {
                if let Some(r) = self.ready.get_mut(i) {
                    *r = true;
                    self.ready_list.push(i);
                }
            }
        }
        Ok(())
    }

    /// Whether descriptor `i` (in the order given to [`Self::new`]) is
    /// readable (or in error, which a read will report).
    pub fn is_ready(&self, i: usize) -> bool {
        self.ready.get(i).copied().unwrap_or(false)
    }

    /// The indices of the descriptors readable at the last wait.
    pub fn ready(&self) -> &[usize] {
        &self.ready_list
    }
}

#[cfg(test)]
mod test {
    use super::runs;

    /// A run cut into its datagrams: equal ones, the last shorter.
    #[test]
    fn runs_cut_at_the_segment_size() {
        let cut = |total, segment| runs(total, segment).collect::<Vec<_>>();
        assert_eq!(cut(10, 4), [0..4, 4..8, 8..10]);
        assert_eq!(cut(8, 4), [0..4, 4..8]);
        assert_eq!(cut(5, 5), vec![std::ops::Range { start: 0, end: 5 }]);
        assert!(cut(0, 1).is_empty());
    }

    use super::*;

    /// Of 500 descriptors, only the readable ones are ready, and
    /// they stay ready until read (level-triggered, like poll(2)).
    #[test]
    fn poller_lists_only_the_ready_descriptors() {
        let socks: Vec<DatagramSocket> = (0..500)
            .map(|_| DatagramSocket::udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap())
            .collect();
        let fds: Vec<RawFd> = socks.iter().map(AsRawFd::as_raw_fd).collect();
        let mut poller = Poller::new(&fds);
        poller.wait(0).unwrap();
        assert!(poller.ready().is_empty());
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in [3, 499] {
            sender
                .send_to(b"x", socks[i].local_addr().unwrap())
                .unwrap();
        }
        poller.wait(1000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        poller.wait(1000).unwrap();
        let mut ready = poller.ready().to_vec();
        ready.sort_unstable();
        assert_eq!(ready, [3, 499]);
        assert!(poller.is_ready(3) && !poller.is_ready(4));
        // Read one: only the other stays ready.
        let mut buf = [0u8; 8];
        let n = Batch::new(1)
            .recv(
                &socks[3],
                &mut [&mut buf[..]],
                &mut [(0, SocketAddr::from(([0, 0, 0, 0], 0)))],
            )
            .unwrap();
        assert_eq!(n, 1);
        poller.wait(1000).unwrap();
        assert_eq!(poller.ready(), [499]);
    }

    /// Reads every datagram waiting on `sock` (waiting up to 1 s for the
    /// first), in order.
    fn drain(sock: &DatagramSocket, expect: usize) -> Vec<Vec<u8>> {
        let mut batch = Batch::new(64);
        let mut storage = vec![vec![0u8; 2048]; 64];
        let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); 64];
        let mut poller = Poller::new(&[sock.as_raw_fd()]);
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while out.len() < expect && std::time::Instant::now() < deadline {
            poller.wait(100).unwrap();
            let n = batch.recv(sock, &mut storage, &mut meta).unwrap();
            for (buf, &(len, _)) in storage.iter().zip(&meta[..n]) {
                out.push(buf[..len].to_vec());
            }
        }
        out
    }

    /// UDP GRO on loopback: what one GSO send carries arrives as one
    /// buffer with its segment size, and cuts back into the datagrams.
    #[test]
    fn gro_receive_reports_the_segment_size() {
        let a = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        b.set_udp_gro(true).unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000]).collect();
        sent[19] = vec![19; 123];
        let list: Vec<(&[u8], SocketAddr)> = sent.iter().map(|d| (&d[..], b_addr)).collect();
        let mut batch = Batch::new(64);
        assert_eq!(batch.send_gso(&a, &list).sent, 20);
        let mut poller = Poller::new(&[b.as_raw_fd()]);
        let mut storage = vec![vec![0u8; 65_536]; 4];
        let mut meta = vec![(0usize, b_addr, 0usize); 4];
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut segments = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            poller.wait(100).unwrap();
            let n = batch.recv_gro(&b, &mut storage, &mut meta).unwrap();
            for (buf, &(len, _, seg)) in storage.iter().zip(&meta[..n]) {
                segments.push(seg);
                got.extend(buf[..len].chunks(seg).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        assert!(
            segments.contains(&1000),
            "no coalesced buffer: {segments:?}"
        );
    }

    /// With more iovecs than messages, one `send_gso` call carries several
    /// full GSO messages (as the transmit worker's pool of whole TSO
    /// super-frames does): 200 datagrams in four runs of 45 and one of 20,
    /// all arriving in order.
    #[test]
    fn gso_send_with_many_iovecs_sends_every_run() {
        let a = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for run in 0..5u8 {
            let count = if run == 4 { 20 } else { 45 };
            sent.extend((0..count).map(|i| vec![run * 50 + i; 1400]));
        }
        let list: Vec<(&[u8], SocketAddr)> = sent.iter().map(|d| (&d[..], b_addr)).collect();
        let mut batch = Batch::with_iovecs(8, 256);
        let r = batch.send_gso(&a, &list);
        assert_eq!((r.sent, r.refused, r.gso_failed), (200, 0, false), "{r:?}");
        assert_eq!(drain(&b, sent.len()), sent);
    }

    /// UDP GSO on loopback: runs of equal-length datagrams (the last of a
    /// run shorter) to one destination leave as one message each and
    /// arrive as the original datagrams, in order; other destinations and
    /// longer datagrams start new runs.
    #[test]
    fn gso_send_arrives_as_the_datagrams() {
        let a = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let c = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let (b_addr, c_addr) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut to_b: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 1200]).collect();
        to_b[69] = vec![69; 300];
        to_b.push(vec![200; 1400]); // longer: a new run
        let to_c: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 100; 500]).collect();
        let mut list: Vec<(&[u8], SocketAddr)> = to_b.iter().map(|d| (&d[..], b_addr)).collect();
        list.splice(10..10, to_c.iter().map(|d| (&d[..], c_addr)));
        let mut batch = Batch::new(64);
        let r = batch.send_gso(&a, &list);
        assert_eq!(r.refused, 0, "{r:?}");
        assert_eq!(r.sent, list.len());
        assert!(!r.gso_failed);
        let got_b = drain(&b, to_b.len());
        assert_eq!(got_b, to_b);
        let got_c = drain(&c, to_c.len());
        assert_eq!(got_c, to_c);
    }

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = DatagramSocket::udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_addr = b.local_addr().unwrap();
        let a_addr = a.local_addr().unwrap();
        let mut batch = Batch::new(8);
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let sent = batch.send(&a, msgs.iter().map(|m| (&m[..], b_addr)));
        assert_eq!(
            sent,
            SendResult {
                sent: 5,
                refused: 0,
                error: None,
                gso_failed: false
            }
        );
        let mut storage = vec![vec![0u8; 64]; 8];
        let mut got = vec![(0usize, a_addr); 8];
        let mut poller = Poller::new(&[b.as_raw_fd()]);
        poller.wait(1000).unwrap();
        assert!(poller.is_ready(0));
        let mut received = 0;
        while received < 5 {
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|v| &mut v[..]).collect();
            let n = batch
                .recv(&b, &mut bufs[received..], &mut got[received..])
                .unwrap();
            if n == 0 {
                poller.wait(1000).unwrap();
            }
            received += n;
        }
        for (i, (len, src)) in got[..5].iter().enumerate() {
            assert_eq!(*len, 10 + i);
            assert_eq!(*src, a_addr);
            assert_eq!(&storage[i][..*len], &msgs[i][..]);
        }
        // Nothing more: a non-blocking receive returns 0.
        assert_eq!(batch.recv(&b, &mut storage, &mut got).unwrap(), 0);
    }
}
