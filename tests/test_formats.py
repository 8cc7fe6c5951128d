"""Transcript rendering: plain text, JSON, WebVTT."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone

import pytest

from telephony.formats import FormatError, clock, render, to_json, to_text, to_vtt

UTTS = [
    {"speaker": "Alice", "start_ms": 1240, "end_ms": 2000, "text": "hello"},
    {"speaker": "Bob", "start_ms": 2500, "end_ms": 4100, "text": "hi, how can I help?", "confidence": 0.87},
    {"speaker": "Alice", "start_ms": 3_725_004, "end_ms": 3_726_000, "text": "still\nhere"},
]


def test_clock():
    assert clock(0) == "00:00.000"
    assert clock(1240) == "00:01.240"
    assert clock(61_250) == "01:01.250"
    assert clock(3_725_004) == "1:02:05.004"
    assert clock(3_725_004, hours=True) == "01:02:05.004"
    assert clock(1240, hours=True) == "00:00:01.240"


def test_text():
    assert to_text(UTTS) == (
        "[00:01.240] Alice: hello\n"
        "[00:02.500] Bob: hi, how can I help?\n"
        "[1:02:05.004] Alice: still here\n"  # one line per utterance, always
    )
    assert to_text([]) == ""


def test_json_round_trips_with_call_metadata():
    call = {"id": uuid.UUID(int=1), "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "utterances": ["dropped"]}
    doc = json.loads(to_json(UTTS, call))
    assert doc["utterances"] == UTTS
    assert doc["call"] == {"id": str(uuid.UUID(int=1)), "started_at": "2026-01-01T00:00:00+00:00"}
    assert "call" not in json.loads(to_json(UTTS))


def test_webvtt_structure():
    vtt = to_vtt(UTTS + [{"speaker": "<Eve> & co", "start_ms": 5000, "end_ms": 5000, "text": "a --> b <i>x</i>"}])
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.strip().split("\n\n")[1:]
    assert len(cues) == 4
    timing = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} --> \d{2}:\d{2}:\d{2}\.\d{3}$")
    for n, cue in enumerate(cues, 1):
        ident, times, body = cue.split("\n")  # exactly three lines: no blank line inside a cue
        assert ident == str(n) and timing.match(times)
        assert body.startswith("<v ")
    assert cues[0].split("\n")[1:] == ["00:00:01.240 --> 00:00:02.000", "<v Alice>hello"]
    assert cues[2].split("\n")[1] == "01:02:05.004 --> 01:02:06.000"
    # Markup in names and text is escaped; '-->' never appears outside the timing line.
    assert cues[3].split("\n")[2] == "<v &lt;Eve&gt; &amp; co>a --&gt; b &lt;i&gt;x&lt;/i&gt;"
    # A zero-length cue still ends after it starts.
    assert cues[3].split("\n")[1] == "00:00:05.000 --> 00:00:05.001"


def test_render_dispatch_and_errors():
    assert render(UTTS, "text") == to_text(UTTS)
    assert render(UTTS, "vtt") == to_vtt(UTTS)
    assert json.loads(render(UTTS, "json"))["utterances"][0]["speaker"] == "Alice"
    with pytest.raises(FormatError, match="unknown transcript format 'srt'"):
        render(UTTS, "srt")
    with pytest.raises(FormatError, match="utterance 0 lacks start_ms"):
        to_text([{"speaker": "A", "end_ms": 1, "text": "x"}])
    with pytest.raises(FormatError, match="non-negative number"):
        to_vtt([{"speaker": "A", "start_ms": -5, "end_ms": 1, "text": "x"}])
    with pytest.raises(FormatError, match="not a mapping"):
        to_text(["hello"])
