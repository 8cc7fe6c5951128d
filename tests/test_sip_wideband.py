"""Wideband and encrypted SIP calls from a real peer (baresip's g722, opus and srtp modules).

The leg's codec is what the SDP negotiated (G.722, Opus), decoded at 16 kHz and fed to the
ASR at its own rate; SRTP keys come only over SIP TLS, and a plain RTP packet slipped into an
SRTP stream, even from the sender's own address and port, never reaches a decoder.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import subprocess

import numpy as np
import pytest

from telephony.bench.accuracy import wer
from telephony.bench.sip_loadgen import RawUac
from telephony.media.codecs import CODECS
from telephony.media.resample import Resampler
from telephony.media.rtp import build_rtp

from . import sip_peers as peers
from .speech import prompt_8k, prompt_text, silence, write_wav
from .sql import rows
from .test_sip_peers import run, service

pytestmark = pytest.mark.slow
MAX_WER = 0.2


def wideband_prompt(tmp_path, name: str, rate: int = 16000, channels: int = 1):
    """The prompt as Debian ships it in 16 kHz G.722, decoded: a caller on a wideband line.
    ``rate``, ``channels``: what baresip's file source wants for the codec (48 kHz stereo for Opus)."""
    data = (peers.SOUNDS / f"{name}.g722").read_bytes()
    dec = CODECS["G722"].decoder()
    pcm = np.frombuffer(b"".join(dec.decode(data[i:i + 160]) for i in range(0, len(data), 160)), "<i2")
    if rate != 16000:
        pcm = (Resampler(16000, rate).process(pcm, last=True) * 32767).astype(np.int16)
    pcm = np.concatenate([np.zeros(rate // 2, np.int16), pcm, np.zeros(rate, np.int16)])
    if channels == 2:
        pcm = np.repeat(pcm, 2)  # the same voice on both channels
    return write_wav(tmp_path / f"{name}-{rate}.wav", pcm, rate=rate, channels=channels)


async def legs(url):
    return await rows(url, "SELECT codec, sample_rate, stats, meta, packets_received, packets_foreign FROM legs")


@pytest.mark.parametrize("offer,codec,source", [("G722", "G722", (16000, 1)), ("opus/48000/2", "opus", (48000, 2))])
async def test_wideband_call_is_decoded_and_transcribed_at_16khz(fresh_database_url, tmp_path, offer, codec, source):
    peers.require("baresip", "baresip-core")
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        res = await run(functools.partial(peers.baresip_call, codecs=offer), tmp_path / "baresip",
                        f"sip:transcribe@127.0.0.1:{ep.port}", wideband_prompt(tmp_path, "agent-alreadyon", *source), 9)
        assert "Call established" in res.stdout, res.stdout[-2000:]
    (leg,) = await legs(fresh_database_url)
    assert (leg["codec"], leg["sample_rate"]) == (codec, 16000) and leg["packets_received"] > 200
    said = " ".join(r["text"] for r in await rows(fresh_database_url, "SELECT text FROM utterances ORDER BY start_ms"))
    assert wer([prompt_text("agent-alreadyon")], [said]) <= MAX_WER, said


def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def spoofed_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """One UDP datagram with a forged source address and port (an injector on the path)."""
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(ip + udp, (dst[0], 0))


async def test_srtp_call_over_tls_is_transcribed_and_injected_plain_rtp_is_rejected(fresh_database_url, tmp_path):
    peers.require("baresip", "baresip-core")
    cert, key = certificate(tmp_path)
    tls = dict(tls=True, tls_port=peers.free_port(), tls_cert=str(cert), tls_key=str(key))
    async with service(fresh_database_url, tmp_path, **tls) as (ep, manager):
        uri = f"sip:transcribe@127.0.0.1:{ep.uas.ports['tls']};transport=tls"
        call = run(functools.partial(peers.baresip_call, mediaenc="srtp-mand", cafile=cert), tmp_path / "baresip",
                   uri, peers.SOUNDS / "agent-alreadyon.wav", 9)
        injected = 0
        for _ in range(100):  # once the call is up: forge plain RTP from baresip's own address and port
            await asyncio.sleep(0.1)
            streams = [x for st in ep.calls for x in st.streams.values() if x.leg is not None]
            if streams and streams[0].rtp.last_packet:
                x = streams[0]
                src = (x.rtp.policy.address, x.rtp.policy.port)
                for n in range(5):
                    spoofed_udp(src, ("127.0.0.1", x.rtp.port), build_rtp(0, 40000 + n, 8_000_000 + 160 * n, 0xBAD,
                                                                          bytes(160)))
                    injected += 1
                break
        res = await call
        assert "Call established" in res.stdout, res.stdout[-2000:]
    assert injected == 5
    (leg,) = await legs(fresh_database_url)
    assert leg["meta"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
    assert leg["stats"]["srtp_auth_failed"] == injected  # the forged packets, and none of baresip's
    said = " ".join(r["text"] for r in await rows(fresh_database_url, "SELECT text FROM utterances ORDER BY start_ms"))
    assert wer([prompt_text("agent-alreadyon")], [said]) <= MAX_WER, said


async def test_srtp_keys_over_plain_udp_are_refused(fresh_database_url, tmp_path):
    async with service(fresh_database_url, tmp_path) as (ep, manager):
        uac = await RawUac(("127.0.0.1", ep.port)).open()
        try:
            sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                   "m=audio 40000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
                   "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc2VuZGVyKQ==\r\na=sendonly\r\n")
            r = await uac.dialog().invite(sdp)
        finally:
            await uac.close()
    assert r.status == 488 and "TLS" in r.reason
    assert await rows(fresh_database_url, "SELECT id FROM calls") == []
