"""The SIP parser on the RFC 4475 torture messages (../shared/testdata/rfc4475/) and real INVITEs."""

import json
from pathlib import Path

import pytest

from telephony.sip.errors import SipReject
from telephony.sip.message import (
    SipRequest,
    SipResponse,
    Unanswerable,
    header_param,
    parse_message,
    parse_name_addr,
    response_for,
    split_commas,
)
from .testdata import vector

TESTDATA = vector()
TORTURE = TESTDATA / "rfc4475"
VERDICTS = json.loads((TORTURE / "verdicts.json").read_text())

# What the parser itself decides. Requests it accepts may still be refused by the UAS
# (415, 420, 405, 501 ...): that is tested against the running endpoint in test_sip_endpoint.py.
EXPECTED = {
    "badaspec.dat": 400, "baddn.dat": 400, "badinv01.dat": 400, "badvers.dat": 505, "clerr.dat": 400,
    "escruri.dat": 400, "insuf.dat": 400, "ltgtruri.dat": 400, "lwsruri.dat": 400, "lwsstart.dat": 400,
    "mcl01.dat": 400, "mismatch01.dat": 400, "mismatch02.dat": 400, "multi01.dat": 400, "ncl.dat": 400,
    "novelsc.dat": 416, "quotbal.dat": 400, "scalar02.dat": 400, "trws.dat": 400, "unkscm.dat": 416,
    "bigcode.dat": "drop", "test.dat": "drop",
    "bcast.dat": "response", "noreason.dat": "response", "scalarlg.dat": "response", "unreason.dat": "response",
}


def _outcome(data: bytes):
    try:
        msg = parse_message(data)
    except SipReject as r:
        return r.status
    except Unanswerable:
        return "drop"
    return "response" if isinstance(msg, SipResponse) else "request"


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_torture_message(name):
    assert _outcome((TORTURE / name).read_bytes()) == EXPECTED.get(name, "request")


# Invalid per the RFC but where it allows a liberal receiver: we ignore the Date header, and a
# REGISTER (bad Contact) is refused with 405 by the UAS whatever its Contact says.
LIBERAL = {"baddate.dat", "regbadct.dat"}


def test_every_invalid_request_is_refused_or_dropped():
    for name, v in VERDICTS.items():
        if v["verdict"] == "invalid" and EXPECTED.get(name) != "response" and name not in LIBERAL:
            assert _outcome((TORTURE / name).read_bytes()) not in ("request",), name


def test_short_tortuous_invite_fields():
    req = parse_message((TORTURE / "wsinv.dat").read_bytes())
    assert isinstance(req, SipRequest) and req.method == "INVITE"
    assert req.cseq == (9, "INVITE")
    assert req.from_tag == "98asjd8"
    assert parse_name_addr(req.get("from")).display == 'J Rosenberg \\"'
    assert len(req.values("via")) == 3  # one folded Via header plus a compact one with two values
    assert req.body.startswith(b"v=0")


def test_trailing_octets_after_content_length_are_ignored():
    req = parse_message((TORTURE / "dblreq.dat").read_bytes())
    assert req.method == "REGISTER" and req.body == b""


def test_baddn_variant_with_final_crlf_is_still_400():
    assert _outcome((TORTURE / "variants" / "baddn.with-terminating-crlf.dat").read_bytes()) == 400


def test_content_length_two_octets_short_is_tolerated_but_not_more():
    data = (TESTDATA / "sip_invites" / "audiocodes_mediant1000_invite.sip").read_bytes()  # 2 octets short
    assert parse_message(data).method == "INVITE"
    data = (TESTDATA / "sip_invites" / "microsip_3.19.22_invite.sip").read_bytes()  # 136 octets short
    assert _outcome(data) == 400


def test_compact_headers():
    req = parse_message((TESTDATA / "sip_invites" / "audiocodes_mediant1000_invite_compact_headers.sip").read_bytes())
    assert req.call_id == "619455480112200022407@10.1.10.101"
    assert req.get("content-type") == "application/sdp"
    assert req.tokens("supported") >= {"timer", "replaces"}


def test_response_echoes_transaction_headers_and_stamps_via():
    req = parse_message((TESTDATA / "sip_invites" / "asterisk_1.6.0.6_invite.sip").read_bytes())
    resp = parse_message(response_for(req, 488, "Not Acceptable Here", to_tag="abc", source=("127.0.0.1", 5099)))
    assert isinstance(resp, SipResponse) and resp.status == 488
    via = resp.get("via")
    assert "rport=5099" in via and "received=127.0.0.1" in via and "branch=z9hG4bK2522d149" in via
    assert resp.to_tag == "40580753"  # the request already had a To tag: kept, ours not added
    assert resp.call_id == req.call_id and resp.get("cseq") == "102 INVITE"


def test_helpers():
    assert split_commas('"a, b" <sip:x@y>, <sip:z@w;p=1,2>') == ['"a, b" <sip:x@y>', "<sip:z@w;p=1,2>"]
    assert header_param("<sip:a@b;tag=uri>;tag=hdr", "tag") == "hdr"
    na = parse_name_addr('"Alice" <sip:alice@127.0.0.1:5062;transport=tcp>;tag=1')
    assert (na.display, na.user, na.host) == ("Alice", "alice", "127.0.0.1")
