"""The pjsua2 user agent, confined to one dedicated thread.

pjsua2 runs with ``threadCnt=0`` and ``mainThreadOnly=True``: every pjsip
callback and every call into pjsua2 happens on this thread, which polls
``libHandleEvents`` and runs the commands other threads queue with
``submit``. Python exceptions never escape a pjsua2 callback (a SWIG
director exception would abort the process): each callback catches, logs and
answers with a SIP error instead.

This module knows SIP mechanics only; what a call *means* (admission, legs,
speakers) is decided by the ``Handler`` (``endpoint.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Protocol

import pjsua2 as pj

from .pjsip_ext import add_supported
from .settings import SipSettings

log = logging.getLogger(__name__)

ALLOWED_CODECS = ("PCMU/8000", "PCMA/8000", "telephone-event/8000")


class Handler(Protocol):
    def on_incoming(self, call: "UaCall", prm: pj.OnIncomingCallParam) -> None: ...
    def on_sdp_created(self, call: "UaCall", prm: pj.OnCallSdpCreatedParam) -> None: ...
    def on_rx_reinvite(self, call: "UaCall", prm) -> None: ...
    def on_disconnected(self, call: "UaCall") -> None: ...


class UaCall(pj.Call):
    """A pjsua2 call that forwards its events to the handler; ``ctx`` is the handler's state for it."""

    def __init__(self, ua: "UserAgent", acc: pj.Account, call_id: int):
        super().__init__(acc, call_id)
        self.ua = ua
        self.ctx = None
        self.disconnected = False

    def onCallState(self, prm) -> None:
        try:
            ci = self.getInfo()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.disconnected:
                self.disconnected = True
                self.ua.calls.pop(ci.id, None)
                self.ua.graveyard.append(self)  # deleted after the callback returns, never inside it
                self.ua.handler.on_disconnected(self)
        except Exception:
            log.exception("onCallState failed")

    def onCallSdpCreated(self, prm) -> None:
        try:
            self.ua.handler.on_sdp_created(self, prm)
        except Exception:
            log.exception("onCallSdpCreated failed")

    def onCallRxReinvite(self, prm) -> None:
        try:
            self.ua.handler.on_rx_reinvite(self, prm)
        except Exception:
            log.exception("onCallRxReinvite failed")

    def respond(self, status: int, reason: str = "", headers: dict[str, str] | None = None, audio_count: int | None = None) -> None:
        op = pj.CallOpParam(True)
        op.statusCode = status
        if reason:
            op.reason = reason
        for name, value in (headers or {}).items():
            h = pj.SipHeader()
            h.hName, h.hValue = name, value
            op.txOption.headers.append(h)
        if audio_count is not None:
            op.opt.audioCount = audio_count
            op.opt.videoCount = 0
        self.answer(op)

    def end(self, status: int = 0) -> None:
        if self.disconnected:
            return
        op = pj.CallOpParam(True)
        if status:
            op.statusCode = status
        try:
            self.hangup(op)
        except pj.Error as exc:
            log.debug("hangup: %s", exc.info())


class _Account(pj.Account):
    def __init__(self, ua: "UserAgent"):
        super().__init__()
        self.ua = ua

    def onIncomingCall(self, prm) -> None:
        call = None
        try:
            call = UaCall(self.ua, self, prm.callId)
            self.ua.calls[prm.callId] = call
            self.ua.handler.on_incoming(call, prm)
        except Exception:
            log.exception("incoming call handling failed; answering 500")
            if call is not None:
                try:
                    call.respond(500, "Internal Server Error")
                except Exception:
                    log.exception("could not answer 500")


