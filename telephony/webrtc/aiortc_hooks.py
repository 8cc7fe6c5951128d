"""Every place we reach into aiortc's or aioice's private parts, in one module.

aiortc has no public API for the things below; each function names the private
attribute it uses, and ``tests/test_aiortc_hooks.py`` fails loudly when an
aiortc or aioice upgrade renames one (the version range in pyproject.toml is
pinned to what was tested).

- ``tap_rtp``: aiortc's audio jitter buffer waits for a lost packet instead of
  inserting silence (aiortc #543), which would shift a leg off the call's clock.
  The DTLS transport hands each decrypted packet to ``receiver._handle_rtp_packet``;
  we replace it so packets go to our jitter buffer instead.
- ``record_for_rtcp``: with the handler replaced, aiortc's RTCP receiver reports
  would see no packets; feeding its ``__remote_streams`` statistics keeps the
  sender informed of our loss and jitter figures.
- ``negotiated_codecs``: the transceiver's negotiated codecs (``_codecs``).
- ``set_host_addresses``: aioice gathers host candidates from every interface
  except loopback, with no option to choose; its ``get_host_addresses`` is
  replaced (process-wide: this service is aioice's only user in its process).
"""

from __future__ import annotations

from typing import Awaitable, Callable

import aioice.ice
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics

_original_get_host_addresses = aioice.ice.get_host_addresses

Handler = Callable[..., Awaitable[None]]  # (aiortc RtpPacket, arrival_time_ms=...) -> None


def tap_rtp(receiver: RTCRtpReceiver, handler: Handler) -> None:
    """Route every decrypted RTP packet of ``receiver`` to ``handler`` instead of aiortc's jitter buffer."""
    if not hasattr(receiver, "_handle_rtp_packet"):
        raise RuntimeError("aiortc RTCRtpReceiver has no _handle_rtp_packet: this aiortc version is not supported")
    receiver._handle_rtp_packet = handler


def record_for_rtcp(receiver: RTCRtpReceiver, packet, clock_rate: int) -> None:
    """Count ``packet`` in the statistics aiortc's receiver reports are built from."""
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if streams is None:
        return
    stats = streams.get(packet.ssrc)
    if stats is None:
        stats = streams[packet.ssrc] = StreamStatistics(clock_rate)
    stats.add(packet)


def negotiated_codecs(transceiver) -> list:
    """The transceiver's negotiated codecs (aiortc RTCRtpCodecParameters: payloadType, mimeType, clockRate)."""
    return list(transceiver._codecs)


def set_host_addresses(addresses: list[str] | None) -> None:
    """Host candidates use exactly these addresses (None or empty restores aioice's discovery)."""
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    import ipaddress

    chosen = list(addresses)

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    aioice.ice.get_host_addresses = configured
