"""SIP media load: N concurrent calls from a raw UAC over loopback into a real endpoint, CPU measured.

    python -m telephony.sip.bench --legs 50 --secs 20
    python -m telephony.sip.bench --legs 4 --secs 20 --loss 0.05 --reorder 0.05 --jitter-ms 30

A server process runs ``SipEndpoint`` with the real per-leg media pipeline
(``CallManager``, ASR off: this measures SIP + RTP + jitter buffer + decode +
resample). This process places the calls with ``loadgen`` (real speech, an
Asterisk prompt looped) and reads the server's CPU time with psutil over the
steady middle of the run. One JSON line on stdout.

The pjsua2 variant of this spike (AudioMediaPort taps) is in git history
(commit 2ee3cc8, ``telephony/sip/spike.py``); its numbers are in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

SPEECH = "/usr/share/asterisk/sounds/en/tt-monkeys.wav"


# --------------------------------------------------------------------------- server
def _server() -> None:
    from ..asr.null import NullEngine
    from ..calls import CallManager
    from ..config import Settings
    from .endpoint import SipEndpoint
    from .settings import SipSettings

    class Sink:
        def __init__(self):
            self.legs = []

        async def submit(self, record):
            if type(record).__name__ == "LegEnd":
                self.legs.append(record.stats | {"duration_ms": record.duration_ms})

    async def run():
        s = Settings()
        s.asr.engine = "none"
        sink = Sink()
        manager = CallManager(s, NullEngine(), sink)
        sip = SipSettings(port=0, max_calls=2000, rate_limit=0, rtp_port_min=30000, rtp_port_max=40000)
        ep = SipEndpoint(sip, manager)
        await ep.start()
        print(json.dumps({"port": ep.port, "pid": os.getpid()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the driver says stop
        await ep.stop()
        await manager.flushed()
        print(json.dumps({"legs": sink.legs, "max_lateness_ms": round(manager.clock.max_lateness * 1000, 1)}),
              flush=True)

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
            raise RuntimeError("bench server exited")
        if line.startswith("{"):
            return json.loads(line)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--legs", type=int, default=20)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--reorder", type=float, default=0)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.server:
        _server()
        return
    import psutil

    from .loadgen import Impairment

    proc = subprocess.Popen([sys.executable, "-m", "telephony.sip.bench", "--server"],
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
        done = _json_line(proc)
        legs = done["legs"]
    finally:
        proc.stdin.close() if not proc.stdin.closed else None
        proc.wait(30)
    keys = ("received", "lost", "late", "reordered", "silence_ms", "duration_ms")
    total = {k: sum(leg.get(k, 0) for leg in legs) for k in keys}
    print(json.dumps({"legs": a.legs, "secs": a.secs, "impair": [a.loss, a.reorder, a.jitter_ms],
                      "cpu_cores": round(cpu, 4), "cpu_pct_per_leg": round(100 * (cpu - idle) / max(1, a.legs), 3),
                      "idle_cpu_cores": round(idle, 4), "rss_mb": round(rss / 2**20, 1), "sent": sent,
                      "pipeline": total, "legs_seen": len(legs),
                      "clock_max_lateness_ms": done["max_lateness_ms"]}))


if __name__ == "__main__":
    main()
