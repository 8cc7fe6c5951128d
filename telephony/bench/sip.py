"""``telephony bench sip``: N concurrent calls from a raw UAC over loopback into the real service.

Capacity, the way a user would measure it (the lead's run, on a quiet machine):

    telephony bench sip --siprec --search --engine moonshine          # + whisper and the naive baseline
    telephony bench sip --siprec --search 4,8,16 --engine whisper --compare naive --secs 60
    telephony bench sip --siprec --calls 16 --engine moonshine         # one level
    telephony bench sip --siprec --overload 2 --engine whisper         # offer 2x the measured capacity
    telephony bench sip --calls 300 --secs 20                          # ASR off: SIP + RTP + leg pipeline
    telephony bench sip --calls 4 --loss 0.05 --reorder 0.05 --jitter-ms 30

Each level runs a fresh server process: the real ``telephony.service.Service`` (SIP endpoint,
admission, media path, ASR engine, record writer) on a real PostgreSQL, the one in
``DATABASE_URL`` or an embedded one this command starts in a temporary directory. The engine
is any ``[asr] engine`` (``whisper``, ``moonshine`` …) or ``naive`` (``naive.py``, the baseline);
every other setting comes from ``TELEPHONY_CONFIG`` and ``TELEPHONY_<SECTION>_<KEY>`` as for
``telephony serve``, and ``--engine NAME=FILE.toml`` gives one engine its own config file, so
one run compares engines under the same load.

This process is the caller: SIPREC INVITEs (``--siprec``: two streams and rs-metadata, a
vendor's layout) or plain ones, then RTP of real speech paced from one clock (``script.py``:
Asterisk prompts with pauses, ~70 % speech per leg), then BYE. It listens on PostgreSQL
(``LISTEN telephony_utterance``) and times each final from the sender's last packet of its
utterance to the NOTIFY of its stored row. Per level it reports p50/p95 final latency, p95 of
the first and second half of the run (a growing backlog shows there), finals against
utterances sent, WER, calls refused by admission (503), the server's CPU and RSS per call,
PostgreSQL's and its own CPU, and where the server's CPU went by stage (``stages.py``).

``--search`` tries levels in order and reports, per engine, the largest number of calls
sustained with finals p95 ≤ 1.0 s and ≤ 1.5 s (every call admitted, packets ≤ 1 % late or
lost, ≥ 99 % of utterances finalised, second-half p95 not above the first's by more than
max(25 %, 0.25 s)), and each engine's capacity as a ratio to the naive baseline's. With
admission on (the default), calls beyond the capacity the service measured are refused and
the level does not count as sustained: that is what a user gets. ``--admission off`` lifts
the transcription-capacity check, to find where the decoders themselves give out. The ratio is
only as fine as the levels tried (``--search 1,2,3,4,6,8,12,16``); a baseline that sustains no
level at 1.0 s gives no ratio there: ``--limits 2.0`` adds a looser limit to compare at.

Prints tables and writes JSON (``--out``). The machine's load average is in the JSON: the
other processes on a shared machine take CPU from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

P95_LIMITS = (1.0, 1.5)
DEFAULT_LEVELS = "1,2,4,8,12,16,20,24,32"
FINALISED_MIN = 0.99
MEDIA_LOSS_MAX = 0.01
TARGET_CALLS = 16  # the issue's target: 16 two-leg calls at p95 <= 1.0 s
TARGET_RATIO = 3.0  # ... and 3x the naive baseline's capacity at equal p95
TARGET_WER = 0.04
BASELINE = "naive"


# --------------------------------------------------------------------------- server
def _server(engine_name: str, admission: bool) -> None:
    import psutil

    from ..config import load_settings
    from ..service import Service

    async def run():
        # TELEPHONY_CONFIG / TELEPHONY_<SECTION>_<KEY> tune what is measured; the driver sets the
        # database (DATABASE_URL) and a data directory of the bench's own.
        s = load_settings()
        s.sip.enabled = True
        s.sip.host = "127.0.0.1"
        s.sip.port = 0
        s.sip.rate_limit = 0
        s.sip.max_calls = 4000
        s.sip.max_pending_per_source = 4000  # every call comes from this one address
        s.sip.rtp_port_min, s.sip.rtp_port_max = 30000, 40000
        s.webhooks.urls, s.webhooks.endpoints = [], []  # benchmark calls are not calls to tell a CRM about
        engine = None
        if engine_name == BASELINE:
            from .naive import NaiveEngine

            engine = NaiveEngine(s.data_dir)
            if s.asr.engine == "none":
                s.asr.engine = "whisper"  # legs transcribe unless the engine is "none"
        else:
            s.asr.engine = engine_name
        service = Service(s, http=False, sip=True, engine=engine)
        await service.start()
        status = service.admission.status()
        if not admission:  # the decoders' own limit: only the fixed, media and journal checks stay
            service.admission.asr_capacity = lambda: None
        me = psutil.Process()
        print(json.dumps({"port": service.sip.port, "pid": os.getpid(), "engine": service.engine.name,
                          "rss_idle": me.memory_info().rss, "admission": status,
                          "playout_s": s.media.jitter_window_ms / 1000}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line == "legs":  # the calls are set up: where each leg's timeline starts
                legs = {leg.id: {"t0": leg.t0, "started_ms": leg.record.started_ms, "ordinal": leg.record.ordinal,
                                 "speaker": leg.speaker, "call": call.record.external_id}
                        for call in service.manager.calls() for leg in call.legs}
                print(json.dumps({"legs": legs}), flush=True)
            else:  # "stop", or the driver went away
                break
        # Python's threads by kernel id, before they stop (some start with the first audio).
        threads = {t.native_id: t.name for t in threading.enumerate()}
        admitted = service.admission.status()  # (with the capacity as measured now, when on)
        await service.stop()  # every call ended, every final stored
        print(json.dumps({"admission": admitted, "threads": threads,
                          "media_clock_max_late_ms": round(service.manager.clock.max_lateness * 1000, 1),
                          "decodes": dict(getattr(getattr(service.engine, "scheduler", None), "stats", {}))}),
              flush=True)

    asyncio.run(run())


# --------------------------------------------------------------------------- database
@dataclass
class BenchDatabase:
    """``DATABASE_URL`` when set; otherwise an embedded PostgreSQL in a temporary directory,
    started once for the whole command (its CPU is then measured too)."""

    url: str
    pgdata: Path | None = None
    _handle: object = None

    @classmethod
    def open(cls, workdir: Path) -> "BenchDatabase":
        from ..store.database import EMBEDDED_DATABASE, async_url, ensure_database, start_embedded

        if os.environ.get("DATABASE_URL"):
            return cls(async_url(os.environ["DATABASE_URL"]))
        handle = start_embedded(workdir / "pgdata")
        asyncio.run(ensure_database(handle.admin_url, EMBEDDED_DATABASE))
        return cls(handle.url(EMBEDDED_DATABASE), handle.pgdata, handle)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.stop()


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


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """The server process and its line protocol (JSON lines out; ``legs`` / ``stop`` in)."""

    def __init__(self, engine: str, admission: bool, db: BenchDatabase, data_dir: Path, config: str | None):
        import telephony

        env = dict(os.environ, DATABASE_URL=db.url, TELEPHONY_SERVICE_DATA_DIR=str(data_dir))
        # This checkout's package, wherever the command runs from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(telephony.__file__).parent.parent),
                                                          env.get("PYTHONPATH")]))
        if config:
            env["TELEPHONY_CONFIG"] = config
        wrapper = os.environ.get("TELEPHONY_BENCH_SERVER")  # e.g. a profiling wrapper
        cmd = wrapper.split() if wrapper else [sys.executable, "-m", "telephony.bench.sip", "--server"]
        cmd += ["--server-engine", engine, "--admission", "on" if admission else "off"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        """Skip anything else the server prints (library banners) up to our next JSON line."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"bench server exited (status {self.proc.poll()}); its errors are above")
            if line.startswith("{"):
                return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _level(server: _Server, hello: dict, db: BenchDatabase, calls: int, streams: int, secs: float,
                 impair, seed: int) -> dict:
    import asyncpg
    import psutil

    from ..store.database import asyncpg_dsn
    from . import stages
    from .script import leg_script, summarise
    from .sip_loadgen import RawUac, sdp_offer, send_rtp, send_rtp_many

    loop = asyncio.get_running_loop()
    seen: list[tuple[float, dict]] = []
    listener = await asyncpg.connect(asyncpg_dsn(db.url))
    await listener.add_listener("telephony_utterance", lambda *a: seen.append((time.monotonic(), json.loads(a[3]))))

    scripts = [[leg_script(secs, seed + 2 * i + k) for k in range(streams)] for i in range(calls)]
    impaired = bool(impair.loss or impair.reorder or impair.jitter_ms)
    # The service takes RTP only from the port an SDP announced: one sending socket per stream
    # position serves every call (its port in every offer), or one per leg when impaired.
    shared = [_free_udp_port() for _ in range(streams)]

    def media_port(i: int, k: int) -> int:
        return 50000 + 4 * i + 2 * k if impaired else shared[k]

    uac = await RawUac(("127.0.0.1", hello["port"])).open()
    admitted, refused = [], []
    for i in range(calls):
        d = uac.dialog(display=f"caller{i}")
        if streams == 2:
            body, ctype = _siprec_body((media_port(i, 0), media_port(i, 1)), i)
            r = await d.invite(body, ctype, headers={"Require": "siprec"})
        else:
            r = await d.invite(sdp_offer(media_port(i, 0), codecs=(0,), direction="sendrecv"))
        if r.status == 200:
            admitted.append((i, d))
        elif r.status == 503:
            refused.append({"call": i, "reason": r.reason, "retry_after": r.get("Retry-After")})
        else:
            raise RuntimeError(f"INVITE {i}: {r.status} {r.reason}")
    server.send("legs")
    snapshot = await loop.run_in_executor(None, server.read)

    # Media: every admitted leg from one clock; the last packet of each prompt is timed.
    marks = [[{0} | {p.last - 1 for p in scripts[i][k].prompts} for i, _ in admitted] for k in range(streams)]
    targets = [[d.media_port(k) for _, d in admitted] for k in range(streams)]
    start = time.monotonic() + 0.2
    if impaired:
        sends = [send_rtp(targets[k][j], scripts[i][k].audio, impair=impair, local_port=media_port(i, k),
                          t0=start, marks=marks[k][j]) for k in range(streams) for j, (i, _) in enumerate(admitted)]
    else:
        sends = [send_rtp_many(targets[k], [scripts[i][k].audio for i, _ in admitted], local_port=shared[k],
                               t0=start, marks=marks[k]) for k in range(streams)]
    media = asyncio.gather(*sends)

    # CPU over the steady middle of the run: server threads by stage, PostgreSQL, this process.
    pg_root = stages.postmaster_pid(db.pgdata) if db.pgdata else None
    warm = min(3.0, secs / 4)
    await asyncio.sleep(max(0.0, start + warm - time.monotonic()))
    me, server_ps = psutil.Process(), psutil.Process(hello["pid"])
    t_a, th_a, pg_a, me_a = time.monotonic(), stages.thread_cpu(hello["pid"]), stages.tree_cpu([pg_root] if pg_root else []), me.cpu_times()
    await asyncio.sleep(secs / 2)
    t_b, th_b, pg_b, me_b = time.monotonic(), stages.thread_cpu(hello["pid"]), stages.tree_cpu([pg_root] if pg_root else []), me.cpu_times()
    rss = server_ps.memory_info().rss
    window = t_b - t_a
    threads = stages.delta(th_a, th_b)
    pg_cpu = sum(stages.delta(pg_a, pg_b).values()) if pg_root else None
    driver_cpu = me_b.user + me_b.system - me_a.user - me_a.system
    sent = await media
    media_end = time.monotonic()
    for _, d in admitted:
        await d.bye()
    await uac.close()
    server.send("stop")
    report = await loop.run_in_executor(None, server.read)  # the service has stopped: all stored
    await asyncio.sleep(0.5)  # the last NOTIFYs
    call_ids = [d.call_id for _, d in admitted]
    rows = await listener.fetch(
        "SELECT l.id::text AS id, l.packets_received, l.packets_lost, l.packets_late, l.silence_ms "
        "FROM legs l JOIN calls c ON c.id = l.call_id WHERE c.external_id = ANY($1::text[])", call_ids)
    await listener.close()

    total_sent = sum(s.sent for s in sent)
    keys = ("packets_received", "packets_lost", "packets_late", "silence_ms")
    pipeline = {k.replace("packets_", ""): sum(r[k] or 0 for r in rows) for k in keys}
    n = max(1, len(admitted))
    server_cpu = sum(threads.values()) / window
    names = {int(k): v for k, v in report.pop("threads").items()}
    return {
        "calls": calls, "admitted": len(admitted), "refused": len(refused), "refusals": refused[:5],
        "legs": len(admitted) * streams, "secs": secs,
        "speech_share": round(sum(s.speech_share for legs_ in scripts for s in legs_) / max(1, calls * streams), 3),
        "cpu_cores": round(server_cpu, 3), "cpu_pct_per_call": round(100 * server_cpu / n, 2),
        "postgres_cores": round(pg_cpu / window, 3) if pg_cpu is not None else None,
        "driver_cores": round(driver_cpu / window, 3),
        "rss_mb": round(rss / 2**20, 1), "rss_idle_mb": round(hello["rss_idle"] / 2**20, 1),
        "rss_mb_per_call": round((rss - hello["rss_idle"]) / 2**20 / n, 2),
        "stages": stages.by_stage(threads, names, window, pg_cpu, driver_cpu),
        "sent": {"sent": total_sent, "dropped": sum(s.dropped for s in sent), "reordered": sum(s.reordered for s in sent)},
        "pipeline": pipeline, "legs_seen": len(rows),
        **(summarise(_score(admitted, scripts, snapshot["legs"], seen, sent, impaired, start, hello["playout_s"]),
                     start, media_end) if hello["engine"] != "none" else {}),
        "server": report,
    }


