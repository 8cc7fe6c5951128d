"""Property tests: whatever bytes arrive, the SIP parsers answer with a SIP error or drop, never crash."""

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip.errors import SipReject
from telephony.sip.message import SipRequest, Unanswerable, parse_message
from telephony.sip.sdp import parse_sdp
from telephony.sip.siprec import parse_invite_body
from .testdata import vectors

SEEDS = [p.read_bytes() for p in vectors("sip_invites", "*.sip") + vectors("rfc4475", "*.dat")]
SIPREC = [p.read_bytes() for p in vectors("siprec", "*.txt")]


@st.composite
def mutated(draw, seeds):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 40))]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 40))]
        else:
            data[i:i] = draw(st.sampled_from([b"\r\n", b";", b",", b"<", b">", b'"', b":", b" ", b"\x00", b"--"]))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEEDS))
def test_parse_message_never_crashes(data):
    try:
        msg = parse_message(data)
    except (SipReject, Unanswerable):
        return
    if isinstance(msg, SipRequest) and msg.body.strip():
        try:
            parse_invite_body(msg.get("content-type"), msg.body)
        except SipReject:
            pass


@settings(max_examples=300, deadline=None)
@given(mutated(SIPREC), st.sampled_from(["uniqueBoundary", "2CD2A2E9", "sonus-content-delim", "x"]))
def test_siprec_bodies_never_crash(body, boundary):
    try:
        parsed = parse_invite_body(f"multipart/mixed;boundary={boundary}", body)
        parsed.speakers()
    except SipReject as r:
        assert 400 <= r.status < 500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(data):
    for fn in (lambda: parse_message(data), lambda: parse_sdp(data)):
        try:
            fn()
        except (SipReject, Unanswerable):
            pass