class UserAgent:
    """Owns the pjsua2 Endpoint and its thread. ``start()`` returns once the listeners are bound."""

    def __init__(self, settings: SipSettings, handler: Handler):
        self.settings = settings
        self.handler = handler
        self.calls: dict[int, UaCall] = {}
        self.graveyard: list[UaCall] = []
        self.ports: dict[str, int] = {}  # transport name -> bound port
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._quit = False

    # -- any thread -------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="pjsua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("pjsua thread did not start")
        if self._error is not None:
            raise RuntimeError(f"SIP endpoint failed to start: {self._error}") from self._error

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pjsua thread (next poll, within ~10 ms)."""
        self._commands.put(fn)

    def stop(self, timeout: float = 10.0) -> None:
        """Hang up what is left, destroy the library, join the thread. Blocking: call from an executor."""
        self._quit = True
        if self._thread is not None:
            self._thread.join(timeout)

    # -- pjsua thread -----------------------------------------------------
    def _run(self) -> None:
        try:
            self._init()
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            self._destroy()
            return
        self._ready.set()
        try:
            while not self._quit:
                self.ep.libHandleEvents(10)
                self._drain_commands()
                self.graveyard.clear()
            self._shutdown_calls()
        finally:
            self._destroy()
            self._stopped.set()

    def _drain_commands(self) -> None:
        while True:
            try:
                fn = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("SIP command failed")

    def _init(self) -> None:
        s = self.settings
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = max(4, min(s.max_calls + 16, 1000))  # room to answer 503 beyond our own limit
        cfg.uaConfig.userAgent = "telephony-transcriber"
        cfg.logConfig.level = s.log_level
        cfg.logConfig.consoleLevel = s.log_level
        cfg.medConfig.noVad = True
        cfg.medConfig.threadCnt = 1
        self.ep.libInit(cfg)
        # No sound device: we never play or record through pjmedia's conference bridge.
        self.ep.audDevManager().setNoDev()
        self._transports = []
        for kind, enabled in ((pj.PJSIP_TRANSPORT_UDP, s.udp), (pj.PJSIP_TRANSPORT_TCP, s.tcp)):
            if not enabled:
                continue
            tc = pj.TransportConfig()
            tc.port = self.ports.get("udp", s.port) if kind == pj.PJSIP_TRANSPORT_TCP and s.port == 0 else s.port
            tc.boundAddress = s.host
            if s.public_host:
                tc.publicAddress = s.public_host
            tid = self.ep.transportCreate(kind, tc)
            info = self.ep.transportGetInfo(tid)
            port = int(info.localName.rsplit(":", 1)[1])
            self.ports["udp" if kind == pj.PJSIP_TRANSPORT_UDP else "tcp"] = port
            self._transports.append(tid)
        self.ep.libStart()
        add_supported("siprec")  # else pjsip answers Require: siprec with 420
        for ci in self.ep.codecEnum2():
            self.ep.codecSetPriority(ci.codecId, 200 if ci.codecId.rsplit("/", 1)[0] in ALLOWED_CODECS or ci.codecId in ALLOWED_CODECS else 0)
        acfg = pj.AccountConfig()
        port = self.ports.get("udp") or self.ports.get("tcp")
        acfg.idUri = f"sip:{s.user}@{s.announce}:{port}"
        acfg.mediaConfig.transportConfig.boundAddress = s.host  # pjsua's own (idle) RTP sockets stay on our address
        if s.public_host:
            acfg.mediaConfig.transportConfig.publicAddress = s.public_host
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        acfg.callConfig.timerSessExpiresSec = s.session_expires_s
        acfg.callConfig.timerMinSESec = s.min_se_s
        self.account = _Account(self)
        self.account.create(acfg, True)

    def _shutdown_calls(self) -> None:
        for call in list(self.calls.values()):
            call.end()
        # Let BYEs go out and their transactions settle (bounded).
        for _ in range(50):
            if not self.calls:
                break
            self.ep.libHandleEvents(20)
        self.calls.clear()
        self.graveyard.clear()

    def _destroy(self) -> None:
        ep = getattr(self, "ep", None)
        if ep is None:
            return
        try:
            acc = getattr(self, "account", None)
            if acc is not None:
                acc.shutdown()
                self.account = None
            ep.libDestroy()
        except Exception:
            log.exception("pjsua shutdown failed")
        self.ep = None
