"""Where the CPU goes during a benchmark run, by stage, from per-thread CPU times (psutil, /proc).

Why thread CPU times rather than a sampling profiler such as py-spy: the stages of the service
already run on threads of their own (the event loop; the shared VAD, ``vad``; final and partial
decodes, ``asr-final-*`` and ``asr-partial``), and much of the decoding runs on native threads
(CTranslate2's replica workers, which carry Whisper's decodes) that a sampler of Python stacks
never sees. Reading the kernel's per-thread counters costs nothing, so the profile is of the
measured run itself, at full load. Python 3.11 does not name native threads, so the server
reports its Python threads' names and every other thread is counted as native decoder work.
PostgreSQL and the load generator are other processes, measured the same way.
"""

from __future__ import annotations

from pathlib import Path

import psutil

EVENT_LOOP = "event loop: SIP, RTP, jitter buffer, G.711, 16 kHz, pacer, endpointing, store writer"
VAD = "VAD: shared Silero model, batched across legs"
FINALS = "final decodes, Python threads (Moonshine/ONNX Runtime decodes run here)"
PARTIALS = "partial decodes, Python thread"
NATIVE = "native threads (CTranslate2 workers: Whisper decodes, finals and partials)"
OTHER = "other Python threads (journal, executors)"
POSTGRES = "PostgreSQL (its processes)"
DRIVER = "load generator (SIP UAC, RTP sender, LISTEN; this process)"


def stage_of(name: str | None) -> str:
    if name is None:
        return NATIVE
    if name == "MainThread":
        return EVENT_LOOP
    if name == "vad":
        return VAD
    if name.startswith(("asr-final", "naive-decode")):
        return FINALS
    if name == "asr-partial":
        return PARTIALS
    return OTHER


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.Error:
        return {}


def tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of these processes and their children, by pid."""
    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    out[q.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return out


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((Path(pgdata) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU used in between; an id seen only afterwards started in between and counts whole."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def by_stage(threads: dict[int, float], names: dict[int, str], seconds: float,
             postgres: float | None = None, driver: float | None = None) -> list[dict]:
    """Cores used per stage over ``seconds``, largest first; ``threads`` from ``delta``."""
    cores: dict[str, float] = {}
    for tid, cpu in threads.items():
        stage = stage_of(names.get(tid))
        cores[stage] = cores.get(stage, 0.0) + cpu / seconds
    rows = [{"stage": s, "cores": round(c, 3), "process": "server"} for s, c in cores.items()]
    if postgres is not None:
        rows.append({"stage": POSTGRES, "cores": round(postgres / seconds, 3), "process": "postgres"})
    if driver is not None:
        rows.append({"stage": DRIVER, "cores": round(driver / seconds, 3), "process": "driver"})
    total = sum(r["cores"] for r in rows) or 1.0
    for r in rows:
        r["share"] = round(r["cores"] / total, 3)
    return sorted(rows, key=lambda r: -r["cores"])
