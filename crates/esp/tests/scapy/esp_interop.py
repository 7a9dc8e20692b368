#!/usr/bin/python3
"""Scapy's side of tunsec's ESP interop test (crates/esp/tests/scapy_interop.rs).

Usage: /usr/bin/python3 esp_interop.py CASES RESULTS

CASES is written by the Rust test, one record a line, space-separated:

    case NAME
    sa_a KEY=VALUE...   the SA tunsec sealed with; Scapy decrypts with it
    sa_b KEY=VALUE...   the SA Scapy encrypts with; tunsec opens with it
    open SEQ HEX        (A) a packet tunsec sealed at 64-bit sequence SEQ
    seal SEQ HEX        (B) a plaintext IP packet to encrypt at SEQ
    end

SA keys: spi (hex), crypt (Scapy name), ckey (hex, salt included for the
AEADs), auth (Scapy name or NULL), akey (hex or -), esn (0/1), natt (0/1),
family (4/6), tunnel (SRC,DST of the outer header, or -).

RESULTS, in the same order:

    case NAME
    opened SEQ HEX | opened SEQ error MESSAGE
    wrongkey rejected | wrongkey accepted | wrongkey error MESSAGE
    sealed SEQ HEX | sealed SEQ error MESSAGE
    unpatched ESN_IN_ICV HEX | unpatched error MESSAGE
                                 (AES-CBC with ESN only, see bug 1 below)
    end

Scapy 2.5.0 (Debian's python3-scapy) has three known ESP bugs, all fixed
upstream after that release; this script works around each one and says so:

1. With ESN and a separate integrity algorithm (AES-CBC + HMAC) it leaves the
   high 32 bits of the sequence number out of the ICV: _encrypt_esp calls
   auth_algo.sign(esp, key) and _decrypt_esp auth_algo.verify(esp, key)
   without esn_en/esn. RFC 4303 section 2.2.1: "If a separate integrity
   algorithm is employed, the high order bits are included in the implicit
   ESP trailer, but are not transmitted". Fixed by secdev/scapy PR #3908
   ("Extended Sequence Numbers support in ESP"). Workaround: EsnAuth below
   computes the same HMAC with Scapy's own AuthAlgo, over ESP || seq_hi.
   For evidence the script also emits one packet signed by unpatched Scapy
   ("unpatched"), which the Rust side must see tunsec reject.
2. With nat_t_header over IPv4 it freezes the UDP length at 8 (it re-parses
   the IP header before the ESP payload is attached), so the ESP is outside
   the UDP datagram. Fixed by secdev/scapy PR #4125. Workaround: set the UDP
   length after encryption.
3. Decrypting IPv6 ESP-in-UDP in transport mode, it sets `nh` on the UDP
   layer instead of the IPv6 header and keeps the UDP header, returning
   IPv6/UDP(4500)/payload. secdev/scapy issue #4371, fixed by PR #4370.
   Workaround: strip the UDP header (IPv6 nh=50) before decrypting.

Also, Scapy always sends a zero UDP checksum in ESP-in-UDP (RFC 3948 section
2.1, written for IPv4). IPv6 has no zero UDP checksum (RFC 8200 section 8.1),
so over IPv6 the script fills a real one, as tunsec does.
"""

import struct
import sys
import traceback

NO_SCAPY = 77

try:
    from scapy.compat import raw
    from scapy.config import conf
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.ipsec import (
        AUTH_ALGOS,
        ESP,
        IPSecIntegrityError,
        SecurityAssociation,
    )
except ImportError as err:
    print(
        f"{sys.executable} cannot import Scapy ({err}): apt-get install python3-scapy",
        file=sys.stderr,
    )
    sys.exit(NO_SCAPY)

if not conf.crypto_valid:
    print(
        "Scapy has no crypto (python3-cryptography missing or too old): "
        "apt-get install python3-scapy python3-cryptography",
        file=sys.stderr,
    )
    sys.exit(NO_SCAPY)

ESP_IN_UDP_PORT = 4500


