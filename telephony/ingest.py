"""Read a call from a file: WAV, headerless G.711, or a pcap/pcapng capture of SIP + RTP.

``load_call(path)`` returns a ``CallInput``: one leg per speaker, either raw RTP
datagrams with their capture arrival times (so the jitter buffer sees the
stream exactly as the network delivered it) or decoded 16-bit PCM.  Anything
that cannot be read raises ``IngestError`` with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import dpkt
import numpy as np

from telephony.media.rtp import PAYLOAD_TYPES, RtpError, parse_rtp

with warnings.catch_warnings():
    # stdlib on 3.11/3.12 (deprecated there), audioop-lts from 3.13.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# Codecs the decode stage handles (audioop G.711).  PAYLOAD_TYPES may know
# more (G.722) but a leg we cannot decode would only yield silence.
INGEST_CODECS = ("PCMU", "PCMA")
SUPPORTED_PT = {pt: name for pt, (name, _rate) in PAYLOAD_TYPES.items() if name in INGEST_CODECS}
SUPPORTED_RATES = (8000, 16000)

# An RTP stream with fewer audio packets than this (200 ms at 20 ms ptime)
# cannot hold a word: it is early media, a probe, or a stray from another call.
MIN_STREAM_PACKETS = 10

ULAW_SUFFIXES = (".ulaw", ".mulaw", ".pcmu", ".ul", ".u8")
ALAW_SUFFIXES = (".alaw", ".pcma", ".al", ".a8")

# RFC 3551 static payload types, only to name them in error messages.
_STATIC_PT_NAMES = {
    0: "PCMU", 3: "GSM", 4: "G723", 5: "DVI4", 6: "DVI4/16000", 7: "LPC", 8: "PCMA", 9: "G722",
    10: "L16 stereo", 11: "L16", 12: "QCELP", 13: "CN", 14: "MPA", 15: "G728", 16: "DVI4/11025",
    17: "DVI4/22050", 18: "G729",
}

_PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

_WAV_FORMATS = {
    1: "PCM", 2: "MS ADPCM", 3: "IEEE float", 6: "A-law", 7: "μ-law", 0x11: "IMA ADPCM",
    0x31: "GSM 6.10", 0x40: "G.721 ADPCM", 0x45: "G.726", 0x55: "MP3", 0x64: "G.726 ADPCM",
}


class IngestError(ValueError):
    """One-line, user-facing reason a file can't be read (the CLI prints it and exits non-zero)."""


@dataclass
class RtpLegInput:
    label: str  # speaker label: SIP display name/user when the capture maps it, else "ssrc 0x…"
    codec: str  # "PCMU" | "PCMA"
    packets: list[tuple[float, bytes]]  # (arrival s relative to the call's first RTP packet, raw RTP datagram)
    ssrc: int
    meta: dict = field(default_factory=dict)  # src, dst, role, call_id, payload_types, start_ms, duration_ms…


@dataclass
class PcmLegInput:
    label: str  # "left"/"right" for stereo, the file stem for mono
    rate: int  # 8000 or 16000
    samples: np.ndarray  # int16 mono
    start_ms: int = 0


@dataclass
class CallInput:
    path: str
    kind: str  # "wav" | "ulaw" | "alaw" | "pcap"
    legs: list[RtpLegInput | PcmLegInput]
    duration_ms: int  # end of the last leg's audio on the call timeline
    meta: dict = field(default_factory=dict)  # SIP call_id/from/to/sip_calls, warnings, capture details


