"""The embedded ASR engine: faster-whisper (CTranslate2) with VAD endpointing.

Whisper has no incremental API, so a session cuts its leg into utterances
(``telephony.vad``) and decodes each finished utterance once for its Final.
Partials re-decode the open utterance at ``partial_interval_ms`` when the
scheduler has spare capacity (see ``scheduler.py`` for the overload policy).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import zlib
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from ..config import AsrSettings, VadSettings
from ..vad import RATE, Endpointer, Utterance, prewarm
from ..media.audio import AudioFrame
from .base import Final, Partial, SessionInfo
from .models import resolve_model
from .scheduler import FINAL, PARTIAL, DecodeScheduler

log = logging.getLogger(__name__)

_END = object()


def compression_ratio(text: str) -> float:
    """Whisper's own loop detector: repeated text compresses far better than speech does."""
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperEngine:
    name = "whisper"
    sample_rate = RATE

    def __init__(self, asr: AsrSettings, vad: VadSettings, data_dir: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths only
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        path = resolve_model(asr.model, data_dir)
        self.model_path = path
        # faster-whisper loads the model and gives us its feature extractor and tokenizer;
        # decoding calls CTranslate2 directly so the encoder window can be shorter than 30 s.
        self._whisper = WhisperModel(str(path), device="cpu", compute_type=asr.compute_type,
                                     cpu_threads=asr.cpu_threads, num_workers=asr.workers + 1)  # + the partials thread
        self._ct2 = self._whisper.model
        self._features = self._whisper.feature_extractor
        multilingual = self._ct2.is_multilingual
        tok = Tokenizer(self._whisper.hf_tokenizer, multilingual, task="transcribe",
                        language=asr.language if multilingual else "en")
        self._tokenizer = tok
        self._prompt = list(tok.sot_sequence) + [tok.no_timestamps]
        self._asr = asr
        self._vad = vad
        self.scheduler = DecodeScheduler(asr.workers, asr.max_queue, asr.partial_budget)
        prewarm()

    def decode(self, audio: np.ndarray, beam_size: int, window_s: float | None = None) -> tuple[str, float | None]:
        """Text and a 0..1 confidence (mean token probability) for one utterance.

        The encoder costs the same for any audio inside its window, and 30 s windows
        make short utterances pay for 30 s. Utterances that fit use a ``window_s``
        window (about 2.5× cheaper for 15 s at the same WER on the Asterisk set);
        output that looks like a repetition loop is decoded again with 30 s.
        """
        seconds = len(audio) / RATE
        window_s = window_s or self._asr.window_s
        window = window_s if seconds + 0.5 <= window_s else 30.0
        text, logprob, no_speech = self._generate(audio, window, beam_size, seconds)
        if window < 30.0 and text and compression_ratio(text) > 2.4:
            text, logprob, no_speech = self._generate(audio, 30.0, beam_size, seconds)
        # Whisper invents text in noise: drop what it thinks is not speech and is unsure of.
        if not text or (no_speech > 0.6 and logprob < -1.0):
            return "", None
        return text, round(min(1.0, math.exp(logprob)), 4)

    def _generate(self, audio: np.ndarray, window: float, beam_size: int, seconds: float):
        import ctranslate2

        n = int(RATE * window)
        padded = np.pad(audio, (0, n - len(audio))) if len(audio) < n else audio[:n]
        frames = int(window * 100)  # 10 ms hop
        mel = self._features(padded)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        # Speech runs at most ~4 tokens/s; a generous bound stops runaway loops early.
        max_length = min(448, len(self._prompt) + int(8 * seconds) + 16)
        result = self._ct2.generate(features, [self._prompt], beam_size=beam_size, max_length=max_length,
                                    return_scores=True, return_no_speech_prob=True, suppress_blank=True)[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        return text, result.scores[0] if result.scores else -10.0, result.no_speech_prob

    def backlog(self) -> int:
        """Finals waiting for a decode worker (batch ingest waits on this instead of flooding the queue)."""
        return self.scheduler.finals_waiting

    def open_session(self, *, start_ms: int = 0, realtime: bool = True,
                     info: SessionInfo | None = None) -> "WhisperSession":
        return WhisperSession(self, start_ms=start_ms, realtime=realtime)

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.close)


class WhisperSession:
    def __init__(self, engine: WhisperEngine, *, start_ms: int, realtime: bool):
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._start_ms = start_ms
        self._realtime = realtime
        self._endpointer = Endpointer(engine._vad)
        self._events: asyncio.Queue = asyncio.Queue()
        self._next_seq = 0  # finals are numbered as cut and delivered strictly in that order
        self._deliver_seq = 0
        self._ready: dict[int, Final | None] = {}
        self._partial_interval = engine._asr.partial_interval_ms / 1000 if realtime else 0
        self._last_partial = 0.0
        self._partial_inflight = False
        self._utterance_no = 0  # bumps at each cut: a partial of an older utterance is stale
        self._finishing = False
        self._finished = asyncio.Event()

    # -- input -------------------------------------------------------------
    def feed(self, frame: AudioFrame) -> None:
        if self._finishing:
            raise RuntimeError("feed() after finish()")
        if frame.rate != RATE:
            raise ValueError(f"whisper sessions take {RATE} Hz audio, got {frame.rate} Hz")
        audio = frame.samples
        now = time.monotonic()
        for u in self._endpointer.feed(audio):
            self._submit_final(u, now - (self._endpointer.samples_seen - u.end) / RATE)
        if self._partial_interval and self._endpointer.in_speech:
            self._maybe_partial(now)

    async def finish(self) -> None:
        if not self._finishing:
            self._finishing = True
            now = time.monotonic()
            for u in self._endpointer.flush():
                self._submit_final(u, now)
            self._check_done()
        await self._finished.wait()

    async def events(self) -> AsyncIterator[Partial | Final]:
        while True:
            ev = await self._events.get()
            if ev is _END:
                return
            yield ev

    # -- decoding ----------------------------------------------------------
    def _ms(self, sample: int) -> int:
        return self._start_ms + sample * 1000 // RATE

    def _submit_final(self, u: Utterance, audio_end: float) -> None:
        seq = self._next_seq
        self._next_seq += 1
        self._utterance_no += 1
        start_ms, end_ms = self._ms(u.start), self._ms(u.end)
        beam = self._engine._asr.beam_size

        def run(degraded: bool):
            return self._engine.decode(u.audio, 1 if degraded else beam)

        def done(result, error):
            text, conf = result if result else ("", None)
            final = Final(text, start_ms, end_ms, conf, audio_end, engine="whisper") if text else None
            self._loop.call_soon_threadsafe(self._deliver, seq, final)

        self._engine.scheduler.submit(FINAL, audio_end, run, done)

    def _deliver(self, seq: int, final: Final | None) -> None:
        self._ready[seq] = final
        while self._deliver_seq in self._ready:
            f = self._ready.pop(self._deliver_seq)
            self._deliver_seq += 1
            if f is not None:
                self._events.put_nowait(f)
        self._check_done()

    def _check_done(self) -> None:
        if self._finishing and self._deliver_seq == self._next_seq and not self._finished.is_set():
            self._finished.set()
            self._events.put_nowait(_END)

    def _maybe_partial(self, now: float) -> None:
        if self._partial_inflight or now - self._last_partial < self._partial_interval:
            return
        opened = self._endpointer.open_audio()
        if opened is None or len(opened[1]) < RATE // 2 or not self._engine.scheduler.can_take_partial():
            return
        start, audio = opened
        audio = audio.copy()
        number = self._utterance_no
        start_ms, end_ms = self._ms(start), self._ms(start + len(audio))

        def run(_degraded: bool):
            # Partials are drafts: greedy, and a 10 s window when they fit (cheaper still).
            return self._engine.decode(audio, 1, window_s=min(10.0, self._engine._asr.window_s))

        def done(result, error):
            self._loop.call_soon_threadsafe(self._partial_done, number, result, start_ms, end_ms)

        if self._engine.scheduler.submit(PARTIAL, now, run, done, cancelled=lambda: number != self._utterance_no):
            self._partial_inflight = True
            self._last_partial = now

    def _partial_done(self, number: int, result, start_ms: int, end_ms: int) -> None:
        self._partial_inflight = False
        if result and result[0] and number == self._utterance_no and not self._finished.is_set():
            self._events.put_nowait(Partial(result[0], start_ms, end_ms))
