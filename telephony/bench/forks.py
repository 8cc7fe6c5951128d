"""Media-fork ingest benchmark: how many concurrent WebSocket streams (Twilio Media Streams or
mod_audio_stream L16) one core takes in, through the real service and store.

The service runs in this process with ASR off (``asr.engine = none``: this measures the fork's
own cost: WebSocket frames, JSON and base64, μ-law decoding, the leg timeline, call records;
the ASR's cost per leg is ``telephony bench`` / ``bench streaming``). The senders run in a
child process, N streams of Asterisk prompts, each 20 ms frame paced in real time. The
service's CPU is this process's CPU time over the run; streams per core = N / cores used.
A level is *sustained* when every call was stored with its whole audio (±40 ms), and the
service's event loop was never more than 100 ms late while all streams were sending (the
burst of N simultaneous connects at the start and N hang-ups at the end is reported apart).

    telephony bench forks --protocol twilio --streams 50,100,200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import tempfile
import time

import numpy as np

MAX_LOOP_LATE_S = 0.1
RAMP_S = 4.0  # the senders' process starts and connects within this (excluded from the steady window)


def _senders(url: str, protocol: str, streams: int, seconds: float, pipe) -> None:
    """Child process: ``streams`` paced senders; reports the worst lateness of a frame."""
    import aiohttp

    from .accuracy import asterisk_prompts
    from .core import _pcm8k
    from ..media.codecs import CODECS

    pcm = np.resize(np.concatenate([_pcm8k(p) for p, _ in asterisk_prompts(limit=12)]), int(8000 * seconds))
    if protocol == "twilio":
        chunks = [base64.b64encode(p).decode() for p in CODECS["PCMU"].packetize(pcm.astype("<i2").tobytes())]
    else:
        raw = pcm.astype("<i2").tobytes()
        chunks = [raw[i:i + 320] for i in range(0, len(raw), 320)]

    async def one(http, i: int) -> float:
        late = 0.0
        sid = f"CAbench{i:05d}"
        async with http.ws_connect(url + (f"?sample_rate=8000&uuid={sid}" if protocol == "stream" else "")) as ws:
            if protocol == "twilio":
                await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await ws.send_str(json.dumps({"event": "start", "start": {
                    "callSid": sid, "streamSid": "MZ" + sid[2:], "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            await asyncio.sleep(0.02 * (i % 50) / 50)  # spread the streams over the 20 ms tick
            t0 = time.monotonic()
            for n, chunk in enumerate(chunks):
                delay = t0 + n * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late = max(late, -delay)
                if protocol == "twilio":
                    await ws.send_str(json.dumps({"event": "media", "media": {
                        "track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": chunk}}))
                else:
                    await ws.send_bytes(chunk)
            if protocol == "twilio":
                await ws.send_str(json.dumps({"event": "stop"}))
        return late

    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            lates = await asyncio.gather(*(one(http, i) for i in range(streams)))
        pipe.send(max(lates))

    asyncio.run(main())


async def run_level(svc, protocol: str, streams: int, seconds: float) -> dict:
    from sqlalchemy import text

    lates: list[tuple[float, float]] = []  # (when, how late the service's event loop woke up)
    stop = asyncio.Event()

    async def probe():
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.02)
            lates.append((t, time.monotonic() - t - 0.02))

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    source = "twilio" if protocol == "twilio" else "stream"
    prober = asyncio.create_task(probe())
    c0, t0 = time.process_time(), time.monotonic()
    child = ctx.Process(target=_senders, args=(f"{svc.url}/ingest/{source}", protocol, streams, seconds, theirs), daemon=True)
    child.start()
    sender_late = await asyncio.to_thread(ours.recv)
    await asyncio.to_thread(child.join)
    while svc.manager.active_calls:
        await asyncio.sleep(0.05)
    await svc.manager.flushed()
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    stop.set()
    await prober
    loop_late = max(late for _, late in lates)
    # Steady: every stream connected and sending, none ended yet (starts and ends come in bursts here).
    steady = [late for t, late in lates if t0 + RAMP_S < t < t0 + seconds]
    loop_late_steady = max(steady, default=0.0)
    worst_at = max(lates, key=lambda x: x[1])[0] - t0
    deadline = time.monotonic() + 60
    while True:  # the journal has every record; PostgreSQL gets them shortly after
        async with svc.runtime.writer._engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT l.duration_ms FROM calls c JOIN legs l ON l.call_id = c.id "
                "WHERE c.source = :s AND c.external_id LIKE 'CAbench%'"), {"s": source})).all()
        if (len(rows) == streams and all(d is not None for (d,) in rows)) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    async with svc.runtime.writer._engine.connect() as conn:
        await conn.execute(text("DELETE FROM calls WHERE source = :s AND external_id LIKE 'CAbench%'"), {"s": source})
        await conn.commit()
    expected = int(seconds * 1000)
    whole = sum(1 for (d,) in rows if d is not None and abs(d - expected) <= 40)
    cores = cpu / wall
    return {"protocol": protocol, "streams": streams, "seconds": seconds, "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
            "cores_used": round(cores, 3), "streams_per_core": round(streams / cores) if cpu else None,
            "calls_stored_whole": whole, "loop_late_max_s": round(loop_late, 3),
            "loop_late_steady_max_s": round(loop_late_steady, 3), "loop_late_worst_at_s": round(worst_at, 1), "sender_late_max_s": round(sender_late, 3),
            "sustained": whole == streams and loop_late_steady <= MAX_LOOP_LATE_S}


async def bench(protocol: str, levels: list[int], seconds: float, database_url: str | None) -> list[dict]:
    from .local import local_settings
    from ..service import Service

    with tempfile.TemporaryDirectory() as tmp:
        settings = local_settings(tmp, database_url or "")
        settings.webhooks.urls = []
        settings.admission.max_loop_lag_ms = 1e9  # measure, don't refuse
        results = []
        async with Service(settings, webrtc=False) as svc:
            for n in levels:
                r = await run_level(svc, protocol, n, seconds)
                print(json.dumps(r), flush=True)
                results.append(r)
        return results


def main(argv: list[str] | None = None) -> int:
    import os

    ap = argparse.ArgumentParser(prog="telephony bench forks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=["twilio", "stream"], default="twilio")
    ap.add_argument("--streams", default="50,100,200", help="comma-separated levels of concurrent streams")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--out", default="bench-forks.json")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.streams.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--streams: comma-separated integers, got {args.streams!r}")
    if not levels or min(levels) < 1 or args.seconds < 2:
        ap.error("--streams must be positive integers and --seconds at least 2")
    results = asyncio.run(bench(args.protocol, levels, args.seconds, os.environ.get("DATABASE_URL")))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"{'streams':>8} {'cores':>7} {'streams/core':>13} {'stored whole':>13} {'loop late':>10} {'(steady)':>9}  sustained")
    for r in results:
        print(f"{r['streams']:>8} {r['cores_used']:>7} {r['streams_per_core']:>13} {r['calls_stored_whole']:>13} "
              f"{r['loop_late_max_s']:>9}s {r['loop_late_steady_max_s']:>8}s  {r['sustained']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
