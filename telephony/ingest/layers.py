"""Link, IP and UDP layers of one captured frame: ``(src, dst, UDP payload)`` or why not.

Parsed by hand rather than with dpkt's layer classes: those raise a different
exception for each kind of damage, and a capture of a real network has damaged
frames that must be skipped, not crash the read. A frame is one of:

- ``None``: not UDP over IPv4/IPv6 (or too mangled to tell), skipped silently;
- ``FRAGMENT``: an IP fragment (not reassembled: RTP never needs it), counted;
- ``SNAPPED``: a datagram cut by the capture's snapshot length, counted;
- ``((src ip, port), (dst ip, port), payload)``.
"""

from __future__ import annotations

import ipaddress
import struct

FRAGMENT = object()
SNAPPED = object()


def _ip(b: bytes):
    if not b:
        return None
    v = b[0] >> 4
    if v == 4:
        ihl = (b[0] & 0x0F) * 4
        if ihl < 20 or len(b) < ihl:
            return None
        total = (b[2] << 8) | b[3]
        if b[9] != 17:
            return None
        frag = (b[6] << 8) | b[7]
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            return FRAGMENT
        if total == 0:  # TSO-offloaded capture: length left to the NIC
            total = len(b)
        if total > len(b):
            return SNAPPED
        src = str(ipaddress.IPv4Address(b[12:16]))
        dst = str(ipaddress.IPv4Address(b[16:20]))
        return _udp(src, dst, b[ihl:total])
    if v == 6:
        if len(b) < 40:
            return None
        plen = (b[4] << 8) | b[5]
        nxt = b[6]
        end = 40 + plen
        if end > len(b):
            return SNAPPED
        off = 40
        while nxt in (0, 43, 44, 60, 51):  # extension headers: hop-by-hop, routing, fragment, options, AH
            if off + 8 > end:
                return None
            if nxt == 44:
                fo = (b[off + 2] << 8) | b[off + 3]
                if fo & 0xFFF9:  # offset or more-fragments set
                    return FRAGMENT
                nxt, off = b[off], off + 8
            elif nxt == 51:
                nxt, off = b[off], off + (b[off + 1] + 2) * 4
            else:
                nxt, off = b[off], off + (b[off + 1] + 1) * 8
        if nxt != 17:
            return None
        src = str(ipaddress.IPv6Address(b[8:24]))
        dst = str(ipaddress.IPv6Address(b[24:40]))
        return _udp(src, dst, b[off:end])
    return None


def _udp(src: str, dst: str, u: bytes):
    if len(u) < 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", u)
    if ulen < 8:
        return None
    if ulen > len(u):
        return SNAPPED
    return (src, sport), (dst, dport), u[8:ulen]


def _ethernet(f: bytes):
    off = 12
    etype = (f[off] << 8) | f[off + 1]
    while etype in (0x8100, 0x88A8, 0x9100):  # VLAN tags
        off += 4
        etype = (f[off] << 8) | f[off + 1]
    return _ip(f[off + 2:]) if etype in (0x0800, 0x86DD) else None


def _sll(f: bytes):
    return _ip(f[16:]) if ((f[14] << 8) | f[15]) in (0x0800, 0x86DD) else None


def _sll2(f: bytes):
    return _ip(f[20:]) if ((f[0] << 8) | f[1]) in (0x0800, 0x86DD) else None


# Link type (pcap LINKTYPE_*) → frame decoder. A decoder may raise IndexError,
# struct.error or ValueError on a mangled frame: the reader skips it.
LINK_DECODERS = {
    1: _ethernet,  # DLT_EN10MB
    113: _sll,  # DLT_LINUX_SLL (tcpdump -i any)
    276: _sll2,  # DLT_LINUX_SLL2
    101: _ip, 12: _ip, 14: _ip, 228: _ip, 229: _ip,  # raw IP variants
    0: lambda f: _ip(f[4:]), 108: lambda f: _ip(f[4:]),  # BSD loopback: 4-byte address family
}
