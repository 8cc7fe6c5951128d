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

A card number the VAD cut into several finals is caught across them by ``LegRedactor`` (below).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .asr.base import Final
from .config import ConfigError, RedactionSettings

CARD = "card"
MIN_CARD, MAX_CARD = 13, 19
# Partials: a number may be a card still being spoken (or misheard for now), so any run of 4+ digits
# (a card's first group) is hidden; the final then shows what it really was.
PARTIAL_MIN_DIGITS = 4
SPLIT_GAP_MS = 5000  # a final starting this soon after the last one may continue its digits
PCI_SHOWN_DIGITS = 6  # a card's first six digits may be shown (PCI DSS): a final ending in more is held back

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
        self.hold_s = settings.hold_s
        try:
            self.label(CARD)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"redaction.replacement may only use {{name}}, got {self.replacement!r}") from None
        self._labels = ([self.label(CARD)] if self.cards else []) + [self.label(n) for n, _ in self.patterns]

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> "Redactor | None":
        return cls(settings) if settings.enabled else None

    def label(self, name: str) -> str:
        return self.replacement.format(name=name)

    def redacted(self, text: str) -> bool:
        """Whether ``text`` (as this redactor returned it) had something replaced."""
        return any(label in text for label in self._labels)

    def leg(self) -> "LegRedactor":
        return LegRedactor(self)

    def text(self, text: str, *, partial: bool = False) -> str:
        """``text`` redacted on its own. ``partial``: also runs that may be a card still being spoken."""
        return self.apply_patterns(self.redact_cards(text, partial))

    def redact_cards(self, text: str, partial: bool = False) -> str:
        if not self.cards:
            return text
        spans: list[tuple[int, int]] = []
        runs = _runs(text, _parts(text))
        for run in runs:
            digits = [p.digits for p in run]
            spans += [(run[i].start, run[j].end) for i, j in _card_windows(digits)]
            if partial and sum(map(len, digits)) >= PARTIAL_MIN_DIGITS:
                spans.append((run[0].start, run[-1].end))
        return _replace(text, spans, self.label(CARD))

    def apply_patterns(self, text: str) -> str:
        for name, regex in self.patterns:
            label = self.label(name)
            text = regex.sub(lambda _m: label, text)
        return text


def _replace(text: str, spans: list[tuple[int, int]], label: str) -> str:
    for s, e in reversed(_merge(spans)):
        text = text[:s] + label + text[e:]
    return text


@dataclass
class _Pending:
    """A final whose text (cards redacted, patterns not yet) may still change."""
    final: Final
    text: str


@dataclass
class _Link:
    """One part of the digits that ended the leg's latest finals; ``owner`` None once stored."""
    digits: str
    owner: _Pending | None
    start: int
    end: int


class LegRedactor:
    """One leg's finals, redacted, with card numbers the VAD cut into several finals.

    It remembers the digits that ended the leg's latest finals (in memory only, at most 18). A final
    that starts with digits completing a Luhn-valid 13–19 digit number with them has that start
    redacted. With ``hold_s`` > 0, a final that ends a run of 7+ such digits is held back (until the
    next final, or ``hold_s``, or the leg's end) so its own digits can be redacted too; otherwise,
    and for runs of up to 6 digits (a card's first six may be shown, PCI DSS 3.4), they stay.
    ``final()`` and ``flush()`` return the finals to store, in order.
    """

    def __init__(self, redactor: Redactor):
        self.r = redactor
        self._held: list[_Pending] = []
        self._chain: list[_Link] = []
        self._end_ms: int | None = None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def partial(self, text: str, start_ms: int) -> str:
        if self.r.cards and self._chain and self._end_ms is not None and start_ms - self._end_ms <= SPLIT_GAP_MS:
            runs = _runs(text, _parts(text))  # digits that may continue the last final's: hidden
            if runs and _EDGE.fullmatch(text, 0, runs[0][0].start):
                text = _replace(text, [(runs[0][0].start, runs[0][-1].end)], self.r.label(CARD))
        return self.r.text(text, partial=True)

    def flush(self) -> list[Final]:
        out = [dataclasses.replace(h.final, text=self.r.apply_patterns(h.text)) for h in self._held]
        self._held = []
        for link in self._chain:
            link.owner = None
        return out

    def final(self, ev: Final) -> list[Final]:
        if not self.r.cards:
            return [dataclasses.replace(ev, text=self.r.apply_patterns(ev.text))]
        out: list[Final] = []
        pending = _Pending(ev, self.r.redact_cards(ev.text))
        runs = _runs(pending.text, _parts(pending.text))
        lead = runs[0] if runs and _EDGE.fullmatch(pending.text, 0, runs[0][0].start) else None
        continues = (lead is not None and self._chain and self._end_ms is not None
                     and ev.start_ms - self._end_ms <= SPLIT_GAP_MS)
        if continues:
            chain = self._chain
            windows = [(i, j) for i, j in _card_windows([c.digits for c in chain] + [p.digits for p in lead])
                       if i < len(chain) <= j]
            if windows:  # a card across finals: redact its parts in the held ones and in this one
                label = self.r.label(CARD)
                first = min(i for i, _ in windows)
                last = max(j for _, j in windows) - len(chain)
                spans: dict[int, tuple[_Pending, int, int]] = {}
                for link in chain[first:]:
                    if link.owner is not None:
                        _, s, e = spans.get(id(link.owner), (link.owner, link.start, link.end))
                        spans[id(link.owner)] = (link.owner, min(s, link.start), max(e, link.end))
                for owner, s, e in spans.values():
                    owner.text = _replace(owner.text, [(s, e)], label)
                pending.text = _replace(pending.text, [(lead[0].start, lead[last].end)], label)
                runs = _runs(pending.text, _parts(pending.text))
                continues = False
                self._chain = []
        if not continues:
            out += self.flush()
            self._chain = []
        trailing = runs[-1] if runs and _EDGE.fullmatch(pending.text, runs[-1][-1].end) else None
        if trailing is None:
            out += self.flush()
            self._chain = []
            out.append(dataclasses.replace(ev, text=self.r.apply_patterns(pending.text)))
        else:
            if not (continues and trailing is lead):  # a new number starts: the old chain is done
                out += self.flush()
                self._chain = []
            self._chain += [_Link(p.digits, pending, p.start, p.end) for p in trailing]
            while sum(len(c.digits) for c in self._chain) > MAX_CARD - 1:
                self._chain.pop(0)  # too far back to be part of a card with digits still to come
            while self._held and all(c.owner is not self._held[0] for c in self._chain):
                h = self._held.pop(0)
                out.append(dataclasses.replace(h.final, text=self.r.apply_patterns(h.text)))
            if self.r.hold_s > 0 and sum(len(c.digits) for c in self._chain) > PCI_SHOWN_DIGITS:
                self._held.append(pending)
            else:
                out += self.flush()
                out.append(dataclasses.replace(ev, text=self.r.apply_patterns(pending.text)))
        self._end_ms = ev.end_ms
        return out
