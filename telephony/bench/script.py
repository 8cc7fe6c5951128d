"""What each benchmark leg says and when, and how the finals that come back are scored against it.

A leg's script is real speech: Debian's Asterisk prompts (a human voice, 8 kHz, with their
published transcripts), whole prompts of at most 8 s separated by pauses, about 70 % speech,
as μ-law. Each leg starts after its own random lead-in, so that legs do not end utterances in
step, and ends with enough silence that every prompt is endpointed before the hang-up.

The sender knows when it sent each prompt's last packet. A final comes back (``NOTIFY
telephony_utterance``) with its span on the leg's timeline, which starts when the service
created the leg and runs a playout delay behind the sender's clock; mapped to the sender's
clock, the final is credited to every prompt it covers a good part of. A prompt is finalised
when at least one final is credited to it, and its latency is from its last packet sent to
the NOTIFY of the last final credited to it (a long turn cut in two is final when its last
piece is).
"""

from __future__ import annotations

import functools
import random
import wave
from dataclasses import dataclass, field

import numpy as np

from .accuracy import asterisk_prompts, wer

FRAME_S = 0.02
FRAME = 160  # μ-law bytes per 20 ms
SILENCE = 0xFF  # μ-law digital silence
MAX_PROMPT_S = 8.0  # a turn; longer prompts (up to 22 s) are lectures, not conversation
PAUSE_S = (0.7, 2.3)  # between prompts: mean 1.5 s against ~3.6 s prompts, about 70 % speech
LEAD_S = (0.0, 3.0)
TAIL_S = 1.5  # silence before the hang-up: longer than any hang-over
COVER = 0.3  # a final is credited to a prompt when it covers this share of the prompt's audio


@dataclass(frozen=True)
class Prompt:
    text: str
    first: int  # its first 20 ms frame in the leg's audio
    last: int  # one past its last frame


@dataclass
class LegScript:
    audio: bytes  # μ-law, 8 kHz, a whole number of 20 ms frames
    prompts: list[Prompt]

    @property
    def frames(self) -> int:
        return len(self.audio) // FRAME

    @property
    def speech_share(self) -> float:
        return sum(p.last - p.first for p in self.prompts) / max(1, self.frames)


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[tuple[bytes, str], ...]:
    """Every usable prompt as (μ-law bytes padded to whole frames, transcript)."""
    from ..media.codecs import CODECS

    out = []
    for path, text in asterisk_prompts(limit=10_000):
        with wave.open(str(path)) as w:
            if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
                continue
            pcm = w.readframes(w.getnframes())
        if len(pcm) / 2 / 8000 > MAX_PROMPT_S:
            continue
        pcm += b"\x00\x00" * (-(len(pcm) // 2) % FRAME)  # whole 20 ms frames
        out.append((b"".join(CODECS["PCMU"].packetize(pcm)), text))
    if not out:
        raise FileNotFoundError("no Asterisk prompts usable: apt-get install asterisk-core-sounds-en-wav")
    return tuple(out)


def leg_script(secs: float, seed: int) -> LegScript:
    """``secs`` seconds of one speaker: lead-in, prompts and pauses, a silent tail."""
    rng = random.Random(seed)
    prompts_all = corpus()
    total = int(secs / FRAME_S)
    parts: list[bytes] = []
    prompts: list[Prompt] = []
    frame = 0

    def silence(seconds: float) -> None:
        nonlocal frame
        n = int(seconds / FRAME_S)
        parts.append(bytes([SILENCE]) * (n * FRAME))
        frame += n

    silence(rng.uniform(*LEAD_S))
    tail = int(TAIL_S / FRAME_S)
    while True:
        audio, text = prompts_all[rng.randrange(len(prompts_all))]
        n = len(audio) // FRAME
        if frame + n + tail > total:
            break
        prompts.append(Prompt(text, frame, frame + n))
        parts.append(audio)
        frame += n
        silence(rng.uniform(*PAUSE_S))
    audio = b"".join(parts)[: total * FRAME]
    audio += bytes([SILENCE]) * (total * FRAME - len(audio))
    return LegScript(audio, prompts)


@dataclass(frozen=True)
class FinalSeen:
    """A stored final as the listener saw it: its span on the leg's timeline (s from the leg's
    start), its text, and when its NOTIFY arrived (monotonic)."""

    start_s: float
    end_s: float
    text: str
    notified: float


@dataclass
class LegScore:
    prompts: int  # utterances sent
    finalised: int  # prompts with a final credited
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (prompt's last packet sent, latency s)
    finals: int = 0
    spurious: int = 0  # finals that cover no prompt (noise, invented text)
    reference: str = ""
    hypothesis: str = ""


def score_leg(script: LegScript, sent_first: float, last_sent: dict[int, float], leg_t0: float,
              playout_s: float, finals: list[FinalSeen]) -> LegScore:
    """Match one leg's finals to its prompts.

    ``sent_first``: when the sender sent frame 0 (monotonic); ``last_sent``: prompt index → when
    its last packet was actually sent; ``leg_t0``: when the service's leg timeline started;
    ``playout_s``: how far that timeline runs behind arrival (the jitter buffer's window).
    """
    spans = [(sent_first + p.first * FRAME_S, sent_first + p.last * FRAME_S) for p in script.prompts]
    credited: dict[int, list[float]] = {}
    spurious = 0
    for f in finals:
        lo, hi = leg_t0 + f.start_s - playout_s, leg_t0 + f.end_s - playout_s
        hit = False
        for i, (a, b) in enumerate(spans):
            if min(hi, b) - max(lo, a) >= COVER * (b - a):
                credited.setdefault(i, []).append(f.notified)
                hit = True
        spurious += not hit
    latencies = []
    for i, times in credited.items():
        sent = last_sent[i]
        latencies.append((sent, max(times) - sent))
    ordered = sorted(finals, key=lambda f: f.start_s)
    return LegScore(prompts=len(script.prompts), finalised=len(credited), latencies=sorted(latencies),
                    finals=len(finals), spurious=spurious, reference=" ".join(p.text for p in script.prompts),
                    hypothesis=" ".join(f.text for f in ordered))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q * 100)), 3)


def summarise(scores: list[LegScore], media_start: float, media_end: float) -> dict:
    """Latency percentiles (all, and by the half of the run the prompt ended in), finals vs
    utterances, WER over every leg."""
    mid = (media_start + media_end) / 2
    lat = [lat for s in scores for _, lat in s.latencies]
    first = [lat for s in scores for t, lat in s.latencies if t < mid]
    second = [lat for s in scores for t, lat in s.latencies if t >= mid]
    sent = sum(s.prompts for s in scores)
    done = sum(s.finalised for s in scores)
    pairs = [(s.reference, s.hypothesis) for s in scores if s.reference]
    return {
        "utterances_sent": sent,
        "utterances_finalised": done,
        "finalised_share": round(done / sent, 4) if sent else None,
        "finals": sum(s.finals for s in scores),
        "finals_spurious": sum(s.spurious for s in scores),
        "p50": percentile(lat, 0.5),
        "p95": percentile(lat, 0.95),
        "max": percentile(lat, 1.0),
        "p95_first_half": percentile(first, 0.95),
        "p95_second_half": percentile(second, 0.95),
        "wer": round(wer([r for r, _ in pairs], [h for _, h in pairs]), 4) if pairs else None,
    }