def load_call(path: str | Path) -> CallInput:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            if head[:4] in _PCAP_MAGICS or head[:4] == _PCAPNG_MAGIC:
                f.seek(0)
                return _load_capture(p, f, pcapng=head[:4] == _PCAPNG_MAGIC)
            data = head + f.read()
    except IsADirectoryError:
        raise _err(p, "is a directory, not a call file") from None
    except OSError as e:
        raise _err(p, f"cannot read: {e.strerror or e}") from None
    suffix = p.suffix.lower()
    if not data:
        raise _err(p, "empty file")
    if data[:4] in (b"RIFF", b"RF64"):
        return _load_wav(p, data)
    if suffix in ULAW_SUFFIXES:
        return _load_raw(p, data, "ulaw")
    if suffix in ALAW_SUFFIXES:
        return _load_raw(p, data, "alaw")
    if suffix == ".wav":
        raise _err(p, "not a RIFF/WAVE file")
    if suffix in (".pcap", ".pcapng", ".cap"):
        raise _err(p, "not a pcap or pcapng capture")
    raise _err(
        p, "unsupported file type: need WAV, raw G.711 (.ulaw/.alaw) or a pcap/pcapng capture"
    )


def _err(path: Path, reason: str) -> IngestError:
    # One line whatever the path contains: the CLI prints it as is.
    return IngestError(f"{str(path).replace(chr(10), ' ')}: {reason}")


# --------------------------------------------------------------------------- WAV and raw G.711


