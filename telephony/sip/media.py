"""Our own RTP sockets: one even/odd UDP port pair per recorded stream, read on the asyncio loop.

The SDP answer announces these ports, so every RTP packet reaches the leg's
jitter buffer as sent (sequence, timestamp, SSRC, arrival time): loss,
reordering and jitter are measured by our pipeline, not hidden by someone
else's concealment (see the README's architecture section).

**Nobody else's audio.** Ports are drawn at random from the range (a sender
cannot guess the next call's port), and a stream accepts datagrams only from
the address and port its SDP announced (updated by a re-INVITE). For peers
behind NAT, whose packets come from a translated port, ``latch`` accepts the
first packet from the SDP's address (or the address the signalling came from)
on any port and then keeps that source for good: one stray packet never moves
it. Everything else is dropped and counted as foreign on the leg.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Receiver(Protocol):
    """Where a stream's packets go (``LiveLeg``)."""

    def push_datagram(self, data: bytes, arrival: float) -> None: ...
    def count_foreign(self) -> None: ...


class PortAllocator:
    """Hands out even RTP ports (RTCP on port+1) drawn at random from a range; thread-safe."""

    def __init__(self, host: str, low: int, high: int, rng: random.Random | None = None):
        self.low = low + (low % 2)  # RTP on even ports
        top = high - 1  # room for RTCP on port+1
        self.high = top - (top % 2)  # the highest even RTP port
        if low < 1024 or self.high < self.low:
            raise ValueError(f"bad RTP port range {low}-{high}: need at least one even/odd pair above 1023")
        self.host = host
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        """Bind an RTP/RTCP socket pair. Raises OSError when no pair is free."""
        span = (self.high - self.low) // 2 + 1
        with self._lock:
            # Random probes first (unpredictable), then a sweep from a random start (finds the
            # last free pairs of a nearly full range).
            start = self._rng.randrange(span)
            order = [self._rng.randrange(span) for _ in range(min(span, 32))]
            order += [(start + i) % span for i in range(span)]
            for i in order:
                port = self.low + 2 * i
                rtp = _bind(self.host, port)
                if rtp is None:
                    continue
                rtcp = _bind(self.host, port + 1)
                if rtcp is None:
                    rtp.close()
                    continue
                return rtp, rtcp
        raise OSError(f"no free RTP port pair in {self.low}-{self.high + 1}")


def _bind(host: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        return None
    s.setblocking(False)
    try:  # 50 legs of bursts after a stall must not overflow the kernel queue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    except OSError:
        pass
    return s


def _ip(text: str | None) -> str | None:
    """Normalised IP literal, or None (unspecified, a host name, or nothing)."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if addr.is_unspecified:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class SourcePolicy:
    """Which datagram sources a stream accepts (see the module docstring)."""

    def __init__(self, *, latch: bool = False, signalling_ip: str | None = None):
        self.latch = latch
        self.signalling_ip = _ip(signalling_ip)
        self.address: str | None = None  # from the SDP
        self.port: int | None = None
        self.latched: tuple[str, int] | None = None

    def expect(self, address: str | None, port: int | None) -> None:
        """What the (re-)offer announces; a new announcement drops an earlier latch."""
        address, port = _ip(address), port or None
        if (address, port) != (self.address, self.port):
            self.latched = None
        self.address, self.port = address, port

    def accepts(self, addr: tuple) -> bool:
        ip, port = _ip(addr[0]), addr[1]
        if self.latched is not None:
            return (ip, port) == self.latched
        if self.address is not None and ip == self.address and port == self.port:
            return True
        if self.latch and ip is not None and ip in (self.address, self.signalling_ip):
            self.latched = (ip, port)
            log.info("RTP latched to %s:%d (SDP said %s:%s)", ip, port, self.address, self.port)
            return True
        return False


class RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver, policy: SourcePolicy):
        self.receiver = receiver
        self.policy = policy
        self.received = 0
        self.foreign = 0  # datagrams from a source the SDP did not announce: dropped (RTP injection)
        self.last_packet: float | None = None  # monotonic time of the last accepted datagram (media timeout)

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.policy.accepts(addr):
            if not self.foreign:  # once per stream: say who sent what we refused
                p = self.policy
                log.info("RTP from %s:%d dropped: the SDP announced %s:%s%s", addr[0], addr[1], p.address, p.port,
                         " (latching on)" if p.latch else "")
            self.foreign += 1
            self.receiver.count_foreign()
            return
        self.received += 1
        self.last_packet = now = time.monotonic()
        self.receiver.push_datagram(data, now)

    def error_received(self, exc) -> None:  # ICMP port unreachable etc.: the peer may come back
        log.debug("RTP socket error: %s", exc)


class _Discard(asyncio.DatagramProtocol):
    """RTCP: read and drop (keeps the kernel queue empty; reports are not used yet)."""

    def datagram_received(self, data, addr) -> None:
        pass


class RtpStream:
    """One recorded stream's sockets: bound when the SDP answer is built (the port goes into it),
    read on the event loop once the call's leg exists (the kernel queues packets meanwhile)."""

    def __init__(self, allocator: PortAllocator, policy: SourcePolicy):
        self.rtp_sock, self.rtcp_sock = allocator.open_pair()
        self.port = self.rtp_sock.getsockname()[1]
        self.policy = policy
        self.protocol: RtpProtocol | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self.closed = False

    async def attach(self, receiver: Receiver) -> None:
        """Start reading on the running loop; packets queued in the kernel since bind are delivered first."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        tr, proto = await loop.create_datagram_endpoint(lambda: RtpProtocol(receiver, self.policy), sock=self.rtp_sock)
        self._transports.append(tr)
        self.protocol = proto
        tr2, _ = await loop.create_datagram_endpoint(_Discard, sock=self.rtcp_sock)
        self._transports.append(tr2)

    @property
    def last_packet(self) -> float | None:
        return self.protocol.last_packet if self.protocol is not None else None

    def drain(self) -> int:
        """Hand over what the kernel still queues for us (hang-up: audio sent before the BYE is
        not thrown away with the socket). Call on the event loop; returns datagrams read."""
        n = 0
        if self.closed or self.protocol is None:
            return n
        while n < 10000:
            try:
                data, addr = self.rtp_sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.protocol.datagram_received(data, addr)
            n += 1
        return n

    def close(self) -> None:
        """Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._transports:
            for tr in self._transports:
                tr.close()
        else:
            self.rtp_sock.close()
            self.rtcp_sock.close()
