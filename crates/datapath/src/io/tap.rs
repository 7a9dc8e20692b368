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
        set_tcp_offloads(&dev)?;
    }
    dev.set_nonblocking(true)?;
    Ok(dev)
}

/// As [`open`], with `queues` queues (`IFF_MULTI_QUEUE`), one per
/// worker: the kernel spreads the frames it sends over them by flow, so
/// each flow's frames stay in order on one queue. One queue is a plain
/// [`open`].
pub fn open_queues(
    name: &str,
    mtu: u16,
    offload: bool,
    queues: usize,
) -> io::Result<Vec<tun_rs::SyncDevice>> {
    if queues <= 1 {
        return Ok(vec![open(name, mtu, offload)?]);
    }
    let first = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L2)
        .mtu(mtu)
        .offload(offload)
        .multi_queue(true)
        .build_sync()?;
    let mut all = vec![first];
    for _ in 1..queues {
        let next = all[0].try_clone()?;
        all.push(next);
    }
    for dev in &all {
        // Each new queue asks for tun-rs's offloads again (UDP's too):
        // set ours last, on every queue.
        if offload {
            set_tcp_offloads(dev)?;
        }
        dev.set_nonblocking(true)?;
    }
    Ok(all)
}

/// `TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: TCP
/// segmentation and checksum offload, and no UDP segmentation.
fn set_tcp_offloads(dev: &tun_rs::SyncDevice) -> io::Result<()> {
    set_offloads(dev, libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
}

/// `TUNSETOFFLOAD` with `flags` (`TUN_F_*`) on a TAP or TUN device opened
/// with `IFF_VNET_HDR`: what the kernel may hand over.
pub(crate) fn set_offloads(dev: &tun_rs::SyncDevice, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor
    // is the open device.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
