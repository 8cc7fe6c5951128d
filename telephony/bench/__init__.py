"""``telephony bench``: what this machine sustains, measured. Prints a table, writes JSON.

- pipeline: cost of one leg's media path per 20 ms frame (RTP parse, jitter
  buffer, G.711 decode, 8→16 kHz), without ASR, and the legs per core it implies;
  VAD cost per frame separately.
- asr / wer: the Asterisk prompts at telephone quality (μ-law RTP) through the
  batch pipeline: word error rate and the decode real-time factor per leg.
- latency: N legs in parallel, each a live call paced in real time (prompts with
  pauses, ~70 % speech), stored in PostgreSQL: time from the end of an utterance's
  audio to its row committed, p50/p95; CPU and how far behind real time we fell.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import time
import wave
from dataclasses import dataclass, field

import numpy as np

from ..accuracy import asterisk_prompts, wer
from ..config import Settings


def _pcm8k(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def _rtp_stream(pcm8k: np.ndarray, ssrc: int = 0xBE7C4) -> list[bytes]:
    from ..g711 import encode
    from ..rtp import build_rtp

    ulaw = encode(pcm8k.astype("<i2").tobytes(), "PCMU")
    return [build_rtp(0, n, n * 160, ssrc, ulaw[i:i + 160]) for n, i in enumerate(range(0, len(ulaw) - 159, 160))]


# -- pipeline ---------------------------------------------------------------

def bench_pipeline(settings: Settings, frames: int = 15000) -> dict:
    from ..leg import MediaLeg, play_capture
    from ..vad import Endpointer

    prompts = asterisk_prompts(limit=20)
    pcm = np.concatenate([_pcm8k(p) for p, _ in prompts])
    packets = _rtp_stream(pcm)
    while len(packets) < frames:
        packets += packets
    packets = packets[:frames]
    # Re-number so the stream is continuous; 1 % loss and some reordering, like a real network.
    from ..rtp import build_rtp, parse_rtp

    rng = random.Random(5)
    stream = []
    for n, d in enumerate(packets):
        p = parse_rtp(d)
        if rng.random() < 0.01:
            continue
        stream.append((n * 0.02 + rng.uniform(0, 0.03), build_rtp(0, n, n * 160, p.ssrc, p.payload)))
    stream.sort()
    leg = MediaLeg("PCMU", settings.media)
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = list(play_capture(leg, stream, frames * 0.02))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    frames = leg.frames
    us = cpu / frames * 1e6
    audio = np.concatenate(out)
    vad = Endpointer(settings.vad)
    n_vad = min(len(audio), 16000 * 60)
    v0 = time.process_time()
    for j in range(0, n_vad, 320):
        vad.feed(audio[j:j + 320])
    vad_us = (time.process_time() - v0) / (n_vad / 320) * 1e6
    return {
        "frames": frames,
        "us_per_frame": round(us, 2),
        "wall_us_per_frame": round(wall / frames * 1e6, 2),
        "legs_per_core": int(20000 / us),
        "vad_engine": settings.vad.engine,
        "vad_us_per_frame": round(vad_us, 1),
        "stats": leg.stats(),
    }


# -- accuracy and ASR speed -------------------------------------------------

class _NullSink:
    async def submit(self, record) -> None:
        pass


async def bench_wer(settings: Settings, n_prompts: int) -> dict:
    from ..asr import create_engine
    from ..batch import transcribe_call
    from ..ingest import CallInput, RtpLegInput

    prompts = asterisk_prompts(limit=n_prompts)
    engine = create_engine(settings)
    refs, hyps = [], []
    audio_s = 0.0
    try:
        sem = asyncio.Semaphore(settings.asr.workers)
        results: dict[int, str] = {}

        async def one(i, path, text):
            pcm = np.concatenate([_pcm8k(path), np.zeros(4000, np.int16)])
            packets = [(n * 0.02, d) for n, d in enumerate(_rtp_stream(pcm))]
            call = CallInput(path=str(path), kind="pcap", meta={}, duration_ms=len(packets) * 20,
                             legs=[RtpLegInput(label="prompt", codec="PCMU", packets=packets, ssrc=0xBE7C4, meta={})])
            async with sem:
                r = await transcribe_call(call, settings, engine, _NullSink())
            results[i] = " ".join(u.text for u in r.utterances())
            return len(pcm) / 8000

        busy0 = engine.scheduler.stats["busy_s"]
        t0 = time.perf_counter()
        durations = await asyncio.gather(*(one(i, p, t) for i, (p, t) in enumerate(prompts)))
        wall = time.perf_counter() - t0
        audio_s = sum(durations)
        busy = engine.scheduler.stats["busy_s"] - busy0
        for i, (_, text) in enumerate(prompts):
            refs.append(text)
            hyps.append(results[i])
    finally:
        await engine.close()
    worst = sorted(((wer([r], [h]), r, h) for r, h in zip(refs, hyps)), reverse=True)[:3]
    return {
        "prompts": len(prompts),
        "audio_s": round(audio_s, 1),
        "wer": round(wer(refs, hyps), 4),
        "rtf_per_leg": round(busy / audio_s, 3),  # decode seconds per second of audio, one worker
        "batch_speed_x": round(audio_s / wall, 1),
        "model": settings.asr.model,
        "beam_size": settings.asr.beam_size,
        "worst": [{"wer": round(w, 3), "ref": r, "hyp": h} for w, r, h in worst],
    }


# -- latency under load -----------------------------------------------------

@dataclass
class _Script:
    """One leg's audio: prompts separated by pauses, and when each prompt ends."""

    packets: list[bytes]
    spans: list[tuple[float, float, str]] = field(default_factory=list)  # (start_s, end_s, text)


