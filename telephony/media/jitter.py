"""Jitter buffer for one RTP stream (pipeline step 2).

The leg calls ``pop(now)`` once per 20 ms tick and always gets one 20 ms
frame, so the leg's timeline is wall-clock time by construction. The buffer
only decides which audio goes into each frame.

Positions are kept in *output samples* (at ``rate``, the decoded audio's rate,
which may differ from the RTP clock: G.722 runs an 8 kHz clock for 16 kHz
audio, Opus a 48 kHz clock): ``_cursor`` is the first sample the next ``pop``
emits, and each packet is placed at ``pos = its RTP timestamp mapped onto that
axis``. The mapping is fixed when a stream is anchored (the
first packet, an SSRC change, a timestamp/sequence jump): the anchoring packet
plays ``window_ms`` after the tick at which it arrived. Sequence numbers and
timestamps are unwrapped against the newest packet (RFC 3550 A.1 style), so
16-bit and 32-bit wrap-around need no special case.

Counting rules (each received packet lands in at most one of late/duplicate):

* ``received``: every packet handed to ``push`` (including late and duplicate ones).
* ``lost``: a sequence number never received by the time the playout has
  passed it (counted when the next received packet leaves the buffer). One
  that turns up after that is counted ``late`` as well (lost is not taken
  back): lost is the verdict at playout time, late is what became of the straggler.
* ``late``: the packet's whole range was already played; also stale packets
  (older sequence, timestamp far off), stragglers of the previous SSRC, and
  an unconfirmed probe packet (see ``_jump``).
* ``reordered``: a packet older than the highest sequence seen in its stream
  (counted whether or not it was still in time).
* ``overflow_dropped_ms``: timeline skipped to bound latency, and buffered
  audio of an old stream displaced by a re-anchor.

Zero-length payloads take up a sequence number without audio: the leg can
pass non-audio packets (comfort noise, DTMF events) with ``payload=b""`` so
their sequence numbers are not counted lost.

``decode`` (optional) turns a packet's payload into what the buffer holds (PCM)
when the packet is placed, i.e. after duplicates, stale and late packets are
sorted out: stateful decoders (G.722, Opus) only see packets that play.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left, insort
from dataclasses import dataclass

from math import gcd
from typing import Callable

from .rtp import RtpPacket

MAX_DROPOUT = 3000  # RFC 3550 A.1: a bigger sequence jump is a restart, not loss
MAX_MISORDER = 100  # RFC 3550 A.1: a probe is confirmed by a packet this close after it
STUCK_S = 0.2  # every arrival this long unusable (late/duplicate/stale): re-anchor
_RING = 4096  # remembered sequence numbers; must exceed MAX_DROPOUT
_MASK = _RING - 1
_NEVER = -(1 << 62)


@dataclass
class JitterStats:
    """Counters for one leg (see the module docstring for exact rules)."""

    received: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    reordered: int = 0
    malformed: int = 0
    silence_ms: int = 0  # silence inserted (underflow, gaps, before the first packet, end padding)
    jitter_ms: float = 0.0  # RFC 3550 6.4.1 interarrival jitter
    resyncs: int = 0  # SSRC changes / timestamp or sequence jumps that re-anchored the timeline
    overflow_dropped_ms: int = 0  # buffered audio thrown away to bound latency

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class JitterBuffer:
    def __init__(self, *, rate: int = 8000, clock_rate: int | None = None, frame_ms: int = 20, window_ms: int = 60,
                 max_jitter_ms: int = 1000, bytes_per_sample: int = 1, silence: bytes = b"\xff",
                 decode: Callable[[RtpPacket], bytes] | None = None):
        if rate * frame_ms % 1000 or frame_ms <= 0:
            raise ValueError(f"{frame_ms} ms is not a whole number of samples at {rate} Hz")
        if window_ms < 0 or max_jitter_ms < window_ms + frame_ms:
            raise ValueError("need 0 <= window_ms and max_jitter_ms >= window_ms + frame_ms")
        if len(silence) != bytes_per_sample:
            raise ValueError("silence must be exactly one sample (bytes_per_sample bytes)")
        self.stats = JitterStats()
        self._rate = rate
        clock_rate = clock_rate or rate
        self._clock_rate = clock_rate
        g = gcd(rate, clock_rate)
        self._num, self._den = rate // g, clock_rate // g  # RTP timestamp units → samples
        self._decode = decode
        self._frame = rate * frame_ms // 1000
        self._frame_s = frame_ms / 1000
        self._window = rate * window_ms // 1000
        self._max_jitter = rate * max_jitter_ms // 1000
        self._max_jitter_s = max_jitter_ms / 1000
        self._bps = bytes_per_sample
        self._silence = silence * self._frame  # sliced, never built per frame
        self._ms_per_sample = 1000 / rate
        self._cursor = 0  # output position of the next pop
        self._next_tick = math.inf  # time of the next pop (unknown before the first)
        self._buf: list[tuple[int, int, int, bytes]] = []  # (start, end, ext_seq, payload), sorted
        self._silence_samples = 0
        self._overflow_samples = 0
        # the current stream: SSRC and its newest packet (reference for unwrapping)
        self._ssrc: int | None = None
        self._hi_seq = self._hi_ts = self._hi_pos = 0
        self._hi_ext = 0  # extended sequence; each stream starts 2**16 above the last
        self._seen = [-1] * _RING  # ext seqs received, by ext & _MASK (duplicates, loss)
        self._retired = _NEVER  # ext seq of the last packet that left the buffer
        self._transit: float | None = None
        self._jitter = 0.0  # RFC 3550 J, in timestamp units
        self._stuck_since: float | None = None
        self._probe: tuple[RtpPacket, int, float] | None = None  # (packet, anchor pos, arrival)
        self._prev_ssrc: int | None = None
        self._prev_until = -math.inf

    # -- receive side -------------------------------------------------------------

    def count_malformed(self) -> None:
        self.stats.malformed += 1

    def push(self, packet: RtpPacket, arrival: float) -> None:
        self.stats.received += 1
        self._classify(packet, arrival)

    def _classify(self, p: RtpPacket, arrival: float) -> None:
        st = self.stats
        if p.ssrc != self._ssrc:
            if self._ssrc is None:
                self._anchor(p, self._due(arrival), arrival)
            elif p.ssrc == self._prev_ssrc and arrival < self._prev_until:
                self._reject(p, arrival, "late")  # sent before the switch, arrived after it
            else:
                self._jump(p, arrival)
            return
        dseq = ((p.sequence - self._hi_seq + 0x8000) & 0xFFFF) - 0x8000
        if dseq > MAX_DROPOUT or dseq < -MAX_DROPOUT:
            self._jump(p, arrival)
            return
        ext = self._hi_ext + dseq
        if self._seen[ext & _MASK] == ext:
            self._reject(p, arrival, "duplicate")
            return
        pos = self._hi_pos + (((p.timestamp - self._hi_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000) * self._num // self._den
        dev = pos - self._due(arrival)
        far = dev > self._max_jitter or dev < -self._max_jitter
        if dseq > 0:
            if far:  # the newest packet is nowhere near its slot: sender restarted its timestamps
                self._jump(p, arrival)
                return
            self._hi_seq, self._hi_ts, self._hi_pos, self._hi_ext = p.sequence, p.timestamp, pos, ext
        else:
            st.reordered += 1
            if far:  # an old packet with a nonsense timestamp: never worth a re-anchor
                self._reject(p, arrival, "late")
                return
        self._seen[ext & _MASK] = ext
        transit = arrival * self._rate - pos  # RFC 3550 6.4.1, in timestamp units
        if self._transit is not None:
            d = transit - self._transit
            self._jitter += ((d if d >= 0 else -d) - self._jitter) / 16
            st.jitter_ms = self._jitter * self._ms_per_sample
        self._transit = transit
        self._place(p, ext, pos, arrival)

    def _due(self, arrival: float) -> int:
        """Where a packet arriving now would play: window after the tick it arrived at."""
        behind = arrival - self._next_tick  # > 0 only if the ticks are running late
        if behind < self._frame_s:
            return self._cursor + self._window
        return self._cursor + self._window + int(behind / self._frame_s) * self._frame

    def _place(self, p: RtpPacket, ext: int, pos: int, arrival: float) -> None:
        payload = p.payload
        if payload and self._decode is not None:
            payload = self._decode(p)
        n = len(payload) // self._bps
        if n == 0:
            return  # holds a sequence number (already marked seen), no audio
        if len(payload) != n * self._bps:
            payload = payload[:n * self._bps]  # a trailing partial sample is not audio
        end = pos + n
        cur = self._cursor
        if pos < cur:  # (partly) played already: a sign of running behind the sender
            if self._stuck(p, arrival):
                return
            if end <= cur:
                self.stats.late += 1
                return
        else:
            self._stuck_since = None
        buf = self._buf
        entry = (pos, end, ext, payload)
        if not buf or pos >= buf[-1][0]:
            buf.append(entry)
        else:
            insort(buf, entry)
        if end - cur > self._max_jitter and end - self._due(arrival) + self._window > self._max_jitter:
            self._overflow(end)  # (measured from where the playout should be: ticks may be running late)

    def _overflow(self, end: int) -> None:
        """Skip the playout ahead so that only a window's worth (≥ one frame) stays buffered."""
        target = end - max(self._window, self._frame)
        self._overflow_samples += target - self._cursor
        self.stats.overflow_dropped_ms = self._overflow_samples * 1000 // self._rate
        self._cursor = target
        buf = self._buf
        i = 0
        while i < len(buf) and buf[i][1] <= target:
            self._retire(buf[i][2])
            i += 1
        del buf[:i]

    def _reject(self, p: RtpPacket, arrival: float, counter: str) -> None:
        if not self._stuck(p, arrival):
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _stuck(self, p: RtpPacket, arrival: float) -> bool:
        """Re-anchor on ``p`` if nothing usable arrived for STUCK_S.

        Catches what the max_jitter test cannot: a sender that froze its
        timestamps during a short pause, a path that got slower for good, a
        restart whose sequence numbers fall among ones already seen. A burst
        of late packets after a stall arrives within a few ms and does not trip it.
        """
        since = self._stuck_since
        if since is None:
            self._stuck_since = arrival
            return False
        if arrival - since < STUCK_S:
            return False
        self._anchor(p, self._due(arrival), arrival)
        return True

    def _jump(self, p: RtpPacket, arrival: float) -> None:
        """A packet that does not fit the current stream: re-anchor once a second one confirms it.

        RFC 3550 A.1 probation: one stray packet (misrouted, forged, corrupt)
        must not move the timeline; the next packet of the new stream (within
        max_jitter_ms) confirms it, and then both play as if the first had
        re-anchored on arrival.
        """
        probe = self._probe
        if probe is not None and p.ssrc == probe[0].ssrc and arrival - probe[2] <= self._max_jitter_s \
                and 0 < ((p.sequence - probe[0].sequence) & 0xFFFF) <= MAX_MISORDER:
            self._probe = None
            self._anchor(*probe)
            self._classify(p, arrival)
            return
        if probe is not None:
            self.stats.late += 1  # never confirmed: counted like any unusable packet
        self._probe = (p, self._due(arrival), arrival)

    def _anchor(self, p: RtpPacket, pos: int, arrival: float) -> None:
        """Start a new stream with ``p`` playing at ``pos``."""
        if self._ssrc is not None:
            self.stats.resyncs += 1
            if p.ssrc != self._ssrc:
                self._prev_ssrc, self._prev_until = self._ssrc, arrival + self._max_jitter_s
            buf = self._buf
            i = bisect_left(buf, (pos,))  # old audio at/after the new start gives way
            if i < len(buf):
                self._overflow_samples += sum(e[1] - e[0] for e in buf[i:])
                self.stats.overflow_dropped_ms = self._overflow_samples * 1000 // self._rate
                del buf[i:]
        self._ssrc = p.ssrc
        self._hi_seq, self._hi_ts, self._hi_pos = p.sequence, p.timestamp, pos
        self._hi_ext += 0x10000  # far from the old stream: no false duplicates, no loss across the seam
        self._seen[self._hi_ext & _MASK] = self._hi_ext
        self._stuck_since = None
        self._transit = arrival * self._rate - pos  # jitter restarts with the new stream
        self._place(p, self._hi_ext, pos, arrival)

    # -- playout side -------------------------------------------------------------

    def pop(self, now: float) -> bytes:
        """The next frame: exactly frame_samples × bytes_per_sample bytes."""
        self._next_tick = now + self._frame_s
        return self._next_frame()

    def drain(self) -> list[bytes]:
        """At leg end: play out until the buffer is empty (the last frame padded with silence)."""
        if self._probe is not None:
            self._probe = None
            self.stats.late += 1
        frames = []
        while self._buf:
            frames.append(self._next_frame())
        return frames

    @property
    def silence_samples(self) -> int:
        """Silence inserted so far, in samples (exact; ``stats.silence_ms`` is rounded)."""
        return self._silence_samples

    def position_ms(self, ssrc: int, timestamp: int, clock_rate: int) -> int | None:
        """Where an RTP timestamp of the current stream plays, in ms of the leg's timeline
        (telephone-events share the audio's SSRC); None for another stream."""
        if ssrc != self._ssrc or clock_rate != self._clock_rate:
            return None
        delta = ((timestamp - self._hi_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        pos = self._hi_pos + delta * self._num // self._den
        return max(0, pos * 1000 // self._rate)

    @property
    def depth_ms(self) -> int:
        """Audio buffered ahead of the playout point."""
        if not self._buf:
            return 0
        return max(0, int((max(e[1] for e in self._buf) - self._cursor) * self._ms_per_sample))

    def _next_frame(self) -> bytes:
        cur = self._cursor
        fe = cur + self._frame
        self._cursor = fe
        buf = self._buf
        if buf:
            start, end, ext, payload = buf[0]
            if start == cur and end == fe:  # the common case: one packet is exactly this frame
                del buf[0]
                self._retire(ext)
                return payload
        else:
            self._add_silence(self._frame)
            return self._silence
        bps = self._bps
        silence = self._silence
        parts = []
        filled = cur  # everything before this is in parts
        gap = 0
        i = 0
        for start, end, ext, payload in buf:
            if start >= fe:
                break
            s = start if start > filled else filled  # skip what was played or overlapped
            if end > s:
                if s > filled:
                    parts.append(silence[:(s - filled) * bps])
                    gap += s - filled
                e = end if end < fe else fe
                parts.append(payload[(s - start) * bps:(e - start) * bps])
                filled = e
            if end > fe:
                break  # the rest of this packet belongs to the next frame
            i += 1
            self._retire(ext)
        del buf[:i]
        if filled < fe:
            parts.append(silence[:(fe - filled) * bps])
            gap += fe - filled
        if gap:
            self._add_silence(gap)
        return b"".join(parts)

    def _add_silence(self, samples: int) -> None:
        self._silence_samples += samples
        self.stats.silence_ms = self._silence_samples * 1000 // self._rate

    def _retire(self, ext: int) -> None:
        """A packet left the buffer: sequence numbers skipped before it are now lost."""
        last = self._retired
        if ext <= last:
            return
        self._retired = ext
        if 1 < ext - last <= MAX_DROPOUT:  # bigger: a new stream began, nothing was skipped
            seen = self._seen
            self.stats.lost += sum(1 for e in range(last + 1, ext) if seen[e & _MASK] != e)
