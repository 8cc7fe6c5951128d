"""Asterisk AudioSocket: raw TCP on ``[audiosocket] host:port`` (default 9092, off unless enabled).

Frames (https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/): kind (1 byte),
payload length (2 bytes, big-endian), payload. 0x01 the call's UUID (16 bytes, first; it is
the call's external id), 0x10 audio (signed linear 16-bit LE, 8 kHz mono), 0x03 a DTMF digit,
0x00 hang-up, 0xff an error (1-byte code). Newer Asterisk (res_audiosocket with slin12…slin192)
sends wider audio as kinds 0x11–0x18, one per rate (0x12: slin16, 16 kHz). So a connection joins
its call (admission, a new leg) at its first audio frame, whose kind gives the leg's rate for good.

Asterisk sends one direction of a call per AudioSocket. Connections that carry the same UUID
are legs of one call: the first gets speaker ``[audiosocket] speakers[0]``, the second
``speakers[1]``... A connection's end (hang-up, close, or no audio for ``[sip]
media_timeout_s``) ends its leg; the last one ends the call. Bad input (audio before the UUID,
an unknown kind, a malformed UUID or audio frame) closes that connection with one log line;
what it had sent is transcribed and stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import numpy as np

from .call import ForkCall, ProtocolError, media_timeout_s

log = logging.getLogger(__name__)

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
AUDIO_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000,
               0x17: 96000, 0x18: 192000}  # audio kind: signed linear 16-bit at this rate


@dataclass
class _SharedCall:
    """The call all connections with one UUID feed."""

    fork: ForkCall
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connections: int = 0
    legs_added: int = 0


@dataclass
class _Connection:
    call_uuid: str | None = None  # from the UUID frame
    shared: _SharedCall | None = None  # from the first audio frame, with the leg
    leg: object = None  # LiveLeg
    rate: int = 0


class AudioSocketServer:
    def __init__(self, settings, manager):
        self.settings = settings
        self.manager = manager
        self.port = 0
        self.errors = 0  # connections closed for a protocol error
        self._server: asyncio.Server | None = None
        self._calls: dict[str, _SharedCall] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        s = self.settings.audiosocket
        self._server = await asyncio.start_server(self._connection, s.host, s.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("AudioSocket listening on %s:%d", s.host, self.port)

    async def stop(self) -> None:
        """Close the listener and every connection; their calls end with everything received."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        peer = writer.get_extra_info("peername")
        remote = peer[0] if peer else None
        self._writers.add(writer)
        conn = _Connection()
        try:
            await self._serve(reader, remote, conn)
        except ProtocolError as exc:
            self.errors += 1
            log.warning("AudioSocket from %s closed: %s", remote, exc.reason)
        except ConnectionError:
            pass  # the peer went away: what it sent is kept
        finally:
            self._writers.discard(writer)
            writer.close()
            await self._release(conn.shared, conn.leg)

    async def _serve(self, reader, remote, conn: "_Connection") -> None:
        """Read frames until hang-up, close or silence (``conn``: the call and leg they feed)."""
        timeout = media_timeout_s(self.settings)
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(3), timeout)
                payload = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[1:3], "big")), timeout)
            except asyncio.TimeoutError:
                log.info("AudioSocket from %s: no audio for %g s, ending its leg", remote, timeout)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.info("AudioSocket from %s: closed mid-frame", remote)
                return
            kind = header[0]
            if kind in AUDIO_RATES:
                rate = AUDIO_RATES[kind]
                if conn.call_uuid is None:
                    raise ProtocolError(0, "audio before the UUID frame")
                if len(payload) % 2:
                    raise ProtocolError(0, f"audio frame of {len(payload)} bytes is not whole 16-bit samples")
                if conn.leg is None:
                    conn.shared, conn.leg = await self._join(conn.call_uuid, remote, rate)
                    conn.rate = rate
                elif rate != conn.rate:
                    raise ProtocolError(0, f"audio at {rate} Hz (kind 0x{kind:02x}) after {conn.rate} Hz on one connection")
                await conn.shared.fork.push([conn.leg], [np.frombuffer(payload, dtype="<i2")], rate)
            elif kind == UUID:
                if conn.call_uuid is not None:
                    raise ProtocolError(0, "a second UUID frame on one connection")
                if len(payload) != 16:
                    raise ProtocolError(0, f"UUID frame of {len(payload)} bytes (16 expected)")
                conn.call_uuid = str(uuid.UUID(bytes=payload))
            elif kind == HANGUP:
                return
            elif kind == ERROR:
                code = payload[0] if payload else None
                log.info("AudioSocket from %s: Asterisk reported error %s, ending its leg", remote, code)
                return
            elif kind == DTMF:
                continue  # not stored: AudioSocket gives no duration
            else:
                raise ProtocolError(0, f"unknown frame kind 0x{kind:02x}")

    async def _join(self, call_uuid: str, remote: str | None, rate: int):
        shared = self._calls.get(call_uuid)
        if shared is None:
            shared = self._calls[call_uuid] = _SharedCall(ForkCall(self.manager, "audiosocket"))
        shared.connections += 1
        async with shared.lock:
            try:
                if shared.fork.call is None:
                    refusal = await shared.fork.start(legs=1, external_id=call_uuid, meta={}, remote=remote)
                else:
                    admission = self.manager.admission
                    refusal = admission.check(remote, legs=1) if admission is not None else None
            except RuntimeError as exc:  # the call ended meanwhile, or the service is stopping
                refusal = exc
            if refusal is not None:
                shared.connections -= 1
                if shared.connections == 0 and shared.fork.call is None:
                    self._calls.pop(call_uuid, None)
                raise ProtocolError(0, f"refused, try again later: {getattr(refusal, 'reason', refusal)}")
            speakers = self.settings.audiosocket.speakers
            n = shared.legs_added
            speaker = speakers[n] if n < len(speakers) else f"{speakers[-1]}-{n + 1}"
            shared.legs_added += 1
            return shared, shared.fork.add_leg(speaker, rate, "L16", role=f"audiosocket {n + 1}")

    async def _release(self, shared: _SharedCall | None, leg) -> None:
        """A connection ended: its leg ends; the call ends with its last connection."""
        if shared is None:
            return
        shared.connections -= 1
        if shared.connections > 0:
            if leg is not None:
                await leg.end()
            return
        for key, value in list(self._calls.items()):
            if value is shared:
                del self._calls[key]
        await shared.fork.end()