def _load_raw(path: Path, data: bytes, kind: str) -> CallInput:
    pcm = audioop.ulaw2lin(data, 2) if kind == "ulaw" else audioop.alaw2lin(data, 2)
    samples = np.frombuffer(pcm, dtype=np.int16).copy()
    leg = PcmLegInput(label=path.stem, rate=8000, samples=samples)
    return CallInput(str(path), kind, [leg], len(samples) * 1000 // 8000, {"encoding": kind})


def _load_wav(path: Path, data: bytes) -> CallInput:
    if data[:4] == b"RF64":
        raise _err(path, "RF64 WAV is not supported: need a RIFF/WAVE file")
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise _err(path, f"not a WAVE file (RIFF type {data[8:12]!r})" if len(data) >= 12 else "truncated RIFF header")
    warn: list[str] = []
    fmt = None
    pcm = None
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos:pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        start = pos + 8
        if cid == b"fmt ":
            if size < 16 or start + 16 > len(data):
                raise _err(path, "truncated WAV fmt chunk")
            fmt = data[start:start + min(size, len(data) - start)]
        elif cid == b"data":
            if fmt is None:
                raise _err(path, "malformed WAV: data chunk before fmt chunk")
            end = start + size
            if end > len(data):
                # Recorders killed mid-call leave the header's length unpatched: keep what is there.
                warn.append(f"data chunk declares {size} bytes but the file holds {len(data) - start}")
                end = len(data)
            pcm = data[start:end]
            break
        pos = start + size + (size & 1)  # chunks are word aligned
    if fmt is None:
        raise _err(path, "truncated WAV: no fmt chunk")
    if pcm is None:
        raise _err(path, "truncated WAV: no data chunk")

    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: real tag opens the SubFormat GUID
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if tag == 1:
        if bits != 16:
            raise _err(path, f"unsupported sample width {bits} bits: need 16-bit PCM, μ-law or A-law")
    elif tag in (6, 7):
        if bits != 8:
            raise _err(path, f"unsupported {_WAV_FORMATS[tag]} sample width {bits} bits: need 8")
    else:
        name = _WAV_FORMATS.get(tag, f"format 0x{tag:04x}")
        raise _err(path, f"unsupported WAV encoding {name}: need 16-bit PCM, μ-law or A-law")
    if channels not in (1, 2):
        raise _err(path, f"unsupported channel count {channels}: need mono or stereo")
    if rate not in SUPPORTED_RATES:
        raise _err(path, f"unsupported sample rate {rate} Hz: need 8000 or 16000")

    frame = channels * bits // 8
    if len(pcm) % frame:
        warn.append(f"dropped {len(pcm) % frame} trailing bytes (a partial sample frame)")
        pcm = pcm[: len(pcm) - len(pcm) % frame]
    if not pcm:
        raise _err(path, "no audio: the WAV data chunk is empty")
    if tag == 1:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
    else:
        samples = np.frombuffer(audioop.ulaw2lin(pcm, 2) if tag == 7 else audioop.alaw2lin(pcm, 2), dtype=np.int16)
    encoding = {1: "pcm16", 6: "alaw", 7: "ulaw"}[tag]
    meta: dict = {"encoding": encoding, "channels": channels, "rate": rate}

    if channels == 1:
        legs = [PcmLegInput(path.stem, rate, samples.copy())]
    else:
        both = samples.reshape(-1, 2)
        left, right = both[:, 0].copy(), both[:, 1].copy()
        if np.array_equal(left, right):
            # Dual-mono: two legs would transcribe the same speaker twice.
            warn.append("both stereo channels are identical: read as one mono leg")
            legs = [PcmLegInput(path.stem, rate, left)]
        else:
            legs = [PcmLegInput("left", rate, left), PcmLegInput("right", rate, right)]
    if warn:
        meta["warnings"] = warn
    return CallInput(str(path), "wav", legs, len(legs[0].samples) * 1000 // rate, meta)


# --------------------------------------------------------------------------- captures


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
    __slots__ = ("ssrc", "src", "dst", "packets", "pts", "ids", "audio", "audio_end")

    def __init__(self, ssrc: int, src: tuple[str, int], dst: tuple[str, int]):
        self.ssrc, self.src, self.dst = ssrc, src, dst
        self.packets: list[tuple[float, bytes]] = []
        self.pts: Counter = Counter()
        self.ids: set[tuple[int, int]] = set()  # (sequence, timestamp): recognises a relayed copy
        self.audio = 0
        self.audio_end = 0.0  # capture time at which the last audio packet's samples end

    def add(self, ts: float, data: bytes, pt: int, seq: int, rtp_ts: int, payload_len: int) -> None:
        self.packets.append((ts, data))
        self.pts[pt] += 1
        self.ids.add((seq, rtp_ts))
        if pt in SUPPORTED_PT:
            self.audio += 1
            # G.711: one byte per 8 kHz sample.
            self.audio_end = max(self.audio_end, ts + payload_len / 8000)

    @property
    def first(self) -> float:
        return self.packets[0][0]


def _load_capture(path: Path, f, pcapng: bool) -> CallInput:
    watch = _ReadWatch(f)
    try:
        reader = dpkt.pcapng.Reader(watch) if pcapng else dpkt.pcap.Reader(watch)
    except (ValueError, dpkt.UnpackError, struct.error):
        raise _err(path, f"truncated or corrupt {'pcapng' if pcapng else 'pcap'} header") from None
    linktype = reader.datalink()
    if linktype not in _LINK_DECODERS:
        raise _err(
            path,
            f"unsupported capture link type {linktype}: need Ethernet, Linux cooked (SLL/SLL2), raw IP or loopback",
        )
    decode = _LINK_DECODERS[linktype]
    warn: list[str] = []
    streams: dict[tuple, _Stream] = {}
    sip: list[_SipMessage] = []
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
        if r is _FRAGMENT:
            fragments += 1
            continue
        if r is _SNAPPED:
            snapped += 1
            continue
        udp_count += 1
        src, dst, payload = r
        ts = float(ts)  # nanosecond pcaps give Decimal
        if _looks_like_sip(payload):
            msg = _parse_sip(ts, src, dst, payload)
            if msg is not None:
                sip.append(msg)
            continue
        try:
            pkt = parse_rtp(payload)
        except RtpError:
            continue
        key = (pkt.ssrc, src, dst)
        s = streams.get(key)
        if s is None:
            s = streams[key] = _Stream(pkt.ssrc, src, dst)
        s.add(ts, payload, pkt.payload_type, pkt.sequence, pkt.timestamp, len(pkt.payload))
    if watch.cut:
        # A capture stopped by a crash or a full disk: what came before the cut is still good.
        warn.append(f"capture cut short mid-record: read the {frames} complete frames before the cut")
    if snapped:
        warn.append(f"skipped {snapped} UDP datagrams cut by the capture's snapshot length")
    if fragments:
        warn.append(f"skipped {fragments} IP fragments (not reassembled)")

    capture_meta = {"format": "pcapng" if pcapng else "pcap", "link_type": linktype, "frames": frames, "udp": udp_count}
    groups = _merge_copies([s for s in streams.values() if s.audio])
    kept = [g for g in groups if g[0].audio >= MIN_STREAM_PACKETS]
    ignored = [g[0] for g in groups if g[0].audio < MIN_STREAM_PACKETS]
    if not kept:
        raise _no_audio_error(path, streams, frames, watch.cut, strays=len(ignored))
    kept.sort(key=lambda copies: copies[0].first)
    t0 = min(copies[0].first for copies in kept)

    calls = _sip_calls(sip)
    assigned = _assign_parties(kept, calls)

    legs: list[RtpLegInput] = []
    used: Counter = Counter()
    for copies in kept:
        s = copies[0]
        codec_pt = max((pt for pt in s.pts if pt in SUPPORTED_PT), key=lambda pt: s.pts[pt])
        leg_meta: dict = {
            "src": _fmt_addr(s.src),
            "dst": _fmt_addr(s.dst),
            "payload_types": {_pt_name(pt): n for pt, n in sorted(s.pts.items())},
            "start_ms": round((s.first - t0) * 1000),
            "duration_ms": round((s.audio_end - s.first) * 1000),
        }
        if len(copies) > 1:
            leg_meta["relayed_copies"] = [f"{_fmt_addr(c.src)} -> {_fmt_addr(c.dst)}" for c in copies[1:]]
        if len([pt for pt in s.pts if pt in SUPPORTED_PT]) > 1:
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
        legs.append(RtpLegInput(label, SUPPORTED_PT[codec_pt], packets, s.ssrc, leg_meta))

    meta: dict = {"capture": capture_meta, "sip_calls": [c.summary() for c in calls.values()]}
    primary = _primary_call(calls, assigned)
    if primary is not None:
        meta.update(call_id=primary.call_id, **{"from": primary.from_hdr, "to": primary.to_hdr})
    # Say what was left out, so a missing speaker can be explained.
    dropped = [f"{_describe(s)}: {len(s.packets)} packets (stray)" for s in ignored]
    for s in streams.values():
        if not s.audio and len(s.packets) >= MIN_STREAM_PACKETS:
            pts = ", ".join(f"{pt} ({_pt_name(pt)})" for pt, _ in s.pts.most_common())
            dropped.append(f"{_describe(s)}: {len(s.packets)} packets of unsupported payload type {pts}")
    if dropped:
        meta["ignored_streams"] = dropped
    if warn:
        meta["warnings"] = warn
    duration_ms = round(max(copies[0].audio_end for copies in kept) * 1000 - t0 * 1000)
    return CallInput(str(path), "pcap", legs, duration_ms, meta)


def _no_audio_error(path: Path, streams: dict, frames: int, cut: bool, strays: int) -> IngestError:
    real = [s for s in streams.values() if not s.audio and len(s.packets) >= MIN_STREAM_PACKETS]
    if real:
        counts: Counter = Counter()
        for s in real:
            counts.update(s.pts)
        named = ", ".join(f"{pt} ({_pt_name(pt)})" for pt, _ in counts.most_common())
        want = ", ".join(f"{pt} ({name})" for pt, name in sorted(SUPPORTED_PT.items()))
        return _err(path, f"no supported RTP audio: streams carry payload type {named}; supported: {want}")
    if frames == 0:
        return _err(path, "capture holds no complete packets" + (" (file cut short)" if cut else ""))
    if strays:
        return _err(
            path,
            f"no RTP audio streams in the capture: only {strays} stray stream(s) of under {MIN_STREAM_PACKETS} packets",
        )
    return _err(path, f"no RTP audio streams in the capture ({frames} frames)")


def _merge_copies(streams: list[_Stream]) -> list[list[_Stream]]:
    """Group streams that are the same packets seen twice (before and after a
    media relay on the capture host): one speaker must make one leg, not two.
    The first copy captured is kept: it is closest to the sender's timing."""
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


def _describe(s: _Stream) -> str:
    return f"ssrc 0x{s.ssrc:08x} {_fmt_addr(s.src)} -> {_fmt_addr(s.dst)}"


def _fmt_addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _pt_name(pt: int) -> str:
    if pt in SUPPORTED_PT:
        return SUPPORTED_PT[pt]
    if pt in _STATIC_PT_NAMES:
        return _STATIC_PT_NAMES[pt]
    return f"dyn{pt}" if pt >= 96 else f"pt{pt}"


# ---- link, IP and UDP layers (parsed by hand: dpkt's layer classes raise a
# different exception for each kind of damage, and we must skip, not crash)

_FRAGMENT = object()
_SNAPPED = object()


def _ip(b: bytes):
    if not b:
        return None
    v = b[0] >> 4
    if v == 4:
        ihl = (b[0] & 0x0F) * 4
        if ihl < 20 or len(b) < ihl:
            return None
        total = (b[2] << 8) | b[3]
        if b[9] != 17:
            return None
        frag = (b[6] << 8) | b[7]
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            return _FRAGMENT
        if total == 0:  # TSO-offloaded capture: length left to the NIC
            total = len(b)
        if total > len(b):
            return _SNAPPED
        src = str(ipaddress.IPv4Address(b[12:16]))
        dst = str(ipaddress.IPv4Address(b[16:20]))
        return _udp(src, dst, b[ihl:total])
    if v == 6:
        if len(b) < 40:
            return None
        plen = (b[4] << 8) | b[5]
        nxt = b[6]
        end = 40 + plen
        if end > len(b):
            return _SNAPPED
        off = 40
        while nxt in (0, 43, 44, 60, 51):
            if off + 8 > end:
                return None
            if nxt == 44:
                fo = (b[off + 2] << 8) | b[off + 3]
                if fo & 0xFFF9:  # offset or more-fragments set
                    return _FRAGMENT
                nxt, off = b[off], off + 8
            elif nxt == 51:
                nxt, off = b[off], off + (b[off + 1] + 2) * 4
            else:
                nxt, off = b[off], off + (b[off + 1] + 1) * 8
        if nxt != 17:
            return None
        src = str(ipaddress.IPv6Address(b[8:24]))
        dst = str(ipaddress.IPv6Address(b[24:40]))
        return _udp(src, dst, b[off:end])
    return None


def _udp(src: str, dst: str, u: bytes):
    if len(u) < 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", u)
    if ulen < 8:
        return None
    if ulen > len(u):
        return _SNAPPED
    return (src, sport), (dst, dport), u[8:ulen]


def _ethernet(f: bytes):
    off = 12
    etype = (f[off] << 8) | f[off + 1]
    while etype in (0x8100, 0x88A8, 0x9100):  # VLAN tags
        off += 4
        etype = (f[off] << 8) | f[off + 1]
    return _ip(f[off + 2:]) if etype in (0x0800, 0x86DD) else None


def _sll(f: bytes):
    return _ip(f[16:]) if ((f[14] << 8) | f[15]) in (0x0800, 0x86DD) else None


def _sll2(f: bytes):
    return _ip(f[20:]) if ((f[0] << 8) | f[1]) in (0x0800, 0x86DD) else None


_LINK_DECODERS = {
    1: _ethernet,  # DLT_EN10MB
    113: _sll,  # DLT_LINUX_SLL (tcpdump -i any)
    276: _sll2,  # DLT_LINUX_SLL2
    101: _ip, 12: _ip, 14: _ip, 228: _ip, 229: _ip,  # raw IP variants
    0: lambda f: _ip(f[4:]), 108: lambda f: _ip(f[4:]),  # BSD loopback: 4-byte address family
}


# ---- SIP: just enough to name the speakers

_SIP_REQUEST = re.compile(rb"[A-Za-z]+ \S+ SIP/2\.0")
_COMPACT = {"i": "call-id", "f": "from", "t": "to"}  # RFC 3261 compact forms of the headers we read


def _looks_like_sip(payload: bytes) -> bool:
    first = payload[:512].split(b"\n", 1)[0].rstrip(b"\r")
    return first.startswith(b"SIP/2.0 ") or bool(_SIP_REQUEST.fullmatch(first))


@dataclass
class _SipMessage:
    ts: float
    src: tuple[str, int]
    is_request: bool
    method: str  # the CSeq method (responses carry it too)
    call_id: str
    from_hdr: str
    to_hdr: str
    sdp_audio: list[tuple[str, int]]


def _parse_sip(ts: float, src, dst, payload: bytes) -> _SipMessage | None:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = payload.find(sep)
        if i >= 0:
            head, body = payload[:i], payload[i + len(sep):]
            break
    else:
        head, body = payload, b""
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    headers: dict[str, str] = {}
    last = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:  # folded header line
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        name = _COMPACT.get(name, name)
        if name not in headers:
            headers[name] = value.strip()
        last = name
    call_id = headers.get("call-id")
    if not call_id:
        return None
    cseq = headers.get("cseq", "").split()
    method = cseq[1].upper() if len(cseq) >= 2 else ""
    return _SipMessage(
        ts=ts,
        src=src,
        is_request=not lines[0].startswith("SIP/2.0"),
        method=method,
        call_id=call_id,
        from_hdr=headers.get("from", ""),
        to_hdr=headers.get("to", ""),
        sdp_audio=_sdp_audio(body.decode("utf-8", "replace")) if b"m=" in body else [],
    )


def _norm_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None  # a host name: cannot match packet addresses


def _sdp_audio(body: str) -> list[tuple[str, int]]:
    """Receive addresses of the audio m= lines; also finds the SDP inside a
    multipart body (SIPREC), since it only looks at v=/c=/m= lines."""
    out: list[tuple[str, int]] = []
    session_c = None
    media: list | None = None  # [port or None, media-level c or None]

    def flush():
        if media and media[0]:
            addr = media[1] or session_c
            if addr:
                out.append((addr, media[0]))

    for line in body.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("v="):
            flush()
            session_c, media = None, None
        elif line.startswith("c="):
            parts = line[2:].split()
            addr = _norm_ip(parts[2].split("/")[0]) if len(parts) >= 3 and parts[0] == "IN" else None
            if media is None:
                session_c = addr
            else:
                media[1] = addr
        elif line.startswith("m="):
            flush()
            parts = line[2:].split()
            port = None
            if len(parts) >= 2 and parts[0] == "audio":
                try:
                    port = int(parts[1].split("/")[0]) or None  # port 0: stream disabled
                except ValueError:
                    port = None
            media = [port, None]
    flush()
    return out


_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.I)


def _split_name_addr(value: str) -> tuple[str, str, str]:
    """(display name, URI, header params) of a From/To value."""
    value = value.strip()
    display = ""
    if value.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"\s*', value)
        if m:
            display = re.sub(r"\\(.)", r"\1", m.group(1))
            value = value[m.end():]
    lt = value.find("<")
    if lt >= 0:
        if not display:
            display = value[:lt].strip()
        gt = value.find(">", lt)
        uri = value[lt + 1:gt if gt >= 0 else len(value)]
        params = value[gt + 1:] if gt >= 0 else ""
    else:
        uri, _, params = value.partition(";")
        params = ";" + params if params else ""
    return display, uri, params


def _party_name(value: str) -> str:
    display, uri, _ = _split_name_addr(value)
    if display.strip():
        return display.strip()
    m = re.match(r"(?:sips?|tel):([^@;?>]+)", uri, re.I)
    if m and ("@" in uri or uri.lower().startswith("tel:")):
        return unquote(m.group(1))
    return ""


def _tag(value: str) -> str | None:
    m = _TAG.search(_split_name_addr(value)[2])
    return m.group(1) if m else None


def _strip_tag(value: str) -> str:
    display, uri, params = _split_name_addr(value)
    params = _TAG.sub("", params)
    if "<" in value:
        name = f'"{display}" ' if display else ""
        return f"{name}<{uri}>{params}"
    return uri + params


@dataclass
class _SipCall:
    call_id: str
    from_hdr: str
    to_hdr: str
    caller_tag: str | None
    # (capture time, ip, port, role) of each SDP audio address the parties announced
    addresses: list[tuple[float, str, int, str]] = field(default_factory=list)

    def label(self, role: str) -> str:
        return _party_name(self.from_hdr if role == "caller" else self.to_hdr) or role

    def summary(self) -> dict:
        return {
            "call_id": self.call_id,
            "from": self.from_hdr,
            "to": self.to_hdr,
            "caller": self.label("caller"),
            "callee": self.label("callee"),
        }


def _sip_calls(messages: list[_SipMessage]) -> dict[str, _SipCall]:
    """INVITE dialogs by Call-ID (REGISTER, OPTIONS… are not calls)."""
    calls: dict[str, _SipCall] = {}
    for m in messages:
        if m.method != "INVITE" and m.call_id not in calls:
            continue
        call = calls.get(m.call_id)
        if call is None:
            # The first INVITE-transaction message names caller (From) and callee (To).
            call = _SipCall(m.call_id, _strip_tag(m.from_hdr), _strip_tag(m.to_hdr), _tag(m.from_hdr))
            calls[m.call_id] = call
        if not m.sdp_audio:
            continue
        # SDP describes its sender: From of a request, To of a response.  The
        # caller is whoever holds the caller's tag (re-INVITEs go both ways).
        party_tag = _tag(m.from_hdr if m.is_request else m.to_hdr)
        role = "caller" if party_tag is not None and party_tag == call.caller_tag else "callee"
        if call.caller_tag is None:
            role = "caller" if m.is_request else "callee"
        for ip, port in m.sdp_audio:
            call.addresses.append((m.ts, ip, port, role))
    return calls


def _lookup(calls: dict[str, _SipCall], addr: tuple[str, int], when: float):
    """(call, role) that announced addr: the latest announcement before the
    stream started (ports are reused from call to call), else the earliest."""
    hits = [(t, c, role) for c in calls.values() for (t, ip, port, role) in c.addresses if (ip, port) == addr]
    if not hits:
        return None
    before = [h for h in hits if h[0] <= when + 1.0]
    t, c, role = max(before, key=lambda h: h[0]) if before else min(hits, key=lambda h: h[0])
    return c, role


def _assign_parties(kept: list[list[_Stream]], calls: dict[str, _SipCall]) -> dict[int, tuple]:
    """Map streams to (call, role, how).  First by source address (the SDP
    says where a party receives, and symmetric RTP sends from there too);
    then a stream coming back from where a mapped stream went is that
    party's peer; last, a stream sent to a party's address is from its peer.
    A (call, role) is given to one stream only, so guesses never override."""
    out: dict[int, tuple] = {}
    taken: set[tuple[str, str]] = set()
    if not calls:
        return out
    other = {"caller": "callee", "callee": "caller"}

    def give(s: _Stream, call: _SipCall, role: str, how: str) -> None:
        if id(s) not in out and (call.call_id, role) not in taken:
            out[id(s)] = (call, role, how)
            taken.add((call.call_id, role))

    for copies in kept:
        for c in copies:
            hit = _lookup(calls, c.src, copies[0].first)
            if hit:
                give(copies[0], hit[0], hit[1], "sdp")
                break
    for copies in kept:
        for mapped in kept:
            m = out.get(id(mapped[0]))
            if m and m[2] == "sdp" and any(c.src == mc.dst for c in copies for mc in mapped):
                give(copies[0], m[0], other[m[1]], "sdp-peer")
    for copies in kept:
        for c in copies:
            hit = _lookup(calls, c.dst, copies[0].first)
            if hit:
                give(copies[0], hit[0], other[hit[1]], "sdp-peer")
                break
    return out


def _primary_call(calls: dict[str, _SipCall], assigned: dict[int, tuple]) -> _SipCall | None:
    """The call most legs belong to; else the first INVITE dialog seen."""
    if not calls:
        return None
    votes = Counter(call.call_id for call, _role, _how in assigned.values())
    if votes:
        return calls[votes.most_common(1)[0][0]]
    return next(iter(calls.values()))
