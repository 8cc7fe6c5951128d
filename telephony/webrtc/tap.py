"""Take a WebRTC track's RTP packets into our leg pipeline, before aiortc's jitter buffer.

aiortc's audio jitter buffer waits for a lost packet instead of inserting
silence (aiortc #543), which would shift the rest of the leg off the call's
clock. So for each receiver we replace ``_handle_rtp_packet`` (what the DTLS
transport calls with every decrypted packet routed to it) with ``RtpTap.handle``:
the packet is re-serialised as a plain RTP datagram and pushed to
``LiveLeg.push_rtp``, where our jitter buffer keeps the timeline and counts
loss. aiortc's decoder thread and its track stay idle.

aiortc's RTCP receiver reports are fed from the same packets so the sender
still sees our loss and jitter figures.
"""

from __future__ import annotations

import time

from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics

from ..media.rtp import build_rtp
from .opus import OpusToPcmu

# Our pipeline's payload type for each codec (MediaLeg expects the static ones).
STATIC_PT = {"PCMU": 0, "PCMA": 8}
# A non-audio packet (telephone-event, CN) must not collide with the audio payload type.
_OTHER_PT = 127


class RtpTap:
    def __init__(self, receiver: RTCRtpReceiver, leg, payload_types: dict[int, str]):
        """``payload_types``: negotiated payload type -> codec name, for this m-line."""
        self.leg = leg
        self.payload_types = payload_types
        self.packets = 0
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self._rtcp_streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
        self._clock_rates = {pt: 48000 if name.lower() == "opus" else 8000 for pt, name in payload_types.items()}
        self._opus = OpusToPcmu() if any(n.lower() == "opus" for n in payload_types.values()) else None
        receiver._handle_rtp_packet = self.handle  # the DTLS transport looks it up per packet

    async def handle(self, packet, arrival_time_ms: int = 0) -> None:
        now = time.monotonic()
        self.packets += 1
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_arrival = now
        codec = self.payload_types.get(packet.payload_type)
        if codec is None:
            return  # not negotiated on this m-line
        if self._rtcp_streams is not None:
            stats = self._rtcp_streams.get(packet.ssrc)
            if stats is None:
                stats = self._rtcp_streams[packet.ssrc] = StreamStatistics(self._clock_rates[packet.payload_type])
            stats.add(packet)
        if self._opus is not None and codec.lower() == "opus":
            # Transcoded into the leg's PCMU: same sequence number, timestamp at 8 kHz.
            self.leg.push_rtp(build_rtp(0, packet.sequence_number, self._opus.timestamp(packet.timestamp),
                                        packet.ssrc, self._opus.payload(packet.payload), packet.marker), now)
            return
        pt = STATIC_PT.get(codec, _OTHER_PT)
        self.leg.push_rtp(build_rtp(pt, packet.sequence_number, packet.timestamp, packet.ssrc,
                                    packet.payload if pt != _OTHER_PT else b"", packet.marker), now)
