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

Muting (``[recordings] mute_redacted``, with ``[redaction]`` on): the audio waits ``hold_s`` in
memory before it is queued, so an utterance whose final text was redacted (a card number) can be
muted before its audio reaches the disk. A span that comes later than that (a final delayed
past ``hold_s``) is muted when the leg ends, by rewriting the file. A crash then loses the
last ``hold_s`` of each leg's audio, never leaves a clear card number behind the text's back.
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

    def __init__(self, recorder: "Recorder", path: Path, rate: int, fmt: str, hold_s: float = 0.0):
        self.recorder = recorder
        self.path = path
        self.rate = rate
        self.format = fmt
        self.dropped_frames = 0  # blocks the queue had no room for (written as silence)
        self.muted_ms = 0  # audio muted (spans asked for by ``mute``, merged)
        # Muting: blocks held back (start sample, block) until ``hold`` samples newer ones came.
        self._hold = int(hold_s * rate)
        self._held: collections.deque = collections.deque()
        self._held_samples = 0
        self._pos = 0  # samples passed to write() so far: the leg's timeline
        self._released = 0  # samples handed on to the writer (before: too late to mute in memory)
        self._mutes: list[tuple[int, int]] = []  # [start, end) samples, not yet fully released
        self._late: list[tuple[int, int]] = []  # spans already released: muted by rewriting at the end
        self._asked: list[tuple[int, int]] = []  # every span asked for, merged (for muted_ms)
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
        n = _length(pcm)
        if not self._hold:
            self._queue(pcm, n)
            return
        self._held.append((self._pos, pcm))
        self._pos += n
        self._held_samples += n
        while self._held and self._held_samples - _length(self._held[0][1]) >= self._hold:
            self._release()

    def mute(self, start_ms: int, end_ms: int) -> None:
        """Silence [start_ms, end_ms) of this recording (ms from its first sample)."""
        a, b = max(0, start_ms * self.rate // 1000), max(0, end_ms * self.rate // 1000)
        if b <= a:
            return
        if a < self._released:
            self._late.append((a, min(b, self._released)))
        if b > self._released:
            self._mutes.append((max(a, self._released), b))
        self._asked = _merge_spans(self._asked + [(a, b)])
        self.muted_ms = _total(self._asked) * 1000 // self.rate

    def _release(self) -> None:
        start, pcm = self._held.popleft()
        n = _length(pcm)
        self._held_samples -= n
        end = start + n
        hits = [(max(a, start), min(b, end)) for a, b in self._mutes if a < end and b > start]
        if hits:
            x = _int16(pcm).copy()
            for a, b in hits:
                x[a - start:b - start] = 0
            pcm = x
        self._mutes = [(a, b) for a, b in self._mutes if b > end]
        self._released = end
        self._queue(pcm, n)

    def _queue(self, pcm, n: int) -> None:
        if self.recorder._offer(self, pcm, self._gap):
            self._gap = 0
        else:
            self.dropped_frames += 1
            self.recorder.dropped_frames += 1
            self._gap += n

    def close(self) -> concurrent.futures.Future:
        """No more audio; the future gives the RecordingInfo once the file is complete."""
        if not self._ended:
            while self._held:
                self._release()
            self._ended = True
            self.recorder._control(self, self._gap, _merge_spans(self._late))
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
            x = _int16(pcm)
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

    def _finish(self, gap: int, late: list[tuple[int, int]]) -> None:
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
            if late:
                try:
                    self._rewrite_muted(late)
                except Exception:
                    self.path.unlink(missing_ok=True)  # never leave audio behind that should have been muted
                    raise
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

    def _rewrite_muted(self, spans: list[tuple[int, int]]) -> None:
        """Mute spans already on disk: decode, silence, encode a new file, swap it in atomically."""
        from .reader import read_recording

        audio = read_recording(self.path, rate=self.rate).samples
        x = (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
        for a, b in spans:
            x[a:b] = 0
        tmp = LegRecording(self.recorder, self.path.with_name(self.path.name + ".muting"), self.rate, self.format)
        tmp._encode(x[:self._samples], 0)
        tmp._finish(0, [])
        tmp.closed.result()  # raises what went wrong; the unmuted file is then left for the caller to see
        os.replace(tmp.path, self.path)
        log.info("recording %s: %d late span(s) muted by rewriting it", self.path.name, len(spans))


def _length(pcm) -> int:
    return len(pcm) // 2 if isinstance(pcm, (bytes, bytearray, memoryview)) else len(pcm)


def _int16(pcm) -> np.ndarray:
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        return np.frombuffer(pcm, dtype="<i2")
    if pcm.dtype == np.int16:
        return pcm
    return (np.clip(pcm, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


def _merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _total(spans: list[tuple[int, int]]) -> int:
    return sum(b - a for a, b in spans)


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

    def open(self, call_id: str, leg_id: str, rate: int, hold_s: float = 0.0) -> LegRecording:
        """``hold_s`` > 0: audio waits that long in memory, where ``LegRecording.mute`` can still
        silence it before it is written."""
        fmt = self.format
        if fmt == "opus" and rate not in OPUS_RATES:
            fmt = "flac"  # Opus takes only its own rates; resampling would move the timeline
        path = self.directory / call_id / f"{leg_id}{FORMATS[fmt][2]}"
        return LegRecording(self, path, rate, fmt, hold_s)

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

    def _control(self, rec: LegRecording, gap: int, late: list[tuple[int, int]]) -> None:
        with self._cv:  # an end is never dropped: it does not count against the bound
            self._queue.append((rec, None, (gap, late)))
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
                rec._finish(*gap)
            else:
                rec._encode(pcm, gap)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued (ends included), then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
