"""pcap and pcapng captures of SIP + RTP calls: one leg per speaker's RTP stream.

dpkt reads the file formats (pcap in both byte orders, microsecond or
nanosecond, and pcapng); ``layers`` takes each frame apart down to UDP;
``signalling`` reads the SIP. Every RTP stream (SSRC, source, destination)
is grouped with its relayed copies (the same packets seen before and after a
media relay on the capture host), and each group with enough audio becomes a
leg that keeps the captured datagrams and their arrival times, so the jitter
buffer sees the stream exactly as the network delivered it.

A leg's codecs are what the call's SDP negotiated (static and a=rtpmap payload
types, mapped by ``MediaDesc.offered()`` to the codec table); a stream without
SDP is read by its static payload types.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import dpkt

from telephony.media.codecs import CODECS, Codec, static
from telephony.media.rtp import RtpError, parse_rtp

from .call import CallInput, IngestError, RtpLegInput, err
from .layers import FRAGMENT, LINK_DECODERS, SNAPPED
from .signalling import SdpAudio, SipEvent, assign_parties, looks_like_sip, negotiated, primary_call, read_sip, sip_calls

PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# A stream with fewer audio packets than this (200 ms at 20 ms ptime) cannot
# hold a word: it is early media, a probe, or a stray from another call.
MIN_STREAM_PACKETS = 10

# RFC 3551 static payload types the codec table does not have, only to name them in messages.
_STATIC_PT_NAMES = {
    3: "GSM", 4: "G723", 5: "DVI4", 6: "DVI4/16000", 7: "LPC", 10: "L16 stereo", 11: "L16", 12: "QCELP",
    14: "MPA", 15: "G728", 16: "DVI4/11025", 17: "DVI4/22050", 18: "G729",
}


class _ReadWatch:
    """File wrapper that notices a record cut short: dpkt's pcap reader silently
    yields a short buffer for it.  A clean end of file is exactly one empty read,
    the last one; any other short read means the file was cut mid-record."""

    def __init__(self, f):
        self._f = f
        self.name = getattr(f, "name", "<file>")
        self.short_reads = 0
        self.partial = False

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        if n is not None and 0 <= len(b) < n:
            self.short_reads += 1
            if b:
                self.partial = True
        return b

    @property
    def cut(self) -> bool:
        return self.partial or self.short_reads > 1


class _Stream:
    """One (SSRC, source, destination) as captured."""

    __slots__ = ("ssrc", "src", "dst", "packets", "pts", "ids")

    def __init__(self, ssrc: int, src: tuple[str, int], dst: tuple[str, int]):
        self.ssrc, self.src, self.dst = ssrc, src, dst
        self.packets: list[tuple[float, bytes]] = []
        self.pts: Counter = Counter()
        self.ids: set[tuple[int, int]] = set()  # (sequence, timestamp): recognises a relayed copy

    def add(self, ts: float, data: bytes, pt: int, seq: int, rtp_ts: int) -> None:
        self.packets.append((ts, data))
        self.pts[pt] += 1
        self.ids.add((seq, rtp_ts))

    @property
    def first(self) -> float:
        return self.packets[0][0]


class _Group:
    """A stream with its relayed copies, and what its payload types are."""

    def __init__(self, copies: list[_Stream], sdp: SdpAudio | None):
        self.copies = copies
        self.head = copies[0]  # the copy captured first: closest to the sender's timing
        self.sdp = sdp
        # SDP first; static payload types the SDP does not remap are the table's (RFC 3551).
        self.codecs: dict[int, Codec] = dict(sdp.payload_types) if sdp else {}
        for pt in self.head.pts:
            if pt not in self.codecs and pt < 96 and (c := static(pt)) is not None:
                self.codecs[pt] = c
        self.audio_pts = [pt for pt in self.head.pts if pt in self.codecs and self.codecs[pt].audio]
        self.audio = sum(self.head.pts[pt] for pt in self.audio_pts)

    def pt_name(self, pt: int) -> str:
        if pt in self.codecs:
            return self.codecs[pt].name
        if self.sdp and pt in self.sdp.names:
            return self.sdp.names[pt]
        if pt in _STATIC_PT_NAMES:
            return _STATIC_PT_NAMES[pt]
        return f"dyn{pt}" if pt >= 96 else f"pt{pt}"

    def payload_types(self) -> dict[int, Codec]:
        """The leg's map: the most frequent audio payload type first (MediaLeg's codec)."""
        main = max(self.audio_pts, key=lambda pt: self.head.pts[pt])
        return {main: self.codecs[main], **{pt: c for pt, c in self.codecs.items() if pt != main}}

    def audio_end(self) -> float:
        """Capture time at which the last audio packet's samples end."""
        end = 0.0
        for ts, data in self.head.packets:
            c = self.codecs.get(data[1] & 0x7F)
            if c is not None and c.audio:
                end = max(end, ts + c.samples(parse_rtp(data).payload) / c.rate)
        return end

    def describe(self) -> str:
        s = self.head
        return f"ssrc 0x{s.ssrc:08x} {_fmt_addr(s.src)} -> {_fmt_addr(s.dst)}"


