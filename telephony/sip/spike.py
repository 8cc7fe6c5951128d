"""Media spike: our own RTP sockets vs. pjsua2 ``AudioMediaPort`` taps, measured.

    python -m telephony.sip.spike --mode rtp --legs 50 --secs 20
    python -m telephony.sip.spike --mode port --legs 50 --secs 20
    python -m telephony.sip.spike --mode rtp --legs 1 --secs 20 --loss 0.05 --reorder 0.05 --jitter-ms 30

A server process runs the SIP endpoint with the real per-leg media pipeline
(``CallManager`` with ASR off) and either (rtp) our sockets announced in the SDP,
or (port) pjsua2's own RTP stack, jitter buffer and decoder, tapped per leg
with an ``AudioMediaPort`` whose 20 ms frames are re-packetised with their
frame counter as RTP timestamp and fed to the same pipeline. This process
places the calls with ``loadgen`` and reads the server's CPU time with psutil
over the steady part of the run. Results are one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import json
import os
import subprocess
import sys
import time

SPEECH = "/usr/share/asterisk/sounds/en/tt-monkeys.wav"


# --------------------------------------------------------------------------- server
def _server(mode: str) -> None:
    import pjsua2 as pj

    from ..asr.null import NullEngine
    from ..calls import CallManager
    from ..config import Settings
    from ..rtp import build_rtp
    from . import ua as ua_mod
    from .endpoint import SipEndpoint, _Handler
    from .settings import SipSettings

    class Sink:
        def __init__(self):
            self.legs = []

        async def submit(self, record):
            if type(record).__name__ == "LegEnd":
                self.legs.append(record.stats | {"duration_ms": record.duration_ms})

    class Tap(pj.AudioMediaPort):
        """pjsua2 decoded frames → μ-law → synthetic RTP → the same leg pipeline."""

        def __init__(self, loop, leg):
            super().__init__()
            self.loop, self.leg, self.n, self.ssrc = loop, leg, 0, 1234

        def onFrameReceived(self, frame):
            pcm = bytes(frame.buf)
            if len(pcm) != 320:
                pcm = b"\0" * 320
            pkt = build_rtp(0, self.n & 0xFFFF, self.n * 160, self.ssrc, audioop.lin2ulaw(pcm, 2))
            self.n += 1
            self.loop.call_soon_threadsafe(self.leg.push_rtp, pkt)

    class PortHandler(_Handler):
        def on_sdp_created(self, call, prm):  # keep pjsua's own RTP sockets in the answer
            d = call.ctx
            if d is not None and d.started is None:
                d.started = asyncio.Future(loop=self.ep.loop)
                self.ep._spawn(self.ep._start_port_dialog(d))

    class PortEndpoint(SipEndpoint):
        async def _start_port_dialog(self, d):
            live = await self.manager.start_call(self._call_record(d))
            leg = live.add_leg(speaker=d.plain_speaker, codec="PCMU")
            d.started.set_result(live)

            def connect():
                call = d.ua_call
                if call is None:
                    return
                ci = call.getInfo()
                for mi in ci.media:
                    if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                        tap = Tap(self.loop, leg)
                        fmt = pj.MediaFormatAudio()
                        fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
                        tap.createPort(f"tap{ci.id}", fmt)
                        call.getAudioMedia(mi.index).startTransmit(tap)
                        self.taps.append(tap)
                        return
                self.ua.submit(connect)  # media not active yet: retry next poll

            self.ua.submit(connect)

        async def _end_dialog(self, d):
            live = await d.started
            await live.end()

    class PortUA(ua_mod.UserAgent):
        def _init(self):
            super()._init()
            self.ep.audDevManager().setNullDev()  # the conference bridge needs a clock to pull frames

    async def run():
        s = Settings()
        s.asr.engine = "none"
        sink = Sink()
        manager = CallManager(s, NullEngine(), sink)
        sip = SipSettings(port=0, log_level=0, max_calls=1000, rate_limit=0, rtp_port_min=30000, rtp_port_max=40000)
        if mode == "port":
            ep = PortEndpoint(sip, manager)
            ep.taps = []
            ep.ua = PortUA(sip, PortHandler(ep))
        else:
            ep = SipEndpoint(sip, manager)
        await ep.start()
        print(json.dumps({"port": ep.port, "pid": os.getpid()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the driver says stop
        await ep.stop()
        await manager.flushed()
        print(json.dumps({"legs": sink.legs}), flush=True)

    asyncio.run(run())


# --------------------------------------------------------------------------- driver
async def _drive(port: int, legs: int, secs: float, impair) -> dict:
    from .loadgen import RawUac, read_wav_g711, sdp_offer, send_rtp

    audio = read_wav_g711(SPEECH)
    need = int(secs * 8000)
    audio = (audio * (need // len(audio) + 1))[:need]
    uac = await RawUac(("127.0.0.1", port)).open()
    dialogs = []
    for i in range(legs):
        d = uac.dialog(display=f"leg{i}")
        r = await d.invite(sdp_offer(50000 + 2 * i, codecs=(0,), direction="sendrecv"))
        if r.status != 200:
            raise RuntimeError(f"INVITE {i}: {r.status} {r.reason}")
        dialogs.append(d)
    sends = [asyncio.create_task(send_rtp(d.media_port(0), audio, impair=impair)) for d in dialogs]
    stats = await asyncio.gather(*sends)
    for d in dialogs:
        await d.bye()
    await uac.close()
    return {"sent": sum(s.sent for s in stats), "dropped": sum(s.dropped for s in stats),
            "reordered": sum(s.reordered for s in stats)}


def _json_line(proc) -> dict:
    """pjlib prints its banner on stdout whatever the log level: skip to our JSON."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("spike server exited")
        if line.startswith("{"):
            return json.loads(line)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["rtp", "port"], default="rtp")
    ap.add_argument("--legs", type=int, default=20)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--reorder", type=float, default=0)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.server:
        _server(a.mode)
        return
    import psutil

    from .loadgen import Impairment

    proc = subprocess.Popen([sys.executable, "-m", "telephony.sip.spike", "--server", "--mode", a.mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        hello = _json_line(proc)
        ps = psutil.Process(hello["pid"])
        idle0 = ps.cpu_times()
        time.sleep(2)
        idle1 = ps.cpu_times()

        async def drive():
            task = asyncio.create_task(_drive(hello["port"], a.legs, a.secs,
                                              Impairment(a.loss, a.reorder, a.jitter_ms)))
            await asyncio.sleep(min(3.0, a.secs / 4) + a.legs * 0.01)  # calls set up, media flowing
            c0, t0 = ps.cpu_times(), time.monotonic()
            await asyncio.sleep(a.secs / 2)
            c1, t1 = ps.cpu_times(), time.monotonic()
            sent = await task
            return sent, (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)

        sent, cpu = asyncio.run(drive())
        idle = (idle1.user + idle1.system - idle0.user - idle0.system) / 2
        rss = ps.memory_info().rss
        proc.stdin.write("\n")
        proc.stdin.flush()
        legs = _json_line(proc)["legs"]
    finally:
        proc.stdin.close() if not proc.stdin.closed else None
        proc.wait(30)
    keys = ("received", "lost", "late", "reordered", "silence_ms", "duration_ms")
    total = {k: sum(leg.get(k, 0) for leg in legs) for k in keys}
    print(json.dumps({"mode": a.mode, "legs": a.legs, "secs": a.secs, "impair": [a.loss, a.reorder, a.jitter_ms],
                      "cpu_cores": round(cpu, 4), "cpu_pct_per_leg": round(100 * (cpu - idle) / max(1, a.legs), 3),
                      "idle_cpu_cores": round(idle, 4), "rss_mb": round(rss / 2**20, 1), "sent": sent,
                      "pipeline": total, "legs_seen": len(legs)}))


if __name__ == "__main__":
    main()
