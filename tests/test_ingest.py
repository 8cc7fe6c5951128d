"""File ingest: real captures and real prompts in, call descriptions out.

Test data: /work/shared/testdata (see its README.md: pcaps/ are Wireshark wiki
and SIPp captures, sip_invites/ real INVITEs) and the Debian Asterisk prompts
in /usr/share/asterisk/sounds/en (8 kHz 16-bit mono).  Variants (other link
types, IPv6, pcapng, truncation, other WAV encodings) are rebuilt from those
real files into tmp_path, so the payloads stay real.
"""

from __future__ import annotations

import functools
import shutil
import socket
import struct
import subprocess
import warnings
import wave
from pathlib import Path

import dpkt
import numpy as np
import pytest

from telephony.ingest import CallInput, IngestError, PcmLegInput, RtpLegInput, load_call
from telephony.ingest.signalling import party_name, read_sip
from telephony.media.codecs import CODECS
from telephony.media.rtp import build_rtp, parse_rtp

from .testdata import vector

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

TESTDATA = vector()
PCAPS = TESTDATA / "pcaps"
SOUNDS = Path("/usr/share/asterisk/sounds/en")


@functools.lru_cache(maxsize=None)
def loaded(name: str) -> CallInput:
    return load_call(PCAPS / name)


def prompt(name: str) -> np.ndarray:
    with wave.open(str(SOUNDS / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = ref - got.astype(np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum(noise**2), 1e-9))


# --------------------------------------------------------------------------- real captures

# Legs worked out from the README's payload counts and the SIP in each capture:
# (label, codec, packets in the leg, payload-type counts).
REAL = {
    "sipp_pcap_g711a.pcap": dict(
        legs=[("ssrc 0xdee0ee8f", "PCMA", 236, {"PCMA": 236})], call_id=None, readme_total=236,
    ),
    # Every packet passes a media relay on the capture host (200.57.7.196), so each
    # stream is captured twice: 2 x 548 + 2 x 891 + a 6-packet stray = 2884.
    "wireshark_SIP_CALL_RTP_G711.pcap": dict(
        legs=[("francisco@bestel.com", "PCMA", 548, {"PCMA": 548}), ("caller", "PCMA", 891, {"PCMA": 891})],
        call_id="12013223@200.57.7.195", readme_total=2884,
    ),
    "wireshark_SIP_DTMF2.pcap": dict(
        legs=[("2502", "PCMA", 665, {"PCMA": 665}), ("2504", "PCMA", 666, {"PCMA": 631, "telephone-event": 35})],
        call_id="25672@192.168.105.110", readme_total=1331,
    ),
    "wireshark_rtp_conversacion.pcap": dict(
        legs=[("101", "PCMU", 1159, {"PCMU": 1159}), ("Gonzalo", "PCMU", 1151, {"PCMU": 1151})],
        call_id="N2E5MDkwN2RjYzAwZTA1OTc0YTI3N2QzMjU5ZmYzNTI.", readme_total=2310,
    ),
    # Two SIPp calls back to back, each with one direction of audio from the same callee "test".
    "wireshark_sip-rtp-g711.pcap": dict(
        legs=[("test", "PCMU", 425, {"PCMU": 425}), ("test #2", "PCMA", 414, {"PCMA": 414})],
        call_id="1-1966@10.0.2.20", readme_total=839,
    ),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_capture_legs_codecs_labels(name):
    want = REAL[name]
    call = loaded(name)
    assert call.kind == "pcap" and call.path.endswith(name)
    got = [(leg.label, leg.codec, len(leg.packets), leg.meta["payload_types"]) for leg in call.legs]
    assert got == want["legs"]
    assert all(isinstance(leg, RtpLegInput) for leg in call.legs)
    assert call.meta.get("call_id") == want["call_id"]
    # Every RTP packet the README counts is a leg packet, a relayed copy, or an ignored stray.
    copies = sum(len(leg.packets) * len(leg.meta.get("relayed_copies", [])) for leg in call.legs)
    strays = sum(int(s.rsplit(": ", 1)[1].split()[0]) for s in call.meta.get("ignored_streams", []))
    assert sum(len(leg.packets) for leg in call.legs) + copies + strays == want["readme_total"]
    assert "warnings" not in call.meta


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_capture_durations_match_rtp_clock(name):
    call = loaded(name)
    for leg in call.legs:
        audio = [parse_rtp(data) for _, data in leg.packets]
        audio = [p for p in audio if p.payload_type in (0, 8)]
        # Arrival-time span against the sender's RTP clock (8 kHz): two independent measures.
        ptime_ms = len(audio[-1].payload) / 8
        clock_ms = ((audio[-1].timestamp - audio[0].timestamp) & 0xFFFFFFFF) / 8 + ptime_ms
        assert leg.meta["duration_ms"] == pytest.approx(clock_ms, rel=0.03)
        assert leg.meta["duration_ms"] >= len(audio) * ptime_ms * 0.97  # no fewer ms than packets carry
        assert leg.packets[0][0] == pytest.approx(leg.meta["start_ms"] / 1000, abs=0.001)
    assert min(leg.packets[0][0] for leg in call.legs) == 0.0
    ends = [leg.meta["start_ms"] + leg.meta["duration_ms"] for leg in call.legs]
    assert call.duration_ms == pytest.approx(max(ends), abs=1)


def test_sip_call_relayed_copies_make_one_leg_per_speaker():
    call = loaded("wireshark_SIP_CALL_RTP_G711.pcap")
    francisco, caller = call.legs
    # The copy kept is the one captured first (the sender's side of the relay).
    assert francisco.meta["src"] == "200.57.7.204:8000"
    assert francisco.meta["relayed_copies"] == ["200.57.7.196:40378 -> 200.57.7.199:4800"]
    assert caller.meta["src"] == "200.57.7.199:4800"
    assert (francisco.meta["role"], caller.meta["role"]) == ("callee", "caller")
    assert call.meta["ignored_streams"] == ["ssrc 0x00002e3d 200.57.7.202:30000 -> 200.57.7.196:40362: 6 packets (stray)"]
    # 26.4 s of call although the caller's phone suppresses silence (891 packets = 17.8 s of audio).
    assert 26_000 < call.duration_ms < 27_000
    assert [c["caller"] for c in call.meta["sip_calls"]] == ["caller", "Ivan Alizade"]


def test_dtmf_events_stay_in_the_leg_but_codec_comes_from_audio():
    leg = loaded("wireshark_SIP_DTMF2.pcap").legs[1]
    pts = [parse_rtp(d).payload_type for _, d in leg.packets]
    assert leg.codec == "PCMA" and pts.count(96) == 35 and pts.count(8) == 631
    # The SDP (a=rtpmap:96 telephone-event/8000) says what payload type 96 is: the leg reads its key presses.
    assert leg.payload_types[96] is CODECS["TELEPHONE-EVENT"] and next(iter(leg.payload_types)) == 8
    assert leg.meta["codecs_from"] == "sdp"
    # Late offer: the caller's SDP is in the ACK, the callee's in the 200 OK.
    assert leg.meta["role"] == "callee" and leg.meta["label_source"] == "sdp-peer"


def test_packets_are_the_captured_datagrams_at_capture_times():
    call = loaded("wireshark_rtp_conversacion.pcap")
    frames = [f for f in udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap") if f[2] == 35112]
    rtp = [f for f in frames if f[5][:1] == b"\x80"]
    gonzalo = call.legs[1]
    assert [d for _, d in gonzalo.packets] == [f[5] for f in rtp]
    t0 = rtp[0][0] - gonzalo.packets[0][0]
    assert all(abs((ts - t0) - t) < 1e-6 for (t, _), (ts, *_rest) in zip(gonzalo.packets, rtp))
    assert gonzalo.meta["src"] == "192.168.1.64:35112" and gonzalo.meta["dst"] == "192.168.1.78:14970"


# --------------------------------------------------------------------------- capture variants


def udp_frames(path: Path):
    """(ts, src ip, sport, dst ip, dport, payload) of each UDP/IPv4 frame, read with dpkt's own layers."""
    out = []
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                u = ip.data
                out.append((ts, socket.inet_ntoa(ip.src), u.sport, socket.inet_ntoa(ip.dst), u.dport, bytes(u.data)))
    return out


def ipv4_udp(src, sport, dst, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)) + udp


def ipv6_udp(src, sport, dst, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 0x6000_0000, len(udp), 17, 64, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + udp


def write_capture(path: Path, frames, linktype=1, pcapng=False, nano=False, encap=None):
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f, linktype=linktype) if pcapng else dpkt.pcap.Writer(f, linktype=linktype, nano=nano)
        for ts, *rest in frames:
            w.writepkt(encap(*rest), ts=ts)
    return path


def eth(src, sport, dst, dport, payload):
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ipv4_udp(src, sport, dst, dport, payload)


def sll(src, sport, dst, dport, payload):
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", 0x0800) + ipv4_udp(src, sport, dst, dport, payload)


def vlan_eth(src, sport, dst, dport, payload):
    return b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x64\x08\x00" + ipv4_udp(src, sport, dst, dport, payload)


def labels(call):
    return [(leg.label, leg.codec, len(leg.packets)) for leg in call.legs]


CONVERSACION = [("101", "PCMU", 1159), ("Gonzalo", "PCMU", 1151)]


@pytest.mark.parametrize(
    "linktype,pcapng,nano,encap",
    [(1, True, False, eth), (113, False, True, sll), (101, False, False, ipv4_udp), (1, False, False, vlan_eth)],
    ids=["pcapng-ethernet", "pcap-sll-nanosecond", "pcap-raw-ip", "pcap-vlan"],
)
def test_link_types_and_formats(tmp_path, linktype, pcapng, nano, encap):
    frames = udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap")
    path = write_capture(tmp_path / "c.bin", frames, linktype, pcapng, nano, encap)  # no telling extension
    call = load_call(path)
    assert labels(call) == CONVERSACION
    assert call.meta["capture"]["format"] == ("pcapng" if pcapng else "pcap")
    assert call.duration_ms == pytest.approx(loaded("wireshark_rtp_conversacion.pcap").duration_ms, abs=1)


def test_ipv6_capture_with_ip6_sdp(tmp_path):
    v6 = {"192.168.1.64": "2001:db8::64", "192.168.1.78": "2001:db8::78"}
    frames = []
    for ts, s, sp, d, dp, payload in udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap"):
        for a, b in v6.items():  # the SDP follows the addresses, as a dual-stack PBX would write it
            payload = payload.replace(f"IN IP4 {a}".encode(), f"IN IP6 {b}".encode())
        frames.append((ts, v6.get(s, "2001:db8::1"), sp, v6.get(d, "2001:db8::2"), dp, payload))
    call = load_call(write_capture(tmp_path / "v6.pcap", frames, 229, encap=ipv6_udp))
    assert labels(call) == CONVERSACION
    assert call.legs[1].meta["src"] == "[2001:db8::64]:35112"


def test_rfc4475_torture_messages_do_not_break_capture_reading(tmp_path):
    frames = udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap")
    torture = [p.read_bytes() for p in sorted((TESTDATA / "rfc4475").glob("*.dat"))]
    assert len(torture) == 50
    t = frames[0][0]
    extra = [(t + i * 1e-3, "10.9.9.9", 5060, "10.9.9.8", 5060, m) for i, m in enumerate(torture)]
    call = load_call(write_capture(tmp_path / "t.pcap", sorted(extra + frames, key=lambda f: f[0]), encap=eth))
    assert labels(call) == CONVERSACION
    assert call.meta["call_id"] == "N2E5MDkwN2RjYzAwZTA1OTc0YTI3N2QzMjU5ZmYzNTI."


TE = "telephone-event"
# Real INVITEs: (file, Call-ID, caller name, callee name, SDP audio: receive address and the
# payload types the codec table knows, read from each file's m= and a=rtpmap lines).
INVITES = [
    ("asterisk_1.6.0.6_invite.sip", "ZDYzOWVlNjEwM2NjZTBjNzliNmM1ZTNiOGZjNWFhN2E.", "philippec1", "Philippec2",
     [("192.168.10.2", 18874, {0: "PCMU", 8: "PCMA", 101: TE})]),
    ("audiocodes_mediant1000_invite_compact_headers.sip", "619455480112200022407@10.1.10.101", "anonymous", "5753606",
     [("10.1.10.101", 6010, {0: "PCMU"})]),
    # NSE/8000 is no codec of ours; the video m= line is not audio.
    ("ekiga_3.2.0_invite.sip", "2091060b-146f-e011-809a-0019cb53db77@admind-desktop", "sam netmon", "echo",
     [("178.45.73.241", 5092, {8: "PCMA", 101: TE})]),
    ("linksys_spa2102_invite.sip", "738c6ff4-3bef5da0@10.10.10.211", "CISO_WX", "768111",
     [("10.10.10.211", 16422, {0: "PCMU", 8: "PCMA", 101: TE})]),
    ("nec_philips_ipdect_gw_invite_no_sdp.sip", "5514@192.168.105.110", "2502", "2504", []),
    ("sems_1.1.1_invite.sip", "2091060b-146f-e011-809a-0019cb53db77@admind-desktop", "echo", "sam netmon",
     [("213.192.59.78", 28510, {8: "PCMA", 101: TE})]),
    # Maps 101 twice, the second time to G726-24: the last a=rtpmap wins, and G.726 is no codec of ours.
    ("ta612v_ata_invite.sip", "94b6e3f8-c0a83dfe-13c4-26bf01-975a21ce-52c@sip.domain.com", "UNAVAILABLE", "1234",
     [("88.8.88.88", 10000, {0: "PCMU", 8: "PCMA"})]),
    # BV32/16000 is no codec of ours.
    ("xlite_1104o_invite.sip", "N2E5MDkwN2RjYzAwZTA1OTc0YTI3N2QzMjU5ZmYzNTI.", "Gonzalo", "101",
     [("192.168.1.64", 35112, {0: "PCMU", 8: "PCMA", 101: TE})]),
    ("zyxel_p2302r_invite.sip", "738c6ff4-3bef5da0@10.10.10.211", "768111", "CISO_WX", []),  # T.38 only
]


@pytest.mark.parametrize("name,call_id,caller,callee,audio", INVITES, ids=[i[0] for i in INVITES])
def test_sip_fields_from_real_invites(name, call_id, caller, callee, audio):
    msg = read_sip(0.0, (TESTDATA / "sip_invites" / name).read_bytes())
    assert msg is not None and msg.is_request and msg.method == "INVITE"
    assert msg.call_id == call_id
    assert (party_name(msg.from_hdr), party_name(msg.to_hdr)) == (caller, callee)
    assert [(a.ip, a.port, {pt: c.name for pt, c in a.payload_types.items()}) for a in msg.audio] == audio


def test_a_message_the_sip_parser_refuses_is_skipped():
    # Its Content-Length (343) promises more body than the message holds: RFC 3261 18.3 says discard.
    data = (TESTDATA / "sip_invites" / "microsip_3.19.22_invite.sip").read_bytes()
    assert b"Content-Length: 343" in data and len(data.split(b"\r\n\r\n", 1)[1]) < 343 - 2
    assert read_sip(0.0, data) is None


# --------------------------------------------------------------------------- bad captures


def record_offsets(data: bytes) -> list[int]:
    """Start offset of each record of a little-endian microsecond pcap."""
    offs, pos = [], 24
    while pos < len(data):
        offs.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return offs


@pytest.mark.parametrize(
    "into_record", [5, 16, 16 + 30], ids=["cut-in-record-header", "cut-after-record-header", "cut-in-packet-data"]
)
def test_truncated_pcap_keeps_packets_before_the_cut(tmp_path, into_record):
    data = (PCAPS / "wireshark_rtp_conversacion.pcap").read_bytes()
    offs = record_offsets(data)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: offs[1200] + into_record])
    call = load_call(path)
    assert call.meta["capture"]["frames"] == 1200  # the partial record is not used
    assert any("cut short" in w for w in call.meta["warnings"])
    assert [leg.label for leg in call.legs] == ["101", "Gonzalo"]
    full = loaded("wireshark_rtp_conversacion.pcap")
    for leg, whole in zip(call.legs, full.legs):
        assert 0 < len(leg.packets) < len(whole.packets)
        assert leg.packets == whole.packets[: len(leg.packets)]


