//! TUN devices (layer 3), through tun-rs, for gateway mode.

use std::io;

/// Creates the TUN device `name` (IP packets, no packet-information
/// header, no offloads), sets its MTU and makes it non-blocking; it is
/// left down, so that its sysctls can be set before the kernel brings
/// IPv6 up on it (a link-local address, router solicitations): bring it
/// up with `enabled(true)`. The device disappears when the last handle
/// closes.
pub fn open(name: &str, mtu: u16) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L3)
        .packet_information(false)
        .mtu(mtu)
        .enable(false)
        .build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}
