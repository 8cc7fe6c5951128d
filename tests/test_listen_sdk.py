"""The official Deepgram Python SDK (PyPI ``deepgram-sdk``), pointed at our /v1/listen by its
``DeepgramClientEnvironment`` (base and WebSocket URLs), live and prerecorded, with real speech."""

from __future__ import annotations

import asyncio

import pytest
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

from telephony.bench.accuracy import wer
from telephony.service import Service

from .listen_client import encode, prompt_audio
from .speech import prompt_text
from .sql import rows
from .test_listen import MAX_WER, TOKEN, settings_for, stored, wav_bytes

pytestmark = pytest.mark.slow


def client_for(url: str) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(base=url, production=url.replace("http://", "ws://"),
                                    agent=url.replace("http://", "ws://"), agent_rest=url)
    return AsyncDeepgramClient(api_key=TOKEN, environment=env)


async def test_sdk_live_and_prerecorded(tmp_path, fresh_database_url):
    pcm = prompt_audio("agent-pass")
    async with Service(settings_for(tmp_path, fresh_database_url, asr="moonshine")) as svc:
        client = client_for(svc.url)
        got = []
        async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000,
                                            interim_results="true", utterance_end_ms="1000",
                                            punctuate="true") as socket:
            async def receive():
                async for message in socket:  # the SDK's own parsed types
                    got.append(message)

            reader = asyncio.create_task(receive())
            audio = encode(pcm, "linear16")
            for i in range(0, len(audio), 3200):  # 200 ms, paced
                await socket.send_media(audio[i:i + 3200])
                await asyncio.sleep(0.2)
            await socket.send_close_stream()
            await asyncio.wait_for(reader, 30)
        finals = [m for m in got if type(m).__name__ == "ListenV1Results" and m.is_final]
        text = " ".join(m.channel.alternatives[0].transcript for m in finals)
        assert wer([prompt_text("agent-pass")], [text]) <= MAX_WER, text
        assert all(m.metadata.request_id == finals[0].metadata.request_id for m in finals)
        (meta,) = [m for m in got if type(m).__name__ == "ListenV1Metadata"]
        assert meta.channels == 1 and meta.duration == pytest.approx(len(pcm) / 8000, abs=0.001)
        assert [type(m).__name__ for m in got].count("ListenV1UtteranceEnd") >= 1

        response = await client.listen.v1.media.transcribe_file(request=wav_bytes(pcm), model="nova-3",
                                                                utterances=True, punctuate=True)
        alt = response.results.channels[0].alternatives[0]
        assert wer([prompt_text("agent-pass")], [alt.transcript]) <= MAX_WER, alt.transcript
        assert alt.words and alt.words[0].start < alt.words[-1].end <= len(pcm) / 8000
        assert response.metadata.duration == pytest.approx(len(pcm) / 8000, abs=0.001)
        assert response.results.utterances and response.results.utterances[0].transcript
        await stored(svc)
        calls = await rows(svc.database_url, "SELECT id, source FROM calls ORDER BY started_at")
        assert [(str(c["id"]), c["source"]) for c in calls] == [(meta.request_id, "listen"),
                                                               (response.metadata.request_id, "listen")]
