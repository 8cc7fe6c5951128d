"""Real speech for tests: Debian's Asterisk prompts (8 kHz recordings of a human voice)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from telephony.bench.accuracy import SOUNDS, asterisk_prompts
from telephony.media.codecs import CODECS
from telephony.media.resample import Resampler


def prompt_8k(name: str) -> np.ndarray:
    with wave.open(str(SOUNDS / f"{name}.wav")) as w:
        assert w.getframerate() == 8000 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def prompt_16k(name: str) -> np.ndarray:
    """A prompt as 16 kHz wideband speech: Debian's asterisk-core-sounds-en-g722 file, decoded."""
    path = SOUNDS / f"{name}.g722"
    assert path.is_file(), f"{path} missing: apt-get install asterisk-core-sounds-en-g722 (scripts/test.sh does)"
    data, dec = path.read_bytes(), CODECS["G722"].decoder()
    return np.frombuffer(b"".join(dec.decode(data[i:i + 160]) for i in range(0, len(data), 160)), dtype="<i2").copy()


def telephone(pcm8k: np.ndarray) -> np.ndarray:
    """What survives a G.711 μ-law call leg."""
    codec = CODECS["PCMU"]
    dec = codec.decoder()
    pcm = b"".join(dec.decode(p) for p in codec.packetize(pcm8k.astype("<i2").tobytes()))
    return np.frombuffer(pcm, dtype="<i2")[: len(pcm8k)].copy()


def to_16k(pcm8k: np.ndarray) -> np.ndarray:
    return Resampler(8000).process(pcm8k, last=True)


def silence(seconds: float, rate: int = 8000) -> np.ndarray:
    return np.zeros(int(rate * seconds), dtype=np.int16)


def prompt_text(name: str) -> str:
    for path, text in asterisk_prompts(limit=10_000, min_words=1):
        if path.stem == name:
            return text
    raise KeyError(name)


def write_wav(path: Path, pcm: np.ndarray, rate: int = 8000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path
