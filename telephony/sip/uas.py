"""A SIP user agent server on asyncio: transactions, dialogs and session timers (RFC 3261, 3581, 4028).

Scope is what a recorder needs: answer INVITEs (never place calls), keep the
dialog through ACK, re-INVITE, UPDATE, CANCEL, OPTIONS and BYE, retransmit our
2xx until the ACK arrives, and hang up (BYE) itself at shutdown, on ACK
timeout and when a session timer expires. What a call means (admission, SDP
answer, legs) is the ``App``'s business (``endpoint.py``).

Every request is handled inside one ``try``: whatever goes wrong while
handling it becomes a 500 for that request, never an exception that stops
the listener or touches another dialog.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Protocol

from .errors import SipReject
from .message import (
    SipRequest,
    SipResponse,
    Unanswerable,
    build_message,
    header_param,
    parse_message,
    parse_name_addr,
    response_for,
)
from .transport import Flow, SipTransport

log = logging.getLogger(__name__)

T1, T2, TX_LIFETIME = 0.5, 4.0, 32.0  # RFC 3261 timers (s); 64*T1 = 32 s
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
SUPPORTED = ("timer", "siprec")
NOT_HERE = ("REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "NOTIFY")
# Methods counted by name; any other token counts as "other" (a bounded set of metrics labels).
COUNTED = frozenset(("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK") + NOT_HERE)


@dataclass
class Answer:
    status: int
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    sdp: bytes | None = None
    app: object = None  # the App's state for the new dialog (stored on Dialog.app)


@dataclass(eq=False)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str  # our To header value (with our tag)
    remote_uri: str  # their From header value
    remote_target: str  # their Contact URI
    route_set: list[str]
    flow: Flow
    remote_cseq: int
    local_cseq: int = 1
    confirmed: bool = False  # ACK seen
    terminated: bool = False
    session_expires: int | None = None
    app: object = None  # the endpoint's per-dialog state
    _expiry: asyncio.TimerHandle | None = None
    _pending_2xx: "_Retransmit | None" = None

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.call_id, self.local_tag, self.remote_tag)


class App(Protocol):
    def on_invite(self, req: SipRequest, flow: Flow) -> "Answer | Awaitable[Answer]":
        """A refusal now (an Answer, sent once), or an awaitable of the answer (after a 100 Trying)."""
    def on_cancelled(self, app_state) -> None: ...
    def on_reoffer(self, dialog: Dialog, req: SipRequest) -> Answer: ...
    def on_ack(self, dialog: Dialog, req: SipRequest) -> None: ...
    def on_terminated(self, dialog: Dialog, why: str) -> None: ...


class _Retransmit:
    """Resend ``data`` over UDP at T1, 2T1 ... T2 until stopped; call ``on_timeout`` after 64*T1."""

    def __init__(self, flow: Flow, data: bytes, on_timeout=None):
        self.flow, self.data, self.on_timeout = flow, data, on_timeout
        self.loop = asyncio.get_running_loop()
        self.interval = T1
        self.deadline = self.loop.time() + TX_LIFETIME
        self.handle = None
        self.stopped = False
        flow.send(data)
        if flow.transport == "UDP":
            self.handle = self.loop.call_later(self.interval, self._tick)
        elif on_timeout is not None:
            self.handle = self.loop.call_later(TX_LIFETIME, self._expire)

    def _tick(self) -> None:
        if self.stopped:
            return
        if self.loop.time() >= self.deadline:
            self._expire()
            return
        self.flow.send(self.data)
        self.interval = min(self.interval * 2, T2)
        self.handle = self.loop.call_later(self.interval, self._tick)

    def _expire(self) -> None:
        self.stopped = True
        if self.on_timeout is not None:
            self.on_timeout()

    def stop(self) -> None:
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()


@dataclass
class _ServerTx:
    response: bytes | None  # the last response sent: a retransmitted request gets it again
    flow: Flow
    created: float
    cancelled: bool = False  # an INVITE CANCELled while the app was still setting up its call
    final: bool = False


class UserAgentServer:
    def __init__(self, app: App, *, host: str, announce: str, user: str = "transcribe",
                 session_expires: int = 1800, min_se: int = 90, admit_request=None, tcp_idle_timeout: float = 120.0):
        self.app = app
        self.host = host
        self.announce = announce
        self.user = user
        self.session_expires = session_expires
        self.min_se = min_se
        self.admit_request = admit_request  # (req, flow) -> None or raise SipReject: allow-list / rate limit
        self.tcp_idle_timeout = tcp_idle_timeout
        self._invites: set[asyncio.Task] = set()
        self.transport = SipTransport(self._on_message)
        self.dialogs: dict[tuple, Dialog] = {}
        self._server_tx: dict[tuple, _ServerTx] = {}
        self._client_tx: dict[str, _Retransmit] = {}
        self._sweeper: asyncio.Task | None = None
        self.counters = {"received": 0, "malformed": 0, "dropped": 0, "errors": 0}
        self.requests: collections.Counter[str] = collections.Counter()  # by method, for metrics and tests
        self.responses: collections.Counter[tuple[str, int]] = collections.Counter()  # (method, status // 100) sent

    @property
    def ports(self) -> dict[str, int]:
        return self.transport.ports

    async def start(self, port: int, udp: bool = True, tcp: bool = True) -> None:
        await self.transport.start(self.host, port, udp, tcp)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sip-tx-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for d in list(self.dialogs.values()):
            self._clear_timers(d)
        for tx in self._client_tx.values():
            tx.stop()
        for task in list(self._invites):
            task.cancel()
        await self.transport.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            now = time.monotonic()
            for k, tx in list(self._server_tx.items()):
                if now - tx.created > TX_LIFETIME:
                    del self._server_tx[k]
            if self.tcp_idle_timeout > 0:
                # Connections that carry no dialog and have been silent: closed (a client that opens
                # connections and never finishes a request must not hold them for ever).
                busy = {id(d.flow) for d in self.dialogs.values()}
                self.transport.close_idle(self.tcp_idle_timeout, keep=lambda flow: id(flow) in busy)

    # -- receiving ---------------------------------------------------------
    def _on_message(self, data: bytes, flow: Flow, stream: bool) -> None:
        self.counters["received"] += 1
        try:
            msg = parse_message(data, stream=stream)
        except Unanswerable as exc:
            self.counters["dropped"] += 1
            log.info("dropped unanswerable SIP message from %s: %s", flow.remote, exc)
            return
        except SipReject as r:
            self.counters["malformed"] += 1
            self._reject_raw(data, flow, r)
            return
        except Exception:
            self.counters["dropped"] += 1
            log.exception("SIP parse failure from %s; dropped", flow.remote)
            return
        if isinstance(msg, SipResponse):
            self._on_response(msg)
            return
        try:
            self._on_request(msg, flow)
        except SipReject as r:
            self._respond(msg, flow, r.status, r.reason, extra=list(r.headers.items()))
        except Exception:
            self.counters["errors"] += 1
            log.exception("error handling %s from %s; answering 500", msg.method, flow.remote)
            if msg.method != "ACK":
                self._respond(msg, flow, 500, "Server Internal Error")

    def _reject_raw(self, data: bytes, flow: Flow, r: SipReject) -> None:
        """Answer a request we could not parse fully, from whatever header lines we can read."""
        log.info("malformed SIP from %s: %d %s", flow.remote, r.status, r.reason)
        try:
            req = _loose_request(data)
        except Exception:
            return
        if req is None or req.method == "ACK" or not req.get_all("via"):
            return
        flow.send(response_for(req, r.status, r.reason, source=flow.remote if flow.transport == "UDP" else None,
                               to_tag=uuid.uuid4().hex[:10]))
        self._sent(req.method, r.status)

    def _on_response(self, resp: SipResponse) -> None:
        tx = self._client_tx.get(resp.branch or "")
        if tx is not None and resp.status >= 200:
            tx.stop()
            del self._client_tx[resp.branch]
        # Responses that match nothing (RFC 4475 3.1.1.12, 3.3.10 ...) are dropped silently.

    def _on_request(self, req: SipRequest, flow: Flow) -> None:
        self.requests[req.method if req.method in COUNTED else "other"] += 1
        key = _tx_key(req)
        if req.method == "ACK":
            self._on_ack(req, key)
            return
        tx = self._server_tx.get(key)
        if tx is not None:  # a retransmission: repeat our last answer (once per copy: no amplification)
            if tx.response is not None:
                tx.flow.send(tx.response)
            return
        self._server_tx[key] = _ServerTx(None, flow, time.monotonic())
        if req.method == "CANCEL":
            self._on_cancel(req, flow)
            return
        unsupported = sorted(req.tokens("require") - set(SUPPORTED))
        if unsupported:  # RFC 3261 8.2.2.3: every request but ACK and CANCEL
            raise SipReject(420, "Bad Extension", {"Unsupported": ", ".join(unsupported)})
        to_tag = req.to_tag
        if to_tag:
            d = self.dialogs.get((req.call_id, to_tag, req.from_tag))
            if d is None:
                self._respond(req, flow, 481, "Call/Transaction Does Not Exist")
                return
            self._in_dialog(d, req, flow)
            return
        if self.admit_request is not None:
            self.admit_request(req, flow)  # raises SipReject (403 / 503)
        if req.method == "INVITE":
            self._on_invite(req, flow)
        elif req.method == "OPTIONS":
            self._respond(req, flow, 200, "OK", extra=self._capabilities())
        elif req.method in ("BYE", "UPDATE", "INFO", "PRACK"):
            self._respond(req, flow, 481, "Call/Transaction Does Not Exist")
        elif req.method in NOT_HERE:
            self._respond(req, flow, 405, "Method Not Allowed", extra=[("allow", ALLOW)])
        else:
            self._respond(req, flow, 501, "Not Implemented", extra=[("allow", ALLOW)])

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("allow", ALLOW), ("accept", "application/sdp, multipart/mixed"),
                ("supported", ", ".join(SUPPORTED)), ("server", "telephony-transcriber")]

    # -- INVITE -----------------------------------------------------------
    def _on_invite(self, req: SipRequest, flow: Flow) -> None:
        accept = req.values("accept")
        if accept and not any(a.split(";")[0].strip().lower() in ("application/sdp", "application/*", "*/*") for a in accept):
            raise SipReject(406, "Not Acceptable", {"Accept": "application/sdp"})
        se = self._session_expires(req)
        # RFC 2543 INVITEs may lack Contact: then the From URI is the remote target.
        contact = parse_name_addr((req.values("contact") or [None])[0]) or parse_name_addr(req.get("from"))
        pending = self.app.on_invite(req, flow)
        if isinstance(pending, Answer):  # refused on the spot: one response, nothing else
            self._respond(req, flow, pending.status, pending.reason, extra=pending.headers)
            return
        # 100 Trying at once: the caller stops retransmitting while the app sets the call up
        # (the call is journalled before we answer it).
        self._respond(req, flow, 100, "Trying")
        task = asyncio.get_running_loop().create_task(self._answer_invite(req, flow, se, contact, pending),
                                                      name=f"invite-{req.call_id[:32]}")
        self._invites.add(task)
        task.add_done_callback(self._invites.discard)

    async def _answer_invite(self, req: SipRequest, flow: Flow, se: int | None, contact, pending) -> None:
        try:
            answer = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["errors"] += 1
            log.exception("error handling INVITE from %s; answering 500", flow.remote)
            answer = Answer(500, "Server Internal Error")
        tx = self._server_tx.get(_tx_key(req))
        if tx is not None and tx.cancelled:
            if answer.status < 300 and answer.app is not None:
                self.app.on_cancelled(answer.app)
            self._respond(req, flow, 487, "Request Terminated")
            return
        if answer.status >= 300:
            self._respond(req, flow, answer.status, answer.reason, extra=answer.headers)
            return
        local_tag = uuid.uuid4().hex[:12]
        to = f"{req.get('to')};tag={local_tag}"
        d = Dialog(call_id=req.call_id, local_tag=local_tag, remote_tag=req.from_tag, local_uri=to,
                   remote_uri=req.get("from") or "", remote_target=contact.uri,
                   route_set=req.values("record-route"), flow=flow, remote_cseq=req.cseq[0],
                   session_expires=se, app=getattr(answer, "app", None))
        self.dialogs[d.key] = d
        extra = self._dialog_headers(d, req) + answer.headers
        data = response_for(req, answer.status, answer.reason or "OK", to_tag=local_tag, extra=extra,
                            body=answer.sdp or b"", content_type="application/sdp" if answer.sdp else None,
                            source=flow.remote)
        tx = self._server_tx.setdefault(_tx_key(req), _ServerTx(None, flow, time.monotonic()))
        tx.response, tx.final = data, True
        d._pending_2xx = _Retransmit(flow, data, on_timeout=lambda: self._ack_timeout(d))
        self._sent(req.method, answer.status)
        self._arm_session_timer(d)

    def _session_expires(self, req: SipRequest) -> int | None:
        """RFC 4028: the interval we agree to, or 422 when the offered one is below our Min-SE."""
        raw = req.get("session-expires")
        if raw is None:
            return None
        value = raw.split(";", 1)[0].strip()
        if not value.isdigit():
            raise SipReject(400, "Bad Session-Expires")
        se = int(value)
        if se < self.min_se:
            raise SipReject(422, "Session Interval Too Small", {"Min-SE": str(self.min_se)})
        return min(se, max(self.session_expires, self.min_se))

    def _dialog_headers(self, d: Dialog, req: SipRequest) -> list[tuple[str, str]]:
        h = [("contact", self._contact(d.flow))] + self._capabilities()
        if d.session_expires:
            # The caller refreshes (we never send re-INVITEs): refresher=uac when it supports timers.
            refresher = header_param(req.get("session-expires") or "", "refresher") or "uac"
            if "timer" in req.tokens("supported") or refresher == "uas":
                h += [("session-expires", f"{d.session_expires};refresher=uac"), ("require", "timer")]
        return h

    def _contact(self, flow: Flow) -> str:
        port = self.transport.ports.get(flow.transport.lower()) or next(iter(self.transport.ports.values()))
        tp = {"TCP": ";transport=tcp", "TLS": ";transport=tls"}.get(flow.transport, "")
        host = f"[{self.announce}]" if ":" in self.announce and not self.announce.startswith("[") else self.announce
        return f"<sip:{self.user}@{host}:{port}{tp}>"

    def _on_ack(self, req: SipRequest, key) -> None:
        d = self.dialogs.get((req.call_id, req.to_tag, req.from_tag)) if req.to_tag else None
        if d is None:
            return
        if d._pending_2xx is not None:
            d._pending_2xx.stop()
            d._pending_2xx = None
        d.confirmed = True
        if req.body.strip():
            try:
                self.app.on_ack(d, req)
            except Exception:
                log.exception("ACK handling failed for %s", d.call_id)

    def _on_cancel(self, req: SipRequest, flow: Flow) -> None:
        # RFC 3261 9.2: 200 to the CANCEL; an INVITE still being set up then gets 487 (and its call
        # ends before it began); one already answered is unaffected.
        invite = self._server_tx.get(_tx_key(req, method="INVITE"))
        if invite is None:
            self._respond(req, flow, 481, "Call/Transaction Does Not Exist")
            return
        if not invite.final:
            invite.cancelled = True
        self._respond(req, flow, 200, "OK")

    def _ack_timeout(self, d: Dialog) -> None:
        if d.confirmed or d.terminated:
            return
        log.info("no ACK for %s within %ds: hanging up", d.call_id, int(TX_LIFETIME))
        self.hangup(d, "ack-timeout")

    # -- in dialog --------------------------------------------------------
    def _in_dialog(self, d: Dialog, req: SipRequest, flow: Flow) -> None:
        m = req.method
        if m == "BYE":
            self._respond(req, flow, 200, "OK")
            self._terminate(d, "bye")
            return
        if m in ("INVITE", "UPDATE"):
            if req.cseq[0] <= d.remote_cseq:
                raise SipReject(500, "Out of order CSeq", {"Retry-After": "1"})
            d.remote_cseq = req.cseq[0]
            se = self._session_expires(req)
            if se is not None:
                d.session_expires = se
            answer = self.app.on_reoffer(d, req)
            extra = (self._dialog_headers(d, req) if answer.status < 300 else []) + answer.headers
            data = response_for(req, answer.status, answer.reason or "OK", extra=extra, body=answer.sdp or b"",
                                content_type="application/sdp" if answer.sdp else None, source=flow.remote)
            tx = self._server_tx[_tx_key(req)]
            tx.response, tx.final = data, True
            if m == "INVITE" and answer.status < 300:
                if d._pending_2xx is not None:
                    d._pending_2xx.stop()
                d._pending_2xx = _Retransmit(flow, data)
            else:
                flow.send(data)
            self._sent(m, answer.status)
            if answer.status < 300:
                self._arm_session_timer(d)  # a refresh
            return
        if m in ("OPTIONS", "INFO", "NOTIFY"):
            self._respond(req, flow, 200, "OK", extra=self._capabilities() if m == "OPTIONS" else None)
            return
        if m == "PRACK":
            self._respond(req, flow, 481, "Call/Transaction Does Not Exist")
            return
        self._respond(req, flow, 405 if m in NOT_HERE else 501, "Method Not Allowed" if m in NOT_HERE else "Not Implemented",
                      extra=[("allow", ALLOW)])

    def _arm_session_timer(self, d: Dialog) -> None:
        if d._expiry is not None:
            d._expiry.cancel()
            d._expiry = None
        if d.session_expires:
            # RFC 4028 10: without a refresh, end the session at SE - min(32, SE/3).
            delay = d.session_expires - min(32, d.session_expires / 3)
            d._expiry = asyncio.get_running_loop().call_later(delay, self._session_expired, d)

    def _session_expired(self, d: Dialog) -> None:
        if not d.terminated:
            log.info("session timer expired for %s: hanging up", d.call_id)
            self.hangup(d, "session-expired")

    # -- ending -----------------------------------------------------------
    def hangup(self, d: Dialog, why: str = "local") -> None:
        """Send BYE (on the dialog's own flow) and end the dialog now; the BYE's answer does not matter."""
        if d.terminated:
            return
        d.local_cseq += 1
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        port = self.transport.ports.get(d.flow.transport.lower()) or 0
        host = f"[{self.announce}]" if ":" in self.announce and not self.announce.startswith("[") else self.announce
        headers = [("via", f"SIP/2.0/{d.flow.transport} {host}:{port};branch={branch};rport"),
                   ("max-forwards", "70")]
        headers += [("route", r) for r in d.route_set]
        headers += [("from", d.local_uri), ("to", d.remote_uri), ("call-id", d.call_id),
                    ("cseq", f"{d.local_cseq} BYE"), ("user-agent", "telephony-transcriber")]
        if why == "session-expired":
            headers.append(("reason", 'SIP;cause=408;text="Session expired"'))
        data = build_message(f"BYE {d.remote_target} SIP/2.0", headers)
        self._client_tx[branch] = _Retransmit(d.flow, data, on_timeout=lambda b=branch: self._client_tx.pop(b, None))
        self._terminate(d, why)

    def _terminate(self, d: Dialog, why: str) -> None:
        if d.terminated:
            return
        d.terminated = True
        self._clear_timers(d)
        self.dialogs.pop(d.key, None)
        try:
            self.app.on_terminated(d, why)
        except Exception:
            log.exception("ending dialog %s failed", d.call_id)

    def _clear_timers(self, d: Dialog) -> None:
        if d._expiry is not None:
            d._expiry.cancel()
            d._expiry = None
        if d._pending_2xx is not None:
            d._pending_2xx.stop()
            d._pending_2xx = None

    def _respond(self, req: SipRequest, flow: Flow, status: int, reason: str,
                 extra: list[tuple[str, str]] | None = None) -> None:
        """Send a response once. Non-2xx finals are not retransmitted on a timer (RFC 3261 timer G):
        a caller that misses one retransmits its request and gets the same response again, one for
        one, so a spoofed source cannot turn us into an amplifier."""
        if req.method == "ACK":
            return
        to_tag = None if req.to_tag or status == 100 else uuid.uuid4().hex[:10]
        data = response_for(req, status, reason, to_tag=to_tag, extra=extra, source=flow.remote)
        key = _tx_key(req)
        tx = self._server_tx.get(key)
        if tx is None:
            tx = self._server_tx[key] = _ServerTx(None, flow, time.monotonic())
        tx.response = data
        tx.final = tx.final or status >= 200
        flow.send(data)
        self._sent(req.method, status)

    def _sent(self, method: str, status: int) -> None:
        self.responses[(method if method in COUNTED else "other", status // 100)] += 1


def _tx_key(req: SipRequest, method: str | None = None) -> tuple:
    """RFC 3261 17.2.3: branch + sent-by + method; RFC 2543 requests (no magic cookie) by their fields."""
    method = method or ("INVITE" if req.method == "ACK" else req.method)
    branch = req.branch
    via = req.top_via
    sent_by = via.split(";", 1)[0].split()[-1] if via else ""
    if branch and branch.startswith("z9hG4bK") and len(branch) > 7:
        return (branch, sent_by, method)
    return ("2543", req.call_id, req.from_tag, req.cseq[0], via, method)


def _loose_request(data: bytes) -> SipRequest | None:
    """Header lines of a request that failed validation: enough to address a 4xx to it."""
    from .message import _header_lines, _split_head

    head, _ = _split_head(data)
    start, headers, _ = _header_lines(head.decode("utf-8", "replace"))
    parts = start.split()
    if not parts or parts[0].startswith("SIP/"):
        return None
    req = SipRequest(headers=headers, method=parts[0].upper(), uri=parts[1] if len(parts) > 1 else "")
    if any(len(req.get_all(h)) != 1 for h in ("call-id", "cseq", "from", "to")):
        # Too broken to echo single-valued headers faithfully: answer with the first of each.
        req.headers = [(k, v) for k, v in headers if k == "via"] + [
            (k, req.get(k) or "") for k in ("from", "to", "call-id", "cseq")]
    return req