def test_pcap_cut_on_a_record_boundary_is_clean(tmp_path):
    data = (PCAPS / "wireshark_rtp_conversacion.pcap").read_bytes()
    path = tmp_path / "short.pcap"
    path.write_bytes(data[: record_offsets(data)[1200]])
    call = load_call(path)
    assert call.meta["capture"]["frames"] == 1200 and "warnings" not in call.meta


def test_truncated_pcapng_keeps_packets_before_the_cut(tmp_path):
    whole = write_capture(tmp_path / "w.pcapng", udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap"), pcapng=True, encap=eth)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])
    call = load_call(cut)
    assert any("cut short" in w for w in call.meta["warnings"])
    assert [leg.label for leg in call.legs] == ["101", "Gonzalo"]
    assert sum(len(leg.packets) for leg in call.legs) < 2310


def test_capture_with_only_non_rtp_udp(tmp_path):
    # The real SIP signalling of a call with its RTP removed, plus DNS-like and random datagrams.
    frames = [f for f in udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap") if f[5][:1] != b"\x80"]
    assert len(frames) >= 12
    rng = np.random.default_rng(1)
    t = frames[-1][0]
    frames += [(t + i * 0.02, "10.0.0.1", 53, "10.0.0.2", 40000, rng.bytes(60)) for i in range(200)]
    path = write_capture(tmp_path / "sig.pcap", frames, encap=eth)
    with pytest.raises(IngestError, match=r"sig\.pcap: no RTP audio streams in the capture"):
        load_call(path)


def test_capture_with_only_g729_names_the_payload_type(tmp_path):
    frames = []
    for ts, s, sp, d, dp, p in udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap"):
        if p[:1] == b"\x80":
            p = p[:1] + bytes([(p[1] & 0x80) | 18]) + p[2:]  # relabel PCMU as G.729
        frames.append((ts, s, sp, d, dp, p))
    with pytest.raises(IngestError, match=r"payload type 18 \(G729\); supported: 0 \(PCMU\), 8 \(PCMA\), 9 \(G722\), "
                                          r"or PCMU/PCMA/G722/opus/L16 by a=rtpmap in the capture's SDP$"):
        load_call(write_capture(tmp_path / "g729.pcap", frames, encap=eth))
    # Next to a supported stream, the G.729 one is left out and said so.
    mixed = [f if f[2] != 35112 else f[:5] + (f[5][:1] + bytes([0]) + f[5][2:],) for f in frames]
    call = load_call(write_capture(tmp_path / "mixed.pcap", mixed, encap=eth))
    assert labels(call) == [("Gonzalo", "PCMU", 1151)]
    assert call.meta["ignored_streams"] == [
        "ssrc 0x5bdd3c0b 192.168.1.78:14970 -> 192.168.1.64:35112: 1159 packets of unsupported payload type 18 (G729)"
    ]


def test_capture_with_only_a_stray_stream(tmp_path):
    frames = udp_frames(PCAPS / "sipp_pcap_g711a.pcap")[:6]
    with pytest.raises(IngestError, match=r"no RTP audio streams in the capture: only 1 stray stream\(s\) of under 10 packets$"):
        load_call(write_capture(tmp_path / "six.pcap", frames, encap=eth))
    # Ten packets (200 ms) are a leg.
    call = load_call(write_capture(tmp_path / "ten.pcap", udp_frames(PCAPS / "sipp_pcap_g711a.pcap")[:10], encap=eth))
    assert [len(leg.packets) for leg in call.legs] == [10]


def test_ip_fragments_are_skipped_and_counted(tmp_path):
    frames = udp_frames(PCAPS / "wireshark_rtp_conversacion.pcap")
    rtp = [f for f in frames if f[2] == 35112 and f[5][:1] == b"\x80"][:20]

    def fragment(src, sport, dst, dport, payload):  # first fragment: more-fragments flag set
        pkt = bytearray(eth(src, sport, dst, dport, payload))
        pkt[14 + 6] |= 0x20
        return bytes(pkt)

    path = write_capture(tmp_path / "f.pcap", frames, encap=eth)
    with open(path, "ab") as f:  # append the fragments as extra records after the call
        for ts, *rest in rtp:
            body = fragment(*rest)
            f.write(struct.pack("<IIII", int(ts) + 100, 0, len(body), len(body)) + body)
    call = load_call(path)
    assert labels(call) == CONVERSACION
    assert "skipped 20 IP fragments (not reassembled)" in call.meta["warnings"]


def test_duration_counts_the_last_packets_audio(tmp_path):
    # A real prompt sent as PCMU every 20 ms: the call lasts packets x 20 ms, not up to the last arrival.
    ulaw = audioop.lin2ulaw(prompt("vm-goodbye").tobytes(), 2)
    chunks = [ulaw[i:i + 160] for i in range(0, len(ulaw) - 159, 160)]
    frames = [(1000 + n * 0.02, "10.0.0.1", 4000, "10.0.0.2", 5000, build_rtp(0, n, n * 160, 0xC0FFEE, c))
              for n, c in enumerate(chunks)]
    call = load_call(write_capture(tmp_path / "p.pcap", frames, encap=eth))
    (leg,) = call.legs
    assert call.duration_ms == len(chunks) * 20 == leg.meta["duration_ms"]
    assert b"".join(parse_rtp(d).payload for _, d in leg.packets) == b"".join(chunks)
    assert leg.label == "ssrc 0x00c0ffee" and leg.codec == "PCMU"


def test_capture_header_only_or_cut_in_header(tmp_path):
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    (tmp_path / "empty.pcap").write_bytes(hdr)
    with pytest.raises(IngestError, match="capture holds no complete packets$"):
        load_call(tmp_path / "empty.pcap")
    (tmp_path / "cut.pcap").write_bytes(hdr[:10])
    with pytest.raises(IngestError, match="truncated or corrupt pcap header$"):
        load_call(tmp_path / "cut.pcap")


def test_unsupported_link_type(tmp_path):
    path = write_capture(tmp_path / "wifi.pcap", [(1.0, "1.1.1.1", 1, "2.2.2.2", 2, b"x")], linktype=105, encap=ipv4_udp)
    with pytest.raises(IngestError, match="unsupported capture link type 105"):
        load_call(path)


# --------------------------------------------------------------------------- WAV


def write_wav(path: Path, samples: np.ndarray, rate=8000, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes, extra_fmt=b"") -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * align, align, bits) + extra_fmt
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_asterisk_prompt_loads_as_one_8k_leg():
    path = SOUNDS / "agent-pass.wav"
    with wave.open(str(path)) as w:
        n = w.getnframes()
    call = load_call(path)
    assert call.kind == "wav" and len(call.legs) == 1
    (leg,) = call.legs
    assert isinstance(leg, PcmLegInput)
    assert (leg.label, leg.rate, leg.samples.dtype, leg.samples.shape, leg.start_ms) == ("agent-pass", 8000, np.int16, (n,), 0)
    assert np.array_equal(leg.samples, prompt("agent-pass"))
    assert call.duration_ms == n * 1000 // 8000


def test_stereo_wav_gives_left_and_right_legs(tmp_path):
    a, b = prompt("agent-pass"), prompt("vm-goodbye")
    n = max(len(a), len(b))
    left, right = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
    path = write_wav(tmp_path / "st.wav", np.column_stack([left, right]).ravel(), channels=2)
    call = load_call(path)
    assert [(leg.label, leg.rate) for leg in call.legs] == [("left", 8000), ("right", 8000)]
    assert np.array_equal(call.legs[0].samples, left) and np.array_equal(call.legs[1].samples, right)
    assert call.duration_ms == n * 1000 // 8000


def test_dual_mono_stereo_is_one_leg(tmp_path):
    a = prompt("vm-goodbye")
    call = load_call(write_wav(tmp_path / "dual.wav", np.column_stack([a, a]).ravel(), channels=2))
    assert [leg.label for leg in call.legs] == ["dual"]
    assert "identical" in call.meta["warnings"][0]


def test_16k_wav(tmp_path):
    a = np.repeat(prompt("vm-goodbye"), 2)  # crude 2x upsample: only the rate matters here
    call = load_call(write_wav(tmp_path / "wide.wav", a, rate=16000))
    assert call.legs[0].rate == 16000 and call.duration_ms == len(a) * 1000 // 16000


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_wav_with_hand_written_header(tmp_path, law):
    a = prompt("agent-pass")
    enc = audioop.lin2ulaw(a.tobytes(), 2) if law == "ulaw" else audioop.lin2alaw(a.tobytes(), 2)
    path = tmp_path / f"{law}.wav"
    path.write_bytes(riff(7 if law == "ulaw" else 6, 1, 8000, 8, enc))
    call = load_call(path)
    (leg,) = call.legs
    assert leg.rate == 8000 and len(leg.samples) == len(a)
    assert snr_db(a, leg.samples) > 30  # G.711 quantisation keeps ~38 dB on speech
    assert call.meta["encoding"] == law


def test_mulaw_wav_written_by_sox(tmp_path):
    # sox writes an 18-byte fmt chunk and a fact chunk: another writer's layout.
    out = tmp_path / "sox-ulaw.wav"
    subprocess.run(["sox", str(SOUNDS / "agent-pass.wav"), "-e", "mu-law", str(out)], check=True, capture_output=True)
    assert out.read_bytes()[20:22] == b"\x07\x00"
    leg = load_call(out).legs[0]
    a = prompt("agent-pass")
    assert len(leg.samples) == len(a) and snr_db(a, leg.samples) > 30


def test_wave_format_extensible_pcm(tmp_path):
    a = prompt("vm-goodbye")
    guid_pcm = struct.pack("<HHI", 22, 16, 4) + bytes.fromhex("0100000000001000800000aa00389b71")
    path = tmp_path / "ext.wav"
    path.write_bytes(riff(0xFFFE, 1, 8000, 16, a.tobytes(), guid_pcm))
    assert np.array_equal(load_call(path).legs[0].samples, a)


def test_wav_cut_short_keeps_its_samples(tmp_path):
    a = prompt("agent-pass")
    data = write_wav(tmp_path / "full.wav", a).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: 44 + 2 * 4000 + 1])  # cut mid-sample, header length unpatched
    call = load_call(path)
    assert np.array_equal(call.legs[0].samples, a[:4000])
    assert any("declares" in w for w in call.meta["warnings"])