def _score(admitted: list, scripts: list, legs: dict, seen: list, sent: list, impaired: bool, start: float,
           playout_s: float) -> list:
    """Every admitted leg's finals (NOTIFYs) against its script."""
    from .script import FRAME_S, FinalSeen, score_leg

    index = {d.call_id: (i, j) for j, (i, d) in enumerate(admitted)}
    finals: dict[str, list] = {}
    for t, n in seen:
        finals.setdefault(n["leg_id"], []).append((t, n))
    scores = []
    for leg_id, leg in legs.items():
        if leg["call"] not in index:
            continue
        (i, j), k = index[leg["call"]], leg["ordinal"]
        stats, slot = (sent[k * len(admitted) + j], 0) if impaired else (sent[k], j)
        at = {frame: stats.marks.get((slot, frame), start + frame * FRAME_S)  # dropped (impaired): when due
              for frame in [0] + [p.last - 1 for p in scripts[i][k].prompts]}
        heard = [FinalSeen((f["start_ms"] - leg["started_ms"]) / 1000, (f["end_ms"] - leg["started_ms"]) / 1000,
                           f["text"], t) for t, f in finals.get(leg_id, [])]
        last_sent = {n: at[p.last - 1] for n, p in enumerate(scripts[i][k].prompts)}
        scores.append(score_leg(scripts[i][k], at[0], last_sent, leg["t0"], playout_s, heard))
    return scores


