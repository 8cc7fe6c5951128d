"""``telephony bench streaming``: legs per core with a streaming speech service, the media path's ceiling with remote ASR.

Each leg is a live leg of the real service path (``CallManager`` → jitter
buffer → G.711 → pacer → streaming session → WebSocket), fed one μ-law RTP
packet per 20 ms of real speech. The service is a Deepgram-protocol server
that answers instantly (an interim per message, a final per 2 s of audio, no
decoding) in a separate process, so the CPU measured is ours alone. A level
is *sustained* when every leg's audio reached the server at real-time pace
(nothing late by more than ``--max-late`` s, no reconnects, ≥ 99 % of the
audio there at hang-up). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time

import numpy as np
from .sinks import CollectingSink

SERVER_CHUNK_S = 0.1


# -- the instant server (its own process) ------------------------------------------

def _serve(port_pipe) -> None:
    from aiohttp import WSMsgType, web

    conns: list[dict] = []

    async def listen(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        rate = int(request.query.get("sample_rate", "8000"))
        width = 1 if request.query.get("encoding") == "mulaw" else 2
        c = {"audio_s": 0.0, "first": None, "worst": 0.0, "closed": ""}
        conns.append(c)
        final_at = 2.0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                now = time.monotonic()
                c["first"] = c["first"] or now
                c["audio_s"] += len(msg.data) / width / rate
                elapsed = now - c["first"] + SERVER_CHUNK_S
                if elapsed >= 1.0:
                    c["worst"] = max(c["worst"], c["audio_s"] / elapsed)
                final = c["audio_s"] >= final_at
                if final:
                    final_at += 2.0
                start = max(0.0, c["audio_s"] - 2.0)
                await ws.send_str(json.dumps({
                    "type": "Results", "start": start, "duration": c["audio_s"] - start, "is_final": final,
                    "speech_final": final, "channel": {"alternatives": [{"transcript": "hello there", "confidence": 0.9,
                                                                        "words": []}]},
                    "metadata": {"request_id": "bench"}}))
            elif msg.type == WSMsgType.TEXT and json.loads(msg.data).get("type") == "CloseStream":
                c["closed"] = "closestream"
                await ws.send_str(json.dumps({"type": "Metadata", "request_id": "bench"}))
                await ws.close()
        return ws

    async def stats(request):
        return web.json_response(conns)

    async def reset(request):
        conns.clear()
        return web.json_response({})

    async def main():
        app = web.Application()
        app.router.add_get("/v1/listen", listen)
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_pipe.send(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- one level ----------------------------------------------------------------------

class _Sink(CollectingSink):
    """The record writer's place: counts finals (storage is not what this measures)."""

    def __init__(self):
        super().__init__(keep=False, on_record=self._count)
        self.finals = 0

    def _count(self, record) -> None:
        if type(record).__name__ == "UtteranceRecord":
            self.finals += 1


async def run_level(port: int, legs: int, seconds: float) -> dict:
    import aiohttp

    from .accuracy import asterisk_prompts
    from ..asr import create_engine
    from ..calls import CallManager
    from ..config import Settings
    from ..records import CallRecord, new_id, utcnow
    from .core import _pcm8k, _rtp_stream

    s = Settings()
    s.asr.engine = "deepgram"
    s.asr.url = f"ws://127.0.0.1:{port}/v1/listen"
    s.asr.api_key = "bench"
    pcm = np.concatenate([_pcm8k(p) for p, _ in asterisk_prompts(limit=12)])
    packets = _rtp_stream(np.resize(pcm, int(8000 * seconds)))
    async with aiohttp.ClientSession() as http:
        await http.post(f"http://127.0.0.1:{port}/reset")
    engine = create_engine(s)
    sink = _Sink()
    manager = CallManager(s, engine, sink)
    c0, t0 = time.process_time(), time.monotonic()
    calls, live = [], []
    for i in range(legs):
        call = await manager.start_call(CallRecord(new_id(), "sip", utcnow()))
        calls.append(call)
        live.append(call.add_leg(speaker=f"leg{i}"))
    late = 0.0
    start = time.monotonic()
    n = 0
    while n < len(packets):  # one sender for all legs, like the endpoint's socket readers
        now = time.monotonic()
        late = max(late, now - (start + n * 0.02))
        while n < len(packets) and start + n * 0.02 <= now:
            for leg in live:
                leg.push_datagram(packets[n], start + n * 0.02)
            n += 1
        await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
    await asyncio.gather(*(call.end() for call in calls))
    await manager.flushed()
    cpu = time.process_time() - c0
    wall = time.monotonic() - t0
    pacer_late = max(leg._pacer.max_lateness for leg in live)
    await engine.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/stats") as r:
            conns = await r.json()
    audio = len(packets) * 0.02
    got = [c["audio_s"] for c in conns]
    sustained = (len(conns) == legs and min(got) >= 0.99 * audio and max(c["worst"] for c in conns) <= 1.05
                 and pacer_late <= 0.2 and late <= 0.2)
    return {"legs": legs, "seconds": round(audio, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
            "cores_used": round(cpu / wall, 3), "cpu_per_leg": round(cpu / wall / legs, 5),
            "legs_per_core": round(legs * wall / cpu) if cpu else None, "connections": len(conns),
            "audio_received_min_s": round(min(got), 2) if got else 0, "server_pace_max": round(max((c["worst"] for c in conns), default=0), 3),
            "pacer_late_max_s": round(pacer_late, 3), "sender_late_max_s": round(late, 3), "finals": sink.finals,
            "sustained": sustained}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="telephony bench streaming", description=__doc__.split("\n\n")[0])
    ap.add_argument("--legs", default="25,50,100", help="comma-separated levels of concurrent legs")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per leg at each level")
    ap.add_argument("--out", default="bench-streaming.json")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.legs.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--legs: comma-separated integers, got {args.legs!r}")
    if not levels or min(levels) < 1 or args.seconds < 2:
        ap.error("--legs must be positive integers and --seconds at least 2")
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    server.start()
    results = []
    try:
        if not ours.poll(30):
            raise SystemExit("the instant server did not start")
        port = ours.recv()
        load0 = os.getloadavg()
        for legs in levels:
            results.append(asyncio.run(run_level(port, legs, args.seconds)))
        load1 = os.getloadavg()
    finally:
        server.terminate()
        server.join(10)
    cols = ["legs", "cores_used", "legs_per_core", "server_pace_max", "pacer_late_max_s", "connections", "sustained"]
    print("  ".join(f"{c:>16}" for c in cols))
    for r in results:
        print("  ".join(f"{str(r[c]):>16}" for c in cols))
    best = max((r["legs"] for r in results if r["sustained"]), default=0)
    report = {"levels": results, "max_sustained_legs": best, "loadavg_before": load0, "loadavg_after": load1,
              "cpus": os.cpu_count()}
    print(f"sustained up to {best} legs; load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
