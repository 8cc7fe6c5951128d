"""An embedded model as an ASR engine: VAD segmentation, decode scheduling, one decode per utterance.

Whisper and Moonshine have no incremental API, so every leg's audio is cut into
utterances (``segmenter.py``, scored by the shared VAD) and each finished
utterance is decoded once, on the scheduler's threads, for its Final (``scheduler.py``
holds the overload policy). Partials re-decode the open utterance now and then when
there is spare capacity. What differs between models is only the ``Decoder``:
``whisper.py`` and ``moonshine.py``.

The engine also knows its capacity: how many talking legs its workers can keep up with,
from the decode cost it measures (a calibration decode at start, then every final).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol

import numpy as np

from ..config import AsrSettings, VadSettings
from ..media.audio import AudioFrame
from .base import END, Final, Partial, SessionInfo, drain
from .scheduler import FINAL, PARTIAL, DecodeScheduler
from .segmenter import Endpointer, Utterance
from .vad import RATE, SharedVad

log = logging.getLogger(__name__)

SPEECH_PRIOR = 0.6  # share of a leg's time that is speech, until measured
SPEECH_FLOOR = 0.3  # the estimate never goes below this (a quiet morning must not admit a flood)


class Decoder(Protocol):
    name: str

    def decode(self, audio: np.ndarray, *, draft: bool = False, degraded: bool = False) -> tuple[str, float | None]:
        """float32 16 kHz → (text, 0..1 confidence or None); "" when there is no speech.
        ``draft``: a partial (cheaper is fine); ``degraded``: the backlog is long (greedy)."""


@dataclass(frozen=True)
class Capacity:
    legs: float  # talking legs the decoders keep up with at the target utilisation
    cost_per_audio_s: float  # decode seconds per second of speech, measured
    speech_ratio: float  # share of a leg's time that is speech, measured (with a floor)
    backlog_s: float  # how long the oldest waiting final has waited


class UtteranceEngine:
    sample_rate = RATE

    def __init__(self, decoder: Decoder, asr: AsrSettings, vad: VadSettings):
        self.name = decoder.name
        self.decoder = decoder
        self._asr = asr
        self._vad_settings = vad
        self.vad = SharedVad(vad)
        self.scheduler = DecodeScheduler(asr.workers, asr.max_queue, asr.partial_budget)
        self._fed_s = 0.0  # audio fed to every session so far
        self._speech_s = 0.0  # of which cut into utterances

    # -- capacity -------------------------------------------------------------
    def calibrate(self, audio: np.ndarray | None = None) -> float:
        """Decode a real utterance once (the first decode also warms the model up), then time a
        second one: the cost per audio second this machine has now. Blocking; run it in a thread."""
        clip = calibration_clip() if audio is None else audio
        self.decoder.decode(clip)
        t0 = time.perf_counter()
        self.decoder.decode(clip)
        took = time.perf_counter() - t0
        self.scheduler.observe_cost(took, len(clip) / RATE, weight=1.0)
        log.info("%s: %.3f decode s per audio s (calibration, %.1f s of speech)", self.name,
                 self.scheduler.cost_per_audio_s, len(clip) / RATE)
        return self.scheduler.cost_per_audio_s

    def capacity(self) -> Capacity:
        cost = self.scheduler.cost_per_audio_s or 1.0
        speech = self._speech_s / self._fed_s if self._fed_s > 60 else SPEECH_PRIOR
        speech = max(SPEECH_FLOOR, speech)
        legs = self.scheduler.workers * self._asr.target_utilization / (cost * speech)
        return Capacity(legs, cost, speech, self.scheduler.oldest_wait_s())

    def backlog(self) -> int:
        """Finals waiting for a decode worker (batch ingest waits on this instead of flooding the queue)."""
        return self.scheduler.finals_waiting

    def open_session(self, *, start_ms: int = 0, realtime: bool = True,
                     info: SessionInfo | None = None) -> "UtteranceSession":
        return UtteranceSession(self, start_ms=start_ms, realtime=realtime)

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.close)
        self.vad.close()


class UtteranceSession:
    def __init__(self, engine: UtteranceEngine, *, start_ms: int, realtime: bool):
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._start_ms = start_ms
        self._realtime = realtime
        self._endpointer = Endpointer(engine._vad_settings, engine.vad, self._on_utterance)
        self._events: asyncio.Queue = asyncio.Queue()
        self._next_seq = 0  # finals are numbered as cut and delivered strictly in that order
        self._deliver_seq = 0
        self._ready: dict[int, Final | None] = {}
        self._partial_interval = engine._asr.partial_interval_ms / 1000 if realtime else 0
        self._last_partial = 0.0
        self._partial_inflight = False
        self._utterance_no = 0  # bumps at each cut: a partial of an older utterance is stale
        self._finishing = False
        self._cut_all = False
        self._finished = asyncio.Event()

    # -- input -------------------------------------------------------------
    def feed(self, frame: AudioFrame) -> None:
        if self._finishing:
            raise RuntimeError("feed() after finish()")
        if frame.rate != RATE:
            raise ValueError(f"{self._engine.name} sessions take {RATE} Hz audio, got {frame.rate} Hz")
        self._engine._fed_s += frame.duration_s
        self._endpointer.feed(frame.samples)
        if self._partial_interval and self._endpointer.in_speech:
            self._maybe_partial(time.monotonic())

    async def finish(self) -> None:
        if not self._finishing:
            self._finishing = True
            await self._endpointer.finish()  # the last windows scored, the last utterance cut
            self._cut_all = True
            self._check_done()
        await self._finished.wait()

    async def flush(self, on_cut: Callable[[int], None] | None = None) -> None:
        """Cut the open utterance now; returns once every utterance cut so far is decoded and delivered.
        ``on_cut(end_ms)``: told the cut utterance's end (ms in the call) before its Final can be out."""
        if self._finishing:
            return
        u = await self._endpointer.flush()
        if u is not None and on_cut is not None:
            on_cut(self._ms(u.end))
        while self._deliver_seq < self._next_seq:
            await asyncio.sleep(0.02)

    def events(self) -> AsyncIterator[Partial | Final]:
        return drain(self._events)

    # -- decoding ----------------------------------------------------------
    def _ms(self, sample: int) -> int:
        return self._start_ms + sample * 1000 // RATE

    def _on_utterance(self, u: Utterance) -> None:
        # When its last sample was fed: the session has been fed (samples_seen - end) since.
        now = time.monotonic()
        audio_end = now - (self._endpointer.samples_seen - u.end) / RATE if self._realtime else now
        self._engine._speech_s += (u.end - u.start) / RATE
        seq = self._next_seq
        self._next_seq += 1
        self._utterance_no += 1
        start_ms, end_ms = self._ms(u.start), self._ms(u.end)
        decoder = self._engine.decoder

        def run(degraded: bool):
            return decoder.decode(u.audio, degraded=degraded)

        def done(result, error):
            text, conf = result if result else ("", None)
            final = Final(text, start_ms, end_ms, conf, audio_end, engine=decoder.name) if text else None
            self._loop.call_soon_threadsafe(self._deliver, seq, final)

        if not self._engine.scheduler.submit(FINAL, audio_end, run, done, audio_s=len(u.audio) / RATE):
            self._deliver(seq, None)  # the engine is closing: nothing will decode it

    def _deliver(self, seq: int, final: Final | None) -> None:
        self._ready[seq] = final
        while self._deliver_seq in self._ready:
            f = self._ready.pop(self._deliver_seq)
            self._deliver_seq += 1
            if f is not None:
                self._events.put_nowait(f)
        self._check_done()

    def _check_done(self) -> None:
        # Done once every utterance is cut (not merely once those cut so far are decoded).
        if self._cut_all and self._deliver_seq == self._next_seq and not self._finished.is_set():
            self._finished.set()
            self._events.put_nowait(END)

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
        decoder = self._engine.decoder

        def run(_degraded: bool):
            return decoder.decode(audio, draft=True)

        def done(result, error):
            self._loop.call_soon_threadsafe(self._partial_done, number, result, start_ms, end_ms)

        if self._engine.scheduler.submit(PARTIAL, now, run, done, cancelled=lambda: number != self._utterance_no):
            self._partial_inflight = True
            self._last_partial = now

    def _partial_done(self, number: int, result, start_ms: int, end_ms: int) -> None:
        self._partial_inflight = False
        if result and result[0] and number == self._utterance_no and not self._finished.is_set():
            self._events.put_nowait(Partial(result[0], start_ms, end_ms))


def calibration_clip() -> np.ndarray:
    """About four seconds of real speech at 16 kHz, from a file an installed package ships
    (moonshine-cpp's test recording); tones shaped like speech if it is not there."""
    try:
        import moonshine_cpp

        path = Path(moonshine_cpp.__file__).parent / "test-data" / "beckett.wav"
        import wave

        with wave.open(str(path)) as w:
            rate, n = w.getframerate(), w.getnframes()
            pcm = np.frombuffer(w.readframes(n), dtype="<i2")
            if w.getnchannels() > 1:
                pcm = pcm[:: w.getnchannels()]
        x = pcm.astype(np.float32) / 32768.0
        if rate != RATE:
            from ..media.resample import Resampler

            x = Resampler(rate, RATE).process(x, last=True)
        return x[: 4 * RATE]
    except Exception:
        t = np.arange(4 * RATE) / RATE
        return (0.1 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
