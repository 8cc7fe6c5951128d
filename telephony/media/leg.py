"""One leg's media path, synchronous and allocation-light (the hot path):

    RTP packet ─▶ jitter buffer (decoded as placed) ─▶ one 20 ms frame per tick ─▶ AudioFrame
                                                                  (resampled once, to the ASR's rate)

A leg is built from its negotiated ``{payload type: Codec}`` map (what the SDP
layer of its endpoint agreed to). The first audio codec of the map sets the
leg's own rate (8 kHz for G.711, 16 kHz for G.722 and Opus); packets of other
payload types (telephone-event, comfort noise, an audio codec that was not
negotiated) hold their sequence numbers and count as ``other_payload``.

``MediaLeg`` knows nothing about time sources: live legs tick it from the
wall clock (``calls.py``), file ingest ticks it from capture timestamps
(``play_capture``), so both produce the same timeline for the same packets.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..config import MediaSettings
from .audio import AudioFrame
from .codecs import Codec, CodecError
from .dtmf import DtmfEvent, DtmfReceiver
from .jitter import JitterBuffer
from .resample import Resampler
from .rtp import RtpError, RtpPacket, parse_rtp

FRAME_MS = 20  # one tick: the jitter buffer releases one frame of this length
FRAME_S = FRAME_MS / 1000


class MediaLeg:
    """``out_rate``: the rate AudioFrames leave at (the ASR engine's); None: the leg's own rate.

    Audio is resampled in blocks of ``media.pacer_chunk_ms`` (the pacer's chunk), because
    soxr's per-call cost dominates at 20 ms; 100 ms blocks cost a fifth per sample.
    """

    def __init__(self, payload_types: Mapping[int, Codec], out_rate: int | None = None,
                 media: MediaSettings | None = None):
        m = media or MediaSettings()
        audio = {pt: c for pt, c in payload_types.items() if c.audio}
        if not audio:
            raise CodecError(f"no audio codec among payload types {sorted(payload_types)}")
        self.payload_types = dict(payload_types)
        self.codec = next(iter(audio.values()))
        self.rate = self.codec.rate
        self.out_rate = out_rate or self.rate
        # Only codecs that share the leg's clock and rate can share its timeline.
        self._decoders = {pt: c.decoder() for pt, c in audio.items()
                          if c.rate == self.rate and c.clock_rate == self.codec.clock_rate}
        events = [pt for pt, c in payload_types.items() if c.name.lower() == "telephone-event"]
        self.dtmf = DtmfReceiver(payload_types[events[0]].clock_rate) if events else None
        self._dtmf_pts = set(events)
        self.dtmf_events: list[tuple[DtmfEvent, int]] = []  # (event, its start in leg ms)
        self._block = max(1, m.pacer_chunk_ms // FRAME_MS)
        self._pcm: list[bytes] = []
        self._silent_in_block = 0  # samples of the block that are inserted silence
        self.jitter = JitterBuffer(rate=self.rate, clock_rate=self.codec.clock_rate, frame_ms=FRAME_MS,
                                   window_ms=m.jitter_window_ms, max_jitter_ms=m.max_jitter_ms,
                                   bytes_per_sample=2, silence=b"\0\0", decode=self._decode)
        self._resampler = Resampler(self.rate, self.out_rate)
        self._frame_samples = self.rate * FRAME_MS // 1000
        self.frames = 0  # ticks so far: the leg's duration is frames × 20 ms
        self.other_payload = 0  # packets of another payload type (DTMF events, comfort noise): not audio
        self.foreign = 0  # datagrams from a source signalling did not announce (dropped by the endpoint)
        self.tap = None  # called with each block of int16 PCM at the leg's own rate (recordings); must not block

    # -- receive side ---------------------------------------------------------------
    def push(self, packet: RtpPacket, arrival: float) -> None:
        """A parsed packet (endpoints hand packets straight here, never re-serialise)."""
        if packet.payload_type not in self._decoders:
            if packet.payload_type in self._dtmf_pts:
                self._on_dtmf(packet)
            # Not audio of this leg, but its sequence number is not a loss.
            self.other_payload += 1
            packet.payload = b""
        self.jitter.push(packet, arrival)

    def push_datagram(self, datagram: bytes, arrival: float) -> None:
        """Never raises: malformed datagrams are counted and dropped."""
        try:
            packet = parse_rtp(datagram)
        except RtpError:
            self.jitter.count_malformed()
            return
        self.push(packet, arrival)

    def count_foreign(self) -> None:
        self.foreign += 1

    def _decode(self, packet: RtpPacket) -> bytes:
        return self._decoders[packet.payload_type].decode(packet.payload)

    def _on_dtmf(self, packet: RtpPacket) -> None:
        for event in self.dtmf.push(packet):
            at = self.jitter.position_ms(packet.ssrc, event.timestamp, self.dtmf.clock_rate)
            self.dtmf_events.append((event, self.duration_ms if at is None else at))

    # -- playout side ----------------------------------------------------------------
    def tick(self, now: float) -> AudioFrame | None:
        """Advance 20 ms. Returns the next block of audio once a block is complete, else None."""
        self.frames += 1
        before = self.jitter.silence_samples
        self._pcm.append(self.jitter.pop(now))
        self._silent_in_block += self.jitter.silence_samples - before
        if len(self._pcm) < self._block:
            return None
        return self._emit(last=False)

    def drain(self) -> AudioFrame:
        """At leg end: the partial block, what the jitter buffer still holds, and the resampler's tail."""
        frames = self.jitter.drain()
        self.frames += len(frames)
        if self.dtmf is not None:
            for event in self.dtmf.flush():
                self.dtmf_events.append((event, self.duration_ms))
        self._pcm += frames
        self._silent_in_block = 0  # the tail may hold audio: always through the resampler
        return self._emit(last=True)

    def _emit(self, last: bool) -> AudioFrame:
        n = len(self._pcm) * self._frame_samples
        silent = self._silent_in_block >= n and not last
        pcm = b"".join(self._pcm)
        self._pcm.clear()
        if self.tap is not None:
            self.tap(pcm)
        self._silent_in_block = 0
        if silent:
            # A block the jitter buffer filled with silence (no packets: a leg on hold, a peer
            # that never sends) costs no decode and no resample: idle legs are nearly free.
            self._resampler.reset()
            return AudioFrame(np.zeros(n * self.out_rate // self.rate, dtype=np.float32), self.out_rate)
        return AudioFrame(self._resampler.process(pcm, last=last), self.out_rate)

    @property
    def duration_ms(self) -> int:
        return self.frames * FRAME_MS

    def stats(self) -> dict:
        d = self.jitter.stats.as_dict()
        d["other_payload"] = self.other_payload
        d["foreign"] = self.foreign
        d["decode_errors"] = sum(dec.errors for dec in self._decoders.values())
        if self.dtmf is not None:
            d["dtmf_events"] = len(self.dtmf_events)
        return d


def play_capture(media: MediaLeg, packets: list[tuple[float, bytes]], duration_s: float):
    """Tick ``media`` on capture time: each packet enters the jitter buffer when it arrived.

    Yields AudioFrames as blocks complete, then the played-out tail. Files and the
    benchmark use this; live legs are ticked by the wall clock instead.
    """
    i, tick = 0, 1
    while tick * FRAME_S <= duration_s + 1e-9 or i < len(packets):
        now = tick * FRAME_S
        while i < len(packets) and packets[i][0] < now:
            media.push_datagram(packets[i][1], packets[i][0])
            i += 1
        audio = media.tick(now)
        if audio is not None:
            yield audio
        tick += 1
    yield media.drain()
