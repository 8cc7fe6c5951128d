"""Decode scheduling shared by every ASR session of the process.

Worker threads run decodes off the event loop. The policy under load, in order:
1. Finals before partials: a partial is only started when no final waits and a
   worker stays idle for the next final even after the partial starts (a decode
   cannot be interrupted, so a running partial would delay the final behind it);
   each session has at most one partial in flight.
2. Finals are never dropped. They are decoded oldest first (by end of audio).
3. When more than ``max_queue`` finals wait, finals are decoded greedily
   (beam 1, about twice as fast) until the backlog halves: accuracy gives
   way a little so that latency stops growing.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

FINAL, PARTIAL = 0, 1


@dataclass(order=True)
class Job:
    priority: int
    order: float  # finals: end of audio (monotonic), partials: submit time
    seq: int
    run: Callable[[bool], Any] = field(compare=False)  # run(degraded) -> result
    done: Callable[[Any, BaseException | None], None] = field(compare=False)
    cancelled: Callable[[], bool] = field(compare=False, default=lambda: False)


class DecodeScheduler:
    def __init__(self, workers: int, max_queue: int):
        self._workers = workers
        self._reserve = 1 if workers > 1 else 0  # workers kept free for finals
        self._max_queue = max_queue
        self._heap: list[Job] = []
        self._cv = threading.Condition()
        self._idle = 0
        self._finals_waiting = 0
        self._degraded = False
        self._closed = False
        self._counter = itertools.count()
        self.stats = {"finals": 0, "partials": 0, "partials_skipped": 0, "degraded_finals": 0, "busy_s": 0.0}
        self._threads = [threading.Thread(target=self._worker, name=f"asr-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def finals_waiting(self) -> int:
        return self._finals_waiting

    def _spare(self) -> int:
        """Workers with nothing to do once the queued jobs are taken."""
        return self._idle - len(self._heap)

    def can_take_partial(self) -> bool:
        return self._finals_waiting == 0 and self._spare() > self._reserve and not self._closed

    def submit(self, priority: int, order: float, run, done, cancelled=lambda: False) -> bool:
        with self._cv:
            if self._closed:
                return False
            if priority == PARTIAL and not (self._finals_waiting == 0 and self._spare() > self._reserve):
                self.stats["partials_skipped"] += 1
                return False
            if priority == FINAL:
                self._finals_waiting += 1
                if self._finals_waiting > self._max_queue and not self._degraded:
                    self._degraded = True
                    log.warning("ASR backlog %d finals: decoding greedily until it halves", self._finals_waiting)
            heapq.heappush(self._heap, Job(priority, order, next(self._counter), run, done, cancelled))
            self._cv.notify()
            return True

    def _worker(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    self._idle -= 1
                    return  # closed and drained
                job = heapq.heappop(self._heap)
                self._idle -= 1
                if job.priority == FINAL:
                    self._finals_waiting -= 1
                    if self._degraded and self._finals_waiting <= self._max_queue // 2:
                        self._degraded = False
                degraded = self._degraded and job.priority == FINAL
            if job.priority == PARTIAL and job.cancelled():
                job.done(None, None)
                continue
            t0 = time.perf_counter()
            try:
                result, error = job.run(degraded), None
            except BaseException as exc:  # a failed decode must not kill the worker
                result, error = None, exc
                log.exception("decode failed")
            with self._cv:
                self.stats["busy_s"] += time.perf_counter() - t0
                self.stats["finals" if job.priority == FINAL else "partials"] += 1
                if degraded:
                    self.stats["degraded_finals"] += 1
            job.done(result, error)

    def close(self, timeout: float = 60.0) -> None:
        """Finish every queued job, then stop the workers."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