class EsnAuth:
    """Scapy's AuthAlgo for ESP, with the ESN high bits in the ICV (bug 1).

    Reads the high 32 bits from the SA at each call, as Scapy 2.5.0 passes
    them neither to sign() nor to verify() for ESP.
    """

    def __init__(self, inner, sa):
        self.inner = inner
        self.sa = sa
        self.name = inner.name
        self.icv_size = inner.icv_size

    def _icv(self, esp_without_icv, key):
        mac = self.inner.new_mac(key)
        mac.update(raw(esp_without_icv) + struct.pack("!L", self.sa.esn))
        return mac.finalize()[: self.icv_size]

    def sign(self, pkt, key, esn_en=False, esn=0):
        pkt[ESP].data += self._icv(pkt[ESP], key)
        return pkt

    def verify(self, pkt, key, esn_en=False, esn=0):
        icv = pkt.data[len(pkt.data) - self.icv_size :]
        clone = pkt.copy()
        clone.data = clone.data[: len(clone.data) - self.icv_size]
        if icv != self._icv(clone, key):
            raise IPSecIntegrityError("ICV (with ESN high bits) does not match")


def parse_sa(tokens):
    kv = dict(t.split("=", 1) for t in tokens)
    tunnel = None
    if kv["tunnel"] != "-":
        src, dst = kv["tunnel"].split(",")
        tunnel = (src, dst)
    return {
        "spi": int(kv["spi"], 16),
        "crypt": kv["crypt"],
        "ckey": bytes.fromhex(kv["ckey"]),
        "auth": None if kv["auth"] == "NULL" else kv["auth"],
        "akey": None if kv["akey"] == "-" else bytes.fromhex(kv["akey"]),
        "esn": kv["esn"] == "1",
        "natt": kv["natt"] == "1",
        "family": int(kv["family"]),
        "tunnel": tunnel,
    }


def ip_class(family):
    return IP if family == 4 else IPv6


def make_sa(p, ckey=None, akey=None, patch_esn=True):
    """A Scapy SA for parameters `p`, optionally with other keys."""
    tunnel_header = None
    if p["tunnel"]:
        src, dst = p["tunnel"]
        tunnel_header = ip_class(p["family"])(src=src, dst=dst)
    nat_t = UDP(sport=ESP_IN_UDP_PORT, dport=ESP_IN_UDP_PORT) if p["natt"] else None
    sa = SecurityAssociation(
        ESP,
        spi=p["spi"],
        crypt_algo=p["crypt"],
        crypt_key=ckey if ckey is not None else p["ckey"],
        auth_algo=p["auth"],
        auth_key=akey if akey is not None else p["akey"],
        tunnel_header=tunnel_header,
        nat_t_header=nat_t,
        esn_en=p["esn"],
        esn=0,
    )
    if patch_esn and p["esn"] and p["auth"]:
        sa.auth_algo = EsnAuth(AUTH_ALGOS[p["auth"]], sa)
    return sa


def set_seq(p, sa, seq):
    if not p["esn"] and seq >> 32:
        raise ValueError(f"sequence {seq:#x} needs ESN")
    # Scapy reads `seq_num or self.seq_num` and `esn or self.esn`: set the
    # SA's own fields, so that a low or high half of 0 is used as is.
    sa.seq_num = seq & 0xFFFFFFFF
    sa.esn = seq >> 32


def check_natt_framing(p, pkt):
    """RFC 3948 framing of a packet tunsec sent in ESP-in-UDP."""
    if not pkt.haslayer(UDP) or not pkt.haslayer(ESP):
        raise ValueError("no UDP/ESP layers in an ESP-in-UDP packet")
    u = pkt[UDP]
    if (u.sport, u.dport) != (ESP_IN_UDP_PORT, ESP_IN_UDP_PORT):
        raise ValueError(f"UDP ports {u.sport}->{u.dport}, expected 4500->4500")
    if u.len != len(raw(u)):
        raise ValueError(f"UDP length {u.len}, datagram is {len(raw(u))}")
    if p["family"] == 4:
        if u.chksum != 0:
            raise ValueError(f"UDP checksum {u.chksum:#x} over IPv4, RFC 3948 wants 0")
    else:
        clone = pkt.copy()
        clone[UDP].chksum = None
        good = IPv6(raw(clone))[UDP].chksum
        if u.chksum != good:
            raise ValueError(f"UDP checksum {u.chksum:#x} over IPv6, expected {good:#x}")


def strip_natt_v6(data):
    """IPv6/UDP/ESP -> IPv6/ESP (bug 3), from raw bytes."""
    hdr = bytearray(data[:40])
    hdr[6] = 50  # next header: ESP
    plen = struct.unpack("!H", hdr[4:6])[0] - 8
    hdr[4:6] = struct.pack("!H", plen)
    return IPv6(bytes(hdr) + data[48:])


