"""MediaLeg, the media contract: parsed packets and a negotiated codec map in, rate-tagged audio out.

Real speech (Asterisk prompts, and the same prompts as Debian's 16 kHz G.722 files) through each
codec's real encoder, packetised as a sender would, ticked through the leg like a live call.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest

from telephony.config import MediaSettings
from telephony.media.audio import AudioFrame
from telephony.media.codecs import CODECS, CodecError, lookup
from telephony.media.leg import FRAME_MS, MediaLeg, play_capture
from telephony.media.resample import Resampler
from telephony.media.rtp import RtpPacket, build_rtp

from .speech import prompt_8k

G722_DIR = Path("/usr/share/asterisk/sounds/en")


def g722_prompt(name: str) -> bytes:
    path = G722_DIR / f"{name}.g722"
    if not path.is_file():
        pytest.fail(f"{path} missing: apt-get install asterisk-core-sounds-en-g722", pytrace=False)
    return path.read_bytes()


def packets(codec_name: str, pcm: np.ndarray, pt: int, ssrc: int = 7) -> list[tuple[float, bytes]]:
    """(arrival s, datagram) every 20 ms, as a sender would put the signal on the wire."""
    codec = CODECS[codec_name.upper()]
    step = codec.clock_rate // 50
    payloads = codec.packetize(pcm.astype("<i2").tobytes())
    return [(n * 0.02 + 0.005, build_rtp(pt, 100 + n, 5000 + n * step, ssrc, p)) for n, p in enumerate(payloads)]


def run(leg: MediaLeg, pkts, seconds: float) -> AudioFrame:
    frames = list(play_capture(leg, pkts, seconds))
    assert all(f.rate == leg.out_rate for f in frames)
    return AudioFrame(np.concatenate([f.samples for f in frames]), leg.out_rate)


def similarity(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Best normalised correlation of two signals over small lags (codec and filter delays)."""
    n = min(len(a), len(b)) - max_lag
    best = 0.0
    for lag in range(-max_lag, max_lag + 1, 2):
        x = a[max(0, lag):max(0, lag) + n]
        y = b[max(0, -lag):max(0, -lag) + n]
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


@pytest.mark.parametrize("name,pt,rate", [("PCMU", 0, 8000), ("PCMA", 8, 8000), ("G722", 9, 16000), ("opus", 111, 16000)])
def test_each_codec_gives_speech_at_its_own_rate_and_once_at_the_asr_rate(name, pt, rate):
    speech8 = prompt_8k("pls-hold-while-try")
    signal = speech8 if rate == 8000 else (Resampler(8000, 16000).process(speech8, last=True) * 32767).astype(np.int16)
    codec = CODECS[name.upper()]
    leg = MediaLeg({pt: codec}, 16000)
    assert (leg.rate, leg.codec.name) == (rate, codec.name)
    out = run(leg, packets(name, signal, pt), len(signal) / rate + 0.2)
    assert out.rate == 16000
    ref16 = Resampler(8000, 16000).process(speech8, last=True)
    delay = 3 * FRAME_MS * 16  # the playout window
    assert similarity(out.samples[delay:], ref16, 160) > 0.8
    stats = leg.stats()
    assert stats["received"] == len(packets(name, signal, pt)) and stats["lost"] == 0 and stats["decode_errors"] == 0


def test_real_g722_prompt_keeps_its_wideband_energy():
    data = g722_prompt("pls-hold-while-try")
    pkts = [(n * 0.02, build_rtp(9, n, n * 160, 1, data[i:i + 160])) for n, i in enumerate(range(0, len(data), 160))]
    leg = MediaLeg({9: CODECS["G722"]}, None)  # no ASR resample: the leg's own 16 kHz
    out = run(leg, pkts, len(data) / 8000 + 0.2)
    assert out.rate == 16000 and abs(len(out) - len(data) * 2) <= 16000 * 0.25
    spectrum = np.abs(np.fft.rfft(out.samples))
    freqs = np.fft.rfftfreq(len(out.samples), 1 / 16000)
    high = spectrum[(freqs > 4200) & (freqs < 7000)].sum() / spectrum[freqs < 4000].sum()
    assert high > 0.01  # a G.711 leg has nothing above 4 kHz; this one does


