"""The one codec table: what each RTP audio codec is, and its decoder and encoder.

Everything that needs to know a codec (SDP offer/answer, the leg's decoder,
RTP timestamps, test senders) reads ``CODECS``, as aiortc keeps one table in
``aiortc/codecs/__init__.py``.

A decoder turns one RTP payload into 16-bit little-endian PCM at ``codec.rate``,
exactly ``codec.samples(payload)`` samples; a payload it cannot decode gives b""
and is counted in ``decoder.errors`` (a peer's garbage must never end a leg).
``conceal(samples)`` fills a gap: Opus runs libopus's packet-loss concealment,
or its in-band FEC when the packet after the gap is at hand; G.711 and G.722
give silence.

Libraries, each chosen for the job:
- G.711, and L16's byte order: ``audioop`` (C; stdlib on 3.11/3.12, ``audioop-lts`` from 3.13).
- G.722: FFmpeg's decoder and encoder through PyAV (``av``, installed with aiortc).
- Opus decoding: libopus itself through ``ctypes``. FFmpeg's libopus wrapper always
  outputs 48 kHz (it sets the rate at init and ignores ours), so through PyAV an
  Opus leg costs a decode at 48 kHz plus a 48 → 16 kHz resample (≈ 165 µs per
  20 ms frame here) and cannot reach libopus's concealment or FEC. libopus
  decodes at 16 kHz natively (≈ 45 µs) and exposes both. The library is the
  system's ``libopus0`` when present, otherwise the copy PyAV's wheel ships.
- Opus encoding (tests, load generators): libopus through PyAV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import warnings
import weakref
from dataclasses import dataclass, replace
from functools import cache

import av
from av import CodecContext
from av.packet import Packet

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


class CodecError(ValueError):
    """Not a codec we can decode or encode."""


@dataclass(frozen=True)
class Codec:
    name: str  # SDP encoding name as we write it
    clock_rate: int  # RTP timestamp rate (a=rtpmap); 8000 for G.722 (RFC 3551), 48000 for Opus (RFC 7587)
    rate: int  # audio rate the decoder gives
    static_pt: int | None
    channels: int = 1  # as written in a=rtpmap (opus/48000/2)
    fmtp: str | None = None  # what our SDP answer says for it
    audio: bool = True  # telephone-event and CN carry no audio
    bits: int = 8  # payload bits per sample at ``rate`` (G.711 8, G.722 4 at 16 kHz, L16 16); Opus: variable
    any_rate: bool = False  # defined at whatever rate a=rtpmap gives (L16, telephone-event, CN)

    def decoder(self) -> "Decoder":
        """A new stateful decoder (one per leg and stream)."""
        impl = _DECODERS.get(self.name.upper()) if self.audio else None
        if impl is None:
            raise CodecError(f"{self.name} is not audio we decode")
        return impl(self)

    def encoder(self, ptime_ms: int = 20) -> "Encoder":
        """An encoder producing one RTP payload per ``ptime_ms`` of audio at ``self.rate``."""
        impl = _ENCODERS.get(self.name.upper()) if self.audio else None
        if impl is None:
            raise CodecError(f"{self.name} is not audio we encode")
        return impl(self, ptime_ms)

    def packetize(self, pcm16: bytes, ptime_ms: int = 20) -> list[bytes]:
        """A whole signal (16-bit PCM at ``self.rate``) as RTP payloads of ``ptime_ms``, the last
        one padded with silence (replays, load generators and test senders)."""
        enc = self.encoder(ptime_ms)
        step = 2 * enc.frame_samples
        if len(pcm16) % step:
            pcm16 = pcm16 + bytes(step - len(pcm16) % step)
        return [enc.encode(pcm16[i:i + step]) for i in range(0, len(pcm16), step)]

    def samples(self, payload: bytes) -> int:
        """Audio samples (at ``self.rate``) the payload holds; 0 for a malformed Opus packet."""
        if not self.audio:
            return 0
        if self.name == "opus":
            return opus_samples(payload, self.rate)
        return len(payload) * 8 // self.bits


CODECS: dict[str, Codec] = {
    c.name.upper(): c
    for c in (
        Codec("PCMU", 8000, 8000, 0),
        Codec("PCMA", 8000, 8000, 8),
        Codec("G722", 8000, 16000, 9, bits=4),
        # maxplaybackrate: we listen at 16 kHz, so a sender need not spend bits above 8 kHz;
        # useinbandfec: we decode its FEC (conceal with the next packet).
        Codec("opus", 48000, 16000, None, channels=2, fmtp="maxplaybackrate=16000;stereo=0;useinbandfec=1"),
        # Linear PCM, big-endian (RFC 3551 4.5.11), at any rate: what Asterisk sends for slin/slin16.
        Codec("L16", 16000, 16000, None, bits=16, any_rate=True),
        Codec("telephone-event", 8000, 8000, None, fmtp="0-16", audio=False, any_rate=True),
        Codec("CN", 8000, 8000, 13, audio=False, any_rate=True),
    )
}


def lookup(name: str, clock_rate: int | None = None) -> Codec | None:
    """The codec an a=rtpmap names (case-insensitive), or None if we do not take it.

    Audio codecs must have their registered clock rate (G722/16000 is a peer's mistake
    and not G.722 as sent). Codecs with ``any_rate`` (L16, telephone-event, CN) are taken at
    any rate (WebRTC offers telephone-event/48000): the returned entry carries the offered rate.
    """
    codec = CODECS.get(name.upper())
    if codec is None or clock_rate is None or clock_rate == codec.clock_rate:
        return codec
    return replace(codec, clock_rate=clock_rate, rate=clock_rate) if codec.any_rate and clock_rate > 0 else None


def static(pt: int) -> Codec | None:
    """The codec of a static payload type (RFC 3551), for offers without a=rtpmap."""
    return next((c for c in CODECS.values() if c.static_pt == pt), None)


# ---- Opus packet durations (RFC 6716 section 3.1), from the TOC byte alone

# Frame duration in units of 2.5 ms for each of the 32 configurations.
_OPUS_FRAME = [4, 8, 16, 24] * 3 + [4, 8] * 2 + [1, 2, 4, 8] * 4


def opus_samples(payload: bytes, rate: int) -> int:
    """Samples at ``rate`` an Opus packet decodes to; 0 if its TOC framing is invalid."""
    if not payload:
        return 0
    toc = payload[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code == 1:
        if (len(payload) - 1) % 2:  # two frames of equal size
            return 0
        frames = 2
    elif code == 2:
        if len(payload) < 2:  # the first frame's length byte is missing
            return 0
        frames = 2
    else:
        if len(payload) < 2:
            return 0
        frames = payload[1] & 0x3F
    units = frames * _OPUS_FRAME[toc >> 3]
    if frames == 0 or units > 48:  # a packet holds at most 120 ms
        return 0
    return units * rate // 400


# ---- Decoders


class Decoder:
    """One RTP stream's decoder: ``decode(payload)`` → PCM16 LE at ``codec.rate``."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.errors = 0  # payloads that did not decode (returned b"")

    def decode(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def conceal(self, samples: int, next_payload: bytes | None = None) -> bytes:
        """PCM for ``samples`` lost samples; plain silence unless the codec can do better."""
        return bytes(2 * samples)


class _PcmuDecoder(Decoder):
    def decode(self, payload: bytes) -> bytes:
        return audioop.ulaw2lin(payload, 2)


class _L16Decoder(Decoder):
    def decode(self, payload: bytes) -> bytes:
        if len(payload) % 2:
            self.errors += 1
            return b""
        return audioop.byteswap(payload, 2)  # network order → ours


class _PcmaDecoder(Decoder):
    def decode(self, payload: bytes) -> bytes:
        return audioop.alaw2lin(payload, 2)


class _G722Decoder(Decoder):
    def __init__(self, codec: Codec):
        super().__init__(codec)
        self._ctx = CodecContext.create("g722", "r")
        self._ctx.sample_rate = 16000
        self._ctx.layout = "mono"

    def decode(self, payload: bytes) -> bytes:
        if not payload:
            return b""  # an empty packet would tell FFmpeg to drain, not decode
        try:
            frames = self._ctx.decode(Packet(payload))
        except av.FFmpegError:
            self.errors += 1
            return b""
        # Every byte is two samples (G.722 has no framing), so this is exactly samples().
        return b"".join(bytes(f.planes[0])[: 2 * f.samples] for f in frames)


@cache
def _libopus() -> ctypes.CDLL:
    """libopus: the system's, else the copy bundled in PyAV's wheel (``av.libs``)."""
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libopus*.so*")))
    for path in filter(None, [ctypes.util.find_library("opus"), *bundled]):
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    else:
        raise CodecError("libopus not found: apt-get install libopus0 (or install PyAV from its wheel)")
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return lib


_OPUS_MAX = 1920  # samples of one 120 ms packet at 16 kHz: the most one call returns


class _OpusDecoder(Decoder):
    def __init__(self, codec: Codec):
        super().__init__(codec)
        lib = _libopus()
        err = ctypes.c_int()
        # Mono: a stereo packet is downmixed by libopus, which is what a speaker leg wants.
        state = lib.opus_decoder_create(codec.rate, 1, ctypes.byref(err))
        if err.value != 0 or not state:
            raise CodecError(f"opus_decoder_create failed ({err.value})")
        self._lib, self._state = lib, state
        self._buf = (ctypes.c_int16 * _OPUS_MAX)()
        self._finalizer = weakref.finalize(self, lib.opus_decoder_destroy, state)

    def _run(self, data: bytes | None, frame_size: int, fec: int) -> int:
        return self._lib.opus_decode(self._state, data, len(data) if data else 0, self._buf, frame_size, fec)

    def decode(self, payload: bytes) -> bytes:
        if not opus_samples(payload, self.codec.rate):
            self.errors += 1
            return b""
        n = self._run(payload, _OPUS_MAX, 0)
        if n < 0:
            self.errors += 1
            return b""
        return bytes(memoryview(self._buf).cast("B")[: 2 * n])

    def conceal(self, samples: int, next_payload: bytes | None = None) -> bytes:
        """Loss concealment for a gap of ``samples``; with the packet after the gap, its FEC.

        The packet after the gap is only read for its FEC data: decode() it afterwards as usual.

        libopus takes durations in whole 2.5 ms steps: any remainder is silence, and so is
        anything past 120 ms (libopus fades to silence by then; a longer gap is a pause).
        """
        step = self.codec.rate // 400
        span = min(samples, _OPUS_MAX) // step * step
        out = []
        if span and next_payload and opus_samples(next_payload, self.codec.rate):
            # FEC rebuilds the last packet-length of the gap; libopus conceals what precedes it.
            n = self._run(next_payload, span, 1)
            if n == span:
                out.append(bytes(memoryview(self._buf).cast("B")[: 2 * n]))
                span = 0
        if span:
            n = self._run(None, span, 0)
            if n == span:
                out.append(bytes(memoryview(self._buf).cast("B")[: 2 * n]))
        pcm = b"".join(out)
        return pcm + bytes(2 * samples - len(pcm))


_DECODERS = {"PCMU": _PcmuDecoder, "PCMA": _PcmaDecoder, "G722": _G722Decoder, "OPUS": _OpusDecoder,
             "L16": _L16Decoder}


# ---- Encoders (test senders, load generators, replays)


class Encoder:
    """``encode(pcm16)`` takes exactly one packet's audio (``ptime_ms`` at ``codec.rate``)."""

    def __init__(self, codec: Codec, ptime_ms: int):
        self.codec = codec
        self.ptime_ms = ptime_ms
        self.frame_samples = codec.rate * ptime_ms // 1000

    def encode(self, pcm16: bytes) -> bytes:
        if len(pcm16) != 2 * self.frame_samples:
            raise ValueError(f"{self.codec.name} encoder takes {self.frame_samples} samples per packet, got {len(pcm16) // 2}")
        return self._encode(pcm16)

    def _encode(self, pcm16: bytes) -> bytes:
        raise NotImplementedError


class _PcmuEncoder(Encoder):
    def _encode(self, pcm16: bytes) -> bytes:
        return audioop.lin2ulaw(pcm16, 2)


class _L16Encoder(Encoder):
    def _encode(self, pcm16: bytes) -> bytes:
        return audioop.byteswap(pcm16, 2)


class _PcmaEncoder(Encoder):
    def _encode(self, pcm16: bytes) -> bytes:
        return audioop.lin2alaw(pcm16, 2)


class _AvEncoder(Encoder):
    """An FFmpeg encoder fed one packet's audio at a time."""

    def __init__(self, codec: Codec, ptime_ms: int, name: str, frame_ms: int, **options):
        super().__init__(codec, ptime_ms)
        if ptime_ms % frame_ms:
            raise ValueError(f"{codec.name} packets must be a multiple of {frame_ms} ms, not {ptime_ms} ms")
        self._ctx = CodecContext.create(name, "w")
        self._ctx.sample_rate = codec.rate
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        for key, value in options.items():
            setattr(self._ctx, key, value)
        self._ctx.open()
        self._pts = 0

    def _encode(self, pcm16: bytes) -> bytes:
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.sample_rate = self.codec.rate
        frame.planes[0].update(pcm16)
        frame.pts = self._pts
        self._pts += self.frame_samples
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


class _G722Encoder(_AvEncoder):
    def __init__(self, codec: Codec, ptime_ms: int):
        # FFmpeg's G.722 encoder works in 20 ms frames (PyAV rechunks to them).
        super().__init__(codec, ptime_ms, "g722", 20)


class _OpusEncoder(_AvEncoder):
    def __init__(self, codec: Codec, ptime_ms: int, bitrate: int = 24000):
        if ptime_ms not in (10, 20, 40, 60):
            raise ValueError(f"opus packets are 10, 20, 40 or 60 ms, not {ptime_ms} ms")
        # In-band FEC on, as a WebRTC sender does when we answer useinbandfec=1.
        super().__init__(codec, ptime_ms, "libopus", ptime_ms, bit_rate=bitrate,
                         options={"frame_duration": str(ptime_ms), "application": "voip", "fec": "1", "packet_loss": "10"})


_ENCODERS = {"PCMU": _PcmuEncoder, "PCMA": _PcmaEncoder, "G722": _G722Encoder, "OPUS": _OpusEncoder,
             "L16": _L16Encoder}
