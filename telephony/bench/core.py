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

from .accuracy import asterisk_prompts, wer
from ..config import Settings


def _pcm8k(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def _rtp_stream(pcm8k: np.ndarray, ssrc: int = 0xBE7C4) -> list[bytes]:
    from ..media.codecs import CODECS
    from ..media.rtp import build_rtp

    usable = len(pcm8k) - len(pcm8k) % 160
    payloads = CODECS["PCMU"].packetize(pcm8k[:usable].astype("<i2").tobytes())
    return [build_rtp(0, n, n * 160, ssrc, p) for n, p in enumerate(payloads)]


# The same prompt through each codec, as a peer would send it: μ-law from the 8 kHz WAV, G.722
# as Asterisk's own wideband .g722 file, Opus encoded from that file's 16 kHz speech.
WER_CODECS = {"PCMU": 0, "G722": 9, "OPUS": 111}


def _codec_packets(path, codec_name: str) -> tuple[list[bytes], float]:
    """RTP packets of one prompt (plus 0.5 s of silence) through ``codec_name``, and its seconds."""
    from ..media.codecs import CODECS
    from ..media.rtp import build_rtp

    codec, pt = CODECS[codec_name], WER_CODECS[codec_name]
    if codec_name == "PCMU":
        pcm = np.concatenate([_pcm8k(path), np.zeros(4000, np.int16)])
        return _rtp_stream(pcm), len(pcm) / 8000
    g722_path = path.with_suffix(".g722")
    if not g722_path.is_file():
        raise FileNotFoundError(f"{g722_path} missing: apt-get install asterisk-core-sounds-en-g722")
    data = g722_path.read_bytes() + bytes([0xFA]) * 4000  # + ~0.5 s of G.722 near-silence
    g722 = [data[i:i + 160] for i in range(0, len(data) - 159, 160)]
    if codec_name == "G722":
        payloads = g722
    else:
        dec = CODECS["G722"].decoder()
        wide = b"".join(dec.decode(p) for p in g722)
        payloads = codec.packetize(wide[: len(wide) - len(wide) % 640])
    step = codec.clock_rate // 50
    return [build_rtp(pt, n, n * step, 0xBE7C4, p) for n, p in enumerate(payloads)], len(payloads) * 0.02


# -- pipeline ---------------------------------------------------------------

def bench_pipeline(settings: Settings, frames: int = 15000) -> dict:
    """The media path per 20 ms frame per leg, for a telephone-band (μ-law) and a wideband (G.722)
    leg: RTP parse → jitter buffer → decode → one resample to 16 kHz."""
    from ..media.codecs import CODECS
    from ..media.leg import MediaLeg, play_capture
    from ..media.resample import Resampler
    from ..media.rtp import build_rtp

    prompts = asterisk_prompts(limit=20)
    pcm = np.concatenate([_pcm8k(p) for p, _ in prompts])
    out = {}
    for name, pt in (("PCMU", 0), ("G722", 9)):
        codec = CODECS[name]
        signal = pcm if codec.rate == 8000 else (Resampler(8000, 16000).process(pcm, last=True) * 32767).astype(np.int16)
        payloads = codec.packetize(signal[: len(signal) - len(signal) % (codec.rate // 50)].astype("<i2").tobytes())
        while len(payloads) < frames:
            payloads += payloads
        payloads = payloads[:frames]
        # 1 % loss and some reordering, like a real network.
        rng = random.Random(5)
        step = codec.clock_rate // 50
        stream = sorted((n * 0.02 + rng.uniform(0, 0.03), build_rtp(pt, n & 0xFFFF, n * step, 0xBE7C4, p))
                        for n, p in enumerate(payloads) if rng.random() >= 0.01)
        leg = MediaLeg({pt: codec}, 16000, settings.media)
        t0 = time.perf_counter()
        c0 = time.process_time()
        for _ in play_capture(leg, stream, frames * 0.02):
            pass
        wall = time.perf_counter() - t0
        us = (time.process_time() - c0) / leg.frames * 1e6
        out[name] = {"frames": leg.frames, "us_per_frame": round(us, 2), "wall_us_per_frame": round(wall / leg.frames * 1e6, 2),
                     "legs_per_core": int(20000 / us), "lost": leg.stats()["lost"]}
    return out


async def bench_vad(settings: Settings, legs: int = 32, seconds: float = 20.0) -> dict:
    """The shared VAD, ``legs`` streams at once (batched), speech and digital silence: CPU per 20 ms per leg."""
    from ..asr.vad import SharedVad
    from ..media.resample import Resampler

    pcm8k = np.concatenate([_pcm8k(p) for p, _ in asterisk_prompts(limit=20)])
    audio = Resampler(8000, 16000).process(pcm8k[: int(8000 * seconds)], last=True)
    out = {}
    for kind, signal in (("speech", audio), ("silence", np.zeros_like(audio))):
        vad = SharedVad(settings.vad)
        done = asyncio.Event()
        got = [0]
        total = legs * (len(signal) // 512)

        def deliver(probs, got=got):
            got[0] += len(probs)
            if got[0] >= total:
                done.set()

        streams = [vad.stream(deliver) for _ in range(legs)]
        c0 = time.process_time()
        for i in range(0, len(signal), 1600):  # 100 ms chunks, as the pacer hands them on
            for s in streams:
                s.push(signal[i:i + 1600])
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        cpu = time.process_time() - c0
        vad.close()
        frames = legs * len(signal) / 320
        out[kind] = {"us_per_frame_per_leg": round(cpu / frames * 1e6, 1), "windows_scored": vad.windows_scored,
                     "batches": vad.batches}
    return out


# -- accuracy and ASR speed -------------------------------------------------

async def bench_wer(settings: Settings, n_prompts: int, codec: str = "PCMU") -> dict:
    from ..asr import create_engine
    from ..batch import transcribe_call
    from .sinks import CollectingSink
    from ..ingest import CallInput, RtpLegInput
    from ..media.codecs import CODECS

    prompts = asterisk_prompts(limit=n_prompts)
    engine = create_engine(settings)
    refs, hyps = [], []
    audio_s = 0.0
    try:
        sem = asyncio.Semaphore(settings.asr.workers)
        results: dict[int, str] = {}

        async def one(i, path, text):
            rtp, seconds = _codec_packets(path, codec)
            packets = [(n * 0.02, d) for n, d in enumerate(rtp)]
            call = CallInput(path=str(path), kind="pcap", meta={}, duration_ms=len(packets) * 20,
                             legs=[RtpLegInput(label="prompt", payload_types={WER_CODECS[codec]: CODECS[codec]},
                                               packets=packets, ssrc=0xBE7C4, meta={})])
            async with sem:
                r = await transcribe_call(call, settings, engine, CollectingSink(keep=False))
            results[i] = " ".join(u.text for u in r.utterances())
            return seconds

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
        "codec": codec,
        "engine": settings.asr.engine,
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
    from ..records import CallRecord, new_id, utcnow
    from ..service import Service

    rng = random.Random(11)
    prompts = asterisk_prompts(limit=80)
    scripts = [_script(prompts, duration, rng) for _ in range(n_legs)]
    committed: dict[str, list] = {}

    def on_utterance(rec, t_commit):
        committed.setdefault(rec.leg_id, []).append((rec, t_commit))

    async with Service(settings, http=False, sip=False) as service:
        rt, manager = service.runtime, service.manager
        rt.writer.on_utterance = on_utterance
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
                    leg.push_datagram(script.packets[n], start + n * 0.02)
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
        rows += [("pipeline µs per 20 ms frame per leg, μ-law (RTP→jitter→G.711→16 kHz)", f"{p['PCMU']['us_per_frame']}", "≤ 25"),
                 ("pipeline µs per 20 ms frame per leg, G.722 (RTP→jitter→G.722, 16 kHz)", f"{p['G722']['us_per_frame']}", ""),
                 ("implied μ-law legs per core (media only)", f"{p['PCMU']['legs_per_core']}", "")]
    if "vad" in results:
        v = results["vad"]
        rows += [("shared VAD µs per 20 ms per talking leg (32 legs batched)", f"{v['speech']['us_per_frame_per_leg']}", ""),
                 ("shared VAD µs per 20 ms per silent leg (energy gate)", f"{v['silence']['us_per_frame_per_leg']}", "")]
    if "wer" in results:
        w = results["wer"]
        rows += [(f"WER, {w['prompts']} Asterisk prompts, μ-law 8 kHz ({w['engine']})", f"{w['wer'] * 100:.2f} %", "≤ 6 %"),
                 ("ASR real-time factor per leg (decode s / audio s)", f"{w['rtf_per_leg']}", ""),
                 ("batch transcription speed (audio s per wall s)", f"{w['batch_speed_x']}×", "")]
    for name, w in results.get("codecs", {}).items():
        rows.append((f"WER, {w['prompts']} Asterisk prompts through {name} RTP ({w['engine']})", f"{w['wer'] * 100:.2f} %", "≤ 6 %"))
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
        results["vad"] = await bench_vad(settings)
    if "wer" in parts or "asr" in parts:
        results["wer"] = await bench_wer(settings, args.prompts)
    if "codecs" in parts:
        results["codecs"] = {name: await bench_wer(settings, args.prompts, name) for name in WER_CODECS}
    if "latency" in parts:
        results["latency"] = await bench_latency(settings, args.legs, args.duration)
    print(_table(results))
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nwritten to {args.out}")
    return results
