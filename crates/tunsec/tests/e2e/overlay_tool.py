"""Traffic helpers for tests/overlay_e2e.rs, run inside the lab's namespaces
by /usr/bin/python3.

    server ADDR PORT OUT READY   receive one TCP stream into OUT
    client ADDR PORT FILE        send FILE over TCP, wait for the byte count
    flood DST PORT COUNT MARKER  send COUNT UDP datagrams (payload: MARKER)
    vxlan SRC DST VNI MARKER     send one cleartext VXLAN datagram
    inject PCAP PEER HOST SPI SEQ OTHER_SRC
                                 send forged ESP to HOST (needs Scapy)

Everything but `inject` uses only the standard library. Socket timeouts
keep a broken overlay from hanging the test.
"""

import os
import socket
import sys
import time


def server(addr, port, out, ready):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(1)
    s.settimeout(120)
    open(ready, "w").close()
    conn, peer = s.accept()
    conn.settimeout(60)
    n = 0
    buf = bytearray(1 << 20)
    with open(out, "wb") as f:
        while True:
            k = conn.recv_into(buf)
            if k == 0:
                break
            f.write(buf[:k])
            n += k
        f.flush()
        os.fsync(f.fileno())
    conn.sendall(str(n).encode())
    conn.close()
    print(f"received {n} bytes from {peer[0]}")


def client(addr, port, path):
    conn = socket.create_connection((addr, int(port)), timeout=60)
    start = time.monotonic()
    with open(path, "rb") as f:
        sent = conn.sendfile(f)
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = conn.recv(64)
        if not b:
            break
        reply += b
    secs = time.monotonic() - start
    print(f"sent {sent} bytes, receiver got {reply.decode()}, {secs:.1f} s")
    if reply.decode() != str(sent):
        sys.exit(1)


def flood(dst, port, count, marker):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = bytes.fromhex(marker) * 64
    for i in range(int(count)):
        s.sendto(payload, (dst, int(port)))
        if i % 100 == 99:
            # Short pauses, so that the TAP queue (1000 frames) does not
            # overflow and every datagram reaches the daemon.
            time.sleep(0.002)
    print(f"sent {count} datagrams")


def vxlan(src, dst, vni, marker):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    header = bytes([0x08, 0, 0, 0]) + int(vni).to_bytes(3, "big") + b"\0"
    frame = bytes.fromhex("ffffffffffff" "020000000002" "0800") + bytes.fromhex(marker) * 4
    s.sendto(header + frame, (dst, 4789))
    print("sent one cleartext VXLAN datagram")


def inject(pcap, peer, host, spi, seq, other_src):
    from scapy.all import ICMP, IP, UDP, Ether, Raw, rdpcap, send
    from scapy.layers.ipsec import ESP, SecurityAssociation
    from scapy.layers.vxlan import VXLAN

    spi, seq = int(spi, 0), int(seq)
    captured = None
    for p in rdpcap(pcap):
        if IP not in p or UDP not in p:
            continue
        if (p[IP].src, p[IP].dst, p[UDP].sport, p[UDP].dport) != (peer, host, 4500, 4500):
            continue
        data = bytes(p[UDP].payload)
        if len(data) > 40 and int.from_bytes(data[:4], "big") == spi:
            captured = data
            break
    if captured is None:
        sys.exit(f"no ESP packet with SPI {spi:#x} from {peer} to {host} in {pcap}")

    def emit(what, src, esp):
        send(IP(src=src, dst=host) / UDP(sport=4500, dport=4500) / Raw(load=esp), verbose=False)
        print(f"sent {what}: {len(esp)} bytes, SPI {esp[:4].hex()} seq {int.from_bytes(esp[4:8], 'big')}")
        time.sleep(0.2)

    # (a) A packet the host has already accepted, byte for byte.
    emit("replayed", peer, captured)
    # (b) The same packet with a fresh sequence number (so that the replay
    # check passes; the number is covered by the ICV) and one ciphertext
    # byte flipped (after SPI, seq and the 8-byte IV).
    tampered = bytearray(captured)
    tampered[4:8] = seq.to_bytes(4, "big")
    tampered[20] ^= 0x01
    emit("tampered", peer, bytes(tampered))
    # (c) Sealed by Scapy with the right SPI and suite but another key.
    sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=os.urandom(20))
    inner = (
        IP(src=peer, dst=host)
        / UDP(sport=49152, dport=4789)
        / VXLAN(vni=100)
        / Ether(src="02:00:00:00:00:09", dst="ff:ff:ff:ff:ff:ff")
        / IP(src="198.51.100.9", dst="198.51.100.1")
        / ICMP()
    )
    emit("wrong key", peer, bytes(sa.encrypt(inner, seq_num=seq + 100)[ESP]))
    # (d) An SPI no SA has.
    emit("unknown SPI", peer, (0x0BAD0001).to_bytes(4, "big") + captured[4:])
    # (e) The accepted packet again, from an address that is not the SA's peer.
    emit("from another source", other_src, captured)


if __name__ == "__main__":
    commands = {"server": server, "client": client, "flood": flood, "vxlan": vxlan, "inject": inject}
    commands[sys.argv[1]](*sys.argv[2:])
