//! TUN devices (layer 3), through tun-rs, for gateway mode.

use std::io;

/// The device's transmit queue, in packets (the kernel's default is
/// 500). The kernel's vxlan device hands over a 64 KB TCP super-frame as
/// about 45 packets at once, and the queue holds what the transmit worker
/// has not read yet: with 500, a tenant's TCP stream overflowed it and
/// retransmitted every packet it lost there (tens of thousands per bench
/// run).
pub const TX_QUEUE_LEN: u32 = 5000;

/// Creates the TUN device `name` (IP packets, no packet-information
/// header), sets its MTU and makes it non-blocking; it is left down, so
/// that its sysctls can be set before the kernel brings IPv6 up on it (a
/// link-local address, router solicitations): bring it up with
/// `enabled(true)`. The device disappears when the last handle closes.
///
/// With `vnet_hdr`, every packet read or written carries a virtio-net
/// header (`IFF_VNET_HDR`), so that the receive worker can write runs of
/// UDP datagrams as one UDP segmentation offload packet
/// ([`crate::offload::UdpBatcher`]). The kernel takes such packets
/// whatever `TUNSETOFFLOAD` says; that is set to no offload at all, so
/// what it hands over stays one whole, checksummed packet per read.
pub fn open(name: &str, mtu: u16, vnet_hdr: bool) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L3)
        .packet_information(false)
        .mtu(mtu)
        .tx_queue_len(TX_QUEUE_LEN)
        .offload(vnet_hdr)
        .enable(false)
        .build_sync()?;
    if vnet_hdr {
        // tun-rs asks for checksum, TCP and UDP segmentation offloads.
        super::tap::set_offloads(&dev, 0)?;
    }
    dev.set_nonblocking(true)?;
    Ok(dev)
}