def run_once(calls: int, streams: int = 1, engine: str = "none", secs: float = 20, loss: float = 0,
             reorder: float = 0, jitter_ms: float = 0, admission: bool = True, overload: float | None = None,
             db: BenchDatabase | None = None, data_dir: Path | None = None, config: str | None = None,
             seed: int = 1) -> dict:
    """One measured level in a fresh server process; the result dict is what ``main`` prints.
    ``overload``: offer that many times the capacity the service reports at start (``calls`` ignored)."""
    from .sip_loadgen import Impairment

    with tempfile.TemporaryDirectory(prefix="telephony-bench-") as tmp:
        own_db = db is None
        db = db or BenchDatabase.open(Path(tmp))
        try:
            load0 = os.getloadavg()
            server = _Server(engine, admission, db, data_dir or Path(tmp) / "data", config)
            try:
                hello = server.read()
                capacity = hello["admission"].get("capacity_legs")
                if overload is not None:
                    if capacity is None:
                        raise ValueError(f"--overload needs an engine that measures its capacity ({engine} does not)")
                    calls = max(1, math.ceil(overload * capacity / streams))
                result = asyncio.run(_level(server, hello, db, calls, streams, secs,
                                            Impairment(loss, reorder, jitter_ms), seed))
            finally:
                server.close()
        finally:
            if own_db:
                db.close()
    return {"engine": engine, "asr": engine != "none", "capacity_legs": capacity, "overload": overload,
            "admission_on": admission, "impair": [loss, reorder, jitter_ms], **result,
            "load_avg_before": round(load0[0], 2), "load_avg_after": round(os.getloadavg()[0], 2)}


