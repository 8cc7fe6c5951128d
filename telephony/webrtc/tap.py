"""Take a WebRTC track's RTP packets into our leg pipeline, before aiortc's jitter buffer.

aiortc's audio jitter buffer waits for a lost packet instead of inserting
silence (aiortc #543), which would shift the rest of the leg off the call's
clock. So each receiver's decrypted packets come here (``aiortc_hooks.tap_rtp``)
and go, as parsed packets, straight to the leg's jitter buffer, which keeps the
timeline, counts loss and decodes with the negotiated codec (Opus at 16 kHz,
G.722, G.711). aiortc's decoder thread and its track stay idle.

aiortc's RTCP receiver reports are fed from the same packets so the sender
still sees our loss and jitter figures.
"""

from __future__ import annotations

import time

from aiortc.rtcrtpreceiver import RTCRtpReceiver

from ..media.codecs import Codec
from ..media.rtp import RtpPacket
from .aiortc_hooks import record_for_rtcp, tap_rtp


class RtpTap:
    def __init__(self, receiver: RTCRtpReceiver, leg, payload_types: dict[int, Codec]):
        """``payload_types``: the negotiated map for this m-line (the leg decodes with it)."""
        self.receiver = receiver
        self.leg = leg
        self.payload_types = payload_types
        self.packets = 0
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        tap_rtp(receiver, self.handle)

    async def handle(self, packet, arrival_time_ms: int = 0) -> None:
        now = time.monotonic()
        self.packets += 1
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_arrival = now
        codec = self.payload_types.get(packet.payload_type)
        if codec is None:
            return  # not negotiated on this m-line
        record_for_rtcp(self.receiver, packet, codec.clock_rate)
        self.leg.push_packet(RtpPacket(packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc,
                                       packet.payload, packet.marker), now)
