"""A minimal SIP UAC over UDP and an RTP sender with impairment, for benchmarks and tests.

Not a SIP stack: it sends one INVITE per dialog with exactly the body and
headers it is given (SIPREC multipart, correlation headers, odd SDP), ACKs
the final response, sends BYE, and streams G.711 packets paced from a start
time with optional loss, reordering and jitter. Real third-party peers
(baresip, linphonec, kamailio, pjsua2) are driven by ``tests/sip_peers.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
import warnings
import wave
from dataclasses import dataclass, field

from ..media.rtp import build_rtp

with warnings.catch_warnings():  # stdlib on 3.11/3.12, audioop-lts from 3.13 (as in media/codecs.py)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def read_wav_g711(path: str, codec: str = "PCMU") -> bytes:
    """A WAV file as 8 kHz mono G.711 bytes (Asterisk prompts are already 8 kHz 16-bit mono)."""
    with wave.open(path, "rb") as w:
        pcm = w.readframes(w.getnframes())
        if w.getsampwidth() != 2:
            pcm = audioop.lin2lin(pcm, w.getsampwidth(), 2)
        if w.getnchannels() == 2:
            pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
        if w.getframerate() != 8000:
            pcm, _ = audioop.ratecv(pcm, 2, 1, w.getframerate(), 8000, None)
    return audioop.lin2ulaw(pcm, 2) if codec == "PCMU" else audioop.lin2alaw(pcm, 2)


@dataclass
class Impairment:
    loss: float = 0.0  # probability a packet is dropped
    reorder: float = 0.0  # probability a packet is held back and sent after the next one
    jitter_ms: float = 0.0  # uniform extra delay 0..jitter_ms
    seed: int = 1


@dataclass
class SendStats:
    sent: int = 0
    dropped: int = 0
    reordered: int = 0
    duration_s: float = 0.0
    marks: dict[tuple[int, int], float] = field(default_factory=dict)  # (leg, frame) -> when it was sent


async def send_rtp(sock_addr: tuple[str, int], payload: bytes, *, pt: int = 0, ptime_ms: int = 20,
                   impair: Impairment | None = None, ssrc: int | None = None, transport=None,
                   seq0: int | None = None, local_port: int = 0, local_host: str = "127.0.0.1",
                   t0: float | None = None, marks: set[int] | None = None) -> SendStats:
    """Stream ``payload`` (8 kHz G.711) as RTP to ``sock_addr`` in real time, from ``local_port``
    (the port our SDP announced: the service takes media only from there). Returns what was sent;
    ``t0`` and ``marks`` as for ``send_rtp_many`` (the leg is leg 0)."""
    loop = asyncio.get_running_loop()
    own = transport is None
    if own:
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(local_host, local_port))
    rnd = random.Random(impair.seed if impair else 0)
    impair = impair or Impairment()
    ssrc = ssrc if ssrc is not None else rnd.getrandbits(32)
    seq = seq0 if seq0 is not None else rnd.getrandbits(16)
    ts = rnd.getrandbits(32)
    step = 8 * ptime_ms
    stats = SendStats()
    held: tuple[bytes, int] | None = None  # a packet held back, and its frame
    t0 = time.monotonic() if t0 is None else t0
    marks = marks or set()

    def send(pkt: bytes, frame: int) -> None:
        transport.sendto(pkt, sock_addr)
        stats.sent += 1
        if frame in marks:
            stats.marks[(0, frame)] = time.monotonic()

    n = 0
    for off in range(0, len(payload), step):
        chunk = payload[off:off + step]
        if len(chunk) < step:
            chunk = chunk + bytes([0xFF if pt == 0 else 0xD5]) * (step - len(chunk))
        pkt = build_rtp(pt, seq + n, ts + n * step, ssrc, chunk, marker=(n == 0))
        due = t0 + n * ptime_ms / 1000 + (rnd.uniform(0, impair.jitter_ms) / 1000 if impair.jitter_ms else 0)
        frame = n
        n += 1
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if rnd.random() < impair.loss:
            stats.dropped += 1
            continue
        if held is None and rnd.random() < impair.reorder:
            held = (pkt, frame)
            stats.reordered += 1
            continue
        send(pkt, frame)
        if held is not None:
            send(*held)
            held = None
    if held is not None:
        send(*held)
    stats.duration_s = n * ptime_ms / 1000
    if own:
        transport.close()
    return stats


async def send_rtp_many(addrs: list[tuple[str, int]], payload: bytes | list[bytes], *, pt: int = 0,
                        ptime_ms: int = 20, stagger: bool = True, local_port: int = 0, t0: float | None = None,
                        marks: list[set[int]] | None = None) -> SendStats:
    """Stream ``payload`` (one for all, or one per address, of equal length) to every address at
    once from one socket and one timer (load tests: one task per leg would make the sender, not
    the server, the bottleneck). Legs are spread evenly over the 20 ms period, as independent
    phones would be. ``t0``: the start of the schedule (several senders on one clock);
    ``marks``: per address, the frames whose actual send time to record in ``stats.marks``."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", local_port))
    step = 8 * ptime_ms
    payloads = payload if isinstance(payload, list) else [payload] * len(addrs)
    fill = b"\xff" if pt == 0 else b"\xd5"
    per_leg = [[p[o:o + step].ljust(step, fill) for o in range(0, len(p), step)] for p in payloads]
    frames = per_leg[0] if per_leg else []
    n_legs = len(addrs)
    offsets = [(i * ptime_ms / 1000 / n_legs) if stagger else 0.0 for i in range(n_legs)]
    order = sorted(range(n_legs), key=lambda i: offsets[i])
    stats = SendStats()
    t0 = time.monotonic() if t0 is None else t0
    marked = marks or [set()] * n_legs
    for n in range(len(frames)):
        for i in order:
            delay = t0 + n * ptime_ms / 1000 + offsets[i] - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)
            transport.sendto(build_rtp(pt, n, n * step, 1000 + i, per_leg[i][n], marker=(n == 0)), addrs[i])
            stats.sent += 1
            if n in marked[i]:
                stats.marks[(i, n)] = time.monotonic()
    stats.duration_s = len(frames) * ptime_ms / 1000
    transport.close()
    return stats


