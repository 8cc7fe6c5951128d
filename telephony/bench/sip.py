"""SIP load: N concurrent calls from a raw UAC over loopback into a real endpoint; CPU and latency measured.

    python -m telephony.bench.sip --calls 300 --secs 20                  # ASR off: SIP + RTP + leg pipeline
    python -m telephony.bench.sip --calls 10 --streams 2 --asr --secs 60 # SIPREC, two legs each, embedded ASR
    python -m telephony.bench.sip --calls 4 --loss 0.05 --reorder 0.05 --jitter-ms 30

A server process runs ``SipEndpoint`` with the real ``CallManager`` (ASR off, or
the configured embedded engine: settings come from ``TELEPHONY_CONFIG`` and the environment). This process places the calls (plain INVITEs,
or SIPREC INVITEs with a two-stream SDP and rs-metadata), streams real speech
(Asterisk prompts with pauses, about 70% speech) and reads the server's CPU
time with psutil over the steady middle of the run. The server reports each
final's latency (stored-final time minus the time its last audio sample entered
the pipeline) while media flows, for the first and second half of the run (a
growing second half means a backlog), and apart from those the finals closed by
the hang-up. One JSON line on stdout.

The pjsua2 variant of the media spike (AudioMediaPort taps) is in git history
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

PROMPTS = ("agent-alreadyon", "pbx-invalid", "conf-onlyperson", "agent-pass", "vm-intro", "conf-getpin",
           "queue-thankyou", "vm-options")
SOUNDS = "/usr/share/asterisk/sounds/en"


def speech(secs: float, shift: int = 0) -> bytes:
    """μ-law audio of ``secs`` seconds: prompts separated by 1.2 s pauses (≈70% speech)."""
    from .sip_loadgen import read_wav_g711

    pause = b"\xff" * int(8000 * 1.2)
    out = b""
    i = shift
    while len(out) < secs * 8000:
        out += read_wav_g711(f"{SOUNDS}/{PROMPTS[i % len(PROMPTS)]}.wav") + pause
        i += 1
    return out[: int(secs * 8000)]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 3)


# --------------------------------------------------------------------------- server
def _server(asr: bool) -> None:
    from ..asr import create_engine
    from ..asr.null import NullEngine
    from ..calls import CallManager
    from ..config import load_settings
    from ..sip.endpoint import SipEndpoint
    from ..config import SipSettings

    from .sinks import CollectingSink

    class Sink(CollectingSink):
        def __init__(self):
            super().__init__(keep=False, on_record=self._record)
            self.legs = []
            self.finals = []  # (stored at, latency s)

        def _record(self, record):
            if type(record).__name__ == "LegEnd":
                self.legs.append(record.stats | {"duration_ms": record.duration_ms})

        def on_final(self, record, final):
            if final.audio_end_monotonic:
                now = time.monotonic()
                self.finals.append((now, now - final.audio_end_monotonic))

    async def run():
        s = load_settings()  # TELEPHONY_CONFIG / TELEPHONY_<SECTION>_<KEY> tune the ASR under test
        if not asr:
            s.asr.engine = "none"
        sink = Sink()
        engine = create_engine(s) if asr else NullEngine()
        manager = CallManager(s, engine, sink, on_final=sink.on_final)
        sip = SipSettings(port=0, max_calls=2000, rate_limit=0, rtp_port_min=30000, rtp_port_max=40000)
        ep = SipEndpoint(sip, manager)
        await ep.start()
        print(json.dumps({"port": ep.port, "pid": os.getpid()}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # media starts
        t_media = time.monotonic()
        await loop.run_in_executor(None, sys.stdin.readline)  # media ended: hang up
        t_end = time.monotonic()
        await ep.stop()
        await manager.shutdown()
        await engine.close()
        # Steady state: finals stored while media flowed. Those stored after the hang-up (every
        # leg's last utterance closed at once) are reported apart.
        mid = (t_media + t_end) / 2
        first = [lat for t, lat in sink.finals if t < mid]
        second = [lat for t, lat in sink.finals if mid <= t <= t_end]
        steady = first + second
        tail = [lat for t, lat in sink.finals if t > t_end]
        print(json.dumps({"legs": sink.legs, "max_lateness_ms": round(manager.clock.max_lateness * 1000, 1),
                          "finals": len(sink.finals), "p50": _percentile(steady, 0.5), "p95": _percentile(steady, 0.95),
                          "p95_first_half": _percentile(first, 0.95), "p95_second_half": _percentile(second, 0.95),
                          "finals_after_hangup": len(tail), "max_after_hangup": _percentile(tail, 1.0)}),
              flush=True)

    asyncio.run(run())


# --------------------------------------------------------------------------- driver
def _siprec_body(ports: tuple[int, int], n: int) -> tuple[bytes, str]:
    from .sip_loadgen import sdp_offer

    sdp = sdp_offer(0, codecs=(0,), streams=[{"port": ports[0], "label": "1"}, {"port": ports[1], "label": "2"}])
    xml = (f'<?xml version="1.0"?><recording xmlns="urn:ietf:params:xml:ns:recording:1">'
           f'<session session_id="s{n}"/>'
           f'<participant participant_id="a{n}"><nameID aor="sip:agent{n}@127.0.0.1"><name>Agent {n}</name></nameID></participant>'
           f'<participant participant_id="c{n}"><nameID aor="sip:cust{n}@127.0.0.1"><name>Customer {n}</name></nameID></participant>'
           f'<stream stream_id="x{n}" session_id="s{n}"><label>1</label></stream>'
           f'<stream stream_id="y{n}" session_id="s{n}"><label>2</label></stream>'
           f'<participantstreamassoc participant_id="a{n}"><send>x{n}</send></participantstreamassoc>'
           f'<participantstreamassoc participant_id="c{n}"><send>y{n}</send></participantstreamassoc></recording>')
    b = "bench-boundary"
    body = (f"--{b}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{b}\r\n"
            f"Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{xml}\r\n--{b}--\r\n")
    return body.encode(), f"multipart/mixed;boundary={b}"


async def _drive(port: int, calls: int, streams: int, secs: float, impair, media_started) -> dict:
    from .sip_loadgen import RawUac, sdp_offer, send_rtp, send_rtp_many

    # Every leg speaks the same prompts, but from its own point in the script: legs whose
    # utterances all ended in the same 20 ms would measure a synchronised burst, not load.
    script = speech(secs + len(PROMPTS) * 6)
    offset = lambda leg: int(leg * 2.3 * 8000) % (len(script) - int(secs * 8000))  # noqa: E731
    audio = [[script[offset(i * streams + k):][: int(secs * 8000)] for i in range(calls)] for k in range(streams)]
    uac = await RawUac(("127.0.0.1", port)).open()
    dialogs = []
    impaired = bool(impair.loss or impair.reorder or impair.jitter_ms)
    # The service takes RTP only from the port an SDP announced: one sending socket per stream
    # position serves every call (its port in every offer), or one per leg when impaired.
    shared = [_free_udp_port() for _ in range(streams)]

    def media_port(i: int, k: int) -> int:
        return 50000 + 4 * i + 2 * k if impaired else shared[k]

    for i in range(calls):
        d = uac.dialog(display=f"caller{i}")
        if streams == 2:
            body, ctype = _siprec_body((media_port(i, 0), media_port(i, 1)), i)
            r = await d.invite(body, ctype, headers={"Require": "siprec"})
        else:
            r = await d.invite(sdp_offer(media_port(i, 0), codecs=(0,), direction="sendrecv"))
        if r.status != 200:
            raise RuntimeError(f"INVITE {i}: {r.status} {r.reason}")
        dialogs.append(d)
    media_started()
    targets = [[d.media_port(k) for d in dialogs] for k in range(streams)]
    if impaired:
        sends = [send_rtp(addr, audio[k][i], impair=impair, local_port=media_port(i, k))
                 for k in range(streams) for i, addr in enumerate(targets[k])]
    else:
        sends = [send_rtp_many(targets[k], audio[k], local_port=shared[k]) for k in range(streams)]
    stats = await asyncio.gather(*sends)
    for d in dialogs:
        await d.bye()
    await uac.close()
    return {"sent": sum(s.sent for s in stats), "dropped": sum(s.dropped for s in stats),
            "reordered": sum(s.reordered for s in stats)}


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_line(proc) -> dict:
    """Skip anything else the server prints (library banners) up to our JSON."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("bench server exited")
        if line.startswith("{"):
            return json.loads(line)