def sustained(r: dict, max_p95: float = 1.5) -> bool:
    """Real time: (ASR off) at most 1 % of packets missing or late; (ASR on) also every call
    admitted, ≥ 99 % of utterances finalised, finals p95 within ``max_p95`` s, and the second
    half's p95 no worse than the first's by more than max(25 %, 0.25 s): no growing backlog."""
    p = r["pipeline"]
    sent = max(1, r["sent"]["sent"])
    media_ok = (sent - p["received"] + p["late"]) / sent <= MEDIA_LOSS_MAX
    if not r["asr"]:
        return media_ok
    first, second = r.get("p95_first_half"), r.get("p95_second_half")
    return (media_ok and r.get("refused", 0) == 0 and r.get("p95") is not None and r["p95"] <= max_p95
            and (r.get("finalised_share") or 0) >= FINALISED_MIN
            and first is not None and second is not None and second <= max(first * 1.25, first + 0.25))


# --------------------------------------------------------------------------- search and report
def search(levels: list[int], engine: str, limits: tuple[float, ...] = P95_LIMITS, log=print, **kw) -> dict:
    """Levels in order until one fails the loosest limit; the largest sustained at each p95 limit
    (a level counts only if every smaller one tried also passed)."""
    runs, best, alive = [], {x: 0 for x in limits}, {x: True for x in limits}
    for n in levels:
        r = run_once(n, engine=engine, **kw)
        r["sustained"] = {str(x): sustained(r, x) for x in limits}
        runs.append(r)
        log(_level_line(r))
        for x in limits:
            if alive[x] and r["sustained"][str(x)]:
                best[x] = n
            else:
                alive[x] = False
        if not any(alive.values()):
            break
    return {"engine": engine, "runs": runs, "largest_calls": {str(x): best[x] for x in limits}}