@dataclass
class SipResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def parse_response(data: bytes) -> SipResponse | None:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("SIP/") or not parts[1].isdigit():
        return None
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers.append((k.strip(), v.strip()))
    return SipResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body)


def sdp_offer(port: int, *, codecs: tuple[int, ...] = (0, 8), streams: list[dict] | None = None,
              direction: str = "sendonly", host: str = "127.0.0.1") -> str:
    """An SDP offer; ``streams`` (each ``{"label": .., "port": .., "direction": ..}``) makes a SIPREC-style multi-stream one."""
    names = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000", 18: "G729/8000", 9: "G722/8000", 3: "GSM/8000"}
    lines = ["v=0", f"o=loadgen {random.getrandbits(31)} 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    for st in streams or [{"port": port, "direction": direction}]:
        lines.append(f"m=audio {st['port']} RTP/AVP " + " ".join(str(c) for c in st.get("codecs", codecs)))
        lines += [f"a=rtpmap:{c} {names[c]}" for c in st.get("codecs", codecs) if c in names]
        if "label" in st:
            lines.append(f"a=label:{st['label']}")
        lines.append(f"a={st.get('direction', direction)}")
    return "\r\n".join(lines) + "\r\n"


class _UacProtocol(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue: asyncio.Queue[SipResponse | bytes] = asyncio.Queue()

    def datagram_received(self, data, addr):
        r = parse_response(data)
        self.queue.put_nowait(r if r is not None else data)


class RawUac:
    """One UDP socket, one dialog at a time per ``Dialog`` object; many dialogs may share a UAC."""

    def __init__(self, target: tuple[str, int], local_host: str = "127.0.0.1"):
        self.target = target
        self.local_host = local_host
        self.transport = None
        self.proto: _UacProtocol | None = None
        self._waiters: dict[str, asyncio.Queue] = {}
        self._pump: asyncio.Task | None = None

    async def open(self) -> "RawUac":
        loop = asyncio.get_running_loop()
        self.transport, self.proto = await loop.create_datagram_endpoint(_UacProtocol, local_addr=(self.local_host, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        self._pump = asyncio.create_task(self._dispatch())
        return self

    async def close(self) -> None:
        if self._pump:
            self._pump.cancel()
        if self.transport:
            self.transport.close()

    async def _dispatch(self) -> None:
        while True:
            item = await self.proto.queue.get()
            if isinstance(item, SipResponse):
                cid = item.get("Call-ID") or item.get("i")
                q = self._waiters.get(cid or "")
                if q is not None:
                    q.put_nowait(item)
            elif isinstance(item, bytes) and item[:1].isalpha():
                self._answer_request(item)

    def _answer_request(self, data: bytes) -> None:
        """Requests from the server (BYE at shutdown, session refresh) get a bare 200 OK."""
        head = data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace").split("\r\n")
        if head[0].startswith("ACK "):
            return
        keep = [ln for ln in head[1:] if ln.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
        self.send_raw(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode())

    def send_raw(self, data: bytes) -> None:
        self.transport.sendto(data, self.target)

    def dialog(self, **kw) -> "SipDialog":
        return SipDialog(self, **kw)


class SipDialog:
    def __init__(self, uac: RawUac, *, user: str = "loadgen", display: str | None = None, to_user: str = "transcribe"):
        self.uac = uac
        self.call_id = uuid.uuid4().hex
        self.from_tag = uuid.uuid4().hex[:10]
        self.to_tag: str | None = None
        self.user = user
        self.display = display
        self.to_user = to_user
        self.cseq = 0
        self.queue: asyncio.Queue[SipResponse] = asyncio.Queue()
        uac._waiters[self.call_id] = self.queue
        self.remote_sdp: str | None = None
        self.local_sdp: str | None = None  # our latest offer
        self.to_header: str | None = None

    def _request(self, method: str, body: bytes = b"", content_type: str | None = None,
                 headers: dict[str, str] | None = None, cseq: int | None = None, branch: str | None = None) -> bytes:
        host, port = self.uac.target
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        disp = f'"{self.display}" ' if self.display else ""
        to = self.to_header or f"<sip:{self.to_user}@{host}:{port}>"
        lines = [
            f"{method} sip:{self.to_user}@{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.uac.local_host}:{self.uac.port};rport;branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:16]}",
            "Max-Forwards: 70",
            f"From: {disp}<sip:{self.user}@{self.uac.local_host}>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.user}@{self.uac.local_host}:{self.uac.port}>",
        ]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def invite(self, body: bytes | str, content_type: str | None = "application/sdp",
                     headers: dict[str, str] | None = None, timeout: float = 5.0,
                     ack_body: bytes | str | None = None) -> SipResponse:
        """Send an INVITE (or re-INVITE once the dialog exists), ACK the final response.
        ``ack_body``: the SDP answer to carry in the ACK (late offer: INVITE without a body)."""
        if isinstance(body, str):
            body = body.encode()
        if not body:
            content_type = None
        if body:
            self.local_sdp = body.decode("utf-8", "replace")
        elif ack_body:
            self.local_sdp = ack_body if isinstance(ack_body, str) else ack_body.decode()
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        self.uac.send_raw(self._request("INVITE", body, content_type, headers, branch=branch))
        invite_cseq = self.cseq
        while True:
            r = await asyncio.wait_for(self.queue.get(), timeout)
            if r.status < 200:
                continue
            to = r.get("To") or r.get("t")
            if to and r.status < 300:  # a failed INVITE creates no dialog: a retry starts without a To tag
                self.to_header = to
            if r.status < 300:
                self.remote_sdp = r.body.decode()
                ack = ack_body.encode() if isinstance(ack_body, str) else (ack_body or b"")
                self.uac.send_raw(self._request("ACK", ack, "application/sdp" if ack else None, cseq=invite_cseq))
            else:  # non-2xx ACK reuses the INVITE's branch (same transaction)
                self.uac.send_raw(self._request("ACK", cseq=invite_cseq, branch=branch))
            return r

    async def reinvite(self, body: bytes | str, content_type: str = "application/sdp", timeout: float = 5.0) -> SipResponse:
        return await self.invite(body, content_type, timeout=timeout)

    async def request(self, method: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> SipResponse:
        self.uac.send_raw(self._request(method, headers=headers))
        while True:
            r = await asyncio.wait_for(self.queue.get(), timeout)
            if r.status >= 200:
                return r

    async def bye(self, timeout: float = 5.0) -> SipResponse:
        return await self.request("BYE", timeout=timeout)

    def offer_port(self, index: int = 0) -> int:
        """The port our offer announced for its ``index``-th audio m= line (where our RTP comes from)."""
        ports = [int(ln.split()[1]) for ln in (self.local_sdp or "").splitlines() if ln.startswith("m=")]
        return ports[index]

    def media_port(self, index: int = 0) -> tuple[str, int]:
        """Where the answer asks us to send RTP for its ``index``-th m= line."""
        host = "127.0.0.1"
        ports = []
        for ln in (self.remote_sdp or "").splitlines():
            if ln.startswith("c="):
                host = ln.split()[-1]
            if ln.startswith("m="):
                ports.append(int(ln.split()[1]))
        return host, ports[index]