@pytest.mark.parametrize(
    "fmt_tag,channels,rate,bits,message",
    [
        (1, 1, 44100, 16, "unsupported sample rate 44100 Hz: need 8000 or 16000"),
        (1, 1, 8000, 24, "unsupported sample width 24 bits: need 16-bit PCM, μ-law or A-law"),
        (1, 1, 8000, 8, "unsupported sample width 8 bits"),
        (1, 3, 8000, 16, "unsupported channel count 3: need mono or stereo"),
        (3, 1, 8000, 32, "unsupported WAV encoding IEEE float"),
        (0x55, 1, 8000, 0, "unsupported WAV encoding MP3"),
    ],
)
def test_unsupported_wav_formats(tmp_path, fmt_tag, channels, rate, bits, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(riff(fmt_tag, channels, rate, bits, b"\x00" * 600))
    with pytest.raises(IngestError) as e:
        load_call(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "truncated WAV fmt chunk"),
        (b"RIFF\x04\x00\x00\x00WAVE", "truncated WAV: no fmt chunk"),
        (b"RIFF\x04\x00\x00\x00AVI LIST", "not a WAVE file"),
        (b"Hello, this is a text file.\n", "not a RIFF/WAVE file"),
    ],
)
def test_malformed_wav(tmp_path, data, message):
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    with pytest.raises(IngestError, match=message):
        load_call(path)


