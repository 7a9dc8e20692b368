//! TAP devices, through tun-rs.

use std::io;

/// Creates (or attaches to) the TAP device `name`, sets its MTU, brings
/// it up, and makes it non-blocking. The device disappears when the last
/// handle closes, unless something else holds it.
pub fn open(name: &str, mtu: u16) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L2)
        .mtu(mtu)
        .build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}