def _fmt(v, unit: str = "", pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.1f} %" if pct else f"{v}{unit}"


def _level_line(r: dict) -> str:
    return (f"{r['engine']:>10} {r['calls']:>4} calls {r['admitted']:>3} admitted  p50 {_fmt(r.get('p50'), ' s'):>8} "
            f"p95 {_fmt(r.get('p95'), ' s'):>8} (halves {_fmt(r.get('p95_first_half'))}/{_fmt(r.get('p95_second_half'))})  "
            f"finals {r.get('utterances_finalised', 0)}/{r.get('utterances_sent', 0)}  WER {_fmt(r.get('wer'), pct=True)}  "
            f"cpu {r['cpu_cores']} cores (+pg {_fmt(r.get('postgres_cores'))})  load {r['load_avg_before']}->{r['load_avg_after']}")


def _profiled_run(result: dict) -> dict | None:
    """The largest level sustained at the loosest limit, else the last one tried."""
    n = max(result["largest_calls"].values(), default=0)
    return next((r for r in result["runs"] if r["calls"] == n), None) if n else (result["runs"] or [None])[-1]


def summary(results: list[dict]) -> dict:
    """Capacity per engine as a ratio to the baseline's, and the issue's targets: met, or missed by how much.
    ``results[0]`` is the engine under test."""
    base = next((r for r in results if r["engine"] == BASELINE), None)
    out = {"engines": {}, "targets": {}}
    for res in results:
        row = {"largest_calls": res["largest_calls"]}
        if base is not None and res is not base:
            row["ratio_to_baseline"] = {x: _ratio(o, base["largest_calls"][x]) for x, o in res["largest_calls"].items()}
        out["engines"][res["engine"]] = row
    ours = results[0]
    if "1.0" in ours["largest_calls"]:
        at = next((r for r in ours["runs"] if r["calls"] == TARGET_CALLS), None)
        got = ours["largest_calls"]["1.0"]
        out["targets"][f"{TARGET_CALLS} calls at p95 <= 1.0 s"] = {
            "met": got >= TARGET_CALLS, "largest_calls": got, "short_by_calls": max(0, TARGET_CALLS - got),
            f"p95_at_{TARGET_CALLS}": at.get("p95") if at else None,
            f"finalised_at_{TARGET_CALLS}": at.get("finalised_share") if at else None,
            f"refused_at_{TARGET_CALLS}": at.get("refused") if at else None}
    if base is not None and ours is not base:
        for x, o in ours["largest_calls"].items():
            b = base["largest_calls"][x]
            out["targets"][f"capacity >= {TARGET_RATIO:g}x baseline at p95 <= {x} s"] = {
                # A baseline that sustains no level tried gives no ratio: compare at a looser limit.
                "met": bool(b) and o >= TARGET_RATIO * b, "ours": o, "baseline": b, "ratio": _ratio(o, b),
                "short_by_calls": max(0, math.ceil(TARGET_RATIO * b) - o) if b else None}
    run = _profiled_run(ours)
    if run is not None and run.get("wer") is not None:
        out["targets"][f"WER <= {TARGET_WER:.0%} through μ-law"] = {"met": run["wer"] <= TARGET_WER, "wer": run["wer"],
                                                                     "at_calls": run["calls"]}
    return out


