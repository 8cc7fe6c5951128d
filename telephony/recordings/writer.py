"""Writing each leg's audio to a file, off the media clock.

    MediaLeg / StreamMedia ──tap (event loop, non-blocking)──▶ bounded queue ──▶ one writer thread
                                                                                  └ encode (PyAV) ─▶ <dir>/<call>/<leg>.flac|.ogg

The tap only appends to a queue: a stalled disk never delays a tick. When the queue is full
the block is dropped and counted (``LegRecording.dropped_frames``), and the writer puts
silence of exactly its length in its place, so the file's timeline stays the leg's timeline
(utterance times keep pointing at the right audio).

Crash safety: the file is written through a 4 KiB I/O buffer straight to the OS (no Python
buffering), so a killed process leaves at most the encoder's last frame (FLAC: 4608 samples,
0.6 s at 8 kHz) and the muxer's open page (Ogg: at most 1 s) unwritten. A FLAC file that was
never closed has no total length in its header, which decoders accept (it reads to the end);
Ogg pages are self-delimiting.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMATS = {  # setting → (container, codec, file suffix)
    "flac": ("flac", "flac", ".flac"),
    "opus": ("ogg", "libopus", ".ogg"),
}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
IO_BUFFER = 4096
OGG_PAGE_US = 200_000


@dataclass
class RecordingInfo:
    """What the writer thread knows once a recording is closed."""

    path: str
    format: str
    codec: str
    sample_rate: int
    samples: int
    bytes: int
    sha256: str
    dropped_frames: int

    @property
    def duration_ms(self) -> int:
        return self.samples * 1000 // self.sample_rate


class LegRecording:
    """One leg's file. ``write`` is called on the event loop and never blocks."""

    def __init__(self, recorder: "Recorder", path: Path, rate: int, fmt: str):
        self.recorder = recorder
        self.path = path
        self.rate = rate
        self.format = fmt
        self.dropped_frames = 0  # blocks the queue had no room for (written as silence)
        self.closed: concurrent.futures.Future[RecordingInfo] = concurrent.futures.Future()
        self._gap = 0  # samples dropped since the last block that got in: silence before the next one
        self._ended = False
        # Writer-thread state:
        self._file = None
        self._container = None
        self._stream = None
        self._samples = 0
        self._failed: str | None = None

    def write(self, pcm: bytes | np.ndarray) -> None:
        """A block of the leg's audio: int16 PCM bytes, or a float32/int16 array, at ``rate``."""
        if self._ended:
            return
        n = len(pcm) // 2 if isinstance(pcm, (bytes, bytearray, memoryview)) else len(pcm)
        if self.recorder._offer(self, pcm, self._gap):
            self._gap = 0
        else:
            self.dropped_frames += 1
            self.recorder.dropped_frames += 1
            self._gap += n

    def close(self) -> concurrent.futures.Future:
        """No more audio; the future gives the RecordingInfo once the file is complete."""
        if not self._ended:
            self._ended = True
            self.recorder._control(self, self._gap)
        return self.closed

    # -- writer thread ---------------------------------------------------------------
    def _open(self) -> None:
        import av

        container, codec, _ = FORMATS[self.format]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb", buffering=0)
        # Ogg: a page every 200 ms instead of FFmpeg's 1 s, so a crash loses at most that much.
        options = {"page_duration": str(OGG_PAGE_US)} if container == "ogg" else {}
        self._container = av.open(self._file, "w", format=container, buffer_size=IO_BUFFER, options=options)
        self._stream = self._container.add_stream(codec, rate=self.rate, layout="mono")
        if self.format == "opus":
            self._stream.bit_rate = 16000 if self.rate <= 8000 else 24000

    def _encode(self, pcm, gap: int) -> None:
        import av

        if self._failed:
            return
        try:
            if self._container is None:
                self._open()
            if isinstance(pcm, (bytes, bytearray, memoryview)):
                x = np.frombuffer(pcm, dtype="<i2")
            elif pcm.dtype == np.int16:
                x = pcm
            else:
                x = (np.clip(pcm, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
            if gap:
                x = np.concatenate([np.zeros(gap, dtype=np.int16), x])
            if not len(x):
                return
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x)[None], format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self._samples
            self._samples += len(x)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except Exception as exc:  # a full or broken disk: this recording stops, the call goes on
            self._failed = f"{type(exc).__name__}: {exc}"
            log.error("recording %s failed: %s", self.path, self._failed)

    def _finish(self, gap: int) -> None:
        try:
            if gap:
                self._encode(np.zeros(gap, dtype=np.int16), 0)
            if self._container is None and not self._failed:
                self._open()  # a leg without audio still gets a (valid, empty) file
            try:
                if self._container is not None and not self._failed:
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                    self._container.close()
            finally:
                if self._file is not None:
                    try:
                        os.fsync(self._file.fileno())
                    except OSError:
                        pass  # not a regular file (a pipe): nothing to sync
                    self._file.close()
            if self._failed:
                raise OSError(self._failed)
            h = hashlib.sha256()
            with open(self.path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            _, codec, _ = FORMATS[self.format]
            self.closed.set_result(RecordingInfo(str(self.path), self.format, codec.removeprefix("lib"), self.rate,
                                                 self._samples, self.path.stat().st_size, h.hexdigest(),
                                                 self.dropped_frames))
        except Exception as exc:
            log.error("recording %s could not be completed: %s", self.path, exc)
            self.closed.set_exception(exc)


class Recorder:
    """The process's recording writer: one thread, one bounded queue of audio blocks for all legs.

    ``queue_frames``: blocks (100 ms each for RTP legs) that may wait; a stalled disk fills it and
    further blocks are dropped (counted in ``dropped_frames``), never waited for.
    """

    def __init__(self, directory: Path, fmt: str = "flac", queue_frames: int = 3000):
        if fmt not in FORMATS:
            raise ValueError(f"recording format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.directory = Path(directory).expanduser().resolve()  # rows store absolute paths
        self.format = fmt
        self.queue_frames = queue_frames
        self.dropped_frames = 0
        self._queue: collections.deque = collections.deque()
        self._audio_items = 0
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def open(self, call_id: str, leg_id: str, rate: int) -> LegRecording:
        fmt = self.format
        if fmt == "opus" and rate not in OPUS_RATES:
            fmt = "flac"  # Opus takes only its own rates; resampling would move the timeline
        path = self.directory / call_id / f"{leg_id}{FORMATS[fmt][2]}"
        return LegRecording(self, path, rate, fmt)

    @property
    def queued(self) -> int:
        return self._audio_items

    def _offer(self, rec: LegRecording, pcm, gap: int) -> bool:
        with self._cv:
            if self._closed or self._audio_items >= self.queue_frames:
                return False
            self._audio_items += 1
            self._queue.append((rec, pcm, gap))
            self._cv.notify()
            return True

    def _control(self, rec: LegRecording, gap: int) -> None:
        with self._cv:  # an end is never dropped: it does not count against the bound
            self._queue.append((rec, None, gap))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                rec, pcm, gap = self._queue.popleft()
                if pcm is not None:
                    self._audio_items -= 1
            if pcm is None:
                rec._finish(gap)
            else:
                rec._encode(pcm, gap)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued (ends included), then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
