"""The SIP capacity benchmark: its rules, its speech scripts and scoring, its CPU-by-stage profile,
and real runs (server process with the real service and PostgreSQL, raw UAC, real speech)."""

import asyncio
import threading
import time

import pytest

from telephony.bench import stages
from telephony.bench.script import (FRAME_S, LEAD_S, TAIL_S, FinalSeen, corpus, leg_script, score_leg,
                                    summarise)
from telephony.bench.sip import BenchDatabase, main, run_once, summary, sustained

from .sql import rows


def _result(asr, sent=1000, received=1000, late=0, **extra):
    return {"asr": asr, "sent": {"sent": sent}, "pipeline": {"received": received, "late": late}, **extra}


def test_sustained_rule():
    assert sustained(_result(False))
    assert not sustained(_result(False, received=980))  # 2% never arrived
    assert not sustained(_result(False, late=20))
    ok = dict(p95=0.9, p95_first_half=0.8, p95_second_half=0.9, finalised_share=1.0, refused=0)
    assert sustained(_result(True, **ok), 1.0)
    assert not sustained(_result(True, **{**ok, "p95": 1.2}), 1.0)
    assert sustained(_result(True, **{**ok, "p95": 1.2}), 1.5)
    assert not sustained(_result(True, **{**ok, "p95_second_half": 1.4}))  # backlog growing
    assert not sustained(_result(True, **{**ok, "p95": None}))  # no finals at all is not "keeping up"
    assert not sustained(_result(True, **{**ok, "finalised_share": 0.98}))  # words lost
    assert not sustained(_result(True, **{**ok, "refused": 1}))  # admission refused some of the calls offered


def test_leg_script_is_real_speech_with_pauses():
    texts = {text for _, text in corpus()}
    s = leg_script(60, seed=3)
    assert len(s.audio) == 60 * 8000 and s.frames == 3000
    assert 0.6 <= s.speech_share <= 0.8, s.speech_share  # ~70 % speech
    assert all(p.text in texts for p in s.prompts) and len(s.prompts) >= 8
    assert s.prompts[0].first <= LEAD_S[1] / FRAME_S
    assert s.frames - s.prompts[-1].last >= TAIL_S / FRAME_S  # every prompt ends before the hang-up
    assert all(b.first - a.last >= 0.7 / FRAME_S - 1 for a, b in zip(s.prompts, s.prompts[1:]))  # pauses
    assert s.audio[: s.prompts[0].first * 160] == b"\xff" * (s.prompts[0].first * 160)  # lead-in is silence
    assert leg_script(60, seed=3).audio == s.audio  # reproducible
    assert leg_script(60, seed=4).prompts[0] != s.prompts[0]  # legs differ


