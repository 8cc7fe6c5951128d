"""Decode scheduling shared by every ASR session of the process.

Worker threads run decodes off the event loop (CTranslate2 releases the GIL).
The policy under load, in order:
1. Finals have their own ``workers`` threads; partials run on one extra thread
   at low OS priority (nice 10), so a draft never holds a final's worker nor
   its CPU: the kernel gives partials only what finals and the media loop leave.
   Partials also stay within ``partial_budget`` of the decode capacity (a token
   bucket of decode seconds): with many speakers each gets drafts less often.
   A partial is only started when no final waits, and each session has at most
   one in flight.
2. Finals are never dropped. They are decoded oldest first (by end of audio).
3. When more than ``max_queue`` finals wait, finals are decoded greedily
   (beam 1) until the backlog halves: accuracy gives way a little so that
   latency stops growing.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

FINAL, PARTIAL = 0, 1
PARTIAL_NICE = 10


@dataclass(order=True)
class Job:
    priority: int
    order: float  # finals: end of audio (monotonic), partials: submit time
    seq: int
    run: Callable[[bool], Any] = field(compare=False)  # run(degraded) -> result
    done: Callable[[Any, BaseException | None], None] = field(compare=False)
    cancelled: Callable[[], bool] = field(compare=False, default=lambda: False)
    audio_s: float = field(compare=False, default=0.0)  # seconds of audio it decodes (cost per audio second)
    queued_at: float = field(compare=False, default_factory=time.monotonic)


class DecodeScheduler:
    """Also measures what decoding costs here: ``cost_per_audio_s`` (decode seconds, wall clock, per
    second of utterance audio; smoothed), from which the service knows its capacity."""

    def __init__(self, workers: int, max_queue: int, partial_budget: float = 0.1):
        self.workers = workers
        self.cost_per_audio_s: float | None = None  # set by calibration, then by every final decoded
        self._max_queue = max_queue
        self._budget_rate = partial_budget * workers  # decode seconds per second that partials may use
        self._credit = 1.0  # seconds of partial decoding available now (the bucket holds at most 1 s)
        self._credit_at = time.monotonic()
        self._finals: list[Job] = []
        self.finals_running = 0  # finals being decoded now (the second pass waits for none running or waiting)
        self._partial: Job | None = None
        self._partial_busy = False
        self._cv = threading.Condition()
        self._degraded = False
        self._closed = False
        self._counter = itertools.count()
        self.stats = {"finals": 0, "partials": 0, "partials_skipped": 0, "degraded_finals": 0, "busy_s": 0.0}
        self._threads = [threading.Thread(target=self._final_worker, name=f"asr-final-{i}", daemon=True) for i in range(workers)]
        if partial_budget > 0:
            self._threads.append(threading.Thread(target=self._partial_worker, name="asr-partial", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def finals_waiting(self) -> int:
        return len(self._finals)

    def oldest_wait_s(self) -> float:
        """How long the oldest waiting final has waited: the backlog, in time."""
        with self._cv:
            if not self._finals:
                return 0.0
            return time.monotonic() - min(j.queued_at for j in self._finals)

    def observe_cost(self, busy_s: float, audio_s: float, weight: float = 0.1) -> None:
        """Fold one decode into the cost estimate (calibration passes weight 1)."""
        if audio_s <= 0:
            return
        ratio = busy_s / audio_s
        with self._cv:
            c = self.cost_per_audio_s
            self.cost_per_audio_s = ratio if c is None else c + weight * (ratio - c)

    def _partial_allowed(self) -> bool:
        now = time.monotonic()
        self._credit = min(1.0, self._credit + (now - self._credit_at) * self._budget_rate)
        self._credit_at = now
        return (not self._closed and not self._finals and self._partial is None and not self._partial_busy
                and self._credit > 0 and self._budget_rate > 0)

    def can_take_partial(self) -> bool:
        with self._cv:
            return self._partial_allowed()

    def submit(self, priority: int, order: float, run, done, cancelled=lambda: False, audio_s: float = 0.0) -> bool:
        job = Job(priority, order, next(self._counter), run, done, cancelled, audio_s)
        with self._cv:
            if self._closed:
                return False
            if priority == PARTIAL:
                if not self._partial_allowed():
                    self.stats["partials_skipped"] += 1
                    return False
                self._partial = job
            else:
                heapq.heappush(self._finals, job)
                if len(self._finals) > self._max_queue and not self._degraded:
                    self._degraded = True
                    log.warning("ASR backlog %d finals: decoding greedily until it halves", len(self._finals))
            self._cv.notify_all()
            return True

    def _final_worker(self) -> None:
        while True:
            with self._cv:
                while not self._finals and not self._closed:
                    self._cv.wait()
                if not self._finals:
                    return  # closed and drained
                job = heapq.heappop(self._finals)
                if self._degraded and len(self._finals) <= self._max_queue // 2:
                    self._degraded = False
                degraded = self._degraded
                self.finals_running += 1
            try:
                self._run(job, degraded)
            finally:
                with self._cv:
                    self.finals_running -= 1

    def _partial_worker(self) -> None:
        try:  # drafts only get the CPU that finals and the media loop leave
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PARTIAL_NICE)
        except (OSError, AttributeError):
            log.debug("could not lower the partial decoder's priority")
        while True:
            with self._cv:
                while self._partial is None and not self._closed:
                    self._cv.wait()
                if self._partial is None:
                    return
                job, self._partial = self._partial, None
                self._partial_busy = True
            try:
                if job.cancelled():
                    job.done(None, None)
                else:
                    self._run(job, False)
            finally:
                with self._cv:
                    self._partial_busy = False

    def _run(self, job: Job, degraded: bool) -> None:
        t0 = time.perf_counter()
        try:
            result, error = job.run(degraded), None
        except BaseException as exc:  # a failed decode must not kill the worker
            result, error = None, exc
            log.exception("decode failed")
        with self._cv:
            took = time.perf_counter() - t0
            self.stats["busy_s"] += took
            if job.priority == FINAL:
                self.stats["finals"] += 1
                self.stats["degraded_finals"] += degraded
                if job.audio_s > 0 and error is None:
                    ratio = took / job.audio_s
                    c = self.cost_per_audio_s
                    self.cost_per_audio_s = ratio if c is None else c + 0.05 * (ratio - c)
            else:
                self.stats["partials"] += 1
                self._credit -= took
        job.done(result, error)

    def close(self, timeout: float = 60.0) -> None:
        """Finish every queued final (a pending partial is dropped), then stop the workers."""
        with self._cv:
            self._closed = True
            if self._partial is not None:
                self._partial.done(None, None)
                self._partial = None
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
