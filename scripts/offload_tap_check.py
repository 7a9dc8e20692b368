#!/usr/bin/env python3
"""Checks the offload primitives against a real Linux TAP device.

Run as root from the repository root, after
`cargo build -p tunsec-datapath --example offload_frames`:

    python3 scripts/offload_tap_check.py

It creates a network namespace with a TAP device opened with
IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and TUNSETOFFLOAD (CSUM, TSO4, TSO6),
gives it 10.77.0.1/24 and fd77::1/64, and plays a TCP peer 10.77.0.2 (and
fd77::2) behind it by hand, over IPv4 and then over IPv6:

1. handshake with a TCP server inside the namespace (MSS 1448 offered);
2. receive: `offload_frames coalesce` builds 20,000 bytes of data,
   segments them and coalesces them back into GSO super-frames with
   NEEDS_CSUM; they are written to the TAP and the server must read the
   exact bytes;
3. transmit: the server sends 100,000 bytes; every frame the kernel hands
   over goes through `offload_frames segment`: a TSO frame must be
   accepted and cut into segments with good checksums, a single frame
   with a partial checksum (NEEDS_CSUM) must verify once completed; the
   script ACKs as it goes.

The namespace is removed at the end, also on failure.
"""

import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

NS = f"tsoffload-{os.getpid()}"
TAP = "tsoff0"
EXAMPLE = os.environ.get(
    "OFFLOAD_FRAMES",
    os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug/examples/offload_frames"),
)
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
OUR_MAC = bytes.fromhex("020000000002")
ADDRS = {False: ("10.77.0.2", "10.77.0.1"), True: ("fd77::2", "fd77::1")}
OUR_PORT, SERVER_PORT = 40000, 5201
DATA_IN, DATA_OUT = 20_000, 100_000


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frame(v6, dst_mac, seq, ack, flags, payload=b"", options=b""):
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", OUR_PORT, SERVER_PORT, seq, ack, doff << 4, flags, 65535, 0, 0)
    tcp += options + payload
    family = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = (socket.inet_pton(family, a) for a in ADDRS[v6])
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    else:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    c = csum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst)
        return dst_mac + OUR_MAC + b"\x86\xdd" + ip + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + OUR_MAC + b"\x08\x00" + ip + tcp


def parse(buf):
    """(vnet flags, gso_type, seq, ack, flags, payload length) of a TCP
    frame from the server, or None."""
    f = buf[10:]
    if len(f) >= 54 and f[12:14] == b"\x08\x00" and f[23] == 6:
        ihl = (f[14] & 15) * 4
        total = struct.unpack("!H", f[16:18])[0]
    elif len(f) >= 74 and f[12:14] == b"\x86\xdd" and f[20] == 6:
        ihl = 40
        total = 40 + struct.unpack("!H", f[18:20])[0]
    else:
        return None
    t = f[14 + ihl:]
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", t[:14])
    if (sport, dport) != (SERVER_PORT, OUR_PORT):
        return None
    return buf[0], buf[1], seq, ack, flags, total - ihl - (off >> 4) * 4


def inner():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    for cmd in (
        f"ip link set lo up",
        f"ip link set {TAP} up",
        f"ip addr add 10.77.0.1/24 dev {TAP}",
        f"ip addr add fd77::1/64 dev {TAP} nodad",
        f"ip neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev {TAP}",
        f"ip -6 neigh add fd77::2 lladdr 02:00:00:00:00:02 dev {TAP}",
    ):
        subprocess.run(cmd.split(), check=True)
    tap_mac = bytes.fromhex(open(f"/sys/class/net/{TAP}/address").read().strip().replace(":", ""))
    for v6 in (False, True):
        flow(fd, tap_mac, v6)


def flow(fd, tap_mac, v6):
    name = "IPv6" if v6 else "IPv4"
    received = []
    srv = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ADDRS[v6][1], SERVER_PORT))
    srv.listen(1)

    def server():
        conn, _ = srv.accept()
        data = b""
        while len(data) < DATA_IN:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        received.append(data)
        conn.sendall(bytes(i % 253 for i in range(DATA_OUT)))
        time.sleep(1)
        conn.close()
        srv.close()

    threading.Thread(target=server, daemon=True).start()

    def read_tcp(timeout=3.0):
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                buf = os.read(fd, 70000)
                p = parse(buf)
                if p:
                    return buf, p
        return None, None

    isn = 1000
    mss = struct.pack("!BBH", 2, 4, 1448)
    os.write(fd, bytes(10) + frame(v6, tap_mac, isn, 0, 0x02, options=mss))
    _, p = read_tcp()
    assert p and p[4] & 0x12 == 0x12, f"no SYN-ACK: {p}"
    server_isn = p[2]
    os.write(fd, bytes(10) + frame(v6, tap_mac, isn + 1, server_isn + 1, 0x10))

    # 2. Receive direction: coalesced super-frames into the TAP.
    template = frame(v6, tap_mac, isn + 1, server_isn + 1, 0x10)
    out = subprocess.run([EXAMPLE, "coalesce", str(DATA_IN), "1448"], input=template,
                         capture_output=True, check=True).stdout
    n = 0
    gso = 0
    while out:
        length = struct.unpack("!I", out[:4])[0]
        buf, out = out[4:4 + length], out[4 + length:]
        gso += buf[1] != 0
        os.write(fd, buf)
        n += 1
    deadline = time.time() + 5
    while not received and time.time() < deadline:
        # Drain the server's ACKs meanwhile.
        read_tcp(0.2)
    want = bytes(i % 251 for i in range(DATA_IN))
    assert received and received[0] == want, "the server did not read the coalesced bytes"
    print(f"{name} receive: {n} TAP write(s), {gso} GSO super-frame(s), the server read all {DATA_IN} bytes")

    # 3. Transmit direction: TSO frames out of the TAP, segmented.
    rcv_nxt = server_isn + 1
    got, frames, gso_frames, largest, singles = 0, 0, 0, 0, 0
    deadline = time.time() + 10
    while got < DATA_OUT and time.time() < deadline:
        buf, p = read_tcp(1.0)
        if not p or p[5] <= 0:
            continue
        res = subprocess.run([EXAMPLE, "segment"], input=buf, capture_output=True, check=True)
        line = res.stdout.decode().strip()
        if os.environ.get("OFFLOAD_VERBOSE"):
            print(line)
        if p[1] == 0:
            # Not GSO: complete_checksum fills in the partial checksum.
            assert line.startswith("single "), line
            assert int(line.split()[2]) == p[5], (line, p)
            singles += 1
        else:
            assert line.startswith("segments "), line
            nseg, plen = int(line.split()[1]), int(line.split()[3])
            assert plen == p[5], (plen, p)
            gso_frames += 1
            largest = max(largest, nseg)
        frames += 1
        if p[2] == rcv_nxt:
            rcv_nxt += p[5]
            got += p[5]
        os.write(fd, bytes(10) + frame(v6, tap_mac, isn + 1 + DATA_IN, rcv_nxt, 0x10))
    assert got == DATA_OUT, f"only {got} bytes in order"
    assert gso_frames > 0, "the kernel sent no TSO frame"
    print(f"{name} transmit: {frames} TAP read(s), {gso_frames} TSO frame(s) segmented with good "
          f"checksums (up to {largest} segments each), {singles} single frame(s) with their "
          f"checksum completed, {got} bytes in order")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        inner()
        return
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--inner"], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main()
