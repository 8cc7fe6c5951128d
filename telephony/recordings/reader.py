"""Decode a recording (FLAC or Ogg/Opus, complete or cut short by a crash) to an AudioFrame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..media.audio import AudioFrame


class RecordingUnreadable(OSError):
    """The file is missing or holds no decodable audio."""


def read_recording(path: str | Path, rate: int | None = None) -> AudioFrame:
    """The whole file as mono float32, at ``rate`` (None: the file's own rate; Opus decodes at 48 kHz)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise RecordingUnreadable(f"recording file missing: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            out_rate = rate or stream.codec_context.sample_rate
            if stream.codec_context.name == "opus" and rate is None:
                out_rate = 48000
            resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
            parts = []
            try:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        parts.append(out.to_ndarray()[0])
            except av.error.InvalidDataError:
                pass  # a file cut short by a crash: everything before the cut is kept
            for out in resampler.resample(None):
                parts.append(out.to_ndarray()[0])
    except (av.error.FFmpegError, IndexError) as exc:
        raise RecordingUnreadable(f"cannot decode recording {path}: {exc}") from None
    samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)
    return AudioFrame(samples, out_rate)
