"""Redaction of card numbers and configured identifiers in transcript text (``[redaction]``).

``LegTranscript`` runs every final and partial of a leg through a ``LegRedactor`` before the
text goes anywhere (journal, PostgreSQL, NOTIFY, webhooks, captions, ``on_final`` hooks), so the
clear text never leaves the ASR session's memory.

Card numbers: runs of 13–19 digits that pass the Luhn check, as the ASR formats them: digit
groups ("4111 1111-1111 1111"), digit words ("four one one one", "oh"/"zero", "double four",
"eleven", "forty two"), or a mix, separated by spaces or light punctuation (, . - / : ;).
Any window of 13–19 digits inside such a run that passes Luhn is replaced (windows start and end
at group or word boundaries; groups longer than 13 digits are searched digit by digit, since the
ASR may fuse a card with a neighbouring digit), and overlapping windows merge into one ``[card]``.
Numbers of up to 12 digits (phone numbers, dates, amounts) are never touched by the card rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ConfigError, RedactionSettings

CARD = "card"
MIN_CARD, MAX_CARD = 13, 19
# Partials: a number may be a card still being spoken. Hidden: any run of 6+ digits, and a run of
# 4+ digits that ends the partial (a card's first group); the final then shows what it really was.
PARTIAL_MIN_DIGITS = 6
PARTIAL_TAIL_DIGITS = 4
SPLIT_GAP_MS = 5000  # a final starting this soon after the last one may continue its digits

_UNITS = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "one": "1", "two": "2", "three": "3", "four": "4",
          "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_TEENS = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
          "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19"}
_TENS = {"twenty": "2", "thirty": "3", "forty": "4", "fifty": "5", "sixty": "6", "seventy": "7",
         "eighty": "8", "ninety": "9"}
_REPEAT = {"double": 2, "triple": 3}

_TOKEN = re.compile(r"\d+|[A-Za-z]+")
_GAP = re.compile(r"[\s,.;:/\-\u2010-\u2014\u2026]{0,4}")  # what may stand between two parts of one number
_EDGE = re.compile(r"[\s,.;:!?/\-\u2010-\u2014\u2026]*")


def compiled_patterns(s: RedactionSettings) -> list[tuple[str, re.Pattern]]:
    """[(name, compiled regex)]; ConfigError naming the bad entry."""
    out = []
    for n, p in enumerate(s.patterns):
        if isinstance(p, str):
            name, eq, regex = p.partition("=")
            if not eq:
                raise ConfigError(f"redaction.patterns[{n}]: expected name=regex, got {p!r}")
        elif isinstance(p, dict) and set(p) == {"name", "regex"}:
            name, regex = p["name"], p["regex"]
        else:
            raise ConfigError(f"redaction.patterns[{n}]: expected a table with name and regex only")
        if not isinstance(name, str) or not name.strip() or not isinstance(regex, str) or not regex:
            raise ConfigError(f"redaction.patterns[{n}]: name and regex must be non-empty strings")
        try:
            out.append((name.strip(), re.compile(regex)))
        except re.error as exc:
            raise ConfigError(f"redaction.patterns[{n}] ({name.strip()}): bad regex: {exc}") from None
    return out


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass
class _Part:
    """A piece of a spoken or written number: text[start:end] stands for ``digits``."""
    start: int
    end: int
    digits: str


def _parts(text: str) -> list[_Part]:
    """Every digit group and number word of ``text``, in order (multi-word numbers joined)."""
    toks = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    out: list[_Part] = []
    i = 0

    def adjacent(a: int, b: int) -> bool:
        return _GAP.fullmatch(text, toks[a][1], toks[b][0]) is not None

    while i < len(toks):
        s, e, t = toks[i]
        w = t.lower()
        if t.isdigit() and len(t) > MIN_CARD:  # maybe a card fused with a neighbouring digit: look inside
            out.extend(_Part(s + k, s + k + 1, d) for k, d in enumerate(t))
        elif t.isdigit():
            out.append(_Part(s, e, t))
        elif w in _UNITS:
            out.append(_Part(s, e, _UNITS[w]))
        elif w in _TEENS:
            out.append(_Part(s, e, _TEENS[w]))
        elif w in _TENS:
            nxt = toks[i + 1][2].lower() if i + 1 < len(toks) else ""
            if nxt in _UNITS and _UNITS[nxt] != "0" and adjacent(i, i + 1):  # "forty two", "forty-two"
                out.append(_Part(s, toks[i + 1][1], _TENS[w] + _UNITS[nxt]))
                i += 1
            else:
                out.append(_Part(s, e, _TENS[w] + "0"))
        elif w in _REPEAT and i + 1 < len(toks) and adjacent(i, i + 1):  # "double four", "triple 0"
            nxt = toks[i + 1][2]
            d = nxt if nxt.isdigit() and len(nxt) == 1 else _UNITS.get(nxt.lower())
            if d is not None:
                out.append(_Part(s, toks[i + 1][1], d * _REPEAT[w]))
                i += 1
        i += 1
    return out


def _runs(text: str, parts: list[_Part]) -> list[list[_Part]]:
    """Parts grouped into numbers: neighbours with only spaces or light punctuation between them."""
    runs: list[list[_Part]] = []
    for p in parts:
        if runs and _GAP.fullmatch(text, runs[-1][-1].end, p.start):
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _card_windows(digits: list[str]) -> list[tuple[int, int]]:
    """(i, j) inclusive index ranges whose joined digits are 13–19 long and pass Luhn."""
    found = []
    for i in range(len(digits)):
        joined = ""
        for j in range(i, len(digits)):
            joined += digits[j]
            if len(joined) > MAX_CARD:
                break
            if len(joined) >= MIN_CARD and luhn(joined):
                found.append((i, j))
    return found


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class Redactor:
    """The compiled settings, shared by every leg; ``leg()`` makes one leg's (stateful) redactor."""

    def __init__(self, settings: RedactionSettings):
        self.cards = settings.cards
        self.patterns = compiled_patterns(settings)
        self.replacement = settings.replacement
        try:
            self.label(CARD)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"redaction.replacement may only use {{name}}, got {self.replacement!r}") from None

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> "Redactor | None":
        return cls(settings) if settings.enabled else None

    def label(self, name: str) -> str:
        return self.replacement.format(name=name)

    def leg(self) -> "LegRedactor":
        return LegRedactor(self)

    def text(self, text: str, *, partial: bool = False, head: list[str] | None = None) -> str:
        """``text`` redacted. ``partial``: also any run of 6+ digits (maybe a card still being spoken).
        ``head``: digits that ended the previous final; a leading run that completes a card with them
        is redacted too."""
        return self._text(text, partial, head)[0]

    def _text(self, text: str, partial: bool, head: list[str] | None) -> tuple[str, list[str] | None]:
        tail: list[str] | None = None
        if self.cards:
            spans: list[tuple[int, int]] = []
            runs = _runs(text, _parts(text))
            for n, run in enumerate(runs):
                digits = [p.digits for p in run]
                for i, j in _card_windows(digits):
                    spans.append((run[i].start, run[j].end))
                trailing = n == len(runs) - 1 and _EDGE.fullmatch(text, run[-1].end) is not None
                count = sum(map(len, digits))
                if partial and (count >= PARTIAL_MIN_DIGITS or trailing and count >= PARTIAL_TAIL_DIGITS):
                    spans.append((run[0].start, run[-1].end))
                leading = n == 0 and _EDGE.fullmatch(text, 0, run[0].start) is not None
                if leading and head:
                    # Windows that start in the previous final and end in this run: redact this run's part.
                    for i, j in _card_windows(head + digits):
                        if i < len(head) <= j:
                            spans.append((run[0].start, run[j - len(head)].end))
                if trailing:
                    carried = head + digits if leading and head and len(runs) == 1 else digits
                    tail = _last_digits(carried)
            text = self._replace(text, spans, self.label(CARD))
        for name, regex in self.patterns:
            label = self.label(name)
            text = regex.sub(lambda _m: label, text)
        return text, tail

    @staticmethod
    def _replace(text: str, spans: list[tuple[int, int]], label: str) -> str:
        for s, e in reversed(_merge(spans)):
            text = text[:s] + label + text[e:]
        return text


def _last_digits(parts: list[str]) -> list[str]:
    """The trailing parts holding at most MAX_CARD - 1 digits (all a continuation can complete)."""
    out: list[str] = []
    count = 0
    for d in reversed(parts):
        if count + len(d) > MAX_CARD - 1:
            break
        out.insert(0, d)
        count += len(d)
    return out


class LegRedactor:
    """One leg's redaction: remembers the digits that ended its last final (in memory only) so a
    card number cut in two by the VAD is still caught in its second half.

    The first half was already stored: it stays in clear unless it is a card number itself (or, in
    partials, 6+ digits). See README "Redaction" for this limit.
    """

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        self._tail: list[str] = []
        self._tail_end_ms: int | None = None

    def final(self, text: str, start_ms: int, end_ms: int) -> str:
        head = self._tail if self._tail_end_ms is not None and start_ms - self._tail_end_ms <= SPLIT_GAP_MS else None
        out, tail = self.redactor._text(text, False, head)
        self._tail, self._tail_end_ms = (tail, end_ms) if tail else ([], None)
        return out

    def partial(self, text: str) -> str:
        return self.redactor._text(text, True, None)[0]
