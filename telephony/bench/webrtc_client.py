"""A WebRTC client peer in Python (aiortc): sends PCM as audio tracks to the service, like a softphone.

Used by the tests and the benchmark. ``PcmTrack`` paces 20 ms frames in real
time from a numpy array; ``drop`` makes the sender lose chosen RTP packets
after encryption would have happened, i.e. on the wire, to test the
endpoint's loss handling without kernel netem (not available here).
"""

from __future__ import annotations

import asyncio
import fractions
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.packet import Packet

from ..media.codecs import CODECS

from ..webrtc.ice import restrict_host_addresses

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
TIME_BASE = fractions.Fraction(1, RATE)


class PcmTrack(MediaStreamTrack):
    """8 kHz int16 mono audio, one 20 ms frame per 20 ms of wall clock, then the track ends.

    Frames leave already G.711-encoded (``av.Packet``): aiortc then only packs
    them, instead of a resample-and-encode thread hop per frame, so one client
    process can play many softphones.
    """

    kind = "audio"

    def __init__(self, pcm8k: np.ndarray, codec: str = "PCMU"):
        super().__init__()
        pcm = np.asarray(pcm8k, dtype=np.int16)
        pad = (-len(pcm)) % FRAME
        self._pcm = np.concatenate([pcm, np.zeros(pad, np.int16)])
        # G.711 leaves pre-encoded; other codecs (Opus) get frames for aiortc's encoder.
        self._coded = (b"".join(CODECS[codec].packetize(self._pcm.astype("<i2").tobytes()))
                       if codec in ("PCMU", "PCMA") else None)
        self._n = 0
        self._t0: float | None = None
        self.first_frame_at: float | None = None  # monotonic time the first frame left
        self.ended_at: float | None = None

    @property
    def duration_s(self) -> float:
        return len(self._pcm) / RATE

    async def recv(self) -> Packet | AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        i = self._n * FRAME
        if i >= len(self._pcm):
            self.ended_at = time.monotonic()
            self.stop()
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = self.first_frame_at = time.monotonic()
        delay = self._t0 + self._n * 0.02 - time.monotonic()  # from the start: no drift
        if delay > 0:
            await asyncio.sleep(delay)
        self._n += 1
        if self._coded is None:
            frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
            frame.planes[0].update(self._pcm[i:i + FRAME].tobytes())
            frame.sample_rate, frame.pts, frame.time_base = RATE, i, TIME_BASE
            return frame
        packet = Packet(self._coded[i:i + FRAME])
        packet.pts = i
        packet.time_base = TIME_BASE
        return packet


@dataclass
class WireLoss:
    """Which RTP packets never reach the network: ``drop(track_index, packet_index)``."""

    drop: Callable[[int, int], bool]
    sent: dict[int, int] = field(default_factory=dict)  # per track: packets that left
    dropped: dict[int, int] = field(default_factory=dict)

    def install(self, pc: RTCPeerConnection) -> None:
        ssrcs = {}
        for i, sender in enumerate(pc.getSenders()):
            ssrcs[sender._ssrc] = i
        transport = pc.getSenders()[0].transport
        original = transport._send_rtp
        counts: dict[int, int] = {}

        async def send(data: bytes) -> None:
            if len(data) < 12 or 72 <= data[1] & 0x7F <= 76:  # RTCP (a BYE is 8 bytes): keep
                return await original(data)
            ssrc = struct.unpack_from("!I", data, 8)[0]
            track = ssrcs.get(ssrc, -1)
            n = counts.get(track, 0)
            counts[track] = n + 1
            if self.drop(track, n):
                self.dropped[track] = self.dropped.get(track, 0) + 1
                return
            self.sent[track] = self.sent.get(track, 0) + 1
            await original(data)

        transport._send_rtp = send  # the senders look it up on every packet


class WebRtcClient:
    """One peer connection with one sendonly PCMU track per (pcm, speaker)."""

    def __init__(self, base_url: str, tracks: list[tuple[np.ndarray, str]], *, token: str | None = None,
                 codec: str = "PCMU", loss: WireLoss | None = None, host_addresses: tuple[str, ...] = ("127.0.0.1",)):
        restrict_host_addresses(list(host_addresses))  # our candidates too stay on loopback
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks = [PcmTrack(pcm, codec) for pcm, _ in tracks]
        self.speakers = [s for _, s in tracks]
        self.codec = codec
        self.loss = loss
        self.answer: dict | None = None
        self.posted_at: float | None = None
        self.answered_at: float | None = None
        self.connected_at: float | None = None

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

    @property
    def call_id(self) -> str:
        return self.answer["call_id"]

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def start(self, http: aiohttp.ClientSession) -> dict:
        caps = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() == self.codec.lower()]
        for track in self.tracks:
            t = self.pc.addTransceiver(track, direction="sendonly")
            t.setCodecPreferences(caps)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        labels = [{"mid": t.mid, "speaker": s} for t, s in zip(self.pc.getTransceivers(), self.speakers)]
        self.posted_at = time.monotonic()
        async with http.post(f"{self.base_url}/webrtc/sessions", headers=self._headers(),
                             json={"type": "offer", "sdp": self.pc.localDescription.sdp, "tracks": labels}) as r:
            body = await r.json()
            if r.status != 201:
                raise RuntimeError(f"offer refused: {r.status} {body}")
        self.answered_at = time.monotonic()
        self.answer = body
        await self.pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))
        if self.loss is not None:
            self.loss.install(self.pc)
        return body

    async def finished(self) -> None:
        """Returns once every track has sent all its audio."""
        while any(t.readyState == "live" for t in self.tracks):
            await asyncio.sleep(0.05)

    async def hang_up(self, http: aiohttp.ClientSession) -> dict:
        """DELETE the session (returns once the call's finals are stored), then close."""
        async with http.delete(f"{self.base_url}{self.answer['location']}", headers=self._headers()) as r:
            body = await r.json()
        await self.pc.close()
        return body

    async def close(self) -> None:
        await self.pc.close()
