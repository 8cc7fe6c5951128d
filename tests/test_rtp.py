import struct

import pytest

from telephony.media.rtp import RtpError, build_rtp, parse_rtp


def test_round_trip_basic_fields():
    data = build_rtp(0, 65535, 0xFFFFFFF0, 0xDEADBEEF, b"\xff" * 160, marker=True)
    p = parse_rtp(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (0, 65535, 0xFFFFFFF0, 0xDEADBEEF, True)
    assert p.payload == b"\xff" * 160


def test_csrc_extension_and_padding():
    header = bytes([0x80 | 0x20 | 0x10 | 2, 8]) + struct.pack("!HII", 7, 160, 42)
    csrc = struct.pack("!II", 1, 2)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    payload = b"\xd5" * 10
    pad = b"\x00\x00\x03"
    p = parse_rtp(header + csrc + ext + payload + pad)
    assert p.csrc == (1, 2)
    assert p.extension == (0xBEDE, b"\x10\xaa\x00\x00")
    assert p.payload == payload and p.padding == 3 and p.payload_type == 8


@pytest.mark.parametrize(
    "data,msg",
    [
        (b"\x80\x00\x00", "too short"),
        (bytes([0x40, 0]) + b"\x00" * 10, "version 1"),
        (bytes([0x8F, 0]) + b"\x00" * 10, "CSRC"),
        (bytes([0x90, 0]) + b"\x00" * 10 + b"\x00\x01\x00\x05", "extension"),
        (bytes([0xA0, 0]) + b"\x00" * 10 + b"\x00\x20", "padding"),
        (bytes([0x80, 200]) + b"\x00" * 10, "RTCP"),
    ],
)
def test_malformed_packets_raise_rtp_error(data, msg):
    with pytest.raises(RtpError, match=msg):
        parse_rtp(data)
