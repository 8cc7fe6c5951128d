"""Our own RTP sockets: one even/odd UDP port pair per recorded stream, read on the asyncio loop.

The SDP answer announces these ports instead of pjsua's, so every RTP packet
reaches the leg's jitter buffer as sent (sequence, timestamp, SSRC, arrival
time): loss, reordering and jitter are measured by our pipeline, not hidden by
pjmedia's concealment. See the README's architecture section for the numbers
that decided this.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

Sink = Callable[[bytes, float], None]


class PortAllocator:
    """Hands out even RTP ports (RTCP on port+1) from a range, round robin; thread-safe."""

    def __init__(self, host: str, low: int, high: int):
        if low < 1024 or high <= low:
            raise ValueError(f"bad RTP port range {low}-{high}")
        self.host = host
        self.low = low + (low % 2)
        self.high = high
        self._next = self.low
        self._lock = threading.Lock()

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        """Bind an RTP/RTCP socket pair. Raises OSError when the whole range is busy."""
        with self._lock:
            span = (self.high - self.low) // 2 + 1
            for _ in range(span):
                port = self._next
                self._next = port + 2 if port + 2 <= self.high else self.low
                rtp = _bind(self.host, port)
                if rtp is None:
                    continue
                rtcp = _bind(self.host, port + 1)
                if rtcp is None:
                    rtp.close()
                    continue
                return rtp, rtcp
        raise OSError(f"no free RTP port pair in {self.low}-{self.high}")


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


class RtpProtocol(asyncio.DatagramProtocol):
    """Forwards datagrams from the first source that sends to this port (symmetric-RTP latching)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.source: tuple | None = None
        self.received = 0
        self.foreign = 0  # datagrams from another source after latching: dropped (RTP injection)

    def datagram_received(self, data: bytes, addr) -> None:
        if self.source is None:
            self.source = addr
        elif addr != self.source:
            if addr[0] == self.source[0]:
                self.source = addr  # the sender's port changed (re-INVITE, NAT rebinding): follow it
            else:
                self.foreign += 1
                return
        self.received += 1
        try:
            self.sink(data, time.monotonic())
        except Exception:  # the pipeline counts malformed packets; never let one stop the socket
            log.exception("RTP sink failed")

    def error_received(self, exc) -> None:  # ICMP port unreachable etc.: the peer may come back
        log.debug("RTP socket error: %s", exc)


class _Discard(asyncio.DatagramProtocol):
    """RTCP: read and drop (keeps the kernel queue empty; reports are not used yet)."""

    def datagram_received(self, data, addr) -> None:
        pass


class RtpStream:
    """One recorded stream's sockets: bound when the SDP answer is built (the port goes into it),
    read on the event loop once the call's leg exists (the kernel queues packets meanwhile)."""

    def __init__(self, allocator: PortAllocator):
        self.rtp_sock, self.rtcp_sock = allocator.open_pair()
        self.port = self.rtp_sock.getsockname()[1]
        self.protocol: RtpProtocol | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self.closed = False

    async def attach(self, sink: Sink) -> None:
        """Start reading on the running loop; packets queued in the kernel since bind are delivered first."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        tr, proto = await loop.create_datagram_endpoint(lambda: RtpProtocol(sink), sock=self.rtp_sock)
        self._transports.append(tr)
        self.protocol = proto
        tr2, _ = await loop.create_datagram_endpoint(_Discard, sock=self.rtcp_sock)
        self._transports.append(tr2)

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