def test_lost_wideband_packets_leave_silence_of_their_exact_length():
    signal = (np.sin(2 * np.pi * 300 * np.arange(16000) / 16000) * 8000).astype(np.int16)
    pkts = packets("G722", signal, 9)
    dropped = pkts[:10] + pkts[12:]  # two packets (40 ms) lost on the wire
    leg = MediaLeg({9: CODECS["G722"]}, None)
    out = run(leg, dropped, 1.2)
    assert leg.stats()["lost"] == 2
    assert leg.duration_ms == len(out) * 1000 // 16000  # the timeline holds: nothing shifted
    assert leg.stats()["silence_ms"] >= 40


def test_other_payload_types_hold_their_sequence_numbers_and_dtmf_becomes_events():
    te = lookup("telephone-event", 8000)
    leg = MediaLeg({0: CODECS["PCMU"], 101: te}, None)
    pcm = prompt_8k("pls-hold-while-try")[:8000]
    pkts = packets("PCMU", pcm, 0)
    # Key 5 for 100 ms at packet 20 (RFC 4733: event, E|vol, duration; three end packets).
    ts = 5000 + 20 * 160
    events = [(0.4 + k * 0.02, build_rtp(101, 1000 + k, ts, 7, bytes([5, 10]) + (160 * (k + 1)).to_bytes(2, "big"),
                                         marker=k == 0)) for k in range(4)]
    events += [(0.5 + k * 0.001, build_rtp(101, 1004 + k, ts, 7, bytes([5, 0x80 | 10]) + (800).to_bytes(2, "big")))
               for k in range(3)]
    run(leg, sorted(pkts + events), 1.2)
    assert [(e.key, e.duration_ms) for e, _ in leg.dtmf_events] == [("5", 100)]
    at_ms = leg.dtmf_events[0][1]
    assert 400 <= at_ms <= 400 + 3 * FRAME_MS + 40  # where packet 20 plays: its RTP time, after the window
    assert leg.stats()["other_payload"] == 7 and leg.stats()["dtmf_events"] == 1


def test_an_idle_leg_costs_no_decode_and_no_resample():
    leg = MediaLeg({0: CODECS["PCMU"]}, 16000)
    for n in range(1, 501):  # 10 s of ticks, no packet at all
        frame = leg.tick(n * 0.02)
        if frame is not None:
            assert frame.rate == 16000 and not frame.samples.any()
    assert leg.duration_ms == 10000 and leg.stats()["silence_ms"] == 10000


def test_a_leg_needs_an_audio_codec():
    with pytest.raises(CodecError):
        MediaLeg({101: lookup("telephone-event", 8000)})


def test_opus_from_an_independent_encoder_decodes_at_16khz():
    """aiortc's own Opus encoder (what a browser's packets look like), not ours."""
    from aiortc.codecs.opus import OpusEncoder
    from av import AudioFrame as AvFrame

    speech8 = prompt_8k("pls-hold-while-try")
    enc, payloads = OpusEncoder(), []
    for i in range(0, len(speech8) - 159, 160):
        f = AvFrame(format="s16", layout="mono", samples=160)
        f.planes[0].update(speech8[i:i + 160].astype("<i2").tobytes())
        f.sample_rate, f.pts, f.time_base = 8000, i, fractions.Fraction(1, 8000)
        payloads += enc.encode(f)[0]
    pkts = [(n * 0.02, build_rtp(111, n, n * 960, 3, p)) for n, p in enumerate(payloads)]
    leg = MediaLeg({111: CODECS["OPUS"]}, 16000, MediaSettings())
    out = run(leg, pkts, len(payloads) * 0.02 + 0.2)
    ref16 = Resampler(8000, 16000).process(speech8, last=True)
    assert similarity(out.samples[3 * FRAME_MS * 16:], ref16, 400) > 0.8
    assert leg.stats()["decode_errors"] == 0


def test_parsed_packets_go_in_directly():
    leg = MediaLeg({0: CODECS["PCMU"]})
    leg.push(RtpPacket(0, 1, 160, 9, b"\x00" * 160), 0.001)
    leg.push_datagram(b"\x80", 0.002)  # malformed: counted, never raised
    assert leg.stats()["received"] == 1 and leg.stats()["malformed"] == 1
