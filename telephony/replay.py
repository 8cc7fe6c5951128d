"""``telephony replay FILE``: play a file into the live pipeline as if it were a call.

Captured RTP is re-sent with its original timing (loss, jitter and reordering
included); WAV and raw G.711 legs are packetised as 20 ms PCMU RTP at real
time. Partials and finals print as they come, like a live caption feed.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np

from .calls import CallManager
from .captions import CaptionBus
from .config import Settings
from .media.codecs import CODECS, Codec
from .ingest import PcmLegInput, RtpLegInput, load_call
from .records import CallRecord, new_id, utcnow
from .media.resample import Resampler
from .media.rtp import build_rtp
from .runtime import Runtime


def packetize(leg: PcmLegInput, ssrc: int = 0x5EED) -> tuple[Codec, list[tuple[float, bytes]]]:
    """A PCM leg as RTP every 20 ms: PCMU for telephone-band audio, G.722 for 16 kHz (kept wideband)."""
    codec = CODECS["PCMU"] if leg.rate == 8000 else CODECS["G722"]
    samples = leg.samples
    if leg.rate != codec.rate:
        samples = (np.clip(Resampler(leg.rate, codec.rate).process(samples, last=True), -1, 1) * 32767).astype(np.int16)
    step = codec.clock_rate // 50
    offset = leg.start_ms / 1000
    payloads = codec.packetize(samples.astype("<i2").tobytes())
    return codec, [(offset + n * 0.02, build_rtp(codec.static_pt, n, n * step, ssrc, p, marker=n == 0))
                   for n, p in enumerate(payloads)]


async def replay_file(path: str, settings: Settings, speed: float = 1.0, out=sys.stdout) -> str:
    call_input = load_call(path)
    async with Runtime(settings) as rt:
        bus = CaptionBus()
        manager = CallManager(settings, rt.engine, rt.writer, bus)
        call = await manager.start_call(CallRecord(id=new_id(), source="file", started_at=utcnow(),
                                                   external_id=call_input.path, meta={"replay": True, "kind": call_input.kind}))
        sub = bus.subscribe(call.id)
        legs = []
        for leg_in in call_input.legs:
            if isinstance(leg_in, RtpLegInput):
                legs.append((call.add_leg(speaker=leg_in.label, payload_types=leg_in.payload_types, meta=leg_in.meta), leg_in.packets))
            else:
                codec, packets = packetize(leg_in)
                legs.append((call.add_leg(speaker=leg_in.label, codec=codec), packets))

        async def send(leg, packets):
            t0 = time.monotonic()
            for at, datagram in packets:
                delay = t0 + at / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                leg.push_datagram(datagram)

        async def show():
            async for cap in sub:
                if cap.kind == "partial":
                    print(f"  … [{cap.start_ms / 1000:7.2f}] {cap.speaker}: {cap.text}", file=out, flush=True)
                elif cap.kind == "final":
                    print(f"[{cap.start_ms / 1000:7.2f}-{cap.end_ms / 1000:7.2f}] {cap.speaker}: {cap.text}", file=out, flush=True)
                elif cap.kind == "call_end":
                    return

        printer = asyncio.create_task(show())
        await asyncio.gather(*(send(leg, packets) for leg, packets in legs))
        await call.end()
        await asyncio.wait_for(printer, 10)
        await manager.flushed()
        print(f"-- call {call.id} stored", file=sys.stderr)
        return call.id
