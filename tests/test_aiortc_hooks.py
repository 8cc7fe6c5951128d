"""Every private aiortc/aioice attribute ``telephony.webrtc.aiortc_hooks`` relies on still exists.

An aiortc or aioice upgrade that renames one fails here, by name, instead of
silently losing the jitter-buffer tap or RTCP figures in production.
"""

import asyncio

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from telephony.webrtc import aiortc_hooks


def _recvonly():
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    return pc, transceiver


def test_receiver_has_the_rtp_handler_we_replace():
    async def run():
        pc, transceiver = _recvonly()
        try:
            receiver = transceiver.receiver
            assert callable(receiver._handle_rtp_packet)
            seen = []

            async def handler(packet, arrival_time_ms=None):
                seen.append(packet)

            aiortc_hooks.tap_rtp(receiver, handler)
            await receiver._handle_rtp_packet(RtpPacket(payload_type=0, sequence_number=1), arrival_time_ms=0)
            assert len(seen) == 1
        finally:
            await pc.close()

    asyncio.run(run())


def test_rtcp_statistics_are_where_we_feed_them():
    async def run():
        pc, transceiver = _recvonly()
        try:
            receiver = transceiver.receiver
            assert isinstance(receiver._RTCRtpReceiver__remote_streams, dict)
            for seq in (10, 11, 13):
                packet = RtpPacket(payload_type=0, sequence_number=seq, timestamp=seq * 160, ssrc=1234)
                aiortc_hooks.record_for_rtcp(receiver, packet, 8000)
            stats = receiver._RTCRtpReceiver__remote_streams[1234]
            assert stats.packets_received == 3 and stats.packets_expected == 4
        finally:
            await pc.close()

    asyncio.run(run())


def test_negotiated_codecs_come_from_the_transceiver():
    async def run():
        aiortc_hooks.set_host_addresses(["127.0.0.1"])  # gathering stays on loopback
        offerer = RTCPeerConnection()
        answerer = RTCPeerConnection()
        try:
            offerer.addTransceiver("audio", direction="sendonly")
            await offerer.setLocalDescription(await offerer.createOffer())
            transceiver = answerer.addTransceiver("audio", direction="recvonly")
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            names = [c.mimeType.lower() for c in aiortc_hooks.negotiated_codecs(transceiver)]
            assert "audio/pcmu" in names and "audio/opus" in names
        finally:
            await offerer.close()
            await answerer.close()
            aiortc_hooks.set_host_addresses(None)

    asyncio.run(run())


def test_host_addresses_are_chosen_and_restored():
    original = aioice.ice.get_host_addresses
    try:
        aiortc_hooks.set_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    finally:
        aiortc_hooks.set_host_addresses(None)
    assert aioice.ice.get_host_addresses is original