def test_wav_with_fmt_but_no_data(tmp_path):
    path = tmp_path / "nodata.wav"
    path.write_bytes(riff(1, 1, 8000, 16, b"")[:-8])  # drop the (empty) data chunk header
    with pytest.raises(IngestError, match="no data chunk$"):
        load_call(path)
    path.write_bytes(riff(1, 1, 8000, 16, b""))
    with pytest.raises(IngestError, match="data chunk is empty$"):
        load_call(path)


# --------------------------------------------------------------------------- raw G.711 and dispatch


@pytest.mark.parametrize("suffix", [".ulaw", ".pcmu", ".alaw", ".al"])
def test_raw_g711(tmp_path, suffix):
    a = prompt("agent-pass")
    ulaw = suffix in (".ulaw", ".pcmu")
    path = tmp_path / f"call{suffix}"
    path.write_bytes(audioop.lin2ulaw(a.tobytes(), 2) if ulaw else audioop.lin2alaw(a.tobytes(), 2))
    call = load_call(path)
    assert call.kind == ("ulaw" if ulaw else "alaw")
    (leg,) = call.legs
    assert (leg.label, leg.rate, len(leg.samples)) == ("call", 8000, len(a))
    assert snr_db(a, leg.samples) > 30
    assert call.duration_ms == len(a) // 8


