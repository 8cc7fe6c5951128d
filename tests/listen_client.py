"""A /v1/listen client written from Deepgram's published live-streaming protocol (aiohttp WebSocket)."""

from __future__ import annotations

import asyncio
import json
import warnings
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11/3.12, audioop-lts from 3.13 (as the service's codecs)

from .speech import prompt_8k


def encode(pcm: np.ndarray, encoding: str) -> bytes:
    """(samples,) or (samples, channels) int16 → interleaved bytes in ``encoding``."""
    raw = np.ascontiguousarray(pcm.astype("<i2")).tobytes()
    if encoding == "linear16":
        return raw
    return audioop.lin2ulaw(raw, 2) if encoding == "mulaw" else audioop.lin2alaw(raw, 2)


@dataclass
class Session:
    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    finals_before_close: int = 0  # finals received before we sent CloseStream

    def finals(self, channel: int | None = None) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "Results" and m["is_final"]
                and (channel is None or m["channel_index"][0] == channel)]

    def text(self, channel: int | None = None) -> str:
        return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in self.finals(channel)).strip()

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]


async def receive_all(ws, session: Session) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            session.messages.append(json.loads(msg.data))
    session.close_code = ws.close_code


async def stream(url: str, audio: bytes, *, params: dict, bytes_per_s: int, paced: bool, chunk_ms: int = 100,
                 end: str = "close", headers: dict | None = None, timeout: float = 60,
                 finalize_wait: float = 10) -> Session:
    """Send ``audio`` in ``chunk_ms`` frames (in real time if ``paced``), then ``end``: "close" (CloseStream),
    "finalize" (Finalize, wait up to ``finalize_wait`` s for a final, then CloseStream) or "abrupt" (drop the TCP connection)."""
    session = Session()
    chunk = max(1, bytes_per_s * chunk_ms // 1000)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/v1/listen?{urlencode(params)}", headers=headers or {}, max_msg_size=0)
        reader = asyncio.create_task(receive_all(ws, session))
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(audio), chunk)):
            if paced:
                await asyncio.sleep(max(0.0, t0 + n * chunk_ms / 1000 - time.monotonic()))
            await ws.send_bytes(audio[i:i + chunk])
        if end == "abrupt":
            ws._response.connection.transport.abort()  # no close frame: a crashed client
            reader.cancel()
            return session
        if end == "finalize":
            await ws.send_str(json.dumps({"type": "Finalize"}))
            deadline = time.monotonic() + finalize_wait
            while not session.finals() and time.monotonic() < deadline:
                await ws.send_str(json.dumps({"type": "KeepAlive"}))
                await asyncio.sleep(0.2)
        session.finals_before_close = len(session.finals())
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, timeout)
        session.close_reason = str(ws.close_code)
    return session


def prompt_audio(*names: str, gap_s: float = 0.6) -> np.ndarray:
    """Asterisk prompts at 8 kHz, one after another with ``gap_s`` of silence after each."""
    parts = []
    for name in names:
        parts += [prompt_8k(name), np.zeros(int(8000 * gap_s), np.int16)]
    return np.concatenate(parts)
