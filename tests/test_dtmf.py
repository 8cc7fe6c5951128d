"""RFC 4733 telephone-events: packet runs as senders make them, losses, reordering, and a real capture."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.media.dtmf import DtmfEvent, DtmfReceiver
from telephony.media.rtp import RtpError, RtpPacket, parse_rtp

from .testdata import vector



def block(code: int, duration: int, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def pkt(ts: int, *blocks: bytes, marker: bool = False, seq: int = 0) -> RtpPacket:
    return RtpPacket(101, seq, ts & 0xFFFFFFFF, 0x1234, b"".join(blocks), marker)


def event_packets(code: int, ts: int, durations: list[int], volume: int = 10, ends: int = 3) -> list[RtpPacket]:
    """A sender's run (RFC 4733 sections 2.5.1.2-2.5.1.4 and the section 5 examples): the marker on
    the first packet, every packet with the event's start timestamp and its duration so far, the
    final duration sent ``ends`` times with the E bit."""
    out = [pkt(ts, block(code, d, volume=volume), marker=i == 0) for i, d in enumerate(durations)]
    out += [pkt(ts, block(code, durations[-1], end=True, volume=volume)) for _ in range(ends)]
    return out


def feed(rx: DtmfReceiver, packets) -> list[DtmfEvent]:
    return [ev for p in packets for ev in rx.push(p)]


def test_a_digit_with_its_three_end_packets_is_one_event():
    # Digit 1 lasting 200 ms, an update every 50 ms (400 timestamp units at 8 kHz).
    rx = DtmfReceiver()
    events = feed(rx, event_packets(1, 1000, [400, 800, 1200, 1600], volume=10))
    assert events == [DtmfEvent("1", 1, 1000, 200, 10, True)]
    assert rx.ignored == 2  # the two retransmitted end packets
    assert rx.flush() == []


def test_every_key_and_flash_are_named():
    rx = DtmfReceiver()
    keys = []
    for code in range(17):
        keys += [e.key for e in feed(rx, event_packets(code, 10_000 * (code + 1), [160, 320]))]
    assert "".join(keys[:16]) == "0123456789*#ABCD" and keys[16] == "flash"


def test_lost_start_packet_still_gives_the_event_from_its_timestamp():
    packets = event_packets(5, 8000, [400, 800, 1200])[1:]  # the marker packet is lost
    events = feed(DtmfReceiver(), packets)
    assert [(e.key, e.timestamp, e.duration_ms, e.ended) for e in events] == [("5", 8000, 150, True)]


def test_new_event_without_an_end_closes_the_old_one():
    first = event_packets(3, 0, [400, 800], ends=0)  # every end packet of "3" lost
    second = event_packets(4, 4000, [400, 800, 1200])
    events = feed(DtmfReceiver(), first + second)
    assert [(e.key, e.timestamp, e.duration_ms, e.ended) for e in events] == [("3", 0, 100, False), ("4", 4000, 150, True)]


def test_same_key_twice_is_two_events():
    packets = event_packets(7, 0, [400, 800]) + event_packets(7, 2400, [400, 800, 1200])
    events = feed(DtmfReceiver(), packets)
    assert [(e.key, e.timestamp, e.duration_ms) for e in events] == [("7", 0, 100), ("7", 2400, 150)]


def test_same_key_again_without_end_packets_is_a_new_event():
    # Even at a gap that could pass for the next segment of a long event: the marker says new press.
    packets = event_packets(7, 0, [400, 65000], ends=0) + event_packets(7, 65400, [400])
    events = feed(DtmfReceiver(), packets)
    assert [(e.timestamp, e.ended) for e in events] == [(0, False), (65400, True)]


def test_reordered_update_never_shortens_and_late_packets_of_an_old_event_are_ignored():
    rx = DtmfReceiver()
    p = event_packets(9, 500, [400, 800, 1200])
    events = feed(rx, [p[0], p[2], p[1], *p[3:]])
    assert events[0].duration_ms == 150
    late = pkt(500, block(9, 800))  # arrives after event "0" began
    assert feed(rx, event_packets(0, 9000, [400], ends=0)) == []
    before = rx.ignored
    assert rx.push(late) == [] and rx.ignored == before + 1
    assert [(e.key, e.ended) for e in rx.flush()] == [("0", False)]


def test_long_event_in_segments_is_one_event():
    # 20 s of "#" at 8 kHz: three segments (RFC 4733 2.5.1.3); each starts at the previous
    # start + 0xFFFF, keeps the timestamp for its updates, only the last has the E bit.
    ts0, packets = 0xFFFF0000, []  # the timestamps wrap past 2^32 on the way
    remaining, start, first = 160_000, ts0, True
    while remaining:
        seg = min(remaining, 0xFFFF)
        durations = list(range(400, seg, 400)) + [seg]
        final = seg == remaining
        for i, d in enumerate(durations):
            packets.append(pkt(start, block(11, d, end=final and d == seg), marker=first and i == 0))
        first = False
        start, remaining = start + seg, remaining - seg
    packets += packets[-1:] * 2  # the end packet's retransmissions
    rx = DtmfReceiver()
    events = feed(rx, packets)
    assert events == [DtmfEvent("#", 11, ts0, 20_000, 10, True)]


def test_long_event_survives_losing_the_end_of_a_segment():
    packets = [pkt(0, block(2, d), marker=d == 400) for d in range(400, 0xFFFF - 3000, 400)]  # last 400 ms lost
    packets += [pkt(0xFFFF, block(2, 4000)), pkt(0xFFFF, block(2, 4000, end=True))]
    events = feed(DtmfReceiver(), packets)
    assert [(e.key, e.duration_ms, e.ended) for e in events] == [("2", (0xFFFF + 4000) // 8, True)]


def test_several_events_in_one_packet():
    # RFC 4733 2.5.1.5: ended events first; each starts where the one before it ended.
    rx = DtmfReceiver()
    events = rx.push(pkt(16_000, block(1, 800, end=True), block(2, 800, end=True), block(3, 400), marker=True))
    assert [(e.key, e.timestamp, e.duration_ms) for e in events] == [("1", 16_000, 100), ("2", 16_800, 100)]
    events = feed(rx, [pkt(17_600, block(3, 800, end=True))])
    assert [(e.key, e.timestamp, e.duration_ms) for e in events] == [("3", 17_600, 100)]


def test_48khz_clock_as_webrtc_offers_it():
    events = feed(DtmfReceiver(clock_rate=48000), event_packets(8, 0, [960 * k for k in range(1, 6)]))
    assert [(e.key, e.duration_ms) for e in events] == [("8", 100)]


def test_malformed_payloads_are_counted():
    rx = DtmfReceiver()
    assert rx.push(pkt(0, b"")) == [] and rx.push(pkt(0, b"\x01\x02\x03")) == []
    assert rx.malformed == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=12), st.booleans()), max_size=30))
def test_any_packet_sequence_gives_events_never_an_exception(packets):
    rx = DtmfReceiver()
    events = feed(rx, [pkt(ts, payload, marker=m) for ts, payload, m in packets]) + rx.flush()
    assert all(0 <= e.volume <= 63 and e.duration_ms >= 0 for e in events)
    assert len({e.timestamp for e in events if e.ended}) == len([e for e in events if e.ended])


def test_real_capture_keypad_sequence():
    path = vector("pcaps", "wireshark_SIP_DTMF2.pcap")
    rx, events = DtmfReceiver(), []
    with path.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            try:
                packet = parse_rtp(bytes(ip.data.data))
            except RtpError:
                continue  # SIP and other UDP
            if packet.payload_type == 96:  # a=rtpmap:96 telephone-event/8000 in the capture's SDP
                events += rx.push(packet)
    events += rx.flush()
    # Keys 6 7 8 9 1 2 3, each 120 ms at -7 dBm0, each closed by its (single) end packet.
    assert "".join(e.key for e in events) == "6789123"
    assert {(e.duration_ms, e.volume, e.ended) for e in events} == {(120, 7, True)}
    starts = [e.timestamp for e in events]
    assert starts == sorted(starts) and starts[0] == 3931130841
