"""Asterisk AudioSocket on raw TCP: a client framing real speech as Asterisk does; two connections
with one UUID are the two legs of one call; bad input closes only its own connection."""

from __future__ import annotations

import asyncio
import logging
import uuid

import numpy as np
import pytest

from telephony.bench.accuracy import normalize, wer
from telephony.bench.local import local_settings
from telephony.service import Service

from .fork_clients import AudioSocketClient, leg_of, said, stored
from .speech import prompt_8k, prompt_16k, prompt_text, silence

CALLER, AGENT = "pls-hold-while-try", "agent-loginok"


def settings_with_audiosocket(tmp_path, url, **kw):
    s = local_settings(tmp_path, url, **kw)
    s.audiosocket.enabled = True
    s.audiosocket.port = 0
    return s


def audio(prompt: str, lead: float) -> np.ndarray:
    return np.concatenate([silence(lead), prompt_8k(prompt), silence(0.6)])


def sent_ms(pcm: np.ndarray) -> int:
    return len(pcm) * 1000 // 8000


@pytest.mark.slow
async def test_two_directions_one_call_paced_unpaced_and_abrupt(tmp_path, fresh_database_url, db_engine):
    caller, agent = audio(CALLER, 0.4), audio(AGENT, 0.3)
    ids = {name: uuid.uuid4() for name in ("both", "unpaced", "abrupt")}
    async with Service(settings_with_audiosocket(tmp_path, fresh_database_url, asr="whisper")) as svc:
        port = svc.audiosocket.port

        async def run(call_uuid, pcm, pace, upto_s=None):
            client = AudioSocketClient(port, call_uuid, pcm)
            await client.open()
            await client.stream(pace=pace, upto_s=upto_s)
            if upto_s is not None:
                client.writer.transport.abort()  # Asterisk killed, network cut: no hang-up frame
            else:
                await client.hang_up()

        await asyncio.gather(run(ids["both"], caller, True), run(ids["both"], agent, True),
                             run(ids["unpaced"], caller, False), run(ids["abrupt"], caller, True, 2.4))
    both = await stored(db_engine, "audiosocket", str(ids["both"]))
    assert both["call"]["status"] == "completed"
    assert sorted(x["speaker"] for x in both["legs"]) == ["agent", "caller"]
    for speaker, pcm, prompt in (("caller", caller, CALLER), ("agent", agent, AGENT)):
        leg = leg_of(both, speaker)
        assert leg["codec"] == "L16" and leg["sample_rate"] == 8000
        assert abs(leg["duration_ms"] - sent_ms(pcm)) <= 40
        assert wer([prompt_text(prompt)], [said(both, speaker)]) <= 0.25, said(both, speaker)
    unpaced = await stored(db_engine, "audiosocket", str(ids["unpaced"]))
    assert abs(unpaced["legs"][0]["duration_ms"] - sent_ms(caller)) <= 40
    # One connection each: which speaker label the "both" caller got depends on who connected first.
    paced_text = said(both, "caller") if leg_of(both, "caller")["duration_ms"] == sent_ms(caller) else said(both, "agent")
    assert normalize(said(unpaced, "caller")) == normalize(paced_text)
    abrupt = await stored(db_engine, "audiosocket", str(ids["abrupt"]))
    assert abrupt["call"]["status"] == "completed"
    assert abs(abrupt["legs"][0]["duration_ms"] - 2400) <= 40
    assert len(said(abrupt, "caller").split()) >= 3, said(abrupt, "caller")


