"""Delivers queued webhook events: at least once, signed, with backoff, then dead letters.

One asyncio task per process (HTTP is asynchronous, so media and ASR never wait on
a receiver). For each receiver it claims due rows from the outbox (several
instances on one database share the work: rows are claimed with SKIP LOCKED under
a lease), posts each one signed with the current time and the message's fixed
``webhook-id``, and records the outcome:

    2xx              delivered
    410 Gone         dead at once (the receiver asked for no more)
    anything else,   retried after min(retry_max_s, retry_initial_s * 2^(n-1)), times a random
    timeout, refusal factor in [0.5, 1) (jitter, so a recovering receiver is not hit by every
                     instance at once), or after Retry-After when the receiver says so; once the
                     next attempt would fall beyond retry_horizon_s from the event (or its resend),
                     the row becomes a dead letter.

Redirects are not followed (the spec counts 3xx as failure). Logs name the
receiver, never its URL's credentials or query, nor the secret, and say when a
receiver starts failing and when it recovers, not every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from email.utils import parsedate_to_datetime

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..store.database import async_url
from . import outbox
from .endpoints import Endpoint
from .signing import headers

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0  # beyond the attempt timeout, before another instance may take the row over
COUNTS_INTERVAL_S = 5.0
PURGE_INTERVAL_S = 3600.0


def backoff(attempts: int, initial_s: float, max_s: float, rand: float) -> float:
    """Delay after the ``attempts``-th failed attempt; ``rand`` in [0, 1) draws the jitter."""
    base = min(max_s, initial_s * 2 ** min(max(attempts - 1, 0), 62))
    return base * (0.5 + rand / 2)


def _retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)


class DeliveryWorker:
    def __init__(self, settings, database_url: str, endpoints: list[Endpoint], *, rng: random.Random | None = None):
        self.settings = settings
        self.database_url = database_url
        self.endpoints = {e.name: e for e in endpoints}
        self.delivered = 0  # by this process
        self.failed_attempts = 0
        self.dead = 0
        self.counts: dict[str, int] = {"pending": 0, "dead": 0}  # over the whole outbox, refreshed periodically
        self._rng = rng or random.Random()
        self._engine: AsyncEngine | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, set[asyncio.Task]] = {name: set() for name in self.endpoints}
        self._failing: dict[str, str] = {}  # receiver -> first error of its current failure streak
        self._db_trouble = False

    # -- lifetime ----------------------------------------------------------------------

    async def start(self) -> "DeliveryWorker":
        self._engine = create_async_engine(async_url(self.database_url), pool_size=2, max_overflow=2,
                                           pool_pre_ping=True, connect_args={"timeout": 5, "command_timeout": 30})
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")
        log.info("webhooks: delivering to %s", ", ".join(f"{e.name} ({', '.join(sorted(e.events))})"
                                                         for e in self.endpoints.values()))
        return self

    def wake(self) -> None:
        """New events were committed: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Deliver what is due right now (within ``grace_s``), then stop; the rest waits in the outbox."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._task.cancel()
            tasks = [t for ts in self._inflight.values() for t in ts]
            for t in tasks:
                t.cancel()  # their rows come due again when the lease ends
            await asyncio.gather(self._task, *tasks, return_exceptions=True)
            await self._http.close()
            await self._engine.dispose()
            self._task = None

    @property
    def failing(self) -> list[str]:
        """Receivers whose last attempt failed."""
        return sorted(self._failing)

    def stats(self) -> dict:
        """For /health, which anyone reaching the port may read: counts only, no receiver names or errors."""
        return {"endpoints": len(self.endpoints), "pending": self.counts["pending"], "dead": self.counts["dead"],
                "delivered": self.delivered, "failed_attempts": self.failed_attempts, "failing": len(self._failing)}

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.settings
        next_counts = next_purge = 0.0
        final_pass = False
        while True:
            self._wake.clear()
            claimed = 0
            try:
                for name, endpoint in self.endpoints.items():
                    free = s.concurrency - len(self._inflight[name])
                    if free <= 0:
                        continue
                    rows = await outbox.claim(self._engine, name, free, s.timeout_s + LEASE_MARGIN_S)
                    claimed += len(rows)
                    for row in rows:
                        task = asyncio.create_task(self._attempt(endpoint, row), name=f"webhook-{row['message_id']}")
                        self._inflight[name].add(task)
                        task.add_done_callback(lambda t, n=name: self._attempt_done(n, t))
                now = time.monotonic()
                if now >= next_counts:
                    self.counts = await outbox.counts(self._engine)
                    next_counts = now + COUNTS_INTERVAL_S
                if now >= next_purge:
                    purged = await outbox.purge(self._engine, s.retention_days)
                    if purged:
                        log.info("webhooks: %d delivered event(s) older than %g days deleted", purged, s.retention_days)
                    next_purge = now + PURGE_INTERVAL_S
                if self._db_trouble:
                    log.info("webhooks: database reachable again")
                    self._db_trouble = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: retry at the next poll, never die
                if not self._db_trouble:
                    log.warning("webhooks: cannot read the outbox (%s); retrying every %gs",
                                _one_line(exc), s.poll_interval_s)
                    self._db_trouble = True
            if self._stopping:
                inflight = [t for ts in self._inflight.values() for t in ts]
                if inflight:
                    await asyncio.wait(inflight)
                if final_pass and not claimed:
                    return
                final_pass = True  # one more look: the writer may have just committed the last events
                continue
            if claimed and any(len(self._inflight[n]) < s.concurrency for n in self.endpoints):
                continue  # there may be more due right now
            try:
                await asyncio.wait_for(self._wake.wait(), s.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    def _attempt_done(self, name: str, task: asyncio.Task) -> None:
        self._inflight[name].discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks: delivery attempt crashed", exc_info=task.exception())
        self._wake.set()  # a slot is free

    async def _attempt(self, endpoint: Endpoint, row: dict) -> None:
        s = self.settings
        body = row["body"]
        stamp = int(time.time())
        status: int | None = None
        retry_after: float | None = None
        try:
            async with self._http.post(endpoint.url, data=body.encode(), allow_redirects=False,
                                       headers=headers(endpoint.secrets, row["message_id"], stamp, body),
                                       timeout=aiohttp.ClientTimeout(total=s.timeout_s)) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"), s.retry_max_s)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except asyncio.TimeoutError:
            error = f"no answer within {s.timeout_s:g}s"
        except aiohttp.ClientError as exc:
            error = _one_line(exc).replace(endpoint.url, endpoint.name)  # no credentials or query in logs
        try:
            if error is None:
                await outbox.delivered(self._engine, row["id"], status)
                self.delivered += 1
                if self._failing.pop(endpoint.name, None) is not None:
                    log.info("webhooks: %s is accepting events again", endpoint.name)
                return
            self.failed_attempts += 1
            if endpoint.name not in self._failing:
                self._failing[endpoint.name] = error
                log.warning("webhooks: %s failing (%s); retrying with backoff for up to %s per event",
                            endpoint.name, error, _span(s.retry_horizon_s))
            if status == 410:
                retry = None
            else:
                retry = backoff(row["attempts"], s.retry_initial_s, s.retry_max_s, self._rng.random())
                if retry_after is not None:
                    retry = max(retry, retry_after)
            if await outbox.failed(self._engine, row["id"], status=status, error=error, retry_in_s=retry,
                                   horizon_s=s.retry_horizon_s):
                self.dead += 1
                self.counts["dead"] += 1
                log.warning("webhooks: %s %s to %s is a dead letter after %d attempt(s) (%s); "
                            "`telephony webhooks resend %s` sends it again",
                            row["event_type"], row["message_id"], endpoint.name, row["attempts"], error, row["id"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # outcome not recorded: the lease ends and the row is tried again
            if not self._db_trouble:
                log.warning("webhooks: cannot record a delivery outcome (%s); the event will be sent again",
                            _one_line(exc))
                self._db_trouble = True


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds:.3g} s"


def _one_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    msg = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {msg}" if msg else type(inner).__name__