def _script(prompts, duration: float, rng: random.Random) -> _Script:
    parts, spans, t = [], [], 0.0
    while t < duration:
        path, text = prompts[rng.randrange(len(prompts))]
        pcm = _pcm8k(path)
        if t + len(pcm) / 8000 > duration and spans:
            break
        spans.append((t, t + len(pcm) / 8000, text))
        pause = rng.uniform(0.6, 1.6)
        parts += [pcm, np.zeros(int(8000 * pause), np.int16)]
        t += len(pcm) / 8000 + pause
    return _Script(_rtp_stream(np.concatenate(parts), ssrc=rng.randrange(1 << 32)), spans)


async def bench_latency(settings: Settings, n_legs: int, duration: float) -> dict:
    from ..calls import CallManager
    from ..records import CallRecord, new_id, utcnow
    from ..runtime import Runtime

    rng = random.Random(11)
    prompts = asterisk_prompts(limit=80)
    scripts = [_script(prompts, duration, rng) for _ in range(n_legs)]
    committed: dict[str, list] = {}

    def on_utterance(rec, t_commit):
        committed.setdefault(rec.leg_id, []).append((rec, t_commit))

    async with Runtime(settings) as rt:
        rt.writer.on_utterance = on_utterance
        manager = CallManager(settings, rt.engine, rt.writer)
        legs, senders = [], []
        c0, t0 = time.process_time(), time.perf_counter()
        lateness = 0.0
        loop_lag = 0.0

        async def send(leg, script):
            # Like a socket's receive queue: whatever is due is delivered together.
            nonlocal lateness
            start, n, total = leg.t0, 0, len(script.packets)
            while n < total:
                now = time.monotonic()
                lateness = max(lateness, now - (start + n * 0.02))
                while n < total and start + n * 0.02 <= now:
                    leg.push_rtp(script.packets[n], start + n * 0.02)
                    n += 1
                if n < total:
                    await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

        async def watch_loop():
            nonlocal loop_lag
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                loop_lag = max(loop_lag, time.perf_counter() - t - 0.01)

        watcher = asyncio.create_task(watch_loop())
        for i, script in enumerate(scripts):
            call = await manager.start_call(CallRecord(id=new_id(), source="file", started_at=utcnow(),
                                                       external_id=f"bench-leg-{i}", meta={"bench": True}))
            leg = call.add_leg(speaker=f"bench-{i}", codec="PCMU")
            legs.append((call, leg, script))
            senders.append(asyncio.create_task(send(leg, script)))
            await asyncio.sleep(0.37)  # stagger starts like real traffic: utterance ends do not all coincide
        await asyncio.gather(*senders)
        await asyncio.gather(*(call.end() for call, _, _ in legs))
        await manager.flushed()
        await rt.writer.flush(timeout=60)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        watcher.cancel()
        backlog_max = rt.engine.scheduler.stats
    latencies, refs, hyps = [], [], []
    for call, leg, script in legs:
        rows = sorted(committed.get(leg.id, []), key=lambda x: x[0].start_ms)
        refs.append(" ".join(t for _, _, t in script.spans))
        hyps.append(" ".join(r.text for r, _ in rows))
        for rec, t_commit in rows:
            s, e = (rec.start_ms - leg.record.started_ms) / 1000, (rec.end_ms - leg.record.started_ms) / 1000
            # The prompt this utterance belongs to: the one it overlaps most.
            best = max(script.spans, key=lambda sp: min(e, sp[1]) - max(s, sp[0]))
            if min(e, best[1]) - max(s, best[0]) <= 0:
                continue  # no speech there (noise): not a latency sample
            # Sender time (when the last packet of that speech was sent); the leg's own
            # timeline runs a playout delay behind it.
            speech_end = leg.t0 + min(e - settings.media.jitter_window_ms / 1000, best[1])
            latencies.append(t_commit - speech_end)
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "legs": n_legs,
        "duration_s": duration,
        "utterances": len(latencies),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
        "latency_max_s": round(float(lat.max()), 3),
        "wer": round(wer(refs, hyps), 4),
        "cpu_cores_used": round(cpu / wall, 2),
        "sender_max_late_ms": round(lateness * 1000, 1),
        "clock_max_late_ms": round(manager.clock.max_lateness * 1000, 1),
        "loop_max_lag_ms": round(loop_lag * 1000, 1),
        "decodes": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in backlog_max.items()},
        "hangover_ms": settings.vad.hangover_ms,
        "beam_size": settings.asr.beam_size,
    }