async def test_wideband_slin16_beside_8khz_in_one_call(tmp_path, fresh_database_url, db_engine):
    """Newer Asterisk sends slin16 as kind 0x12: that leg runs at 16 kHz, its partner at 8 kHz."""
    wide = np.concatenate([silence(0.3, 16000), prompt_16k(CALLER), silence(0.6, 16000)])
    narrow = audio(AGENT, 0.3)
    call_uuid = uuid.uuid4()
    async with Service(settings_with_audiosocket(tmp_path, fresh_database_url, asr="whisper")) as svc:
        clients = [AudioSocketClient(svc.audiosocket.port, call_uuid, wide, kind=0x12),
                   AudioSocketClient(svc.audiosocket.port, call_uuid, narrow)]
        for c in clients:
            await c.open()
            await asyncio.sleep(0.2)  # the wide one's first audio comes first: it is the caller

        async def run(c):
            await c.stream(pace=False)
            await c.hang_up()

        await asyncio.gather(*(run(c) for c in clients))
    got = await stored(db_engine, "audiosocket", str(call_uuid))
    caller, agent = leg_of(got, "caller"), leg_of(got, "agent")
    assert (caller["sample_rate"], agent["sample_rate"]) == (16000, 8000)
    assert abs(caller["duration_ms"] - len(wide) * 1000 // 16000) <= 40
    assert abs(agent["duration_ms"] - sent_ms(narrow)) <= 40
    assert wer([prompt_text(CALLER)], [said(got, "caller")]) <= 0.25, said(got, "caller")
    assert wer([prompt_text(AGENT)], [said(got, "agent")]) <= 0.25, said(got, "agent")


async def test_bad_input_closes_only_that_connection(tmp_path, fresh_database_url, db_engine, caplog):
    settings = settings_with_audiosocket(tmp_path, fresh_database_url)
    settings.sip.media_timeout_s = 0.5
    good_id, quiet_id, odd_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    f = AudioSocketClient.frame
    with caplog.at_level(logging.INFO):
        async with Service(settings) as svc:
            port = svc.audiosocket.port
            good = AudioSocketClient(port, good_id, prompt_8k("auth-thankyou"))
            await good.open()

            async def good_call():  # paced, while the bad connections come and go
                await good.stream(pace=True)
                await good.hang_up()

            good_task = asyncio.create_task(good_call())

            async def attempt(*frames):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"".join(frames))
                async with asyncio.timeout(10):
                    rest = await reader.read()  # the service closes it
                writer.close()
                return rest

            assert await attempt(f(0x10, b"\x00" * 320)) == b""  # audio before the UUID
            assert await attempt(f(0x01, b"\x01" * 5)) == b""  # not a UUID
            assert await attempt(f(0x01, uuid.uuid4().bytes), f(0x42, b"x")) == b""  # unknown kind
            assert await attempt(f(0x01, odd_id.bytes), f(0x10, b"\x00" * 320), f(0x10, b"\x00" * 3)) == b""
            assert await attempt(f(0x01, uuid.uuid4().bytes), f(0xFF, b"\x02")) == b""  # Asterisk's own error
            assert await attempt(f(0x01, uuid.uuid4().bytes), f(0x12, b"\x00" * 640), f(0x10, b"\x00" * 320)) == b""
            quiet = AudioSocketClient(port, quiet_id, prompt_8k("vm-goodbye"))
            await quiet.open()
            await quiet.stream(pace=False)
            await quiet.closed(timeout=10)  # no hang-up: the media timeout ends it
            await good_task
    got = await stored(db_engine, "audiosocket", str(good_id))
    assert got["call"]["status"] == "completed"
    assert abs(got["legs"][0]["duration_ms"] - sent_ms(prompt_8k("auth-thankyou"))) <= 40
    quiet_got = await stored(db_engine, "audiosocket", str(quiet_id))
    assert abs(quiet_got["legs"][0]["duration_ms"] - sent_ms(prompt_8k("vm-goodbye"))) <= 40
    odd = await stored(db_engine, "audiosocket", str(odd_id))
    assert odd["legs"][0]["duration_ms"] == 20  # what came before the bad frame is kept
    lines = [r for r in caplog.records if r.name == "telephony.forks.audiosocket" and r.levelno >= logging.WARNING]
    reasons = " | ".join(r.getMessage() for r in lines)
    for expected in ("audio before the UUID", "UUID frame of 5 bytes", "unknown frame kind 0x42", "not whole 16-bit",
                     "audio at 8000 Hz (kind 0x10) after 16000 Hz"):
        assert expected in reasons
    assert all(r.exc_info is None for r in caplog.records)  # a client's mistake is no traceback
    assert svc.audiosocket.errors == 5
