"""The demo softphone in a real browser: Debian's Chromium (headless, loopback only) driven by playwright.

Two speakers in one call: the fake microphone plays one Asterisk prompt, a WAV
file picked in the page plays another. Captions must show up in the page for
both, and after Stop both legs' finals must be in PostgreSQL with the right
speakers and the prompts' words.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from telephony.bench.accuracy import wer
from telephony.bench.local import local_settings
from telephony.service import Service

from .speech import prompt_8k, prompt_text, silence, write_wav

CHROMIUM = "/usr/bin/chromium"
AGENT_PROMPT, CALLER_PROMPT = "privacy-unident", "pls-hold-while-try"
MAX_WER = 0.25  # one sentence per speaker: allows two or three misheard words; a swapped speaker scores ~1

pytestmark = pytest.mark.slow
if not Path(CHROMIUM).exists():  # scripts/test.sh installs it: a missing browser is a failure, not a skip
    pytest.fail(f"{CHROMIUM} not found: apt-get install chromium", pytrace=False)


def chromium_args(fake_mic: Path) -> list[str]:
    """Loopback only (DESIGN.md): no name resolution but 127.0.0.1, no background traffic, no mDNS."""
    return [
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop", "--autoplay-policy=no-user-gesture-required",
    ]


async def test_two_speaker_call_from_the_demo_page(tmp_path, fresh_database_url, db_engine):
    from playwright.async_api import async_playwright

    agent_wav = write_wav(tmp_path / "agent.wav", np.concatenate([silence(0.5), prompt_8k(AGENT_PROMPT), silence(8)]))
    caller_wav = write_wav(tmp_path / "caller.wav", np.concatenate([silence(1.0), prompt_8k(CALLER_PROMPT), silence(1.5)]))
    errors: list[str] = []
    async with Service(local_settings(tmp_path / "svc", fresh_database_url, asr="whisper")) as svc:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(agent_wav))
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                await page.goto(f"{svc.url}/")
                await page.locator(".track[data-index='1'] input[type=file]").set_input_files(str(caller_wav))
                await page.click("#start")
                await page.wait_for_selector("#call-id", timeout=15_000)
                call_id = await page.locator("#call-id").inner_text()
                # Live captions in the page, one per speaker, as finals. The caller's short prompt ends
                # first; then the caption socket drops: the client reconnects, the server replays the
                # finals so far and the page must not show them twice.
                await page.wait_for_selector(".caption.final[data-speaker='caller']", timeout=30_000)
                await page.evaluate("window.dropped = window.telephonySession._socket; window.dropped.close()")
                await page.wait_for_function("window.telephonySession._socket !== window.dropped"
                                             " && window.telephonySession._socket.readyState === 1", timeout=10_000)
                await page.wait_for_selector(".caption.final[data-speaker='agent']", timeout=30_000)
                await page.click("#stop")
                await page.wait_for_selector("#ended", timeout=30_000)
                shown = {s: await page.locator(f".caption.final[data-speaker='{s}'] .text").all_inner_texts()
                         for s in ("agent", "caller")}
                # The calls pages read the same call back from PostgreSQL.
                await page.goto(f"{svc.url}/calls/{call_id}")
                await page.wait_for_selector("#transcript tbody tr", timeout=10_000)
                rows = await page.locator("#transcript tbody tr").count()
                await page.goto(f"{svc.url}/calls")
                await page.wait_for_selector(f"#calls tr[data-call='{call_id}']", timeout=10_000)
            finally:
                await browser.close()
    assert not errors, errors

    async with db_engine.connect() as conn:
        call = (await conn.execute(text("SELECT source, status FROM calls WHERE id = :id"), {"id": call_id})).one()
        legs = (await conn.execute(text("SELECT id, speaker, codec, packets_received FROM legs WHERE call_id = :id"),
                                   {"id": call_id})).mappings().all()
        utts = (await conn.execute(text("SELECT speaker, text FROM utterances WHERE call_id = :id ORDER BY seq"),
                                   {"id": call_id})).mappings().all()
    assert tuple(call) == ("webrtc", "completed")
    assert sorted(leg["speaker"] for leg in legs) == ["agent", "caller"]
    assert {leg["codec"] for leg in legs} == {"opus"} and all(leg["packets_received"] > 100 for leg in legs)
    said = {s: " ".join(u["text"] for u in utts if u["speaker"] == s) for s in ("agent", "caller")}
    assert wer([prompt_text(AGENT_PROMPT)], [said["agent"]]) <= MAX_WER, said
    assert wer([prompt_text(CALLER_PROMPT)], [said["caller"]]) <= MAX_WER, said
    assert rows == len(utts)
    # What the page showed live is what was stored, each final once.
    for s in ("agent", "caller"):
        assert shown[s] == [u["text"] for u in utts if u["speaker"] == s]


async def test_closing_the_tab_ends_the_call(tmp_path, fresh_database_url, db_engine):
    """No Stop click: the page goes away (pagehide → keepalive DELETE, and DTLS closes)."""
    from playwright.async_api import async_playwright

    mic = write_wav(tmp_path / "mic.wav", np.concatenate([prompt_8k(CALLER_PROMPT), silence(20)]))
    async with Service(local_settings(tmp_path / "svc", fresh_database_url)) as svc:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(mic))
            try:
                page = await browser.new_page()
                await page.goto(f"{svc.url}/")
                await page.select_option(".track[data-index='1'] select", "none")
                await page.click("#start")
                await page.wait_for_selector("#call-id", timeout=15_000)
                call_id = await page.locator("#call-id").inner_text()
                for _ in range(100):  # media flowing
                    if any(s.packets > 25 for s in svc.gateway.sessions.values()):
                        break
                    await asyncio.sleep(0.05)
                await page.close(run_before_unload=True)
                for _ in range(100):
                    if svc.manager.active_calls == 0:
                        break
                    await asyncio.sleep(0.05)
                assert svc.manager.active_calls == 0, "the call outlived its tab"
            finally:
                await browser.close()
    async with db_engine.connect() as conn:
        status, received = (await conn.execute(text(
            "SELECT c.status, l.packets_received FROM calls c JOIN legs l ON l.call_id = c.id WHERE c.id = :id"),
            {"id": call_id})).one()
    assert status == "completed" and received > 25
