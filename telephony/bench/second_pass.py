"""Second-pass benchmark: WER of the live finals against the post-call second pass, and live final
latency with and without the second pass running, at the same call load.

    python -m telephony.bench.second_pass [--legs 4] [--load-legs 6] [--duration 40] [--model base]

Runs a real Service (real PostgreSQL, recordings on, live engine as configured) and feeds it
Debian's Asterisk prompts as μ-law RTP in real time:
1. WER calls (clean): each leg a sequence of prompts; the second pass re-transcribes them after they end.
2. Latency without the second pass: ``--load-legs`` legs of ~70 % speech; the pass is idle.
3. The same load again while the second pass re-transcribes a backlog (the noisy WER calls,
   white noise at ``--snr`` dB, and the calls of step 2); then the noisy calls' WER.
Latency is each final's ``latency_ms`` (end of its audio → final produced), the same in both runs.
Prints a table, writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time

import numpy as np

from ..config import load_settings
from .accuracy import asterisk_prompts, wer
from .core import _pcm8k, _rtp_stream, _script


def _wer_script(prompts, rng, snr_db: float | None):
    noise = np.random.default_rng(rng.randrange(1 << 32))
    parts, texts = [], []
    for path, text in prompts:
        pcm = _pcm8k(path).astype(np.float32)
        if snr_db is not None:  # white noise at this SNR over the prompt's own power
            power = float(np.mean(pcm ** 2)) or 1.0
            pcm = pcm + noise.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(pcm))
        parts += [np.clip(pcm, -32768, 32767).astype(np.int16), np.zeros(int(8000 * rng.uniform(0.8, 1.4)), np.int16)]
        texts.append(text)
    return _rtp_stream(np.concatenate(parts), ssrc=rng.randrange(1 << 32)), " ".join(texts)


async def _send(leg, packets):
    start, n = leg.t0, 0
    while n < len(packets):
        now = time.monotonic()
        while n < len(packets) and start + n * 0.02 <= now:
            leg.push_datagram(packets[n], start + n * 0.02)
            n += 1
        if n < len(packets):
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))


async def _calls(manager, streams, tag):
    from ..records import CallRecord, new_id, utcnow

    calls = []
    for i, packets in enumerate(streams):
        call = await manager.start_call(CallRecord(id=new_id(), source="file", started_at=utcnow(),
                                                   external_id=f"bench-{tag}-{i}", meta={"bench": True}))
        leg = call.add_leg(speaker=f"{tag}-{i}", codec="PCMU")
        calls.append((call, leg, asyncio.create_task(_send(leg, packets))))
        await asyncio.sleep(0.37)  # staggered, like real traffic
    await asyncio.gather(*(t for _, _, t in calls))
    await asyncio.gather(*(c.end() for c, _, _ in calls))
    return [c for c, _, _ in calls]


async def _texts(db, call_ids, revision):
    from sqlalchemy import text

    async with db.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT call_id, string_agg(text, ' ' ORDER BY seq) AS words FROM utterances"
            " WHERE call_id = ANY(CAST(:ids AS uuid[])) AND revision = :r GROUP BY call_id"),
            {"ids": call_ids, "r": revision})).all()
    got = {str(r.call_id): r.words for r in rows}
    return [got.get(c, "") for c in call_ids]


async def _latencies(db, call_ids):
    from sqlalchemy import text

    async with db.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT latency_ms FROM utterances WHERE call_id = ANY(CAST(:ids AS uuid[])) AND revision = 0"
            " AND latency_ms IS NOT NULL"), {"ids": call_ids})).all()
    lat = np.array([r.latency_ms / 1000 for r in rows]) if rows else np.array([float("nan")])
    return {"finals": len(rows), "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p95_s": round(float(np.percentile(lat, 95)), 3), "max_s": round(float(lat.max()), 3)}


async def run(args) -> dict:
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..service import Service
    from ..store.database import async_url

    s = load_settings(args.config)
    s.recordings.enabled = True
    s.second_pass.enabled = True
    s.second_pass.model = args.model
    s.asr.partial_interval_ms = 0 if args.no_partials else s.asr.partial_interval_ms
    rng = random.Random(7)
    prompts = asterisk_prompts(limit=args.legs * args.prompts_per_leg)
    groups = [prompts[i::args.legs] for i in range(args.legs)]
    clean = [_wer_script(g, rng, None) for g in groups]
    noisy = [_wer_script(g, rng, args.snr) for g in groups]
    load_prompts = asterisk_prompts(limit=80)
    load = [_script(load_prompts, args.duration, random.Random(100 + i)).packets for i in range(args.load_legs)]
    out = {"live_engine": s.asr.engine, "second_pass_model": args.model, "prompts": len(prompts), "snr_db": args.snr}
    async with Service(s, http=False, sip=False, webrtc=False) as svc:
        sp, m = svc.second_pass, svc.manager
        db = create_async_engine(async_url(svc.database_url))
        try:
            # 1. clean WER calls; the pass runs after each ends.
            calls = await _calls(m, [p for p, _ in clean], "clean")
            await sp.idle.wait()
            await svc.writer.flush(timeout=120)
            ids = [c.id for c in calls]
            refs = [t for _, t in clean]
            out["clean"] = {"wer_live": round(wer(refs, await _texts(db, ids, 0)), 4),
                            "wer_second_pass": round(wer(refs, await _texts(db, ids, 1)), 4)}
            print("clean", out["clean"], file=sys.stderr, flush=True)
            # 2. latency, second pass idle (calls ending now are not queued).
            m.on_call_end = None
            quiet = await _calls(m, load, "quiet")
            await svc.writer.flush(timeout=120)
            out["latency_without"] = await _latencies(db, [c.id for c in quiet])
            print("without", out["latency_without"], file=sys.stderr, flush=True)
            # 3. the noisy WER calls (not transcribed by the pass yet), then the same load while
            # the pass works through them and the quiet calls.
            noisy_calls = await _calls(m, [p for p, _ in noisy], "noisy")
            await svc.writer.flush(timeout=120)
            busy0 = sp.stats["busy_s"]
            for c in noisy_calls + quiet:
                sp.call_ended(c.id)
            t0 = time.monotonic()
            busy_run = await _calls(m, load, "busy")
            run_s = time.monotonic() - t0
            busy_during = sp.stats["busy_s"] - busy0
            await svc.writer.flush(timeout=120)
            out["latency_with"] = await _latencies(db, [c.id for c in busy_run])
            out["latency_with"]["second_pass_busy_share"] = round(min(1.0, busy_during / run_s), 2)
            print("with", out["latency_with"], file=sys.stderr, flush=True)
            await sp.idle.wait()
            await svc.writer.flush(timeout=120)
            ids = [c.id for c in noisy_calls]
            refs = [t for _, t in noisy]
            out["noisy"] = {"wer_live": round(wer(refs, await _texts(db, ids, 0)), 4),
                            "wer_second_pass": round(wer(refs, await _texts(db, ids, 1)), 4)}
            out["second_pass"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in sp.stats.items()}
        finally:
            await db.dispose()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m telephony.bench.second_pass", description=__doc__.split("\n\n")[0])
    p.add_argument("--config")
    p.add_argument("--legs", type=int, default=4, help="WER calls (one leg each) per condition")
    p.add_argument("--prompts-per-leg", type=int, default=10)
    p.add_argument("--load-legs", type=int, default=6, help="concurrent legs of the latency runs")
    p.add_argument("--duration", type=float, default=40.0, help="seconds per load leg")
    p.add_argument("--model", default="base", help="second-pass model")
    p.add_argument("--snr", type=float, default=10.0, help="noisy condition: white noise at this SNR (dB)")
    p.add_argument("--no-partials", action="store_true")
    p.add_argument("--out", default="bench-second-pass.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(run(args))
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