def scapy_decrypt(p, sa, seq, data):
    pkt = ip_class(p["family"])(data)
    if p["natt"]:
        check_natt_framing(p, pkt)
        if p["family"] == 6 and not p["tunnel"]:
            pkt = strip_natt_v6(data)
    if not pkt.haslayer(ESP):
        raise ValueError("no ESP layer")
    if pkt[ESP].seq != seq & 0xFFFFFFFF:
        raise ValueError(f"ESP sequence {pkt[ESP].seq:#x}, expected low bits of {seq:#x}")
    set_seq(p, sa, seq)
    return raw(sa.decrypt(pkt))


def fix_natt_framing(p, out):
    """Bug 2 (IPv4 UDP length) and a real IPv6 UDP checksum."""
    if not p["natt"]:
        return out
    if out[UDP].len != len(out[UDP]):
        out[UDP].len = len(out[UDP])
    if p["family"] == 6:
        out[UDP].chksum = None
    return ip_class(p["family"])(raw(out))


def scapy_encrypt(p, sa, seq, data):
    set_seq(p, sa, seq)
    out = sa.encrypt(ip_class(p["family"])(data))
    return raw(fix_natt_framing(p, out))


def flip_first_byte(key):
    return bytes([key[0] ^ 0x01]) + key[1:]


def run_case(name, sa_a, sa_b, opens, seals, out):
    out.append(f"case {name}")

    # (A) tunsec -> Scapy.
    dec = make_sa(sa_a)
    for seq, data in opens:
        try:
            out.append(f"opened {seq} {scapy_decrypt(sa_a, dec, seq, data).hex()}")
        except Exception as err:  # reported, and failed, on the Rust side
            out.append(f"opened {seq} error {type(err).__name__}: {err}")

    # Negative (A): a wrong key. AEAD: the cipher key; AES-CBC: the HMAC key
    # (a wrong CBC key with the right HMAC key verifies, then decrypts junk).
    if sa_a["auth"]:
        wrong = make_sa(sa_a, akey=flip_first_byte(sa_a["akey"]))
    else:
        wrong = make_sa(sa_a, ckey=flip_first_byte(sa_a["ckey"]))
    seq, data = opens[0]
    try:
        scapy_decrypt(sa_a, wrong, seq, data)
        out.append("wrongkey accepted")
    except IPSecIntegrityError:
        out.append("wrongkey rejected")
    except Exception as err:
        out.append(f"wrongkey error {type(err).__name__}: {err}")

    # (B) Scapy -> tunsec.
    enc = make_sa(sa_b)
    for seq, data in seals:
        try:
            out.append(f"sealed {seq} {scapy_encrypt(sa_b, enc, seq, data).hex()}")
        except Exception as err:
            out.append(f"sealed {seq} error {type(err).__name__}: {err}")

    # Evidence for bug 1: one packet from unpatched Scapy, at the sequence
    # number after the batch, and whether its ICV covers the ESN high bits.
    if sa_b["esn"] and sa_b["auth"]:
        try:
            out.append(f"unpatched {unpatched_esn_packet(sa_b, seals)}")
        except Exception as err:
            out.append(f"unpatched error {type(err).__name__}: {err}")

    out.append("end")


def unpatched_esn_packet(sa_b, seals):
    """'ESN_IN_ICV HEX' for a packet that unpatched Scapy signs (bug 1)."""
    seq = seals[-1][0] + 1
    plain = make_sa(sa_b, patch_esn=False)
    pkt = ip_class(sa_b["family"])(scapy_encrypt(sa_b, plain, seq, seals[0][1]))
    esp = pkt[ESP]
    icv_size = plain.auth_algo.icv_size
    body = esp.copy()
    body.data = body.data[:-icv_size]
    with_esn = EsnAuth(plain.auth_algo, plain)._icv(body, sa_b["akey"])
    return f"{int(esp.data[-icv_size:] == with_esn)} {raw(pkt).hex()}"


def main():
    cases_path, results_path = sys.argv[1], sys.argv[2]
    out = []
    with open(cases_path) as f:
        name = sa_a = sa_b = None
        opens, seals = [], []
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            kind = tokens[0]
            if kind == "case":
                name, sa_a, sa_b, opens, seals = tokens[1], None, None, [], []
            elif kind == "sa_a":
                sa_a = parse_sa(tokens[1:])
            elif kind == "sa_b":
                sa_b = parse_sa(tokens[1:])
            elif kind == "open":
                opens.append((int(tokens[1]), bytes.fromhex(tokens[2])))
            elif kind == "seal":
                seals.append((int(tokens[1]), bytes.fromhex(tokens[2])))
            elif kind == "end":
                run_case(name, sa_a, sa_b, opens, seals, out)
            else:
                raise ValueError(f"unknown record {kind!r}")
    with open(results_path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
