"""Word error rate against reference texts, and the Asterisk prompt corpus we measure on.

Text is normalised before scoring so that "Press 1." and "press one" agree:
lower case, numbers spelt out, punctuation dropped. The corpus is Debian's
``asterisk-core-sounds-en-wav`` (8 kHz recordings of a human voice) with the
published transcripts from ``asterisk-core-sounds-en``.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import jiwer

SOUNDS = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


_SPOKEN = {"%": " percent ", "&": " and ", "#": " pound ", "*": " star ", "+": " plus "}


def normalize(text: str) -> str:
    text = text.lower()
    for sym, word in _SPOKEN.items():
        text = text.replace(sym, word)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)  # 1,000 -> 1000
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", text)  # 2nd -> 2 (close enough for prompts)
    text = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", text)
    text = text.replace("-", " ").replace("'", "")
    text = re.sub(r"[^a-z ]+", " ", text)
    return " ".join(text.split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER over normalised texts (total edits / total reference words)."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    return jiwer.wer([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs])


def asterisk_prompts(limit: int = 60, min_words: int = 4) -> list[tuple[Path, str]]:
    """Prompts with speech-only transcripts (no [tones]), spread evenly over the corpus."""
    if not TRANSCRIPTS.is_file():
        raise FileNotFoundError(f"{TRANSCRIPTS} missing: apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")
    rows = []
    with gzip.open(TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            name, sep, text = line.partition(":")
            if not sep or line.startswith(";") or "/" in name:
                continue
            text = text.strip()
            path = SOUNDS / f"{name.strip()}.wav"
            if "[" in text or len(text.split()) < min_words or not path.is_file():
                continue
            rows.append((path, text))
    rows.sort()
    if limit >= len(rows):
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]