def test_finals_are_matched_to_prompts_by_time():
    s = leg_script(30, seed=7)
    p0, p1, p2 = s.prompts[:3]
    sent0, t0, playout = 100.0, 99.0, 0.06  # sender's frame 0; the leg's timeline started 1 s earlier
    last = {i: sent0 + p.last * FRAME_S - FRAME_S + 0.001 for i, p in enumerate(s.prompts)}

    def on_leg(frame):  # the sender's frame on the leg's timeline (s)
        return sent0 + frame * FRAME_S - t0 + playout

    finals = [
        FinalSeen(on_leg(p0.first) - 0.1, on_leg(p0.last) + 0.15, "first", last[0] + 0.8),
        # The second prompt cut in two: final when its second piece is.
        FinalSeen(on_leg(p1.first), on_leg((p1.first + p1.last) // 2), "second a", last[1] - 0.5),
        FinalSeen(on_leg((p1.first + p1.last) // 2), on_leg(p1.last), "second b", last[1] + 1.2),
        FinalSeen(on_leg(p2.last) + 0.3, on_leg(p2.last) + 0.6, "noise", last[2] + 2.0),  # in the pause
    ]
    score = score_leg(s, sent0, last, t0, playout, finals)
    assert score.prompts == len(s.prompts) and score.finalised == 2 and score.spurious == 1
    assert [round(lat, 3) for _, lat in score.latencies] == [0.8, 1.2]
    assert score.hypothesis == "first second a second b noise"
    summ = summarise([score], sent0, sent0 + 30)
    assert summ["utterances_sent"] == len(s.prompts) and summ["utterances_finalised"] == 2
    assert summ["p95"] == pytest.approx(1.18, abs=0.01) and summ["p95_second_half"] is None
    assert 0.5 < summ["wer"] <= 1.5  # most prompts missed


def test_summary_ratio_and_targets():
    def res(engine, limits, runs=()):
        return {"engine": engine, "largest_calls": limits, "runs": list(runs)}

    run16 = {"calls": 16, "p95": 1.3, "finalised_share": 1.0, "refused": 0, "wer": 0.03}
    ours = res("moonshine", {"1.0": 12, "1.5": 16}, [run16])
    s = summary([ours, res("whisper", {"1.0": 4, "1.5": 8}), res("naive", {"1.0": 0, "1.5": 4})])
    assert s["engines"]["moonshine"]["ratio_to_baseline"]["1.5"] == 4.0
    assert s["engines"]["whisper"]["ratio_to_baseline"]["1.5"] == 2.0
    assert "n/a" in s["engines"]["moonshine"]["ratio_to_baseline"]["1.0"]  # baseline sustains none
    target = s["targets"]["16 calls at p95 <= 1.0 s"]
    assert not target["met"] and target["short_by_calls"] == 4 and target["p95_at_16"] == 1.3
    assert s["targets"]["capacity >= 3x baseline at p95 <= 1.5 s"]["met"]
    assert not s["targets"]["capacity >= 3x baseline at p95 <= 1.0 s"]["met"]
    assert s["targets"]["WER <= 4% through μ-law"] == {"met": True, "wer": 0.03, "at_calls": 16}


def test_cpu_by_stage_from_thread_times():
    import os

    done = threading.Event()

    def spin():
        while not done.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin, name="vad")
    before = stages.thread_cpu(os.getpid())  # the thread is not there yet: it counts whole
    t0 = time.monotonic()
    t.start()
    time.sleep(0.4)
    after = stages.thread_cpu(os.getpid())  # sampled while it runs (a finished thread is gone)
    elapsed = time.monotonic() - t0  # a busy machine may wake this thread late
    done.set()
    t.join()
    # only this test's threads: other tests may leave threads of their own running in this process
    main_id = threading.main_thread().native_id
    mine = {k: v for k, v in stages.delta(before, after).items() if k in (t.native_id, main_id)}
    assert t.native_id in mine
    names = {main_id: "MainThread", t.native_id: t.name}
    rows = stages.by_stage(mine, names, elapsed, postgres=0.04, driver=0.0)
    vad = next(r for r in rows if r["stage"] == stages.VAD)
    assert 0.3 <= vad["cores"] <= 1.05, rows  # the thread spun for most of the time (a busy machine takes some)
    assert rows[0] is vad and abs(sum(r["share"] for r in rows) - 1) < 0.01
    assert stages.stage_of(None) == stages.NATIVE and stages.stage_of("asr-final-1") == stages.FINALS
    assert stages.stage_of("naive-decode_0") == stages.FINALS and stages.stage_of("MainThread") == stages.EVENT_LOOP


def test_cli_refuses_unknown_engine(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--engine", "bogus", "--calls", "1"])
    assert exc.value.code == 2 and "unknown engine 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--overload", "2"])  # overload needs an engine
    assert exc.value.code == 2


@pytest.mark.slow
def test_small_run_delivers_every_packet(fresh_database_url):
    r = run_once(2, streams=2, secs=4, db=BenchDatabase(fresh_database_url))
    assert r["legs_seen"] == 4 and r["pipeline"]["received"] == r["sent"]["sent"] == 800
    assert r["admitted"] == 2 and r["refused"] == 0
    assert sustained(r) and r["cpu_cores"] > 0


@pytest.mark.slow
def test_siprec_call_timed_from_sender_to_stored_row(fresh_database_url):
    """One two-leg SIPREC call of real speech through the real service and store: every prompt
    comes back as a stored final, timed from its last packet to its NOTIFY."""
    r = run_once(1, streams=2, engine="whisper", secs=16, db=BenchDatabase(fresh_database_url), seed=5)
    assert r["admitted"] == 1 and r["legs_seen"] == 2 and r["capacity_legs"] > 0
    assert r["utterances_sent"] >= 4 and r["finalised_share"] >= 0.9, r
    assert r["finals_spurious"] <= 1 and r["wer"] <= 0.15
    # Floor: hang-over + pacer chunk + playout; ceiling: a busy shared machine, generously.
    assert 0.35 <= r["p50"] <= r["p95"] <= 10.0
    assert r["cpu_cores"] > 0 and r["rss_mb"] > r["rss_idle_mb"] > 100
    decode = sum(s["cores"] for s in r["stages"] if s["stage"] in (stages.NATIVE, stages.FINALS))
    loop = next(s["cores"] for s in r["stages"] if s["stage"] == stages.EVENT_LOOP)
    assert decode > loop > 0  # Whisper's decodes dominate the server's CPU
    stored = asyncio.run(rows(fresh_database_url, "SELECT count(*) AS n FROM utterances"))
    assert stored[0]["n"] == r["finals"]  # every stored row was heard (NOTIFY), none twice


@pytest.mark.slow
def test_twice_the_capacity_admits_what_it_can_and_refuses_the_rest(fresh_database_url, monkeypatch):
    """Offered twice the capacity the service measured at start, the excess calls get a clean 503
    with Retry-After (and leave no call behind), and the admitted ones keep up: every utterance
    finalised, no growing backlog. (Their p95 <= 1.5 s is the benchmark's own check on a quiet
    machine; this shared one can be loaded several times over, which scales every decode.)"""
    # A capacity of a few legs (a small test), and headroom for the load other work adds after the
    # service measured its decode cost.
    monkeypatch.setenv("TELEPHONY_ASR_TARGET_UTILIZATION", "0.4")
    r = run_once(0, streams=2, engine="whisper", secs=20, overload=2.0, db=BenchDatabase(fresh_database_url))
    capacity_calls = int(r["capacity_legs"] // 2)
    assert r["calls"] >= r["capacity_legs"] and r["admitted"] + r["refused"] == r["calls"]
    assert r["admitted"] == capacity_calls >= 1 and r["refused"] >= 1, r
    assert all(x["retry_after"] and x["reason"] for x in r["refusals"])
    stored = asyncio.run(rows(fresh_database_url, "SELECT count(*) AS n FROM calls"))
    assert stored[0]["n"] == r["admitted"] and r["legs_seen"] == 2 * r["admitted"]
    assert r["finalised_share"] >= 0.95 and r["wer"] <= 0.15
    first, second = r["p95_first_half"], r["p95_second_half"]
    assert second <= max(2 * first, first + 2.0), r  # not falling behind
    assert r["p95"] <= 10.0, r  # 2x the legs without admission falls tens of seconds behind when loaded