def test_law_mismatch_is_audible_in_snr(tmp_path):
    # Guards the suffix tables: μ-law bytes decoded as A-law are noise, not speech.
    t = np.arange(8000)
    a = (8000 * np.sin(2 * np.pi * 440 * t / 8000)).astype(np.int16)
    (tmp_path / "x.alaw").write_bytes(audioop.lin2ulaw(a.tobytes(), 2))
    assert snr_db(a, load_call(tmp_path / "x.alaw").legs[0].samples) < 10


def test_content_wins_over_extension(tmp_path):
    wav = tmp_path / "really-a-wav.ulaw"
    shutil.copy(SOUNDS / "vm-goodbye.wav", wav)
    assert load_call(wav).kind == "wav"
    pcap = tmp_path / "really-a-pcap.wav"
    shutil.copy(PCAPS / "sipp_pcap_g711a.pcap", pcap)
    assert load_call(pcap).kind == "pcap"


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("notes.txt", b"Call notes: customer called about invoice 42.\n", "unsupported file type"),
        ("notes.pcap", b"Call notes: customer called about invoice 42.\n", "not a pcap or pcapng capture"),
        ("empty.ulaw", b"", "empty file"),
        ("empty.wav", b"", "empty file"),
        ("empty.pcap", b"", "empty file"),
    ],
)
def test_unreadable_files(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IngestError) as e:
        load_call(path)
    assert str(e.value).startswith(f"{path}: {message}")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(IngestError, match=r"nope\.wav: cannot read: No such file or directory$"):
        load_call(tmp_path / "nope.wav")
    with pytest.raises(IngestError, match="is a directory"):
        load_call(tmp_path)
    assert issubclass(IngestError, ValueError)


