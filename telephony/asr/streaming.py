"""What every streaming speech service engine shares: one connection per leg, kept alive and honest.

A vendor module (``deepgram.py``, ``assemblyai.py``, ``google.py``) only opens
a ``Connection`` and translates its messages into ``Segment``s; this module
does the rest, the same way for every service:

- **Wire format.** Sessions take the leg's own rate (``sample_rate = None``).
  An 8 kHz PCMU leg (or an 8 kHz leg of unknown codec) is sent as μ-law, which
  is exact: its samples came from μ-law, and μ-law → float → μ-law is
  lossless. Anything else is 16-bit PCM at the frame's rate; every supported
  service takes 8, 16 and 48 kHz, so nothing is resampled.
- **Send task.** Audio leaves in ``[asr] chunk_ms`` messages (default 100 ms,
  clamped to the vendor's limits; a last short chunk is padded with silence
  where the vendor has a minimum).
- **Pace guard.** Audio never leaves ahead of real time: with t0 the
  session's first send, the audio sent so far (replays included) stays
  ≤ (now − t0) + one chunk. A backlog (after a stall or a reconnect) drains as
  fast as that allows, never faster: services reject audio sent faster than
  real time (AssemblyAI closes with 3007, Google with OUT_OF_RANGE). Each
  reconnect costs the resent audio in lag for the rest of the leg, since
  every byte sent counts. A vendor that rate-checks each connection
  (AssemblyAI) also has each connection paced from its own first send.
- **Replay buffer.** The last ``[asr] buffer_s`` seconds of the leg (default
  30) are kept. **Replay rule:** a new connection starts at the end of the
  last *stable* result, i.e. the end of the audio the service has finalised
  (the last final's end; for Deepgram the end of the final window, silence
  included). Everything after it is sent again, and every result is mapped to
  call time as ``start_ms + connection start + its own offset`` (a new
  connection's timestamps start at 0). Nothing said is lost: audio after the
  last final is resent; nothing is stored twice: finals (and words) ending at
  or before that point are dropped, and a dead connection's partials are
  never promoted to finals (its finalised words are: they were final).
- **Reconnect** on drops, 5xx and 429 with exponential backoff and full
  jitter (a 429's Retry-After is honoured). **401/403 fail fast:** one log
  line per engine, ``session.error`` set to a short reason, no retries for
  ``AUTH_RETRY_S`` for any leg of that engine (no retry storm).
- **Keep-alive** when no audio left for ``[asr] keepalive_s``.
- **Roll-over:** a vendor with a per-connection limit (Google's stream
  duration) gets a new connection before the limit, started exactly where
  the old one's audio ended after the old one was finalised, so nothing is
  lost or repeated and offsets stay continuous.
- **finish()** drains the buffer (at the guarded pace), asks the service to
  finalise and close (Finalize/CloseStream, ForceEndpoint/Terminate, gRPC
  half-close) and waits at most ``[asr] finalize_timeout_s`` for the last
  finals.
- **Fallback.** With ``[asr] fallback = "whisper"``, a leg whose service stays
  unreachable for ``fallback_after_s`` (or refuses our key) continues on the
  embedded engine from the audio after the last final; each ``Final.engine``
  says which engine produced it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import numpy as np

from ..media.audio import AudioFrame
from .base import END, Final, Partial, SessionInfo, drain

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

AUTH_RETRY_S = 60.0  # after a 401/403, an engine tries again no sooner than this


class ServiceError(Exception):
    """A connection attempt or a live connection failed.

    ``auth``: the service refused our credentials (401/403): never retried at once.
    ``retry``: worth trying again after a backoff (drops, 5xx, 429); else a
    configuration or protocol error that a retry would only repeat.
    """

    def __init__(self, reason: str, *, auth: bool = False, retry: bool = True, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.auth = auth
        self.retry = retry and not auth
        self.retry_after = retry_after


def http_error(status: int, detail: str = "", retry_after: str | None = None) -> ServiceError:
    """A refused handshake, classified: 401/403 auth, 408/429/5xx retry, other 4xx configuration."""
    reason = f"HTTP {status}" + (f": {detail}" if detail else "")
    after = None
    if retry_after:
        try:
            after = max(0.0, float(retry_after))
        except ValueError:
            after = None
    return ServiceError(reason, auth=status in (401, 403), retry=status in (408, 429) or status >= 500, retry_after=after)


@dataclass(frozen=True)
class Segment:
    """A result of one connection, times in seconds from that connection's first sample.

    ``final``: the text will not change. ``done_s``: how far the service has
    finalised the audio (≥ ``end_s``; a final window can end in silence after
    the last word). ``utterance_end``: the pending finals form one utterance.
    ``replaces``: this final's text replaces the pending finals' (AssemblyAI's
    formatted turn restates the words it had finalised one by one).
    """

    text: str
    start_s: float
    end_s: float
    final: bool
    confidence: float | None = None
    utterance_end: bool = False
    done_s: float | None = None
    replaces: bool = False


@dataclass(frozen=True)
class UtteranceEnd:
    """The service saw the end of an utterance: pending finals become one Final."""


class Connection(Protocol):
    request_id: str | None

    async def send_audio(self, data: bytes) -> None: ...

    async def keepalive(self) -> bool | None:
        """Keep an idle connection open; False: the protocol has no way, so the session closes it cleanly."""

    async def finalize(self) -> None:
        """Ask for the finals of everything sent, then a clean close."""

    async def abort(self) -> None: ...

    def results(self) -> AsyncIterator[Segment | UtteranceEnd]:
        """Ends when the service closes cleanly; raises ServiceError when the connection drops or is refused."""


@dataclass(frozen=True)
class WireFormat:
    encoding: str  # "mulaw" | "linear16"
    rate: int

    @property
    def width(self) -> int:
        return 1 if self.encoding == "mulaw" else 2

    @classmethod
    def for_leg(cls, rate: int, codec: str | None) -> "WireFormat":
        if rate == 8000 and codec in (None, "PCMU"):
            return cls("mulaw", 8000)
        return cls("linear16", rate)

    def encode(self, frame: AudioFrame) -> bytes:
        pcm = frame.to_pcm16()
        return audioop.lin2ulaw(pcm, 2) if self.encoding == "mulaw" else pcm

    def decode(self, data: bytes) -> np.ndarray:
        pcm = audioop.ulaw2lin(data, 2) if self.encoding == "mulaw" else data
        return AudioFrame.from_pcm16(pcm, self.rate).samples

    def silence(self, samples: int) -> bytes:
        return (b"\xff" if self.encoding == "mulaw" else b"\x00\x00") * samples


class AudioBuffer:
    """The leg's audio as sent on the wire, addressed by absolute sample position.

    Holds ``[start, end)``; trimming drops a prefix lazily (compacting once the
    dead prefix is half the buffer), so each byte is copied O(1) times.
    """

    def __init__(self, width: int):
        self.width = width
        self._data = bytearray()
        self._origin = 0  # sample position of _data[0]
        self.start = 0  # first sample still held
        self.end = 0  # next sample to be appended

    def append(self, data: bytes) -> None:
        self._data += data
        self.end += len(data) // self.width

    def read(self, start: int, n: int) -> bytes:
        a = (start - self._origin) * self.width
        return bytes(self._data[a:a + n * self.width])

    def trim(self, upto: int) -> None:
        upto = min(upto, self.end)
        if upto <= self.start:
            return
        self.start = upto
        dead = (self.start - self._origin) * self.width
        if dead > len(self._data) // 2:
            del self._data[:dead]
            self._origin = self.start


class StreamingEngine:
    """Base of the service engines: settings, the shared HTTP session, the auth circuit breaker."""

    name = "streaming"
    sample_rate = None  # sessions take the leg's own rate
    min_chunk_ms = 20
    max_chunk_ms = 1000
    min_message_ms = 0  # a shorter last message is padded with silence (AssemblyAI takes 50..1000 ms)
    pace_per_connection = False  # also pace each connection from its own first send (a service that rate-checks each)
    max_connection_s: float | None = None  # planned roll-over before a per-connection limit

    def __init__(self, asr, *, fallback=None, owns_fallback: bool = False):
        self.asr = asr
        self.fallback = fallback
        self._owns_fallback = owns_fallback
        self.chunk_ms = min(max(asr.chunk_ms, self.min_chunk_ms), self.max_chunk_ms)
        self._auth_error: str | None = None
        self._auth_until = 0.0
        self._http = None
        self._probe: asyncio.Lock | None = None
        self.verified = False  # a connection has succeeded: legs connect concurrently from then on
        self.sessions_opened = 0
        self.connects = 0  # connection attempts, all sessions (tests check there is no retry storm)

    def warn_if_plaintext(self, url: str, has_key: bool) -> None:
        """A self-hosted server may be plaintext; say so once when that leaves the machine."""
        from .settings import is_loopback

        if url.split("://", 1)[0] in ("ws", "http", "grpc") and not is_loopback(url):
            log.warning("%s: %s is not encrypted: audio%s cross the network in clear", self.name,
                        url.split("?", 1)[0], " and the API key" if has_key else "")

    # -- vendor ------------------------------------------------------------
    async def connect(self, fmt: WireFormat, info: SessionInfo) -> Connection:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    def http(self):
        """One aiohttp session per engine (connection pooling, TLS verified by default)."""
        import aiohttp

        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self.asr.connect_timeout_s))
        return self._http

    def probe_lock(self) -> asyncio.Lock:
        """Until one connection has worked, legs try one at a time: a wrong key costs one attempt, not one per leg."""
        if self._probe is None:
            self._probe = asyncio.Lock()
        return self._probe

    def auth_blocked(self) -> str | None:
        if self._auth_error and time.monotonic() < self._auth_until:
            return self._auth_error
        return None

    def note_auth_failure(self, reason: str) -> bool:
        """Remember a refused key; True the first time (so it is logged once, not once per leg)."""
        first = self.auth_blocked() is None
        self._auth_error = reason
        self._auth_until = time.monotonic() + AUTH_RETRY_S
        return first

    def open_session(self, *, start_ms: int = 0, realtime: bool = True,
                     info: SessionInfo | None = None) -> "StreamingSession":
        self.sessions_opened += 1
        return StreamingSession(self, start_ms=start_ms, realtime=realtime, info=info or SessionInfo())

    def backlog(self) -> int:
        return self.fallback.backlog() if self.fallback is not None else 0

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self.fallback is not None and self._owns_fallback:
            await self.fallback.close()


class StreamingSession:
    """One leg's transcription by a streaming service (see the module docstring for the rules)."""

    def __init__(self, engine: StreamingEngine, *, start_ms: int, realtime: bool, info: SessionInfo):
        self.engine = engine
        self.start_ms = start_ms
        self.info = info
        self._realtime = realtime
        asr = engine.asr
        self._events: asyncio.Queue = asyncio.Queue()
        self._wakeup = asyncio.Event()  # audio fed (or finish): the sender looks again
        self._finish_evt = asyncio.Event()  # finish() called: backoff sleeps end early
        self._format_known = asyncio.Event()
        self.fmt: WireFormat | None = None
        self._buf: AudioBuffer | None = None
        self._feed_ends: deque[int] = deque()  # sample position after each feed …
        self._feed_times: deque[float] = deque()  # … and when it arrived
        self._finishing = False
        self._finish_at = 0.0
        # Positions in samples since the leg's first sample.
        self.committed = 0  # the service has finalised the audio before this
        self._conn_start = 0
        self._sent = 0
        self._total_sent = 0  # samples sent over all connections (the pace guard's count)
        self._t_first_send: float | None = None
        self._last_send = time.monotonic()
        self._pending: list[tuple[str, float, float, float | None]] = []  # finals of the open utterance
        self._last_partial_end = 0.0
        self._request_id: str | None = None
        self._down_since: float | None = None
        self._delay = asr.backoff_initial_s  # next reconnect backoff; back to initial once a result arrives
        self._retry_wait = 0.0
        self._connected = False
        self._dead = False  # gave up (credentials refused, fatal error, no fallback): audio is discarded
        self._fallback = None
        self._fallback_resampler = None
        self._fallback_task: asyncio.Task | None = None
        # What happened, for the lead's records and for tests.
        self.error: str | None = None
        self.connections: list[dict] = []  # one per connection: start sample, samples sent, how it ended
        self.dropped_ms = 0  # audio never transcribed (outage longer than the buffer)
        self.max_lag_s = 0.0  # worst backlog of unsent audio
        if info.rate:
            self._set_format(info.rate)
        self._buffer_cap = int(asr.buffer_s * (info.rate or 16000))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{engine.name}-session")

    # -- input (called by the leg's pacer) ------------------------------------
    def _set_format(self, rate: int) -> None:
        self.fmt = WireFormat.for_leg(rate, self.info.codec)
        self._buf = AudioBuffer(self.fmt.width)
        self._chunk = rate * self.engine.chunk_ms // 1000
        self._min_message = rate * self.engine.min_message_ms // 1000
        self._buffer_cap = int(self.engine.asr.buffer_s * rate)
        self._format_known.set()

    def feed(self, frame: AudioFrame) -> None:
        if self._finishing:
            raise RuntimeError("feed() after finish()")
        if self.fmt is None:
            self._set_format(frame.rate)
        elif frame.rate != self.fmt.rate:
            raise ValueError(f"a leg's rate cannot change: {self.fmt.rate} Hz, then {frame.rate} Hz")
        if self._fallback is not None:
            self._feed_fallback(frame.samples)
            return
        if self._dead:
            return
        now = time.monotonic()
        self._buf.append(self.fmt.encode(frame))
        self._feed_ends.append(self._buf.end)
        self._feed_times.append(now)
        self._trim()
        self._wakeup.set()

    async def finish(self) -> None:
        if not self._finishing:
            self._finishing = True
            self._finish_at = time.monotonic()
            self._wakeup.set()
            self._finish_evt.set()
            self._format_known.set()
        await asyncio.shield(self._task)

    def events(self) -> AsyncIterator[Partial | Final]:
        return drain(self._events)

    # -- buffer ----------------------------------------------------------------
    def _trim(self) -> None:
        buf = self._buf
        keep_from = min(self.committed, self._sent) if self._connected else self.committed
        if buf.end - keep_from > self._buffer_cap:
            # Behind by more than the buffer (a long outage): the oldest audio goes, and is counted.
            # A live connection that has not sent it yet notices (its next read is gone) and reconnects.
            new_start = buf.end - self._buffer_cap
            lost = new_start - max(self._sent if self._connected else self.committed, buf.start)
            if lost > 0:
                if self.dropped_ms == 0:
                    log.warning("%s: leg %s: more than the %.0f s buffer behind; oldest audio dropped",
                                self.engine.name, self.info.leg_id or "?", self.engine.asr.buffer_s)
                self.dropped_ms += lost * 1000 // self.fmt.rate
            keep_from = new_start
            self.committed = max(self.committed, new_start)
        buf.trim(keep_from)
        while self._feed_ends and self._feed_ends[0] < buf.start:
            self._feed_ends.popleft()
            self._feed_times.popleft()

    def _fed_at(self, pos: int) -> float | None:
        """time.monotonic() when sample ``pos`` was fed."""
        i = bisect.bisect_left(self._feed_ends, pos)
        if i >= len(self._feed_ends):
            return self._feed_times[-1] if self._feed_times else None
        return self._feed_times[i] - (self._feed_ends[i] - pos) / self.fmt.rate

    # -- the connection loop ----------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._format_known.wait()
            while self.fmt is not None and self._fallback is None:
                if self._finishing and self.committed >= self._buf.end and not self._pending:
                    break
                if not self._finishing and self._buf.end <= self.committed:
                    # Nothing to send (an idle connection was closed): open the next one when audio comes.
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                conn = await self._connect()
                if conn is None:
                    break
                ended = await self._stream(conn)
                if ended == "finished":
                    break
            if self._fallback is not None:
                await self._run_fallback()
        except Exception:
            log.exception("%s: leg %s: session failed", self.engine.name, self.info.leg_id or "?")
            self.error = self.error or "internal error"
        finally:
            self._flush()
            self._events.put_nowait(END)

    async def _connect(self) -> Connection | None:
        engine, asr = self.engine, self.engine.asr
        while True:
            reason = engine.auth_blocked()
            if reason:
                return self._auth_failed(reason, first=False)
            if self._fallback_due():
                self._start_fallback("service unreachable")
                return None
            if self._finishing and self._down_since is not None and \
                    time.monotonic() - self._finish_at > asr.finalize_timeout_s:
                self._give_up("service unreachable at hang-up")
                return None
            if self._retry_wait > 0:
                wait, self._retry_wait = self._retry_wait, 0.0
                await self._sleep(wait)
                continue  # look again: finish() or the fallback deadline may have come meanwhile
            try:
                if engine.verified:
                    return await self._attempt()
                async with engine.probe_lock():
                    if engine.auth_blocked():
                        continue
                    conn = await self._attempt()
                    engine.verified = True
                    return conn
            except ServiceError as exc:
                if exc.auth:
                    return self._auth_failed(exc.reason, first=engine.note_auth_failure(exc.reason))
                if not exc.retry:
                    self._fatal(exc.reason)
                    return None
                self._note_down(exc.reason, exc.retry_after)
            except (OSError, asyncio.TimeoutError) as exc:
                self._note_down(f"connect: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
            except Exception as exc:  # aiohttp.ClientError and friends: the service is not there
                self._note_down(f"connect: {type(exc).__name__}: {exc}")

    async def _attempt(self) -> Connection:
        self.engine.connects += 1
        return await asyncio.wait_for(self.engine.connect(self.fmt, self.info), self.engine.asr.connect_timeout_s)

    def _note_down(self, reason: str, retry_after: float | None = None) -> None:
        """A failed attempt or a drop: back off (doubling, with jitter), and say so once per outage."""
        asr = self.engine.asr
        self._retry_wait = retry_after if retry_after is not None else random.uniform(0.5, 1.0) * self._delay
        self._delay = min(self._delay * 2, asr.backoff_max_s)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s: leg %s: %s; reconnecting", self.engine.name, self.info.leg_id or "?", reason)
        else:
            log.debug("%s: leg %s: %s", self.engine.name, self.info.leg_id or "?", reason)

    def _fallback_due(self) -> bool:
        if self.engine.fallback is None or self._down_since is None:
            return False
        if self._finishing:
            return True  # hang-up while the service is away: the embedded engine does the rest now
        return time.monotonic() - self._down_since >= self.engine.asr.fallback_after_s

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at finish() (which may bound or end the wait)."""
        try:
            await asyncio.wait_for(self._finish_evt.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _auth_failed(self, reason: str, *, first: bool) -> None:
        self.error = f"{self.engine.name}: credentials refused ({reason})"
        self._dead = self.engine.fallback is None
        if first:
            log.error("%s: the service refused our credentials (%s): check [asr] api_key; no new connections for %.0f s%s",
                      self.engine.name, reason, AUTH_RETRY_S,
                      "; legs continue on the embedded engine" if self.engine.fallback is not None else "; legs are not transcribed")
        if self.engine.fallback is not None:
            self._start_fallback(reason)
        return None

    def _fatal(self, reason: str) -> None:
        self.error = f"{self.engine.name}: {reason}"
        self._dead = self.engine.fallback is None
        log.error("%s: leg %s: %s (not retried)", self.engine.name, self.info.leg_id or "?", reason)
        if self.engine.fallback is not None:
            self._start_fallback(reason)

    def _give_up(self, reason: str) -> None:
        untranscribed = (self._buf.end - self.committed) * 1000 // self.fmt.rate
        self.error = self.error or f"{self.engine.name}: {reason}"
        self._dead = True
        log.warning("%s: leg %s: %s; the last %d ms were not transcribed", self.engine.name,
                    self.info.leg_id or "?", reason, untranscribed)

    async def _stream(self, conn: Connection) -> str:
        """Run one connection. Returns "finished", "rolled" (planned new connection) or "dropped"."""
        asr = self.engine.asr
        self._conn_start = self._sent = max(self.committed, self._buf.start)
        record = {"start": self._conn_start, "sent": 0, "end": None, "request_id": None}
        self.connections.append(record)
        self._last_partial_end = 0.0
        self._connected = True
        opened = time.monotonic()
        receiver = asyncio.ensure_future(self._receive(conn))
        sender = asyncio.ensure_future(self._send(conn, opened, record))
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and sender.exception() is None:
                # Finalize sent: wait (bounded) for the last finals and the clean close.
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), asr.finalize_timeout_s)
                    self.committed = max(self.committed, self._sent)  # the service finalised all it got
                    self._down_since = None
                    record["end"] = sender.result()
                    return "finished" if sender.result() == "finish" else "rolled"
                except asyncio.TimeoutError:
                    reason = f"no close within finalize_timeout_s ({asr.finalize_timeout_s:g} s)"
                    record["end"] = "timeout"
                    if self._finishing:
                        self._flush()
                        if self.engine.fallback is not None and self.committed < self._buf.end:
                            self._start_fallback(reason)
                        elif self.committed < self._buf.end:
                            self._give_up(reason)
                        return "finished"
                    self._note_down(reason)
                    return "dropped"
                except ServiceError as exc:
                    return self._dropped(exc, record)
            # The receiver ended first: the service closed (or dropped) while we were still sending.
            exc = receiver.exception() if receiver in done else sender.exception()
            if exc is None:
                exc = ServiceError("closed by the service before we finished")
            if not isinstance(exc, ServiceError):
                if isinstance(exc, (OSError, asyncio.TimeoutError)) or type(exc).__module__.startswith("aiohttp"):
                    exc = ServiceError(f"{type(exc).__name__}: {exc}")
                else:
                    raise exc
            return self._dropped(exc, record)
        finally:
            self._connected = False
            record["request_id"] = self._request_id
            for t in (sender, receiver):
                if not t.done():
                    t.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            try:
                await conn.abort()
            except Exception:
                pass

    def _dropped(self, exc: ServiceError, record: dict) -> str:
        record["end"] = f"dropped: {exc.reason}"
        # Finals already received are final; the open utterance's stable words too. Partials die with the connection.
        self._flush()
        if exc.auth:
            self._auth_failed(exc.reason, first=self.engine.note_auth_failure(exc.reason))
            return "finished"
        if not exc.retry:
            self._fatal(exc.reason)
            return "finished"
        self._note_down(exc.reason)
        return "dropped"

    async def _send(self, conn: Connection, opened: float, record: dict) -> str:
        """Send audio at the guarded pace; keep-alives in silence; Finalize at the end or before a roll-over."""
        rate = self.fmt.rate
        chunk = self._chunk
        limit = self.engine.max_connection_s
        conn_first: float | None = None
        conn_sent = 0
        while True:
            if self._finishing and self._sent >= self._buf.end:
                await conn.finalize()
                return "finish"
            if limit is not None:
                on_conn = max(time.monotonic() - opened, (self._sent - self._conn_start) / rate)
                if on_conn >= limit:
                    await conn.finalize()
                    return "rollover"
            avail = self._buf.end - self._sent
            if avail >= chunk or (self._finishing and avail > 0):
                n = min(chunk, avail)
                now = time.monotonic()
                if self._t_first_send is None:
                    self._t_first_send = now
                if conn_first is None:
                    conn_first = now
                budget = (now - self._t_first_send) * rate + chunk - self._total_sent
                if self.engine.pace_per_connection:
                    budget = min(budget, (now - conn_first) * rate + chunk - conn_sent)
                if n > budget:
                    await asyncio.sleep((n - budget) / rate)
                    continue
                if self._sent < self._buf.start:
                    raise ServiceError("fell more than the buffer behind")  # reconnect from what is still held
                data = self._buf.read(self._sent, n)
                if n < self._min_message:
                    data += self.fmt.silence(self._min_message - n)  # vendor's minimum message (end of the leg only)
                self.max_lag_s = max(self.max_lag_s, avail / rate)
                await conn.send_audio(data)
                self._sent += n
                self._total_sent += len(data) // self.fmt.width
                conn_sent += len(data) // self.fmt.width
                record["sent"] += n
                self._last_send = time.monotonic()
                continue
            idle = time.monotonic() - self._last_send
            if idle >= self.engine.asr.keepalive_s:
                if await conn.keepalive() is False:
                    await conn.finalize()
                    return "idle"
                self._last_send = time.monotonic()
                continue
            self._wakeup.clear()
            if self._finishing or self._buf.end - self._sent >= chunk:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.engine.asr.keepalive_s - idle)
            except asyncio.TimeoutError:
                pass

    async def _receive(self, conn: Connection) -> None:
        async for item in conn.results():
            if conn.request_id:
                self._request_id = conn.request_id
            self._down_since = None  # a result: the service is there
            self._delay = self.engine.asr.backoff_initial_s
            if isinstance(item, UtteranceEnd):
                self._flush()
            else:
                self._on_segment(item)

    # -- results -------------------------------------------------------------
    def _on_segment(self, seg: Segment) -> None:
        rate = self.fmt.rate
        base = self._conn_start / rate
        start, end = base + seg.start_s, base + seg.end_s
        committed_s = self.committed / rate
        if not seg.final:
            # Stale (already final) or older than a partial we showed: an out-of-order interim.
            if end <= committed_s or end < self._last_partial_end or not seg.text:
                return
            self._last_partial_end = end
            if self._realtime:
                head = " ".join(t for t, *_ in self._pending)
                first = self._pending[0][1] if self._pending else start
                self._events.put_nowait(Partial(f"{head} {seg.text}".strip(), self._ms(first), self._ms(end)))
            return
        done = base + (seg.done_s if seg.done_s is not None else seg.end_s)
        if seg.replaces:
            self._pending = []
        elif end <= committed_s + 0.001 and seg.text:
            return  # replayed audio the service had already finalised
        if seg.text:
            self._pending.append((seg.text, start, end, seg.confidence))
        done_pos = min(int(round(done * rate)), self._sent)
        self.committed = max(self.committed, done_pos)
        if seg.utterance_end:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        texts = [t for t, *_ in self._pending]
        start, end = self._pending[0][1], self._pending[-1][2]
        confs = [c for *_, c in self._pending if c is not None]
        self._pending = []
        conf = round(sum(confs) / len(confs), 4) if confs else None
        fed = self._fed_at(int(end * self.fmt.rate)) if self._feed_ends else None
        self._events.put_nowait(Final(" ".join(texts), self._ms(start), self._ms(end), conf, fed,
                                      engine=self.engine.name, request_id=self._request_id))

    def _ms(self, seconds: float) -> int:
        return self.start_ms + int(round(seconds * 1000))

    # -- fallback --------------------------------------------------------------
    def _start_fallback(self, reason: str) -> None:
        if self._fallback is not None or self.engine.fallback is None:
            return
        fb = self.engine.fallback
        self._flush()
        rate = self.fmt.rate
        begin = max(self.committed, self._buf.start)
        log.warning("%s: leg %s: %s; continuing on %s from %.1f s", self.engine.name, self.info.leg_id or "?",
                    reason, fb.name, begin / rate)
        self._fallback = fb.open_session(start_ms=self.start_ms + begin * 1000 // rate, realtime=self._realtime,
                                         info=self.info)
        if fb.sample_rate and fb.sample_rate != rate:
            from ..media.resample import Resampler

            self._fallback_resampler = Resampler(rate, fb.sample_rate)
        backlog = self.fmt.decode(self._buf.read(begin, self._buf.end - begin))
        step = max(1, rate // 10)
        for i in range(0, len(backlog), step):
            self._feed_fallback(backlog[i:i + step])
        self.committed = self._buf.end
        self._buf.trim(self._buf.end)
        self._fallback_task = asyncio.ensure_future(self._forward_fallback())

    def _feed_fallback(self, samples: np.ndarray) -> None:
        rate = self.fmt.rate
        if self._fallback_resampler is not None:
            samples = self._fallback_resampler.process(samples)
            rate = self._fallback_resampler.out_rate
        if len(samples):
            self._fallback.feed(AudioFrame(samples, rate))

    async def _forward_fallback(self) -> None:
        async for ev in self._fallback.events():
            self._events.put_nowait(ev)

    async def _run_fallback(self) -> None:
        await self._finish_evt.wait()
        if self._fallback_resampler is not None:
            tail = self._fallback_resampler.process(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                self._fallback.feed(AudioFrame(tail, self._fallback_resampler.out_rate))
        await self._fallback.finish()
        await self._fallback_task
