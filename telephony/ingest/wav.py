"""WAV files (16-bit PCM, μ-law or A-law; mono or stereo; 8 or 16 kHz) and headerless G.711.

RIFF chunks are walked by hand rather than with the stdlib ``wave`` module: it
reads PCM only (no μ-law/A-law tags, no WAVE_FORMAT_EXTENSIBLE) and refuses a
file whose data chunk is shorter than its header says, which is exactly what a
recorder killed mid-call leaves behind. G.711 is decoded by the codec table.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from telephony.media.codecs import CODECS

from .call import CallInput, PcmLegInput, err

SUPPORTED_RATES = (8000, 16000)

_WAV_FORMATS = {
    1: "PCM", 2: "MS ADPCM", 3: "IEEE float", 6: "A-law", 7: "μ-law", 0x11: "IMA ADPCM",
    0x31: "GSM 6.10", 0x40: "G.721 ADPCM", 0x45: "G.726", 0x55: "MP3", 0x64: "G.726 ADPCM",
}
_G711 = {"ulaw": CODECS["PCMU"], "alaw": CODECS["PCMA"]}


def _g711(data: bytes, law: str) -> np.ndarray:
    return np.frombuffer(_G711[law].decoder().decode(data), dtype="<i2").astype(np.int16)


def load_raw(path: Path, data: bytes, law: str) -> CallInput:
    """Headerless G.711 at 8 kHz, ``law`` "ulaw" or "alaw" (known from the file name)."""
    samples = _g711(data, law)
    leg = PcmLegInput(label=path.stem, rate=8000, samples=samples)
    return CallInput(str(path), law, [leg], len(samples) * 1000 // 8000, {"encoding": law})


def load_wav(path: Path, data: bytes) -> CallInput:
    if data[:4] == b"RF64":
        raise err(path, "RF64 WAV is not supported: need a RIFF/WAVE file")
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise err(path, f"not a WAVE file (RIFF type {data[8:12]!r})" if len(data) >= 12 else "truncated RIFF header")
    warn: list[str] = []
    fmt = None
    pcm = None
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos:pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        start = pos + 8
        if cid == b"fmt ":
            if size < 16 or start + 16 > len(data):
                raise err(path, "truncated WAV fmt chunk")
            fmt = data[start:start + min(size, len(data) - start)]
        elif cid == b"data":
            if fmt is None:
                raise err(path, "malformed WAV: data chunk before fmt chunk")
            end = start + size
            if end > len(data):
                # Recorders killed mid-call leave the header's length unpatched: keep what is there.
                warn.append(f"data chunk declares {size} bytes but the file holds {len(data) - start}")
                end = len(data)
            pcm = data[start:end]
            break
        pos = start + size + (size & 1)  # chunks are word aligned
    if fmt is None:
        raise err(path, "truncated WAV: no fmt chunk")
    if pcm is None:
        raise err(path, "truncated WAV: no data chunk")

    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag opens the SubFormat GUID
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if tag == 1:
        if bits != 16:
            raise err(path, f"unsupported sample width {bits} bits: need 16-bit PCM, μ-law or A-law")
    elif tag in (6, 7):
        if bits != 8:
            raise err(path, f"unsupported {_WAV_FORMATS[tag]} sample width {bits} bits: need 8")
    else:
        name = _WAV_FORMATS.get(tag, f"format 0x{tag:04x}")
        raise err(path, f"unsupported WAV encoding {name}: need 16-bit PCM, μ-law or A-law")
    if channels not in (1, 2):
        raise err(path, f"unsupported channel count {channels}: need mono or stereo")
    if rate not in SUPPORTED_RATES:
        raise err(path, f"unsupported sample rate {rate} Hz: need 8000 or 16000")

    frame = channels * bits // 8
    if len(pcm) % frame:
        warn.append(f"dropped {len(pcm) % frame} trailing bytes (a partial sample frame)")
        pcm = pcm[: len(pcm) - len(pcm) % frame]
    if not pcm:
        raise err(path, "no audio: the WAV data chunk is empty")
    encoding = {1: "pcm16", 6: "alaw", 7: "ulaw"}[tag]
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16) if tag == 1 else _g711(pcm, encoding)
    meta: dict = {"encoding": encoding, "channels": channels, "rate": rate}

    if channels == 1:
        legs = [PcmLegInput(path.stem, rate, samples)]
    else:
        both = samples.reshape(-1, 2)
        left, right = both[:, 0].copy(), both[:, 1].copy()
        if np.array_equal(left, right):
            # Dual-mono: two legs would transcribe the same speaker twice.
            warn.append("both stereo channels are identical: read as one mono leg")
            legs = [PcmLegInput(path.stem, rate, left)]
        else:
            legs = [PcmLegInput("left", rate, left), PcmLegInput("right", rate, right)]
    if warn:
        meta["warnings"] = warn
    return CallInput(str(path), "wav", legs, len(legs[0].samples) * 1000 // rate, meta)