# --------------------------------------------------------------------------- negotiated codecs

# A two-party call written as a phone and a PBX would put it on the wire: INVITE and 200 OK
# carrying the SDP, then one RTP stream each way. The speech is real: Debian's Asterisk prompts
# as shipped in wideband G.722 (asterisk-core-sounds-en-g722), sent as is or re-encoded to Opus.
ALICE, BOB = ("10.1.1.10", 40000), ("10.2.2.20", 50000)
SAYS = {"caller": "agent-pass", "callee": "conf-onlyperson"}


def g722_prompt(name: str) -> bytes:
    path = SOUNDS / f"{name}.g722"
    if not path.is_file():
        pytest.fail(f"{path} missing: apt-get install asterisk-core-sounds-en-g722", pytrace=False)
    data = path.read_bytes()
    return data[: len(data) - len(data) % 160]  # whole 20 ms packets (G.722: 8 bits per 16 kHz sample pair)


def payloads(name: str, codec: str) -> list[bytes]:
    g722 = g722_prompt(name)
    if codec == "G722":
        return [g722[i:i + 160] for i in range(0, len(g722), 160)]
    return CODECS[codec.upper()].packetize(CODECS["G722"].decoder().decode(g722))  # 16 kHz speech, re-encoded


def sdp(addr, fmts: dict[int, str]) -> bytes:
    ip, port = addr
    lines = ["v=0", f"o=- 4711 1 IN IP4 {ip}", "s=-", f"c=IN IP4 {ip}", "t=0 0",
             f"m=audio {port} RTP/AVP {' '.join(map(str, fmts))}"]
    lines += [f"a=rtpmap:{pt} {enc}" for pt, enc in fmts.items()] + ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def sip(start: str, headers: list[str], body: bytes = b"") -> bytes:
    if body:
        headers = headers + ["Content-Type: application/sdp"]
    return ("\r\n".join([start, *headers, f"Content-Length: {len(body)}", "", ""])).encode() + body


