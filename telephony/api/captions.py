"""Live caption feeds from the CaptionBus, for every call whatever its source (SIP, SIPREC, WebRTC).

    GET /api/captions                   every call's events
    GET /api/calls/{call_id}/captions   one call's events; ends after its call_end

Each is a WebSocket (upgrade) or Server-Sent Events (``Accept: text/event-stream``).
Events are JSON: ``{"type": "partial"|"final"|"call_start"|"call_end", "call_id",
"leg_id", "speaker", "text", "start_ms", "end_ms", "confidence", "seq"}``.

A per-call feed first replays the call's finals so far (``"replay": true``),
so a client that reconnects misses nothing; it de-duplicates by (leg_id, seq).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict

from aiohttp import WSMsgType, web

from ..captions import Caption, CaptionBus
from ..store.queries import CallNotFound, InvalidQuery, get_call, parse_call_id
from .errors import json_error
from .transcripts import ENGINE

SSE_PING_S = 15.0
HISTORY_KEEP_S = 300.0  # an ended call's finals stay replayable this long (late reconnects)


class CaptionHub:
    """Keeps each live call's finals for replay.

    It must see every event at the moment it is published (a reconnecting
    client subscribes, then reads the history: an event must be in one or the
    other), so it takes the bus's synchronous ``offer`` call itself instead of
    reading a queue later.
    """

    def __init__(self, bus: CaptionBus, per_call: int = 500):
        self.bus = bus
        self.per_call = per_call
        self.clients = 0
        self._finals: dict[str, list[Caption]] = {}
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._sub = bus.subscribe(None, maxsize=1)
        self._sub.offer = self._record  # called inside bus.publish

    def _record(self, c: Caption) -> None:
        if c.kind == "final":
            lst = self._finals.setdefault(c.call_id, [])
            lst.append(c)
            if len(lst) > self.per_call:
                del lst[0]
        elif c.kind == "call_end":
            self._ended[c.call_id] = time.monotonic()
        now = time.monotonic()
        while self._ended:
            cid, at = next(iter(self._ended.items()))
            if now - at < HISTORY_KEEP_S:
                break
            self._ended.popitem(last=False)
            self._finals.pop(cid, None)

    def history(self, call_id: str) -> list[Caption]:
        return list(self._finals.get(call_id, ()))

    def ended(self, call_id: str) -> bool:
        return call_id in self._ended

    def close(self) -> None:
        self._sub.close()


def event(c: Caption, replay: bool = False) -> dict:
    d = c.as_dict()
    d["type"] = d.pop("kind")
    if replay:
        d["replay"] = True
    return d


def add_routes(app: web.Application, hub: CaptionHub, manager, *, max_clients: int, queue: int) -> None:
    h = _Handlers(app, hub, manager, max_clients, queue)
    app.router.add_get("/api/captions", h.all_calls)
    app.router.add_get("/api/calls/{call_id}/captions", h.one_call)


class _Handlers:
    def __init__(self, app, hub: CaptionHub, manager, max_clients: int, queue: int):
        self.app = app
        self.hub = hub
        self.manager = manager
        self.max_clients = max_clients
        self.queue = queue

    async def all_calls(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, None)

    async def one_call(self, request: web.Request) -> web.StreamResponse:
        try:
            call_id = str(parse_call_id(request.match_info["call_id"]))
        except InvalidQuery as exc:
            return json_error(400, "bad_request", str(exc))
        live = any(c.id == call_id for c in self.manager.calls())
        if not live and not self.hub.history(call_id) and not self.hub.ended(call_id):
            try:  # not live here: it must at least exist (it ended, or another process runs it)
                await get_call(request.app[ENGINE], call_id)
            except CallNotFound:
                return json_error(404, "not_found", f"no call with id {call_id}")
            except Exception:
                return json_error(503, "database_unavailable", "cannot check the call id right now; retry",
                                  headers={"Retry-After": "5"})
        return await self._serve(request, call_id, ended=not live)

    async def _serve(self, request: web.Request, call_id: str | None, ended: bool = False) -> web.StreamResponse:
        ws_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        sse = "text/event-stream" in request.headers.get("Accept", "")
        if not ws_upgrade and not sse:
            return json_error(406, "not_acceptable", "caption feeds are a WebSocket (Upgrade: websocket) "
                              "or Server-Sent Events (Accept: text/event-stream)")
        if self.hub.clients >= self.max_clients:
            return json_error(503, "busy", f"caption feed limit reached ({self.max_clients})", headers={"Retry-After": "5"})
        # Subscribe before reading the history: every final is then in one or the other.
        sub = self.hub.bus.subscribe(call_id, maxsize=self.queue)
        replay = self.hub.history(call_id) if call_id else []
        self.hub.clients += 1
        try:
            if ws_upgrade:
                return await self._websocket(request, sub, call_id, replay, ended)
            return await self._sse(request, sub, call_id, replay, ended)
        finally:
            self.hub.clients -= 1
            sub.close()

    @staticmethod
    def _stream(sub, call_id, replay, ended):
        """Events to send: hello, replayed finals, then live ones (skipping replayed)."""
        seen = {(c.leg_id, c.seq) for c in replay}

        async def gen():
            yield {"type": "hello", "call_id": call_id, "live": not ended}
            for c in replay:
                yield event(c, replay=True)
            if ended and call_id is not None:
                yield {"type": "call_end", "call_id": call_id}
                return
            async for c in sub:
                if c.kind == "final" and (c.leg_id, c.seq) in seen:
                    continue
                yield event(c)
                if call_id is not None and c.kind == "call_end":
                    return

        return gen()

    async def _websocket(self, request, sub, call_id, replay, ended) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)

        async def reader():  # the client sends nothing we need; this notices it leaving
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break

        reading = asyncio.create_task(reader())
        events = self._stream(sub, call_id, replay, ended)
        try:
            while True:
                ev = await _next(events, reading)
                if ev is None:
                    break
                await ws.send_str(json.dumps(ev, ensure_ascii=False))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            reading.cancel()
            await events.aclose()
            if not ws.closed:
                await ws.close()
        return ws

    async def _sse(self, request, sub, call_id, replay, ended) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", **request.get("cors_headers", {})})
        await resp.prepare(request)
        events = self._stream(sub, call_id, replay, ended)
        try:
            while True:
                ev = await _next(events, None, ping=lambda: resp.write(b": ping\n\n"))
                if ev is None:
                    break
                await resp.write(f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n".encode())
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            await events.aclose()
        return resp


async def _next(events, stop: asyncio.Task | None, ping=None):
    """The next event, or None when the stream ends or ``stop`` finishes (the client left).

    The pending ``anext`` is never cancelled by a timeout (that would close the
    generator); while waiting, ``ping`` is sent every SSE_PING_S.
    """
    task = asyncio.ensure_future(anext(events))
    try:
        while True:
            waiting = {task} if stop is None else {task, stop}
            done, _ = await asyncio.wait(waiting, timeout=SSE_PING_S if ping else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                try:
                    return task.result()
                except StopAsyncIteration:
                    return None
            if stop is not None and stop in done:
                return None
            await ping()  # a write to a gone client raises: that ends the feed
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let the generator unwind before anyone closes it