def load_capture(path: Path, f, pcapng: bool) -> CallInput:
    watch = _ReadWatch(f)
    try:
        reader = dpkt.pcapng.Reader(watch) if pcapng else dpkt.pcap.Reader(watch)
    except (ValueError, dpkt.UnpackError, struct.error):
        raise err(path, f"truncated or corrupt {'pcapng' if pcapng else 'pcap'} header") from None
    linktype = reader.datalink()
    if linktype not in LINK_DECODERS:
        raise err(
            path,
            f"unsupported capture link type {linktype}: need Ethernet, Linux cooked (SLL/SLL2), raw IP or loopback",
        )
    decode = LINK_DECODERS[linktype]
    warn: list[str] = []
    streams: dict[tuple, _Stream] = {}
    sip: list[SipEvent] = []
    frames = udp_count = fragments = snapped = 0
    it = iter(reader)
    while True:
        try:
            ts, frame = next(it)
        except StopIteration:
            break
        except (dpkt.UnpackError, struct.error, ValueError):
            watch.partial = True  # a record header or block cut short
            break
        if watch.short_reads:
            watch.partial = True  # dpkt hands over a cut record's bytes as if whole: drop them
            break
        frames += 1
        try:
            r = decode(bytes(frame))
        except (IndexError, struct.error, ValueError):
            continue  # a mangled frame; captures of real networks have them
        if r is None:
            continue
        if r is FRAGMENT:
            fragments += 1
            continue
        if r is SNAPPED:
            snapped += 1
            continue
        udp_count += 1
        src, dst, payload = r
        ts = float(ts)  # nanosecond pcaps give Decimal
        if looks_like_sip(payload):
            event = read_sip(ts, payload)
            if event is not None:
                sip.append(event)
            continue
        try:
            pkt = parse_rtp(payload)
        except RtpError:
            continue
        key = (pkt.ssrc, src, dst)
        s = streams.get(key)
        if s is None:
            s = streams[key] = _Stream(pkt.ssrc, src, dst)
        s.add(ts, payload, pkt.payload_type, pkt.sequence, pkt.timestamp)
    if watch.cut:
        # A capture stopped by a crash or a full disk: what came before the cut is still good.
        warn.append(f"capture cut short mid-record: read the {frames} complete frames before the cut")
    if snapped:
        warn.append(f"skipped {snapped} UDP datagrams cut by the capture's snapshot length")
    if fragments:
        warn.append(f"skipped {fragments} IP fragments (not reassembled)")

    calls = sip_calls(sip)
    groups = [_Group(copies, negotiated(calls, copies, copies[0].first)) for copies in _merge_copies(list(streams.values()))]
    kept = [g for g in groups if g.audio >= MIN_STREAM_PACKETS]
    strays = [g for g in groups if 0 < g.audio < MIN_STREAM_PACKETS]
    unsupported = [g for g in groups if not g.audio and len(g.head.packets) >= MIN_STREAM_PACKETS]
    if not kept:
        raise _no_audio_error(path, unsupported, frames, watch.cut, strays=len(strays))
    t0 = min(g.head.first for g in kept)
    assigned = assign_parties([g.copies for g in kept], calls)

    legs: list[RtpLegInput] = []
    used: Counter = Counter()
    ends = []
    for g in kept:
        s = g.head
        end = g.audio_end()
        ends.append(end)
        leg_meta: dict = {
            "src": _fmt_addr(s.src),
            "dst": _fmt_addr(s.dst),
            "payload_types": {g.pt_name(pt): n for pt, n in sorted(s.pts.items())},
            "start_ms": round((s.first - t0) * 1000),
            "duration_ms": round((end - s.first) * 1000),
            "codecs_from": "sdp" if g.sdp else "static payload types",
        }
        if len(g.copies) > 1:
            leg_meta["relayed_copies"] = [f"{_fmt_addr(c.src)} -> {_fmt_addr(c.dst)}" for c in g.copies[1:]]
        if len(g.audio_pts) > 1:
            warn.append(f"ssrc 0x{s.ssrc:08x} switches audio codec mid-stream: leg codec is the most frequent")
        party = assigned.get(id(s))
        if party:
            call, role, how = party
            label = call.label(role)
            leg_meta.update(call_id=call.call_id, role=role, label_source=how)
        else:
            label = f"ssrc 0x{s.ssrc:08x}"
            leg_meta["label_source"] = "ssrc"
        used[label] += 1
        if used[label] > 1:
            label = f"{label} #{used[label]}"  # same party in two calls of one capture
        packets = [(ts - t0, data) for ts, data in s.packets]
        legs.append(RtpLegInput(label, g.payload_types(), packets, s.ssrc, leg_meta))

    capture_meta = {"format": "pcapng" if pcapng else "pcap", "link_type": linktype, "frames": frames, "udp": udp_count}
    meta: dict = {"capture": capture_meta, "sip_calls": [c.summary() for c in calls.values()]}
    primary = primary_call(calls, assigned)
    if primary is not None:
        meta.update(call_id=primary.call_id, **{"from": primary.from_hdr, "to": primary.to_hdr})
    # Say what was left out, so a missing speaker can be explained.
    dropped = [f"{g.describe()}: {len(g.head.packets)} packets (stray)" for g in strays]
    for g in unsupported:
        pts = ", ".join(f"{pt} ({g.pt_name(pt)})" for pt, _ in g.head.pts.most_common())
        dropped.append(f"{g.describe()}: {len(g.head.packets)} packets of unsupported payload type {pts}")
    if dropped:
        meta["ignored_streams"] = dropped
    if warn:
        meta["warnings"] = warn
    return CallInput(str(path), "pcap", legs, round(max(ends) * 1000 - t0 * 1000), meta)


