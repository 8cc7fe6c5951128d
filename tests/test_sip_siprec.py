"""SIPREC bodies from real recorders (../shared/testdata/siprec/, labels.json says who speaks where)."""

import json
from pathlib import Path

import pytest

from telephony.sip.errors import SipReject
from telephony.sip.siprec import parse_invite_body, parse_metadata, split_multipart
from .testdata import vector

SIPREC = vector("siprec")
LABELS = json.loads((SIPREC / "labels.json").read_text())


def _parse(name: str):
    info = LABELS[name]
    ctype = f"multipart/mixed;boundary={info['boundary']}" if info["boundary"] else "application/sdp"
    return parse_invite_body(ctype, (SIPREC / name).read_bytes())


MAPPED = [n for n, i in LABELS.items() if i.get("label_to_sender")]


@pytest.mark.parametrize("name", MAPPED)
def test_each_stream_gets_the_participant_that_sends_on_it(name):
    info = LABELS[name]
    body = _parse(name)
    speakers = body.speakers()
    assert [s.label for s in speakers] == [st["label"] for st in info["sdp_streams"]]
    for s in speakers:
        want = info["label_to_sender"][s.label]
        assert s.source == "metadata"
        assert s.participant.id == want["sent_by_participant"]
        assert s.participant.aor == want["aor"]
        # The label is the name when there is one, else the AOR's user part.
        expected = (want["name"] or "").strip() or want["aor"].split(":", 1)[-1].split("@")[0]
        assert s.speaker == expected


def test_caller_on_the_second_stream_sonus():
    # Sonus: the From party (Extension 8500) sends on label 2, the second m= line.
    speakers = _parse("drachtio_sonus-siprec-offer.multipart.txt").speakers()
    assert [(s.index, s.speaker) for s in speakers] == [(0, "2249888012"), (1, "Extension 8500")]


def test_labels_that_are_not_numbers_and_metadata_without_plus_xml():
    body = _parse("drachtio_procomm-siprec-offer.multipart.txt")
    assert body.parts == ["application/sdp", "application/rs-metadata"]
    assert [s.label for s in body.speakers()] == ["a_leg", "b_leg"]
    assert body.speakers()[1].speaker == "Speechpath-Main-Line 016190619"


def test_inactive_streams_are_kept_with_participants_in_document_order():
    body = _parse("drachtio_inactive-sdp-offer.multipart.txt")
    assert [m.direction for m in body.sdp.audio()] == ["inactive", "inactive"]
    speakers = body.speakers()
    # No <send> associations: the two participants go to the two streams in order, marked as a guess.
    assert [(s.speaker, s.source) for s in speakers] == [("0733165805", "order"), ("+972546136443", "order")]
    assert body.metadata.session_id == "GZBIusaXEeuxxK1dFIaIyA=="


def test_plain_sdp_without_metadata_falls_back_to_stream_order():
    body = _parse("drachtio_non-siprec-payload.multipart.txt")
    assert not body.is_siprec
    assert [(s.speaker, s.source) for s in body.speakers()] == [("caller", "order")]


def test_damaged_metadata_part_is_ignored_with_a_note():
    body = _parse("drachtio_broadworks-offer.multipart.txt")  # part type "application/ +xml", tags stripped
    assert body.metadata is None and "not rs-metadata" in body.metadata_note
    assert [s.speaker for s in body.speakers(("agent", "customer"))] == ["agent"]


def test_cisco_third_part_is_ignored_and_session_ids_kept():
    body = _parse("drachtio_cisco-siprec-offer.multipart.txt")
    assert body.parts == ["application/sdp", "application/rs-metadata+xml", "application/gtd"]
    meta = body.metadata.as_meta()
    assert meta["siprec_session_id"] == "kQNhKFdEEeeJ9tD/VsPGWA=="
    assert meta["sip_session_id"].startswith("e9fffff2020a598b86962867715db0cf")
    assert {p["aor"] for p in meta["participants"]} == {"sip:7301@35.162.237.204", "sip:7300@35.162.237.204"}


def test_crlf_bodies_and_quoted_boundary():
    raw = (SIPREC / "drachtio_cisco-siprec-offer.multipart.txt").read_bytes().replace(b"\n", b"\r\n")
    body = parse_invite_body('multipart/mixed; boundary="uniqueBoundary"', raw)
    assert [s.speaker for s in body.speakers()] == ["7301", "7300"]


@pytest.mark.parametrize(
    "ctype,body,status",
    [
        ("multipart/mixed", b"--x\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--x--", 400),  # no boundary
        ("multipart/mixed;boundary=nope", b"--x\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n", 400),
        ("multipart/mixed;boundary=x", b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--", 415),  # no SDP
        ("text/plain", b"hello", 415),
        ("multipart/mixed;boundary=x",
         b"--x\r\nContent-Type: application/sdp\r\n\r\nnot sdp\r\n--x--", 400),
    ],
)
def test_malformed_bodies_map_to_sip_errors(ctype, body, status):
    with pytest.raises(SipReject) as e:
        parse_invite_body(ctype, body)
    assert e.value.status == status and e.value.reason


@pytest.mark.parametrize("xml", [b"<recording><participant</recording>", b"<other/>",
                                 b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "a">]><recording>&a;</recording>'])
def test_damaged_rs_metadata_keeps_the_recording_with_fallback_names_and_the_text(xml):
    # A metadata part that cannot be used must not lose the audio: the streams are recorded,
    # named by order, and the damaged text is kept for whoever maps them later.
    body = parse_invite_body(
        "multipart/mixed;boundary=x",
        b"--x\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\na=label:1\r\n"
        b"m=audio 4002 RTP/AVP 0\r\na=label:2\r\n--x\r\nContent-Type: application/rs-metadata+xml\r\n\r\n"
        + xml + b"\r\n--x--")
    assert body.is_siprec and body.metadata is None
    assert body.metadata_raw == xml.decode() and "damaged rs-metadata" in body.metadata_note
    assert [s.speaker for s in body.speakers()] == ["caller", "callee"]


def test_cisco_metadata_cut_short_by_content_length_still_records_both_streams():
    raw = (SIPREC / "drachtio_cisco-siprec-offer.multipart.txt").read_bytes()
    cut = raw[: raw.index(b"</participant>")] + b"\n--uniqueBoundary--\n"  # what a wrong Content-Length leaves
    body = parse_invite_body("multipart/mixed;boundary=uniqueBoundary", cut)
    assert body.is_siprec and body.metadata is None and body.metadata_raw
    assert [s.speaker for s in body.speakers()] == ["caller", "callee"]


def test_entity_expansion_is_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">]><recording>&a;</recording>'
    with pytest.raises(SipReject) as e:
        parse_metadata(bomb)
    assert e.value.status == 400


def test_part_headers_without_a_blank_line_before_the_body_of_an_empty_part():
    parts = split_multipart("multipart/mixed;boundary=b", b"--b\r\n\r\nno headers\r\n--b--\r\n")
    assert parts == [({}, b"no headers")]
