"""Endpointing: cut one leg's 16 kHz audio into utterances.

The shared VAD (``vad.py``) scores 32 ms windows; an utterance starts at the first
speech window (minus a short pre-roll, so the first phoneme is not clipped) and
ends once ``hangover_ms`` of non-speech follows it. A turn longer than
``max_utterance_s`` is cut where the voice is least likely in its last second and a
half (a breath, a pause between words), never mid-word when it can be helped, and
the rest goes on as the next utterance. Sample positions are leg-relative.

Scoring happens off the event loop (batched across legs), so ``feed`` returns at once
and utterances come back through ``on_utterance`` as their windows are scored;
``finish`` waits for the last scores.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import VadSettings
from .vad import RATE, WINDOW, SharedVad

CUT_SEARCH_S = 1.5  # a forced cut looks this far back for the quietest window
CUT_MIN_TAIL_S = 0.3  # ... but not so close to now that the next piece starts as a fragment


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
    """Feed float32 16 kHz audio; finished ``Utterance``s go to ``on_utterance`` (on the event loop)."""

    def __init__(self, settings: VadSettings, vad: SharedVad, on_utterance: Callable[[Utterance], None]):
        s = settings
        self._on = s.threshold
        self._off = max(0.0, s.threshold - 0.15)  # hysteresis: a dip inside a word does not end speech
        self._hangover = s.hangover_ms * RATE // 1000
        self._min_speech = s.min_speech_ms * RATE // 1000
        self._max_len = int(s.max_utterance_s * RATE)
        self._pre_roll = s.pre_roll_ms * RATE // 1000
        self._emit = on_utterance
        self._stream = vad.stream(self._on_probs)
        self._history = _AudioBuffer()  # audio an utterance may still need
        self._fed = 0  # leg samples fed so far
        self._scored = 0  # leg samples scored so far
        self._start: int | None = None  # open utterance's first sample
        self._last_speech = 0  # one past the last speech window of the open utterance
        self._speech_samples = 0
        self._probs: list[tuple[int, float]] = []  # (window start, p) of the open utterance: where to cut
        self._floor = 0  # end of the last utterance: the next one's pre-roll must not overlap it
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    @property
    def samples_seen(self) -> int:
        return self._fed

    def open_audio(self) -> tuple[int, np.ndarray] | None:
        """The open utterance so far (for partial results), or None."""
        if self._start is None:
            return None
        return self._start, self._history.view(self._start, self._scored)

    def feed(self, audio: np.ndarray) -> None:
        self._history.append(audio)
        self._fed += len(audio)
        if self._fed - self._scored >= WINDOW:
            self._idle.clear()
        self._stream.push(audio)

    def _on_probs(self, probs: list[float]) -> None:
        for p in probs:
            pos = self._scored
            self._scored += WINDOW
            u = self._step(p, pos)
            if u is not None:
                self._emit(u)
        self._trim()
        if self._fed - self._scored < WINDOW:
            self._idle.set()

    async def finish(self) -> None:
        """End of audio: wait for the last scores, close the open utterance (if it holds enough speech)."""
        await self._idle.wait()
        self._stream.close()
        if self._start is not None:
            u = self._close(self._last_speech + min(self._hangover, self._scored - self._last_speech) // 2)
            if u is not None:
                self._emit(u)

    async def flush(self) -> Utterance | None:
        """Cut the open utterance now (a client's Finalize): audio fed so far is scored first. The cut, if any."""
        await self._idle.wait()
        if self._start is None:
            return None
        u = self._close(self._last_speech + min(self._hangover, self._scored - self._last_speech) // 2)
        if u is not None:
            self._emit(u)
        return u

    def _step(self, p: float, pos: int) -> Utterance | None:
        if self._start is None:
            if p >= self._on:
                self._start = max(self._history.base, self._floor, pos - self._pre_roll)
                self._last_speech = pos + WINDOW
                self._speech_samples = WINDOW
                self._probs = [(pos, p)]
            return None
        self._probs.append((pos, p))
        if p >= self._off:
            self._last_speech = pos + WINDOW
            self._speech_samples += WINDOW
        if self._scored - self._start >= self._max_len:
            return self._cut()
        if self._scored - self._last_speech >= self._hangover:
            # keep a little trailing audio: word endings are quiet
            return self._close(self._last_speech + self._hangover // 2)
        return None

    def _cut(self) -> Utterance | None:
        """A turn too long for one decode: end it at its quietest recent window, go on with the rest."""
        lo = self._scored - int(CUT_SEARCH_S * RATE)
        hi = self._scored - int(CUT_MIN_TAIL_S * RATE)
        # The quietest 32 ms (energy), among the windows the VAD liked least: a breath, a gap between words.
        candidates = []
        for pos, p in self._probs:
            if lo <= pos <= hi:
                w = self._history.view(pos, pos + WINDOW)
                candidates.append((round(p, 1), float(np.dot(w, w)), -pos))
        cut = -min(candidates)[2] + WINDOW if candidates else self._scored
        u = self._close(cut, forced=True)
        # The speaker goes on: the rest is the next utterance, from the cut, with no pre-roll.
        self._start = cut
        self._last_speech = self._scored
        self._speech_samples = self._scored - cut
        self._probs = [(pos, p) for pos, p in self._probs if pos >= cut]
        return u

    def _close(self, end: int, forced: bool = False) -> Utterance | None:
        start = self._start
        assert start is not None
        enough = self._speech_samples >= self._min_speech
        self._start = None
        self._speech_samples = 0
        self._probs = []
        self._floor = end
        if not enough:
            return None
        end = min(end, self._history.end)
        audio = self._history.view(start, end).copy()
        return Utterance(start=start, end=end, audio=audio, forced=forced)

    def _trim(self) -> None:
        # Keep only what a future utterance can still need: the open one, or the pre-roll.
        self._history.trim(self._start if self._start is not None else max(0, self._scored - self._pre_roll))
