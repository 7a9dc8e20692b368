//! Which queue of a multi-queue TAP device a frame is written to.
//!
//! With several workers every TAP device has a queue per worker
//! (`IFF_MULTI_QUEUE`). The kernel picks the queue of a frame it sends to
//! us by the flow's symmetric hash, and learns that hash's queue from the
//! frames we write (the tun driver's automatic steering): a flow whose
//! frames we always wrote to queue 0 would always be read from queue 0,
//! by one worker. So the receive workers write each flow's frames to the
//! queue [`queue_of`] picks from the same kind of hash, which spreads the
//! flows over the queues, and over the transmit workers, both ways.

/// The queue, out of `queues`, for the Ethernet frame `frame`: a hash of
/// its IPv4 or IPv6 addresses and TCP/UDP/SCTP ports that is the same in
/// both directions of a flow. Anything else (ARP, fragments, short or
/// malformed frames) goes to queue 0.
pub fn queue_of(frame: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let Some(hash) = flow_hash(frame) else {
        return 0;
    };
    // Fibonacci hashing spreads the XOR-folded value.
    let mixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((mixed >> 32) % queues as u64) as usize
}

/// XOR of the addresses and of the ports, so that swapping source and
/// destination does not change it.
fn flow_hash(frame: &[u8]) -> Option<u64> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    let (proto, addrs, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let fragment = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?) & 0x3fff;
            if ihl < 20 || fragment != 0 {
                return None;
            }
            (*ip.get(9)?, ip.get(12..20)?, ip.get(ihl..)?)
        }
        0x86dd => (*ip.get(6)?, ip.get(8..40)?, ip.get(40..)?),
        _ => return None,
    };
    let half = addrs.len() / 2;
    let mut hash = u64::from(proto);
    for (a, b) in addrs[..half].chunks(4).zip(addrs[half..].chunks(4)) {
        let word = |c: &[u8]| u32::from_be_bytes(c.try_into().unwrap_or([0; 4]));
        hash = hash.rotate_left(7) ^ u64::from(word(a) ^ word(b));
    }
    if matches!(proto, 6 | 17 | 132) {
        let ports = l4.get(..4)?;
        let (a, b) = (
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        );
        // Low bits: the multiplication in `queue_of` carries them up into
        // the bits it keeps.
        hash = hash.rotate_left(16) ^ u64::from(a ^ b);
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4 (or IPv6) TCP header between the
    /// given addresses and ports.
    fn tcp_frame(v6: bool, src: u8, dst: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[6] = 6;
            ip[23] = src;
            ip[39] = dst;
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&[198, 51, 100, src]);
            ip[16..20].copy_from_slice(&[198, 51, 100, dst]);
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f
    }

    #[test]
    fn both_directions_of_a_flow_share_a_queue() {
        for v6 in [false, true] {
            for sport in 40000..40100 {
                let there = tcp_frame(v6, 1, 2, sport, 5201);
                let back = tcp_frame(v6, 2, 1, 5201, sport);
                assert_eq!(queue_of(&there, 4), queue_of(&back, 4));
            }
        }
    }

    #[test]
    fn flows_spread_over_the_queues() {
        for v6 in [false, true] {
            let mut per_queue = [0usize; 4];
            for sport in 40000..40400 {
                per_queue[queue_of(&tcp_frame(v6, 1, 2, sport, 5201), 4)] += 1;
            }
            // 400 flows, 100 per queue on average.
            assert!(per_queue.iter().all(|&n| n > 50), "{per_queue:?}");
        }
    }

    #[test]
    fn other_frames_go_to_queue_zero() {
        assert_eq!(queue_of(&tcp_frame(false, 1, 2, 1, 2), 1), 0);
        let mut arp = tcp_frame(false, 1, 2, 1, 2);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(queue_of(&arp, 4), 0);
        let mut fragment = tcp_frame(false, 1, 2, 1, 2);
        fragment[14 + 6] = 0x20;
        assert_eq!(queue_of(&fragment, 4), 0);
        for len in 0..60 {
            let f = tcp_frame(false, 1, 2, 1234, 80);
            assert!(queue_of(&f[..len.min(f.len())], 4) < 4);
            assert!(queue_of(&vec![0xff; len], 4) < 4);
        }
    }
}
