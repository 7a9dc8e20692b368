//! UDP and raw-ESP sockets with batched receive and send (recvmmsg,
//! sendmmsg).
//!
//! quinn-udp covers recvmmsg with GRO and a GSO send to one destination;
//! our batches go to many peers at once, so the send side needs sendmmsg,
//! and both sides are written here over libc, with preallocated headers so
//! that a batch allocates nothing. UDP GSO/GRO come with the performance
//! issue.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
}

/// A non-blocking datagram socket bound to the underlay address.
#[derive(Debug)]
pub struct DatagramSocket {
    fd: OwnedFd,
    kind: SocketKind,
    v4: bool,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

impl DatagramSocket {
    /// A UDP socket bound to `addr`.
    pub fn udp(addr: SocketAddr) -> io::Result<Self> {
        Self::open(addr, SocketKind::Udp)
    }

    /// A raw ESP socket bound to `addr`'s IP address.
    pub fn raw_esp(addr: IpAddr) -> io::Result<Self> {
        Self::open(SocketAddr::new(addr, 0), SocketKind::RawEsp)
    }

    fn open(addr: SocketAddr, kind: SocketKind) -> io::Result<Self> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let (ty, proto) = match kind {
            SocketKind::Udp => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
            SocketKind::RawEsp => (libc::SOCK_RAW, libc::IPPROTO_ESP),
        };
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = check(unsafe {
            libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto)
        })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        // Larger buffers: a burst must not overflow the receive queue.
        // SO_*BUFFORCE works as root; fall back to the capped variant.
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if set_int_opt(raw, libc::SOL_SOCKET, force, SOCKET_BUFFER as libc::c_int).is_err() {
                set_int_opt(raw, libc::SOL_SOCKET, plain, SOCKET_BUFFER as libc::c_int)?;
            }
        }
        if addr.is_ipv6() {
            set_int_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        let (storage, len) = sockaddr_from(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        check(unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
        Ok(Self {
            fd,
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

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the buffer is large enough for any address and `len`
        // says so.
        check(unsafe {
            libc::getsockname(self.fd.as_raw_fd(), storage.as_mut_ptr().cast(), &mut len)
        })?;
        // SAFETY: getsockname filled it.
        let storage = unsafe { storage.assume_init() };
        sockaddr_to(&storage)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
    }
}

impl AsRawFd for DatagramSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Preallocated message headers for one batch.
pub struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
}

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
        // SAFETY: all-zero is valid for these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
        Self {
            hdrs: vec![zero_hdr; n],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n
            ],
            addrs: vec![zero_addr; n],
            addr_lens: vec![0; n],
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
        let n = bufs.len().min(self.hdrs.len()).min(out.len());
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            let buf = buf.as_mut();
            self.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: the first `n` headers point at live iovecs, addresses
        // and buffers owned by `self` and `bufs`, which outlive the call.
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
        let got = got as usize;
        for (i, slot) in out.iter_mut().take(got).enumerate() {
            let src = sockaddr_to(&self.addrs[i]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
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
                let (storage, len) = sockaddr_from(dst);
                self.addrs[filled] = storage;
                self.addr_lens[filled] = len;
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
                hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = self.addr_lens[i];
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
}

/// Waits for readability on a fixed set of descriptors, with its `pollfd`
/// array allocated once.
#[derive(Debug)]
pub struct Poller {
    pfds: Vec<libc::pollfd>,
}

impl Poller {
    /// A poller over `fds`.
    pub fn new(fds: &[RawFd]) -> Self {
        Self {
            pfds: fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Waits until a descriptor is readable or `timeout_ms` passes; then
    /// [`Self::is_ready`] says which. An interrupted wait counts as a
    /// timeout.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<()> {
        for p in &mut self.pfds {
            p.revents = 0;
        }
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs.
        let r = unsafe {
            libc::poll(
                self.pfds.as_mut_ptr(),
                self.pfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Whether descriptor `i` (in the order given to [`Self::new`]) is
    /// readable (or in error, which a read will report).
    pub fn is_ready(&self, i: usize) -> bool {
        self.pfds
            .get(i)
            .is_some_and(|p| p.revents & (libc::POLLIN | libc::POLLERR) != 0)
    }
}

#[cfg(test)]
mod test {
    use super::*;

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
                error: None
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
