"""A real SIP call transcribed by a streaming service: baresip calls our SIP endpoint, Deepgram's protocol does the ASR.

The service runs with ``[asr] engine = "deepgram"`` and ``url`` pointing at the
fake Deepgram (real decoder behind it); finals land in a real PostgreSQL.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.calls import CallManager
from telephony.runtime import Runtime
from telephony.sip.endpoint import SipEndpoint
from telephony.config import SipSettings

from . import sip_peers as peers
from .fakes.common import decoder_engine
from .fakes.deepgram import FakeDeepgram
from .speech import prompt_8k, prompt_text, silence, write_wav
from .sql import rows
from .streaming_legs import streaming_settings

pytestmark = pytest.mark.slow


async def test_baresip_call_transcribed_by_a_deepgram_protocol_server(fresh_database_url, tmp_path):
    peers.require("baresip", "baresip-core")
    decoder_engine()
    fake = FakeDeepgram()
    try:
        s = streaming_settings("deepgram", fake.url, fake.api_key)
        s.database.url = fresh_database_url
        s.service.data_dir = str(tmp_path / "data")
        wav = write_wav(tmp_path / "said.wav", np.concatenate([silence(0.5), prompt_8k("agent-alreadyon"), silence(1.0)]))
        async with Runtime(s) as rt:
            assert rt.engine.name == "deepgram"
            manager = CallManager(s, rt.engine, rt.writer)
            ep = SipEndpoint(SipSettings(port=0), manager)
            await ep.start()
            try:
                res = await asyncio.get_running_loop().run_in_executor(
                    None, peers.baresip_call, tmp_path / "baresip", f"sip:transcribe@127.0.0.1:{ep.port}", wav, 9)
                assert "Call established" in res.stdout, res.stdout[-2000:]
            finally:
                await ep.stop()
                await manager.shutdown()
                assert await rt.writer.flush(timeout=60)
        said = " ".join(r["text"] for r in await rows(fresh_database_url, "SELECT text FROM utterances ORDER BY start_ms"))
        assert wer([prompt_text("agent-alreadyon")], [said]) <= 0.2, said
        (conn,) = fake.conns
        assert conn.closed == "closestream" and conn.audio_s > 3  # the leg's audio went to the service, and was finalised
    finally:
        fake.close()