def invite_and_answer(offer: bytes, answer: bytes) -> list[tuple[str, int, str, int, bytes]]:
    dialog = ['From: "Alice Smith" <sip:alice@example.com>;tag=a73kszlfl', "To: <sip:bob@example.com>",
              "Call-ID: wideband-1@10.1.1.10", "CSeq: 1 INVITE"]
    via = "Via: SIP/2.0/UDP 10.1.1.10:5060;branch=z9hG4bK776asdhds"
    inv = sip("INVITE sip:bob@example.com SIP/2.0",
              [via, "Max-Forwards: 70", *dialog, "Contact: <sip:alice@10.1.1.10:5060>"], offer)
    ok = sip("SIP/2.0 200 OK", [via, *[h + ";tag=8321234356" if h.startswith("To:") else h for h in dialog],
                                "Contact: <sip:bob@10.2.2.20:5060>"], answer)
    return [("10.1.1.10", 5060, "10.2.2.20", 5060, inv), ("10.2.2.20", 5060, "10.1.1.10", 5060, ok)]


def wideband_capture(path: Path, codec: str, pt: int, offer: dict, answer: dict, signalling=True) -> Path:
    """Alice speaks, then Bob: each a prompt in ``codec`` under payload type ``pt``."""
    step = CODECS[codec.upper()].clock_rate // 50
    t = 1000.0
    frames = [(t + i * 0.1, *m) for i, m in enumerate(invite_and_answer(sdp(ALICE, offer), sdp(BOB, answer)))]
    t += 0.5
    for role, src, dst, ssrc in (("caller", ALICE, BOB, 0x0A11CE), ("callee", BOB, ALICE, 0x0B0B)):
        for n, p in enumerate(payloads(SAYS[role], codec)):
            frames.append((t + n * 0.02, *src, *dst, build_rtp(pt, n, 1000 + n * step, ssrc, p, marker=n == 0)))
        t += n * 0.02 + 0.5
    return write_capture(path, frames if signalling else [f for f in frames if f[2] != 5060], encap=eth)


WIDEBAND = {
    # G.722 under its static payload type, as most desk phones offer it.
    "g722": ("G722", 9, {9: "G722/8000", 0: "PCMU/8000", 101: "telephone-event/8000"},
             {9: "G722/8000", 101: "telephone-event/8000"}),
    # Opus exists only under a dynamic payload type: without the SDP, 111 means nothing.
    "opus": ("opus", 111, {111: "opus/48000/2", 0: "PCMU/8000", 101: "telephone-event/48000"},
             {111: "opus/48000/2", 101: "telephone-event/48000"}),
}