def run_once(calls: int, streams: int = 1, asr: bool = False, secs: float = 20, loss: float = 0,
             reorder: float = 0, jitter_ms: float = 0) -> dict:
    """One measured run (a fresh server process); the result dict is what ``main`` prints."""
    import psutil

    from .sip_loadgen import Impairment

    server_cmd = os.environ.get("TELEPHONY_BENCH_SERVER")  # e.g. a profiling wrapper
    cmd = server_cmd.split() if server_cmd else [sys.executable, "-m", "telephony.bench.sip", "--server"]
    proc = subprocess.Popen(cmd + (["--asr"] if asr else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        hello = _json_line(proc)
        ps = psutil.Process(hello["pid"])

        def signal_server():
            proc.stdin.write("\n")
            proc.stdin.flush()

        async def drive():
            task = asyncio.create_task(_drive(hello["port"], calls, streams, secs,
                                              Impairment(loss, reorder, jitter_ms), signal_server))
            await asyncio.sleep(min(3.0, secs / 4) + calls * 0.01)  # calls set up, media flowing
            c0, t0 = ps.cpu_times(), time.monotonic()
            await asyncio.sleep(secs / 2)
            c1, t1 = ps.cpu_times(), time.monotonic()
            rss = ps.memory_info().rss
            sent = await task
            return sent, (c1.user + c1.system - c0.user - c0.system) / (t1 - t0), rss

        sent, cpu, rss = asyncio.run(drive())
        signal_server()
        done = _json_line(proc)
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(60)
    legs = done.pop("legs")
    keys = ("received", "lost", "late", "reordered", "silence_ms", "duration_ms")
    total = {k: sum(leg.get(k, 0) for leg in legs) for k in keys}
    n_legs = calls * streams
    return {"calls": calls, "legs": n_legs, "asr": asr, "secs": secs, "impair": [loss, reorder, jitter_ms],
            "cpu_cores": round(cpu, 3), "cpu_pct_per_leg": round(100 * cpu / max(1, n_legs), 3),
            "rss_mb": round(rss / 2**20, 1), "rss_mb_per_call": round(rss / 2**20 / max(1, calls), 2),
            "sent": sent, "pipeline": total, "legs_seen": len(legs), "load_avg": round(os.getloadavg()[0], 2), **done}


def sustained(r: dict, max_p95: float = 1.5) -> bool:
    """Real time: (ASR off) at most 1% of packets missing or late; (ASR on) finals p95 within
    ``max_p95`` s and the second half no worse than the first (no growing backlog)."""
    p = r["pipeline"]
    sent = max(1, r["sent"]["sent"])
    media_ok = (sent - p["received"] + p["late"]) / sent <= 0.01
    if not r["asr"]:
        return media_ok
    first, second = r.get("p95_first_half"), r.get("p95_second_half")
    return (media_ok and r.get("p95") is not None and r["p95"] <= max_p95
            and second is not None and first is not None and second <= max(first * 1.5, first + 0.5))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", "--legs", type=int, default=20, dest="calls")
    ap.add_argument("--search", type=str, default="",
                    help="comma-separated call counts, tried in order: print the largest one sustained in real time")
    ap.add_argument("--streams", type=int, choices=(1, 2), default=1, help="2: SIPREC calls with two legs each")
    ap.add_argument("--asr", action="store_true", help="run the embedded ASR (default: ASR off)")
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--reorder", type=float, default=0)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.server:
        _server(a.asr)
        return
    kw = dict(streams=a.streams, asr=a.asr, secs=a.secs, loss=a.loss, reorder=a.reorder, jitter_ms=a.jitter_ms)
    if not a.search:
        print(json.dumps(run_once(a.calls, **kw)))
        return
    best = None
    for n in [int(x) for x in a.search.split(",") if x.strip()]:
        r = run_once(n, **kw)
        r["sustained"] = sustained(r)
        print(json.dumps(r), flush=True)
        if not r["sustained"]:
            break
        best = r
    print(json.dumps({"largest_sustained_calls": best["calls"] if best else 0,
                      "legs": best["legs"] if best else 0, "at": best}))


if __name__ == "__main__":
    main()
