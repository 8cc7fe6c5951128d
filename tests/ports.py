"""Ports for test peers and servers on loopback.

A port the kernel picks (bind to 0) comes from its ephemeral range, which every outgoing connection
draws from too: between picking a port and a peer (baresip, a restarted webhook receiver, a service
in a subprocess) binding it, a connection to PostgreSQL may take it. So ports are picked below that
range, free for both UDP and TCP.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


_handed_out: list[int] = []


def free_port(kind=socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP (baresip's sip_listen binds both), chosen below the
    kernel's ephemeral range: a port=0 pick comes from that range, and any outgoing connection
    (to PostgreSQL, say) may take it before the peer binds it. Below 20000 too, where the
    service's own RTP ports start (``[sip] rtp_port_min``)."""
    top = min(_ephemeral_range()[0], 20000) - 64  # room for an RTP range of 40 above the pick
    for _ in range(200):
        port = random.randrange(10000, top)
        if all(abs(port - p) > 48 for p in _handed_out[-8:]) and _bindable(port):
            _handed_out.append(port)  # a peer's SIP port never falls inside its own RTP range
            return port
    with socket.socket(socket.AF_INET, kind) as s:  # a crowded host: fall back on the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