def _ratio(ours: int, base: int) -> float | str:
    return round(ours / base, 2) if base else "n/a: the baseline sustains no level tried (add a looser --limits)"


def _table(results: list[dict], summ: dict) -> str:
    limits = list(results[0]["largest_calls"])
    lines = ["", "calls  engine      admitted  p50 s  p95 s  p95 1st/2nd half  finalised  WER     server cores  %/call"
                 "  RSS MB/call  pg cores  sustained at p95 ≤ " + "/".join(limits)]
    for res in results:
        for r in res["runs"]:
            s = r.get("sustained", {})
            lines.append(f"{r['calls']:>5}  {r['engine']:<10}  {r['admitted']:>8}  {_fmt(r.get('p50')):>5}  {_fmt(r.get('p95')):>5}"
                         f"  {_fmt(r.get('p95_first_half')):>7}/{_fmt(r.get('p95_second_half')):<8}"
                         f"  {r.get('utterances_finalised', 0):>4}/{r.get('utterances_sent', 0):<4}  {_fmt(r.get('wer'), pct=True):>6}"
                         f"  {r['cpu_cores']:>12}  {r['cpu_pct_per_call']:>6}  {r['rss_mb_per_call']:>11}  {_fmt(r.get('postgres_cores')):>8}"
                         f"  " + "/".join("yes" if s.get(x) else "no" for x in limits))
    lines += ["", "engine      largest calls at p95 ≤ " + " / ".join(f"{x} s" for x in limits) + "   ratio to naive"]
    for name, e in summ["engines"].items():
        ratio = e.get("ratio_to_baseline")
        lines.append(f"{name:<10}  {' / '.join(str(e['largest_calls'][x]) for x in limits):>30}   "
                     + (" / ".join(_fmt(ratio[x]) for x in limits) if ratio else "-"))
    lines += ["", f"{'target':<44} met  detail"]
    for name, t in summ["targets"].items():
        detail = ", ".join(f"{k}={v}" for k, v in t.items() if k != "met")
        lines.append(f"{name:<44} {'yes' if t['met'] else 'NO ':<4} {detail}")
    run = _profiled_run(results[0])
    if run is not None:
        lines += ["", f"where the CPU goes: {results[0]['engine']}, {run['calls']} calls ({run['legs']} legs), steady state",
                  "cores   share  stage"]
        lines += [f"{r['cores']:>5}  {r['share'] * 100:>5.1f} %  {r['stage']}" for r in run["stages"]]
    return "\n".join(lines)


def _engine_spec(spec: str) -> tuple[str, str | None]:
    name, _, config = spec.partition("=")
    return name.strip(), (config.strip() or None)