def decoded(leg: RtpLegInput) -> tuple[np.ndarray, int]:
    """The leg through the same MediaLeg a batch transcription uses: its samples and rate."""
    from telephony.media.leg import MediaLeg, play_capture

    media = MediaLeg(leg.payload_types)
    end = leg.packets[-1][0] + 0.5
    out = np.concatenate([f.samples for f in play_capture(media, leg.packets, end)])
    assert media.stats()["lost"] == 0 and media.stats()["decode_errors"] == 0
    return np.round(out * 32768).astype(np.int32), media.rate


@pytest.mark.parametrize("kind", sorted(WIDEBAND))
def test_capture_legs_take_the_codec_the_sdp_negotiated(tmp_path, kind):
    codec, pt, offer, answer = WIDEBAND[kind]
    call = load_call(wideband_capture(tmp_path / f"{kind}.pcap", codec, pt, offer, answer))
    assert [(leg.label, leg.codec, leg.meta["role"]) for leg in call.legs] == [
        ("Alice Smith", codec, "caller"), ("bob", codec, "callee")]
    assert call.meta["call_id"] == "wideband-1@10.1.1.10" and call.meta["from"] == '"Alice Smith" <sip:alice@example.com>'
    for leg in call.legs:
        sent = payloads(SAYS[leg.meta["role"]], codec)
        assert leg.payload_types[pt] is CODECS[codec.upper()] and next(iter(leg.payload_types)) == pt
        assert leg.payload_types[101].name == "telephone-event"  # key presses would be read too
        assert leg.meta["codecs_from"] == "sdp" and leg.meta["payload_types"] == {codec: len(sent)}
        assert leg.meta["duration_ms"] == len(sent) * 20  # each packet's audio counted by the codec's clock
        # The leg decodes to exactly what the codec's own decoder makes of the payloads sent.
        dec = CODECS[codec.upper()].decoder()
        want = np.frombuffer(b"".join(dec.decode(p) for p in sent), "<i2").astype(np.int32)
        got, rate = decoded(leg)
        assert rate == 16000
        start = leg.meta["start_ms"] * rate // 1000
        hits = [o for o in range(start, start + rate // 2, rate // 50)
                if len(got) >= o + len(want) and np.abs(got[o:o + len(want)] - want).max() <= 1]
        assert hits, "decoded speech not found in the leg's audio"
    assert call.duration_ms == call.legs[1].meta["start_ms"] + call.legs[1].meta["duration_ms"]


def test_without_signalling_static_payload_types_still_read(tmp_path):
    codec, pt, offer, answer = WIDEBAND["g722"]
    call = load_call(wideband_capture(tmp_path / "g722.pcap", codec, pt, offer, answer, signalling=False))
    assert [(leg.label, leg.codec) for leg in call.legs] == [("ssrc 0x000a11ce", "G722"), ("ssrc 0x00000b0b", "G722")]
    assert all(leg.meta["codecs_from"] == "static payload types" and leg.payload_types == {9: CODECS["G722"]}
               for leg in call.legs)
    codec, pt, offer, answer = WIDEBAND["opus"]
    with pytest.raises(IngestError, match=r"opus\.pcap: no supported RTP audio: streams carry payload type 111 \(dyn111\)"):
        load_call(wideband_capture(tmp_path / "opus.pcap", codec, pt, offer, answer, signalling=False))


def test_a_payload_type_the_sdp_maps_to_an_unknown_codec_is_named_by_it(tmp_path):
    # BV32 (as X-Lite offers it) under 107: the stream is left out and named by its a=rtpmap.
    codec, pt, offer, answer = WIDEBAND["opus"]
    offer, answer = {107: "BV32/16000", 0: "PCMU/8000"}, {107: "BV32/16000"}
    with pytest.raises(IngestError, match=r"payload type 111 \(dyn111\)"):
        load_call(wideband_capture(tmp_path / "x.pcap", codec, pt, offer, answer))
    with pytest.raises(IngestError, match=r"streams carry payload type 107 \(BV32\); supported"):
        load_call(wideband_capture(tmp_path / "bv32.pcap", codec, 107, offer, answer))


@pytest.fixture(scope="module")
def engine():
    from telephony.asr import create_engine
    from telephony.config import Settings

    e = create_engine(Settings())
    yield e
    e.scheduler.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(WIDEBAND))
async def test_wideband_capture_is_transcribed(tmp_path, engine, kind):
    from telephony.batch import transcribe_call
    from telephony.bench.accuracy import wer
    from telephony.bench.sinks import CollectingSink
    from telephony.config import Settings

    from .speech import prompt_text

    codec, pt, offer, answer = WIDEBAND[kind]
    call = load_call(wideband_capture(tmp_path / f"{kind}.pcap", codec, pt, offer, answer))
    result = await transcribe_call(call, Settings(), engine, CollectingSink())
    for leg_in, leg in zip(call.legs, result.legs):
        assert (leg.record.speaker, leg.record.codec) == (leg_in.label, codec)
        assert leg.stats["received"] == len(leg_in.packets) and leg.stats["decode_errors"] == 0
        text = " ".join(u.text for u in leg.utterances)
        # Measured here: 0 % on both prompts (9 words each); one wrong word passes, two fail.
        assert wer([prompt_text(SAYS[leg_in.meta["role"]])], [text]) <= 0.12, text
