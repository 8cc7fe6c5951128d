"""Offer checks and ICE policy, on real browser/gateway offers (../shared/testdata/webrtc_sdp) and broken ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from telephony.webrtc.ice import CandidateFilter, restrict_host_addresses
from telephony.webrtc.offer import (OfferError, OfferNotAcceptable, TrackLabel, assign_labels, decode_body,
                                    inspect_offer)

from .testdata import vector

SDP_DIR = vector("webrtc_sdp")
LOOPBACK = CandidateFilter(["127.0.0.0/8", "::1/128"])
CODECS = ["PCMU", "PCMA"]


def fixture(name: str) -> str:
    return decode_body((SDP_DIR / name).read_bytes())


def on_loopback(text: str) -> str:
    """The offer as the same peer would send it on this machine: its candidates on loopback."""
    def one(m):
        return m.group(1) + ("::1" if ":" in m.group(2) else "127.0.0.1") + m.group(3)
    return re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( )", one, text)


def inspect(text: str, **kw):
    return inspect_offer(text, codecs=kw.pop("codecs", CODECS), max_tracks=kw.pop("max_tracks", 4),
                         candidate_filter=kw.pop("candidate_filter", LOOPBACK))


# name -> (m-line kinds, chosen codec, track id, candidates in the file: all off-loopback)
EXPECTED = {
    "aiortc_audio_chrome.sdp": (["audio"], "PCMU", "ec1eb8de-8df8-4956-ae81-879e5d062d12", 4),
    "aiortc_audio_firefox.sdp": (["audio"], "PCMU", "{12692dea-686c-47ca-b3e9-48f38fc92b78}", 10),
    "aiortc_audio_freeswitch.sdp": (["audio"], "PCMA", "a0", 1),
    "aiortc_safari.sdp": (["audio", "video", "application"], "PCMU", "f473166a-7fe5-4ab6-a3af-c5eb806a13b9", 9),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_offers(name):
    kinds, codec, track_id, candidates = EXPECTED[name]
    offer = inspect(on_loopback(fixture(name)))
    assert offer.kinds == kinds
    assert [a.codec for a in offer.usable] == [codec]  # PCMU preferred; FreeSWITCH offers only PCMA
    assert offer.usable[0].track_id == track_id
    assert offer.candidates_dropped == 0
    assert offer.text.count("a=candidate") == candidates


@pytest.mark.parametrize("name", ["aiortc_audio_chrome.sdp", "aiortc_safari.sdp"])
def test_offsite_candidates_are_removed(name):
    offer = inspect(fixture(name))
    assert offer.candidates_dropped == EXPECTED[name][3]
    assert "a=candidate" not in offer.text  # nothing left to send connectivity checks to


@pytest.mark.parametrize("name", ["aiortc_audio_firefox.sdp", "aiortc_audio_freeswitch.sdp"])
def test_offer_whose_every_candidate_is_offsite_and_complete_cannot_connect(name):
    # These end with a=end-of-candidates: no further (trickled or peer-reflexive) candidate is coming.
    with pytest.raises(OfferNotAcceptable, match=f"all {EXPECTED[name][3]} ICE candidates are outside the allowed"):
        inspect(fixture(name))


def test_freeswitch_offer_gets_the_implicit_direction_and_a_mid():
    # No a=mid and no direction in the file: aiortc needs both spelled out.
    offer = inspect(on_loopback(fixture("aiortc_audio_freeswitch.sdp")))
    assert offer.audio[0].mid == "0" and offer.audio[0].direction == "sendrecv"
    assert "a=mid:0\r\n" in offer.text and "a=sendrecv\r\n" in offer.text


def test_session_level_direction_applies_to_media_without_one():
    text = fixture("aiortc_audio_chrome.sdp").replace("a=sendrecv\r\n", "")
    text = text.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n")
    with pytest.raises(OfferNotAcceptable, match="no audio section sends to us"):
        inspect(text)


def test_codec_preference_order_is_ours_not_the_offers():
    offer = inspect(fixture("aiortc_audio_chrome.sdp"), codecs=["PCMA", "PCMU"])
    assert offer.usable[0].codec == "PCMA"


def test_no_filter_keeps_candidates():
    offer = inspect(fixture("aiortc_audio_firefox.sdp"), candidate_filter=CandidateFilter([]))
    assert offer.candidates_dropped == 0 and offer.text.count("a=candidate") == 10


def test_candidate_filter():
    f = CandidateFilter(["127.0.0.0/8", "::1/128"])
    assert f.allows("127.0.0.1") and f.allows("::1")
    assert not f.allows("192.168.99.58") and not f.allows("2a02:a03f::1")
    assert not f.allows("3b1e5c2e-4f9a-4f0e-9f1e-0d7c1d6a9a11.local")  # mDNS: resolving would be traffic
    text, dropped = f.apply("a=candidate:1 1 udp 2122194687 127.0.0.1 45076 typ host\r\n"
                            "a=candidate:2 1 udp 2122194687 10.0.0.1 45076 typ host\r\n")
    assert dropped == 1 and "127.0.0.1" in text and "10.0.0.1" not in text


def test_host_addresses_are_restricted_to_the_configured_ones():
    import aioice.ice

    restrict_host_addresses(["127.0.0.1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
    with pytest.raises(ValueError):
        restrict_host_addresses(["not-an-address"])


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe\x00v", "not UTF-8"),
    (b"", "empty body"),
    (b"   \r\n", "empty body"),
    (b"hello world", "first line must be 'v=0'"),
    (b"<html><body>offer</body></html>", "first line must be 'v=0'"),
    (b'{"type": "offer", "sdp": "v=0"}', "first line must be 'v=0'"),
    (b"v=0\x00\r\n", "NUL"),
])
def test_bodies_that_are_not_sdp(body, message):
    with pytest.raises(OfferError, match=message) as info:
        inspect(decode_body(body))
    assert info.value.status == 400


def _without(name: str, prefix: str) -> str:
    return "".join(ln for ln in fixture(name).splitlines(keepends=True) if not ln.startswith(prefix))


@pytest.mark.parametrize("text, status, message", [
    (_without("aiortc_audio_chrome.sdp", "a=ice-ufrag"), 400, "ice-ufrag and a=ice-pwd are required"),
    (_without("aiortc_audio_chrome.sdp", "a=fingerprint"), 400, "a=fingerprint is required"),
    (_without("aiortc_audio_chrome.sdp", "a=rtcp-mux"), 422, "rtcp-mux is required"),
    ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", 422, "no media sections"),
    ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio notaport RTP/AVP 0\r\n", 400, "malformed SDP"),
    (fixture("aiortc_audio_chrome.sdp")[:300], 400, "malformed SDP"),  # cut mid-line
    (fixture("aiortc_audio_chrome.sdp").replace("a=sendrecv", "a=recvonly"), 422, "no audio section sends"),
    (fixture("aiortc_audio_chrome.sdp").replace("m=audio 45076", "m=audio 0"), 422, "no common audio codec"),
    (fixture("aiortc_audio_chrome.sdp").replace("m=audio", "m=text"), 422, "media kind 'text'"),
])
def test_broken_and_unusable_offers(text, status, message):
    with pytest.raises(OfferError, match=message) as info:
        inspect(text)
    assert info.value.status == status


def test_video_only_offer_is_not_acceptable():
    safari = fixture("aiortc_safari.sdp")
    video_only = safari[:safari.index("m=audio")] + safari[safari.index("m=video"):]
    with pytest.raises(OfferNotAcceptable, match="no audio section"):
        inspect(video_only)


def test_opus_only_offer_names_what_was_offered_and_what_we_take():
    text = on_loopback(fixture("aiortc_audio_firefox.sdp")).replace("m=audio 45274 UDP/TLS/RTP/SAVPF 109 9 0 8 101",
                                                        "m=audio 45274 UDP/TLS/RTP/SAVPF 109")
    with pytest.raises(OfferNotAcceptable, match=r"offered opus; we accept PCMU, PCMA"):
        inspect(text)


def test_too_many_tracks():
    with pytest.raises(OfferNotAcceptable, match="1 audio tracks offered; at most 0"):
        inspect(fixture("aiortc_audio_chrome.sdp"), max_tracks=0)


def test_labels_by_mid_or_track_id_and_defaults():
    offer = inspect(fixture("aiortc_safari.sdp"))
    assert assign_labels(offer, {"audio": TrackLabel("agent")}) == [TrackLabel("agent")]
    by_track = {"f473166a-7fe5-4ab6-a3af-c5eb806a13b9": TrackLabel("caller", "customer")}
    assert assign_labels(offer, by_track) == [TrackLabel("caller", "customer")]
    assert assign_labels(offer, {}) == [TrackLabel("speaker 1")]


def test_a_label_for_an_unknown_track_is_an_error_naming_the_real_ones():
    offer = inspect(fixture("aiortc_audio_chrome.sdp"))
    with pytest.raises(OfferError, match=r"unknown tracks \['0'\].*mid 'audio' / track 'ec1eb8de"):
        assign_labels(offer, {"0": TrackLabel("agent")})