def main(argv=None) -> None:
    from ..asr import ENGINES

    ap = argparse.ArgumentParser(prog="telephony bench sip", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    ap.add_argument("--calls", "--legs", type=int, default=20, dest="calls", help="concurrent calls (one level)")
    ap.add_argument("--search", nargs="?", const=DEFAULT_LEVELS, default="",
                    help=f"comma-separated call counts, tried in order (default {DEFAULT_LEVELS}): the largest sustained")
    ap.add_argument("--streams", type=int, choices=(1, 2), default=1, help="2: SIPREC calls with two legs each")
    ap.add_argument("--siprec", action="store_const", const=2, dest="streams", help="same as --streams 2")
    ap.add_argument("--engine", default="", help="ASR engine under test (NAME or NAME=CONFIG.toml): "
                    f"{', '.join(e for e in ENGINES if e != 'none')} or {BASELINE}; default: ASR off (or --asr)")
    ap.add_argument("--asr", action="store_true", help="the configured [asr] engine (TELEPHONY_CONFIG / environment)")
    ap.add_argument("--compare", default=None,
                    help=f"engines run after it in the same command (default with --search: whisper,{BASELINE}; '' for none)")
    ap.add_argument("--admission", choices=("on", "off"), default="on",
                    help="off: lift the transcription-capacity admission check (the decoders' own limit)")
    ap.add_argument("--overload", type=float, default=None,
                    help="offer this many times the capacity the service reports (instead of --calls)")
    ap.add_argument("--limits", default="",
                    help="p95 limits (s) to report capacity at, besides 1.0 and 1.5 (e.g. 2.0 when the baseline sustains neither)")
    ap.add_argument("--secs", type=float, default=60)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--reorder", type=float, default=0)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--data-dir", default="",
                    help="the servers' data directory (journal, converted models kept between runs); default: a temporary one")
    ap.add_argument("--out", default="bench-sip.json")
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server-engine", default="none", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.server:
        _server(a.server_engine, a.admission == "on")
        return
    known = set(ENGINES) | {BASELINE}
    engine, config = _engine_spec(a.engine) if a.engine else ("none", None)
    if a.asr and not a.engine:
        from ..config import load_settings

        engine = load_settings().asr.engine
    compare = a.compare if a.compare is not None else (f"whisper,{BASELINE}" if a.search and engine != "none" else "")
    specs = [(engine, config)] + [s for s in map(_engine_spec, filter(None, compare.split(","))) if s[0] != engine]
    for name, cfg in specs:
        if name not in known:
            ap.error(f"unknown engine {name!r}; one of {', '.join(sorted(known))}")
        if cfg and not Path(cfg).is_file():
            ap.error(f"config file not found: {cfg}")
    try:
        levels = [int(x) for x in a.search.split(",") if x.strip()] if a.search else []
    except ValueError:
        ap.error(f"--search: comma-separated call counts, got {a.search!r}")
    try:
        limits = tuple(sorted(set(P95_LIMITS) | {float(x) for x in a.limits.split(",") if x.strip()}))
    except ValueError:
        ap.error(f"--limits: comma-separated seconds, got {a.limits!r}")
    if min(limits) <= 0:
        ap.error("--limits must be positive")
    if (a.search and (not levels or min(levels) < 1)) or a.calls < 1 or a.secs < 4:
        ap.error("call counts must be positive and --secs at least 4")
    if a.overload is not None and (a.overload <= 0 or engine == "none"):
        ap.error("--overload takes a positive factor and an engine (--engine)")
    kw = dict(streams=a.streams, secs=a.secs, loss=a.loss, reorder=a.reorder, jitter_ms=a.jitter_ms,
              admission=a.admission == "on")
    with tempfile.TemporaryDirectory(prefix="telephony-bench-") as tmp:
        db = BenchDatabase.open(Path(tmp))
        try:
            data_dir = Path(a.data_dir).expanduser() if a.data_dir else Path(tmp) / "data"
            if not levels:
                r = run_once(a.calls, engine=engine, config=config, overload=a.overload, db=db, data_dir=data_dir, **kw)
                r["sustained"] = {str(x): sustained(r, x) for x in limits}
                print(json.dumps(r))
                print(_level_line(r))
                report = r
            else:
                results = [dict(search(levels, name, limits, config=cfg, db=db, data_dir=data_dir, **kw), config=cfg)
                           for name, cfg in specs]
                summ = summary(results)
                print(_table(results, summ))
                report = {"results": results, "summary": summ, "cpus": os.cpu_count()}
        finally:
            db.close()
    with open(a.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
