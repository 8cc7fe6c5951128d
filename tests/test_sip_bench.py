"""The SIP load benchmark: its pass/fail rule, and one small real run (server process + raw UAC)."""

import pytest

from telephony.bench.sip import run_once, speech, sustained


def _result(asr, sent=1000, received=1000, late=0, **extra):
    return {"asr": asr, "sent": {"sent": sent}, "pipeline": {"received": received, "late": late}, **extra}


def test_sustained_rule():
    assert sustained(_result(False))
    assert not sustained(_result(False, received=980))  # 2% never arrived
    assert not sustained(_result(False, late=20))
    ok = dict(p95=1.2, p95_first_half=1.0, p95_second_half=1.2)
    assert sustained(_result(True, **ok))
    assert not sustained(_result(True, **{**ok, "p95": 1.6}))
    assert not sustained(_result(True, **{**ok, "p95_second_half": 2.4}))  # backlog growing
    assert not sustained(_result(True, **{**ok, "p95": None}))  # no finals at all is not "keeping up"


def test_speech_has_pauses():
    audio = speech(10)
    assert len(audio) == 80000
    assert audio.count(b"\xff" * 800) > 5  # 100 ms runs of μ-law silence between prompts


@pytest.mark.slow
def test_small_run_delivers_every_packet():
    r = run_once(2, streams=2, secs=4)
    assert r["legs_seen"] == 4 and r["pipeline"]["received"] == r["sent"]["sent"] == 800
    assert sustained(r) and r["cpu_cores"] > 0
