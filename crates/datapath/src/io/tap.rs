//! TAP devices, through tun-rs.

use std::io;
use std::os::fd::AsRawFd;

/// Creates (or attaches to) the TAP device `name`, sets its MTU, brings
/// it up, and makes it non-blocking. The device disappears when the last
/// handle closes, unless something else holds it.
///
/// With `offload`, the device carries a virtio-net header in front of
/// every frame (`IFF_VNET_HDR`) and takes TCP segmentation and checksum
/// offload (`TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`):
/// the kernel hands over TCP super-frames of up to 64 KB with a partial
/// checksum, which [`crate::offload::Segmenter`] cuts into wire frames,
/// and takes such super-frames back ([`crate::offload::Coalescer`]). UDP
/// segmentation offload (`TUN_F_USO4/6`, which tun-rs also asks for) is
/// turned off again: nothing here segments UDP.
pub fn open(name: &str, mtu: u16, offload: bool) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L2)
        .mtu(mtu)
        .offload(offload)
        .build_sync()?;
    if offload {
        let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor
        // is the open TAP device.
        let rc =
            unsafe { libc::ioctl(dev.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    dev.set_nonblocking(true)?;
    Ok(dev)
}
