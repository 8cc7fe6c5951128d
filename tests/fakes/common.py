"""What the fake speech services share: a server thread, a real decoder, a recorder, injectable faults.

Each fake runs on its own event loop in its own thread (as a remote service
would: its timing is not the client's), listens on 127.0.0.1 only, and
decodes what it receives with the embedded Whisper engine
(``telephony.asr.create_engine(Settings())``, defaults), so transcripts are
real. It records every connection: when each audio message arrived, the
bytes themselves, the query and the control messages.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from telephony.media.audio import AudioFrame
from telephony.media.resample import Resampler

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_decoder = None
_decoder_lock = threading.Lock()


def decoder_engine():
    """The embedded Whisper engine with default settings, loaded once per test process."""
    global _decoder
    with _decoder_lock:
        if _decoder is None:
            from telephony.asr import create_engine
            from telephony.config import Settings

            _decoder = create_engine(Settings())
        return _decoder


@dataclass
class Faults:
    """What a fake does wrong, on purpose."""

    handshake_statuses: list[int] = field(default_factory=list)  # answer the next handshakes with these HTTP statuses
    retry_after: str | None = None  # Retry-After header on those answers
    drop_at_audio_s: dict[int, float] = field(default_factory=dict)  # connection index -> cut the TCP connection there
    down_after_drop: int | None = None  # after a drop, answer every handshake with this HTTP status (an outage)
    result_delay_s: float = 0.0  # a slow server: every message leaves this much later
    out_of_order: bool = False  # resend an older interim after a newer one, and a stale one after each final
    idle_close_s: float = 10.0  # no audio or keep-alive this long: the server closes (Deepgram NET-0001)
    stream_limit_s: float | None = None  # audio per connection the server accepts (Google 305 s, AssemblyAI 3 h)


@dataclass
class Conn:
    """One connection as the server saw it."""

    index: int
    opened: float
    params: dict
    width: int  # bytes per sample
    rate: int
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), bytes)
    audio: bytearray = field(default_factory=bytearray)
    control: list[str] = field(default_factory=list)
    closed: str = ""

    @property
    def audio_s(self) -> float:
        return len(self.audio) / self.width / self.rate

    def add(self, data: bytes) -> None:
        self.arrivals.append((time.monotonic(), len(data)))
        self.audio += data


def pace_violations(conns: list[Conn], chunk_s: float, ratio: float = 1.05, after_s: float = 1.0) -> list[str]:
    """Arrivals where the audio received so far (all connections) exceeds ``ratio`` × the real time elapsed.

    The clock starts one chunk before the first arrival: that chunk's audio had
    to be spoken before it could leave.
    """
    arrivals = sorted((t, n / c.width / c.rate) for c in conns for t, n in c.arrivals)
    if not arrivals:
        return []
    t0 = arrivals[0][0] - chunk_s
    total, bad = 0.0, []
    for t, seconds in arrivals:
        total += seconds
        elapsed = t - t0
        if elapsed >= after_s and total > ratio * elapsed:
            bad.append(f"{total:.2f} s of audio after {elapsed:.2f} s")
    return bad


class Recognizer:
    """The real decoder behind a fake connection: received audio in, Whisper partials and finals out.

    Times are ms from the connection's first sample. ``flush()`` ends the open
    utterance (a Finalize / ForceEndpoint / half-close) and goes on with a new
    decoder session from the current position.
    """

    def __init__(self, encoding: str, rate: int):
        self.encoding, self.rate = encoding, rate
        self.samples = 0
        self.out: asyncio.Queue = asyncio.Queue()
        self._open(0)

    def _open(self, start_ms: int) -> None:
        self._resampler = Resampler(self.rate, 16000)
        self._session = decoder_engine().open_session(start_ms=start_ms, realtime=True)
        self._forward = asyncio.ensure_future(self._pump(self._session))

    async def _pump(self, session) -> None:
        async for ev in session.events():
            await self.out.put(ev)

    def feed(self, data: bytes) -> None:
        pcm = audioop.ulaw2lin(data, 2) if self.encoding == "mulaw" else data
        x = np.frombuffer(pcm, dtype="<i2")
        self.samples += len(x)
        y = self._resampler.process(x)
        if len(y):
            self._session.feed(AudioFrame(y, 16000))

    async def _close_session(self) -> None:
        tail = self._resampler.process(np.zeros(0, dtype=np.int16), last=True)
        if len(tail):
            self._session.feed(AudioFrame(tail, 16000))
        await self._session.finish()
        await self._forward

    async def flush(self) -> None:
        await self._close_session()
        self._open(self.samples * 1000 // self.rate)

    async def close(self) -> None:
        await self._close_session()

    def abort(self) -> None:
        """The connection is gone: stop forwarding (the open decoder session is left to the collector)."""
        self._forward.cancel()


class ServerThread:
    """An asyncio loop of its own in a daemon thread, for a fake server."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-service")
        self._thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def serve(self, app) -> int:
        """Serve an aiohttp ``app`` on 127.0.0.1 from this thread's loop; returns its port."""

        async def start() -> int:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        return self.run(start())

    def close(self) -> None:
        """Stop what ``serve`` started, then the thread."""
        self.run(self._runner.cleanup())
        self.stop()


def words_over(text: str, start: float, end: float) -> list[tuple[str, float, float]]:
    """Word timings spread evenly over an utterance (the decoder gives utterance times, not word times)."""
    words = text.split()
    if not words:
        return []
    step = (end - start) / len(words)
    return [(w, round(start + i * step, 3), round(start + (i + 1) * step, 3)) for i, w in enumerate(words)]