# -- driver -----------------------------------------------------------------

def _table(results: dict) -> str:
    rows = []
    if "pipeline" in results:
        p = results["pipeline"]
        rows += [("pipeline µs per 20 ms frame per leg (RTP→jitter→G.711→16 kHz)", f"{p['us_per_frame']}", "≤ 25"),
                 ("implied legs per core (media only)", f"{p['legs_per_core']}", ""),
                 (f"VAD ({p['vad_engine']}) µs per frame", f"{p['vad_us_per_frame']}", "")]
    if "wer" in results:
        w = results["wer"]
        rows += [(f"WER, {w['prompts']} Asterisk prompts, μ-law 8 kHz ({w['model']}, beam {w['beam_size']})", f"{w['wer'] * 100:.2f} %", "≤ 6 %"),
                 ("ASR real-time factor per leg (decode s / audio s)", f"{w['rtf_per_leg']}", ""),
                 ("batch transcription speed (audio s per wall s)", f"{w['batch_speed_x']}×", "")]
    if "latency" in results:
        l = results["latency"]
        rows += [(f"final latency p50, {l['legs']} live legs ({l['utterances']} utterances)", f"{l['latency_p50_s']} s", ""),
                 (f"final latency p95, {l['legs']} live legs", f"{l['latency_p95_s']} s", "≤ 1.2 s"),
                 ("WER in the live run", f"{l['wer'] * 100:.2f} %", ""),
                 ("CPU cores used in the live run", f"{l['cpu_cores_used']}", "of 2")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':{width}}  {'value':>10}  target", "-" * (width + 22)]
    lines += [f"{m:{width}}  {v:>10}  {t}" for m, v, t in rows]
    return "\n".join(lines)


async def run_bench(settings: Settings, args) -> dict:
    parts = args.only or ["pipeline", "wer", "latency"]
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if "pipeline" in parts:
        results["pipeline"] = bench_pipeline(settings)
    if "wer" in parts or "asr" in parts:
        results["wer"] = await bench_wer(settings, args.prompts)
    if "latency" in parts:
        results["latency"] = await bench_latency(settings, args.legs, args.duration)
    print(_table(results))
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nwritten to {args.out}")
    return results
