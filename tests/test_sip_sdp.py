"""SDP offers from real devices (../shared/testdata/sip_invites/) → the stream we record and its codec."""

from pathlib import Path

import pytest

from telephony.sip.errors import SipReject
from telephony.sip.message import parse_message
from telephony.sip.sdp import AnswerStream, answered_codecs, build_answer, build_offer, parse_sdp, usable_audio
from .testdata import vector

INVITES = vector("sip_invites")


def _body(name: str) -> bytes:
    """The SDP of a captured INVITE (split at the blank line: some captures' Content-Length is off)."""
    data = (INVITES / name).read_bytes()
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    return data.split(sep, 1)[1]


# file -> (index of the recorded m= line, payload type, codec) or None for "no usable audio: 488"
EXPECTED = {
    "asterisk_1.6.0.6_invite.sip": (0, 0, "PCMU"),
    "audiocodes_mediant1000_invite.sip": (0, 0, "PCMU"),
    "audiocodes_mediant1000_invite_compact_headers.sip": (0, 0, "PCMU"),
    "ekiga_3.2.0_invite.sip": (0, 8, "PCMA"),  # audio + video: video is rejected, audio kept
    "linksys_spa2102_invite.sip": (0, 0, "PCMU"),
    "microsip_3.19.22_invite.sip": (0, 0, "PCMU"),
    "sems_1.1.1_invite.sip": (0, 8, "PCMA"),  # a=rtpmap with /1 channel suffix
    "sipp_uac_to_freeswitch_invite_pcmu.sip": (0, 0, "PCMU"),
    "ta612v_ata_invite.sip": (0, 0, "PCMU"),  # the same payload type mapped twice (101): first wins
    "xlite_1104o_invite.sip": (0, 0, "PCMU"),  # BV32 first, PCMU/PCMA static without a=rtpmap
    "zyxel_p2302r_invite.sip": None,  # T.38 fax only
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_codec_choice_for_real_offers(name):
    offer = parse_sdp(_body(name))
    audio = usable_audio(offer)
    if EXPECTED[name] is None:
        assert audio == []
        return
    index, pt, codec = EXPECTED[name]
    assert audio[0].index == index
    chosen = audio[0].negotiate()
    first_pt, first = next(iter(chosen.items()))
    assert (first_pt, first.name) == (pt, codec)
    assert all(not c.audio for c in list(chosen.values())[1:])  # then telephone-event, if offered


def test_every_fixture_is_covered():
    assert sorted(p.name for p in INVITES.glob("*.sip")) == sorted(EXPECTED | {"nec_philips_ipdect_gw_invite_no_sdp.sip": 0})


def test_answer_keeps_order_rejects_video_and_answers_recvonly():
    offer = parse_sdp(_body("ekiga_3.2.0_invite.sip"))
    answer = parse_sdp(build_answer(offer, {0: AnswerStream(20000, offer.media[0].negotiate())}, "127.0.0.1", 1, 1))
    assert [(m.kind, m.port) for m in answer.media] == [("audio", 20000), ("video", 0)]
    assert answer.media[0].formats == ["8", "101"]  # PCMA and the offered telephone-event
    assert answer.media[0].direction == "recvonly"
    assert answer.address == "127.0.0.1"


def test_answer_to_inactive_or_recvonly_offer_is_inactive():
    offer = parse_sdp(_body("sipp_uac_to_freeswitch_invite_pcmu.sip"))  # a=recvonly: the caller sends nothing
    answer = parse_sdp(build_answer(offer, {0: AnswerStream(20002, offer.media[0].negotiate())}, "127.0.0.1", 1, 1))
    assert answer.media[0].direction == "inactive"


def test_session_level_direction_applies_to_media_without_their_own():
    sdp = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/AVP 0\r\na=inactive\r\n"
    offer = parse_sdp(sdp)
    assert [m.direction for m in offer.media] == ["sendonly", "inactive"]


def test_late_offer_is_receive_only_with_our_codecs_wideband_first():
    offer = parse_sdp(build_offer(20004, "127.0.0.1", 7))
    m = offer.media[0]
    assert m.direction == "recvonly"
    assert [c.name for _, c in m.offered()] == ["G722", "opus", "PCMU", "PCMA", "telephone-event"]
    # The caller's answer picks one: that is the leg's codec.
    answer = build_offer(40000, "127.0.0.1", 8, preference=("PCMA",))
    assert {pt: c.name for pt, c in answered_codecs(parse_sdp(answer)).items()} == {8: "PCMA", 101: "telephone-event"}


WIDEBAND = ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0 8 9 111 101 102\r\na=rtpmap:111 opus/48000/2\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:102 telephone-event/48000\r\na=sendonly\r\n")


def test_wideband_is_preferred_when_offered_and_preference_is_configurable():
    m = parse_sdp(WIDEBAND).media[0]
    assert {pt: c.name for pt, c in m.negotiate().items()} == {9: "G722", 101: "telephone-event"}
    # Opus runs a 48 kHz RTP clock: its telephone-event must too.
    assert {pt: (c.name, c.clock_rate) for pt, c in m.negotiate(("opus", "PCMU")).items()} == {
        111: ("opus", 48000), 102: ("telephone-event", 48000)}
    assert list(m.negotiate(("PCMA",))) == [8, 101]
    assert m.negotiate(("GSM",)) is None


def test_answer_writes_opus_rtpmap_fmtp_and_our_crypto():
    sdp = WIDEBAND.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40 + "\r\n"
    m = parse_sdp(sdp).media[0]
    assert m.secure and len(m.crypto) == 1
    text = build_answer(parse_sdp(sdp), {0: AnswerStream(20000, m.negotiate(("opus",)), "1 AES_CM_128_HMAC_SHA1_80 inline:OURKEY")},
                        "127.0.0.1", 1, 1).decode()
    assert "m=audio 20000 RTP/SAVP 111 102" in text
    assert "a=rtpmap:111 opus/48000/2" in text and "a=fmtp:111 maxplaybackrate=16000" in text
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:OURKEY" in text


@pytest.mark.parametrize("bad", [b"", b"hello", "v=0\r\nm=audio x RTP/AVP 0\r\n", "v=0\r\nc=IN\r\n", b"v=0\r\n\xff\xfe"])
def test_garbage_sdp_is_400(bad):
    with pytest.raises(SipReject) as e:
        parse_sdp(bad)
    assert e.value.status == 400


def test_invite_without_sdp_parses_with_empty_body():
    req = parse_message((INVITES / "nec_philips_ipdect_gw_invite_no_sdp.sip").read_bytes())
    assert req.method == "INVITE" and req.body == b""
