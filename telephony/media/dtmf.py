"""RFC 4733 telephone-events (DTMF keys, flash) from one RTP stream, as completed events.

Each payload block is ``event(8) | E R volume(6) | duration(16)``. An event is
sent as a run of packets carrying the event's start as their RTP timestamp and
a growing duration; the last three carry the E bit (RFC 4733 section 2.5.1.4).
``DtmfReceiver.push`` feeds packets in arrival order and returns each event once,
when it is over:

- the end packet and its retransmissions give one event;
- a lost start packet does not matter: any packet of the event starts it;
- an event longer than the 16-bit duration field comes as contiguous segments
  (section 2.5.1.3), each a new timestamp at the previous one + its duration,
  without marker or E bit in between: they are joined into one event;
- a new event before the old one's end packet (all end packets lost) closes the
  old one with the duration last reported, marked ``ended=False``;
- packets of an event already reported, or older than the current one, are ignored;
- several blocks in one packet (section 2.5.1.5) are events in order: the first
  starts at the packet's timestamp, each next where the one before it ended.

``flush()`` ends an event still open (hang-up, or no packet for a while: the
caller decides when). Pure state, no clocks or I/O.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

KEYS = "0123456789*#ABCD"
FLASH = 16
_SEGMENT = 0xFFFF  # the longest duration one segment can report


def key_name(code: int) -> str:
    if code < len(KEYS):
        return KEYS[code]
    return "flash" if code == FLASH else f"event {code}"


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    key: str  # "0"-"9", "*", "#", "A"-"D", "flash", or "event N" for other codes
    code: int
    timestamp: int  # RTP timestamp of the event's start
    duration_ms: int
    volume: int  # power level in -dBm0 (0 loudest, 63 quietest); 0 where not applicable
    ended: bool  # False: closed by a new event or flush(), no end packet was seen


class _Open:
    __slots__ = ("code", "start", "segment", "base", "duration", "volume")

    def __init__(self, code: int, start: int, duration: int, volume: int):
        self.code, self.start, self.segment = code, start, start
        self.base = 0  # units reported by earlier segments of a long event
        self.duration = duration  # units reported so far in the current segment
        self.volume = volume


def _after(a: int, b: int) -> int:
    """a - b on the 32-bit RTP timestamp circle, as a signed number."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class DtmfReceiver:
    def __init__(self, clock_rate: int = 8000):
        self.clock_rate = clock_rate
        self.malformed = 0  # payloads that are not whole 4-byte event blocks
        self.ignored = 0  # blocks of events already reported, or older than the current one
        self._open: _Open | None = None
        self._done: deque[int] = deque(maxlen=8)  # segment timestamps of events already reported
        self._newest: int | None = None  # latest segment timestamp seen

    def push(self, packet) -> list[DtmfEvent]:
        """One telephone-event RTP packet (``timestamp``, ``marker``, ``payload``): the events it completes."""
        payload = packet.payload
        if not payload or len(payload) % 4:
            self.malformed += 1
            return []
        out: list[DtmfEvent] = []
        start, marker = packet.timestamp, packet.marker
        for offset in range(0, len(payload), 4):
            code, flags, duration = struct.unpack_from("!BBH", payload, offset)
            out += self._block(code, bool(flags & 0x80), flags & 0x3F, duration, start, marker)
            start, marker = (start + duration) & 0xFFFFFFFF, False
        return out

    def flush(self) -> list[DtmfEvent]:
        """End the open event, if any (end of stream)."""
        return self._close(ended=False)

    def _block(self, code: int, end: bool, volume: int, duration: int, ts: int, marker: bool) -> list[DtmfEvent]:
        if ts in self._done or (self._newest is not None and _after(ts, self._newest) < 0):
            self.ignored += 1  # a retransmitted end packet, or a late packet of an older event
            return []
        self._newest = ts
        out: list[DtmfEvent] = []
        ev = self._open
        if ev is not None and ts != ev.segment:
            gap = _after(ts, ev.segment)
            if not marker and code == ev.code and max(ev.duration, _SEGMENT - self.clock_rate // 5) <= gap <= _SEGMENT:
                # The next segment of a long event: it starts where the previous one, full to within
                # 200 ms, ended (its last updates may have been lost). A new press of the same
                # key would carry the marker bit, or come after a pause.
                ev.base += gap
                ev.segment, ev.duration = ts, 0
            else:
                out += self._close(ended=False)
                ev = None
        if ev is None:
            ev = self._open = _Open(code, ts, duration, volume)
        ev.duration = max(ev.duration, duration)  # reordered updates never shorten it
        ev.volume = volume
        if end:
            out += self._close(ended=True)
        return out

    def _close(self, ended: bool) -> list[DtmfEvent]:
        ev = self._open
        if ev is None:
            return []
        self._open = None
        self._done.append(ev.segment)
        ms = (ev.base + ev.duration) * 1000 // self.clock_rate
        return [DtmfEvent(key_name(ev.code), ev.code, ev.start, ms, ev.volume, ended)]
