"""SIP over UDP, TCP and TLS on the asyncio loop (RFC 3261 section 18).

UDP: one datagram is one message. TCP and TLS: messages are framed by Content-Length
(a missing one means 0); CRLF keep-alives (RFC 5626 4.4.1) are answered with
CRLF. A connection that sends an unframeable message or more than
``MAX_MESSAGE`` bytes of headers is closed; other connections are unaffected.
Replies go back on the flow the request came in on (for UDP: to the source
address and port, as with ``rport`` - RFC 3581), which is what NATed PBXes need
and keeps our traffic on the peer's own address.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable

from .message import MAX_MESSAGE

log = logging.getLogger(__name__)

_CL = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\s]*)[ \t]*\r?$", re.I | re.M)


@dataclass(eq=False)
class Flow:
    """Where a message came from and how to answer on the same path."""

    transport: str  # UDP | TCP | TLS
    remote: tuple[str, int]
    _send: Callable[[bytes], None]
    local: tuple[str, int] | None = None

    def send(self, data: bytes) -> None:
        try:
            self._send(data)
        except Exception as exc:  # a closed TCP connection, an unreachable UDP peer: nothing to do
            log.debug("send to %s failed: %s", self.remote, exc)


Handler = Callable[[bytes, Flow, bool], None]  # (message bytes, flow, framed-by-stream)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler):
        self.handler = handler
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n\0 "):
            return  # keep-alive
        flow = Flow("UDP", (addr[0], addr[1]), lambda b, a=addr: self.transport.sendto(b, a))
        self.handler(data, flow, False)

    def error_received(self, exc) -> None:
        log.debug("SIP UDP error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, handler: Handler, connections: set, kind: str = "TCP"):
        self.kind = kind
        self.handler = handler
        self.connections = connections
        self.buf = bytearray()
        self.transport = None
        self.flow: Flow | None = None
        self.last_activity = time.monotonic()

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.flow = Flow(self.kind, (peer[0], peer[1]), self._write)
        self.connections.add(self)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc):
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.buf += data
        while True:
            # Leading CRLFs between messages: a double CRLF is a keep-alive ping, answered with one CRLF.
            stripped = self.buf.lstrip(b"\r\n")
            if len(stripped) != len(self.buf):
                if self.buf.startswith(b"\r\n\r\n"):
                    self._write(b"\r\n")
                del self.buf[: len(self.buf) - len(stripped)]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_MESSAGE:
                    self._close("headers too long")
                return
            head = bytes(self.buf[:end])
            lengths = {m.group(1) for m in _CL.finditer(head)}
            if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
                self._close("bad Content-Length")
                return
            n = int(lengths.pop()) if lengths else 0
            total = end + 4 + n
            if total > MAX_MESSAGE:
                self._close("message too large")
                return
            if len(self.buf) < total:
                return
            msg = bytes(self.buf[:total])
            del self.buf[:total]
            self.handler(msg, self.flow, True)

    def _close(self, why: str) -> None:
        log.info("closing SIP TCP connection from %s: %s", self.flow.remote if self.flow else "?", why)
        self.buf.clear()
        if self.transport is not None:
            self.transport.close()


class SipTransport:
    def __init__(self, handler: Handler):
        self.handler = handler
        self.ports: dict[str, int] = {}
        self._udp = None
        self._tcp_server = None
        self._tls_server = None
        self._connections: set[_Tcp] = set()

    async def start(self, host: str, port: int, udp: bool = True, tcp: bool = True) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(20):  # port 0: find one free for both UDP and TCP
            try:
                if udp:
                    self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.handler), local_addr=(host, port))
                    bound = self._udp.get_extra_info("sockname")[1]
                    self.ports["udp"] = bound
                    sock = self._udp.get_extra_info("socket")
                    try:  # bursts of INVITEs (load tests, reconnecting PBXes) must not overflow the queue
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                    except OSError:
                        pass
                else:
                    bound = port
                if tcp:
                    self._tcp_server = await loop.create_server(lambda: _Tcp(self.handler, self._connections),
                                                                host, bound, reuse_address=True)
                    self.ports["tcp"] = self._tcp_server.sockets[0].getsockname()[1]
                break
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                if port != 0 or attempt == 19:
                    raise

    async def start_tls(self, host: str, port: int, certfile: str, keyfile: str) -> None:
        """SIP over TLS (``sips:`` or ``;transport=tls``) with the configured certificate."""
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile or None)
        loop = asyncio.get_running_loop()
        self._tls_server = await loop.create_server(lambda: _Tcp(self.handler, self._connections, "TLS"),
                                                    host, port, ssl=ctx, reuse_address=True)
        self.ports["tls"] = self._tls_server.sockets[0].getsockname()[1]

    def close_idle(self, idle_s: float, keep) -> int:
        """Close TCP/TLS connections silent for ``idle_s`` whose flow ``keep(flow)`` does not hold."""
        now = time.monotonic()
        closed = 0
        for c in list(self._connections):
            if c.transport is not None and now - c.last_activity > idle_s and not keep(c.flow):
                c._close(f"idle for {now - c.last_activity:.0f} s without a dialog")
                closed += 1
        return closed

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        servers = [x for x in (self._tcp_server, self._tls_server) if x is not None]
        for server in servers:
            server.close()
        for c in list(self._connections):
            if c.transport is not None:
                c.transport.close()
        for server in servers:
            await server.wait_closed()