def _supported() -> str:
    static_pts = ", ".join(f"{c.static_pt} ({c.name})" for c in CODECS.values() if c.audio and c.static_pt is not None)
    by_sdp = "/".join(c.name for c in CODECS.values() if c.audio)
    return f"{static_pts}, or {by_sdp} by a=rtpmap in the capture's SDP"


def _no_audio_error(path: Path, unsupported: list[_Group], frames: int, cut: bool, strays: int) -> IngestError:
    if unsupported:
        counts: Counter = Counter()
        for g in unsupported:
            counts.update({(pt, g.pt_name(pt)): n for pt, n in g.head.pts.items()})
        named = ", ".join(f"{pt} ({name})" for (pt, name), _ in counts.most_common())
        return err(path, f"no supported RTP audio: streams carry payload type {named}; supported: {_supported()}")
    if frames == 0:
        return err(path, "capture holds no complete packets" + (" (file cut short)" if cut else ""))
    if strays:
        return err(
            path,
            f"no RTP audio streams in the capture: only {strays} stray stream(s) of under {MIN_STREAM_PACKETS} packets",
        )
    return err(path, f"no RTP audio streams in the capture ({frames} frames)")


def _merge_copies(streams: list[_Stream]) -> list[list[_Stream]]:
    """Group streams that are the same packets seen twice (before and after a
    media relay on the capture host): one speaker must make one leg, not two.
    The first copy captured leads its group."""
    streams = sorted(streams, key=lambda s: s.first)
    groups: list[list[_Stream]] = []
    for s in streams:
        for g in groups:
            head = g[0]
            if head.ssrc == s.ssrc and len(head.ids & s.ids) >= 0.5 * min(len(head.ids), len(s.ids)):
                g.append(s)
                break
        else:
            groups.append([s])
    return groups


def _fmt_addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
