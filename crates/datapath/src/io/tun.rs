//! TUN devices (layer 3), through tun-rs, for gateway mode.

use std::io;

/// Creates the TUN device `name` (IP packets, no packet-information
/// header, no offloads), sets its MTU, brings it up, and makes it
/// non-blocking. The device disappears when the last handle closes.
pub fn open(name: &str, mtu: u16) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L3)
        .packet_information(false)
        .mtu(mtu)
        .build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}
