"""Test clients for the media forks, written from the published protocol references, and a reader
of what the service stored for their calls."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np
from sqlalchemy import text

from telephony.media.codecs import CODECS


async def stored(db_engine, source: str, external_id: str, timeout: float = 20.0) -> dict:
    """The call (by source and external id) once it has ended in PostgreSQL, with legs and utterances."""
    deadline = time.monotonic() + timeout
    while True:
        async with db_engine.connect() as conn:
            call = (await conn.execute(text("SELECT * FROM calls WHERE source = :s AND external_id = :e"),
                                       {"s": source, "e": external_id})).mappings().first()
            legs = utts = []
            if call is not None:
                legs = (await conn.execute(text("SELECT * FROM legs WHERE call_id = :id ORDER BY ordinal"),
                                           {"id": call["id"]})).mappings().all()
                utts = (await conn.execute(text("SELECT * FROM utterances WHERE call_id = :id ORDER BY leg_id, seq"),
                                           {"id": call["id"]})).mappings().all()
        if call is not None and call["status"] != "active" and legs and all(x["duration_ms"] is not None for x in legs):
            return {"call": dict(call), "legs": [dict(x) for x in legs], "utterances": [dict(u) for u in utts]}
        if time.monotonic() > deadline:
            raise AssertionError(f"{source} call {external_id} not ended in the database: {call}")
        await asyncio.sleep(0.1)


def said(got: dict, speaker: str) -> str:
    leg = next(x for x in got["legs"] if x["speaker"] == speaker)
    return " ".join(u["text"] for u in got["utterances"] if u["leg_id"] == leg["id"])


def leg_of(got: dict, speaker: str) -> dict:
    return next(x for x in got["legs"] if x["speaker"] == speaker)


async def paced(i: int, t0: float, chunk_s: float) -> None:
    """Real-time pacing: chunk i leaves at t0 + i * chunk (computed from the start, never drifting)."""
    delay = t0 + i * chunk_s - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class TwilioClient:
    """What Twilio sends (https://www.twilio.com/docs/voice/media-streams/websocket-messages):
    connected, start, media (20 ms of base64 μ-law per track, timestamp in ms), stop."""

    def __init__(self, url: str, call_sid: str, tracks: dict[str, np.ndarray], *, params: dict | None = None,
                 fmt: dict | None = None):
        self.url = url
        self.call_sid = call_sid
        self.tracks = tracks  # track -> 8 kHz int16
        self.params = params or {}
        self.fmt = fmt or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        self.seq = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def send(self, msg: dict) -> None:
        self.seq += 1
        await self.ws.send_str(json.dumps({**msg, "sequenceNumber": str(self.seq)}))

    async def open(self, http: aiohttp.ClientSession, **kw) -> None:
        self.ws = await http.ws_connect(self.url, **kw)
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({"event": "start", "streamSid": "MZ" + self.call_sid[2:], "start": {
            "accountSid": "AC0001", "streamSid": "MZ" + self.call_sid[2:], "callSid": self.call_sid,
            "tracks": list(self.tracks), "customParameters": self.params, "mediaFormat": self.fmt}})

    async def stream(self, *, pace: bool, drop=lambda track, n: False, upto_s: float | None = None) -> None:
        """Media for every track, interleaved chunk by chunk; ``drop(track, n)``: chunks never sent."""
        codec = CODECS["PCMU"]
        payloads = {t: codec.packetize(pcm.astype("<i2").tobytes()) for t, pcm in self.tracks.items()}
        n_chunks = max(len(p) for p in payloads.values())
        if upto_s is not None:
            n_chunks = min(n_chunks, int(upto_s / 0.02))
        t0 = time.monotonic()
        for n in range(n_chunks):
            if pace:
                await paced(n, t0, 0.02)
            for track, chunks in payloads.items():
                if n < len(chunks) and not drop(track, n):
                    await self.send({"event": "media", "streamSid": "MZ" + self.call_sid[2:], "media": {
                        "track": track, "chunk": str(n + 1), "timestamp": str(n * 20),
                        "payload": base64.b64encode(chunks[n]).decode()}})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": "MZ" + self.call_sid[2:],
                         "stop": {"accountSid": "AC0001", "callSid": self.call_sid}})

    async def closed(self, timeout: float = 30.0) -> tuple[int | None, str]:
        """Wait for the service to close the socket: (close code, reason)."""
        return await closed(self.ws, timeout)


async def closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30.0) -> tuple[int | None, str]:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:  # the code and reason the service sent
                return int(msg.data), msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return ws.close_code, ""
            if msg.type is aiohttp.WSMsgType.ERROR:
                return ws.close_code, str(msg.data)


def abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the TCP connection without a close frame (a crashed sender, a cut network)."""
    ws._conn.transport.abort()


def pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 from int16 or float [-1, 1) samples."""
    if samples.dtype == np.int16:
        return samples
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)


class StreamClient:
    """What FreeSWITCH mod_audio_stream and jambonz ``listen`` send: an optional JSON metadata text
    message, then binary L16 little-endian frames (20 ms), stereo interleaved for two channels."""

    def __init__(self, url: str, channels: list[np.ndarray], rate: int, metadata: dict | None = None):
        self.url = url
        self.channels = [pcm16(c) for c in channels]
        self.rate = rate
        self.metadata = metadata
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def frames(self) -> list[bytes]:
        n = max(len(c) for c in self.channels)
        data = np.zeros((n, len(self.channels)), dtype="<i2")
        for i, c in enumerate(self.channels):
            data[:len(c), i] = c
        step = self.rate // 50
        return [data[i:i + step].tobytes() for i in range(0, n, step)]

    async def open(self, http: aiohttp.ClientSession, **kw) -> None:
        self.ws = await http.ws_connect(self.url, **kw)
        if self.metadata is not None:
            await self.ws.send_str(json.dumps(self.metadata))

    async def stream(self, *, pace: bool, upto_s: float | None = None) -> None:
        t0 = time.monotonic()
        for n, frame in enumerate(self.frames):
            if upto_s is not None and n * 0.02 >= upto_s:
                break
            if pace:
                await paced(n, t0, 0.02)
            await self.ws.send_bytes(frame)

    async def finish(self) -> tuple[int | None, str]:
        """The sender hangs up: a normal close."""
        await self.ws.close()
        return self.ws.close_code, ""


class AudioSocketClient:
    """What Asterisk's AudioSocket() sends (https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/):
    frames of kind (1 byte), length (2 bytes, big-endian), payload: the call UUID first, then 20 ms
    of signed-linear audio per frame (kind 0x10: 8 kHz; 0x12: slin16, 16 kHz), then a hang-up."""

    UUID, AUDIO, HANGUP, ERROR, DTMF = 0x01, 0x10, 0x00, 0xFF, 0x03
    RATES = {0x10: 8000, 0x12: 16000}

    def __init__(self, port: int, call_uuid, pcm: np.ndarray, kind: int = AUDIO):
        self.port = port
        self.uuid = call_uuid
        self.pcm = pcm16(pcm)
        self.kind = kind
        self.reader = self.writer = None

    @staticmethod
    def frame(kind: int, payload: bytes = b"") -> bytes:
        return bytes([kind]) + len(payload).to_bytes(2, "big") + payload

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.frame(self.UUID, self.uuid.bytes))

    async def stream(self, *, pace: bool, upto_s: float | None = None) -> None:
        t0 = time.monotonic()
        data = self.pcm.astype("<i2").tobytes()
        size = self.RATES[self.kind] // 50 * 2  # 20 ms
        for n, i in enumerate(range(0, len(data), size)):
            if upto_s is not None and n * 0.02 >= upto_s:
                break
            if pace:
                await paced(n, t0, 0.02)
            self.writer.write(self.frame(self.kind, data[i:i + size]))
            await self.writer.drain()

    async def hang_up(self) -> None:
        self.writer.write(self.frame(self.HANGUP))
        await self.writer.drain()
        await self.closed()

    async def closed(self, timeout: float = 30.0) -> bytes:
        """Wait until the service closes the connection; what it sent back (nothing, for a recorder)."""
        async with asyncio.timeout(timeout):
            rest = await self.reader.read()
        self.writer.close()
        return rest
