"""Render a transcript (utterance dicts with speaker, start_ms, end_ms, text) as text, JSON or WebVTT."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from typing import Any, Iterable, Mapping

FORMATS = ("text", "json", "vtt")
REQUIRED = ("speaker", "start_ms", "end_ms", "text")


class FormatError(ValueError):
    """The transcript cannot be rendered (unknown format, or an utterance lacks a field)."""


def _checked(utterances: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    for i, u in enumerate(utterances):
        if not isinstance(u, Mapping):
            raise FormatError(f"utterance {i} is a {type(u).__name__}, not a mapping")
        missing = [k for k in REQUIRED if k not in u]
        if missing:
            raise FormatError(f"utterance {i} lacks {', '.join(missing)}")
        for k in ("start_ms", "end_ms"):
            if isinstance(u[k], bool) or not isinstance(u[k], (int, float)) or u[k] < 0:
                raise FormatError(f"utterance {i}: {k} must be a non-negative number, got {u[k]!r}")
        out.append(u)
    return out


def clock(ms: float, *, hours: bool = False) -> str:
    """``mm:ss.mmm``, or ``h:mm:ss.mmm`` once past an hour (``hours``: always ``hh:mm:ss.mmm``)."""
    ms = int(round(ms))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    if hours:
        return f"{h:02d}:{m:02d}:{s:02d}.{milli:03d}"
    if h:
        return f"{h}:{m:02d}:{s:02d}.{milli:03d}"
    return f"{m:02d}:{s:02d}.{milli:03d}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def to_text(utterances: Iterable[Mapping[str, Any]]) -> str:
    """One line per utterance: ``[00:01.240] Alice: hello``."""
    lines = [f"[{clock(u['start_ms'])}] {_one_line(u['speaker'])}: {_one_line(u['text'])}" for u in _checked(utterances)]
    return "\n".join(lines) + ("\n" if lines else "")


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def to_json(utterances: Iterable[Mapping[str, Any]], call: Mapping[str, Any] | None = None) -> str:
    """``{"call": {...}, "utterances": [...]}`` (``call`` omitted when not given), UTF-8 text."""
    doc: dict[str, Any] = {}
    if call is not None:
        doc["call"] = {k: v for k, v in call.items() if k not in ("utterances",)}
    doc["utterances"] = [dict(u) for u in _checked(utterances)]
    return json.dumps(doc, ensure_ascii=False, indent=2, default=_plain) + "\n"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(utterances: Iterable[Mapping[str, Any]]) -> str:
    """WebVTT: one cue per utterance, the speaker as a voice span (``<v Alice>hello``)."""
    parts = ["WEBVTT", ""]
    for n, u in enumerate(_checked(utterances), 1):
        start = u["start_ms"]
        end = max(u["end_ms"], start + 1)  # a cue must end after it starts
        # A voice annotation ends at '>', cue text at a blank line, and '-->' may
        # not appear in either: one line each, with '&', '<' and '>' escaped.
        speaker = _vtt_escape(_one_line(u["speaker"])) or "unknown"
        body = _vtt_escape(_one_line(u["text"]))
        parts += [str(n), f"{clock(start, hours=True)} --> {clock(end, hours=True)}", f"<v {speaker}>{body}", ""]
    return "\n".join(parts)


def render(utterances: Iterable[Mapping[str, Any]], fmt: str, call: Mapping[str, Any] | None = None) -> str:
    """Render in ``fmt`` (text | json | vtt)."""
    if fmt == "text":
        return to_text(utterances)
    if fmt == "json":
        return to_json(utterances, call)
    if fmt == "vtt":
        return to_vtt(utterances)
    raise FormatError(f"unknown transcript format {fmt!r}; expected one of {', '.join(FORMATS)}")


MEDIA_TYPES = {"text": "text/plain; charset=utf-8", "json": "application/json", "vtt": "text/vtt; charset=utf-8"}
