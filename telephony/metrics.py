"""Prometheus metrics of the running service: ``/metrics`` in the Prometheus text format.

Built on ``prometheus-client``, the Prometheus project's own Python client: it writes the
exposition formats (text 0.0.4, and OpenMetrics when the scraper asks for it) and ships the
process collectors (CPU, RSS, open files, GC), so no exposition text is written by hand here.

Nearly everything is read at scrape time from the live objects by one custom collector: calls
and legs of the call manager, the jitter buffers' counters, the SIP server's request and
response counts, the decode scheduler, the VAD, the record writer, admission, the WebRTC
gateway, the webhook outbox. The media path pays nothing for it beyond single counter
increments. The one measurement that needs events is the final latency (end of speech → row
committed in PostgreSQL): the Final's audio end is noted when the final is handed to storage,
the histogram is observed when the writer reports its commit.

Labels are bounded: call source, end status, SIP method (a fixed list, else "other"), status
class, engine name, refusal kind. Never a call, leg or session id.

Counters of things that end (calls, legs' RTP counters) are kept as totals by the call manager;
a leg's counters move from "read live" to the totals in one step, so no counter ever goes back.
"""

from __future__ import annotations

import logging
from collections import Counter

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from .admission import KINDS as REFUSAL_KINDS
from .media.leg import MediaLeg
from .store.writer import END_STATUSES

log = logging.getLogger(__name__)

# End of speech → stored: the floor is ~0.5 s (hangover, pacer chunk, playout delay, one decode).
LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
PENDING_FINALS = 10_000  # finals noted but not yet committed; beyond (a long outage), the oldest go unmeasured
# RTP counters of a leg (JitterStats / MediaLeg.stats keys) → metric name and help.
RTP = {
    "received": ("telephony_rtp_packets_received", "RTP packets received on legs (in sequence, late or duplicate)"),
    "lost": ("telephony_rtp_packets_lost", "RTP packets never received (sequence gaps)"),
    "late": ("telephony_rtp_packets_late", "RTP packets that arrived after their playout time (dropped)"),
    "duplicate": ("telephony_rtp_packets_duplicate", "RTP packets received twice (dropped)"),
    "reordered": ("telephony_rtp_packets_reordered", "RTP packets that arrived out of order and were put back"),
    "malformed": ("telephony_rtp_packets_malformed", "datagrams on RTP ports that are not RTP"),
    "foreign": ("telephony_rtp_packets_foreign", "datagrams from a source the call did not announce (dropped)"),
}


class FinalLatency:
    """``telephony_asr_final_latency_seconds{engine}``: end of speech → the final's row committed."""

    def __init__(self, registry: CollectorRegistry):
        self.histogram = Histogram("telephony_asr_final_latency_seconds",
                                   "End of speech (the utterance's last audio fed to ASR) to its final committed in "
                                   "PostgreSQL", ["engine"], buckets=LATENCY_BUCKETS, registry=registry)
        self._audio_end: dict[str, float] = {}  # utterance record id → monotonic end of its audio

    def on_final(self, record, final) -> None:
        """CallManager hook: a final handed to storage."""
        if final.audio_end_monotonic is None:
            return
        if len(self._audio_end) >= PENDING_FINALS:
            self._audio_end.pop(next(iter(self._audio_end)))
        self._audio_end[record.id] = final.audio_end_monotonic

    def on_commit(self, record, committed: float) -> None:
        """RecordWriter hook: an utterance's row committed (records replayed from the journal were not noted)."""
        end = self._audio_end.pop(record.id, None)
        if end is not None:
            self.histogram.labels(record.engine or "unknown").observe(max(0.0, committed - end))


def _engines(engine) -> list:
    """The embedded engines doing decodes: the service engine, or a streaming engine's fallback."""
    out = []
    for e in (engine, getattr(engine, "fallback", None)):
        if e is not None and getattr(e, "scheduler", None) is not None and e not in out:
            out.append(e)
    return out


class ServiceCollector:
    """Reads the service's live objects at each scrape (on the event loop, like everything it reads)."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        svc = self.service
        if svc.manager is None:
            return
        yield from self._calls(svc)
        if svc.sip is not None:
            yield from self._sip(svc.sip.uas)
        yield from self._asr(svc)
        if svc.admission is not None:
            yield from self._admission(svc.admission, svc.manager)
        if svc.runtime is not None and svc.runtime.writer is not None:
            yield from self._storage(svc.runtime.writer)
        if svc.gateway is not None:
            yield GaugeMetricFamily("telephony_webrtc_sessions", "WebRTC sessions (peer connections) open",
                                    value=svc.gateway.active)
            yield CounterMetricFamily("telephony_webrtc_sessions_refused", "WebRTC offers refused as busy (503)",
                                      value=svc.gateway.refused)
        if svc.runtime is not None and svc.runtime.webhooks is not None:
            yield from self._webhooks(svc.runtime.webhooks.stats())
        if svc.manager.recorder is not None:
            yield from self._recordings(svc)

    def _recordings(self, svc):
        rec = svc.manager.recorder
        yield CounterMetricFamily("telephony_recording_frames_dropped",
                                  "Audio blocks the recording writer had no room for (written as silence)",
                                  value=rec.dropped_frames)
        yield GaugeMetricFamily("telephony_recording_queue_frames", "Audio blocks waiting for the recording writer",
                                value=rec.queued)
        yield CounterMetricFamily("telephony_recordings_failed", "Leg recordings that could not be completed",
                                  value=svc.manager.recordings_failed)
        if svc.retention is not None:
            yield CounterMetricFamily("telephony_recordings_deleted", "Recordings deleted by retention",
                                      value=svc.retention.deleted)
        if svc.second_pass is not None:
            st = svc.second_pass.stats
            yield CounterMetricFamily("telephony_second_pass_legs", "Legs re-transcribed by the second pass",
                                      value=st["legs"])
            yield GaugeMetricFamily("telephony_second_pass_queue_calls", "Calls waiting for the second pass",
                                    value=st["queued"])

    def _faces(self, svc) -> list[str]:
        """Sources this service takes calls from: their series exist (at 0) before the first call."""
        return (["sip", "siprec"] if svc.sip is not None else []) + (["webrtc"] if svc.gateway is not None else [])

    def _calls(self, svc):
        m = svc.manager
        faces = self._faces(svc)
        calls, legs = Counter(dict.fromkeys(faces, 0)), Counter(dict.fromkeys(faces, 0))
        rtp = Counter({(f, k): 0 for f in faces for k in (*RTP, "silence_ms")})
        rtp.update(m.rtp_ended)
        for call in m.calls():
            source = call.record.source
            calls[source] += 1
            legs[source] += len(call.legs)
            for leg in call.legs:
                if leg.counted or not isinstance(leg.media, MediaLeg):
                    continue
                st = leg.media.jitter.stats
                for key in ("received", "lost", "late", "duplicate", "reordered", "malformed", "silence_ms"):
                    rtp[(source, key)] += getattr(st, key)
                rtp[(source, "foreign")] += leg.media.foreign
        yield GaugeMetricFamily("telephony_accepting_calls", "1 while new calls are taken, 0 while stopping",
                                value=1 if m.accepting else 0)
        active = GaugeMetricFamily("telephony_calls_active", "Calls in progress", labels=["source"])
        for source, n in sorted(calls.items()):
            active.add_metric([source], n)
        yield active
        active = GaugeMetricFamily("telephony_legs_active", "Speaker legs of the calls in progress", labels=["source"])
        for source, n in sorted(legs.items()):
            active.add_metric([source], n)
        yield active
        ended = Counter({(f, s): 0 for f in faces for s in END_STATUSES if s != "interrupted"})
        ended.update(m.calls_ended)
        total = CounterMetricFamily("telephony_calls", "Calls ended, by source and end status",
                                    labels=["source", "status"])
        for (source, status), n in sorted(ended.items()):
            total.add_metric([source, status], n)
        yield total
        for key, (name, help_) in RTP.items():
            family = CounterMetricFamily(name, help_, labels=["source"])
            for (source, k), n in sorted(rtp.items()):
                if k == key:
                    family.add_metric([source], n)
            yield family
        family = CounterMetricFamily("telephony_rtp_silence_inserted_seconds",
                                     "Silence the jitter buffers inserted for missing audio (loss, gaps, hold)",
                                     labels=["source"])
        for (source, k), n in sorted(rtp.items()):
            if k == "silence_ms":
                family.add_metric([source], n / 1000)
        yield family

    def _sip(self, uas):
        requests = CounterMetricFamily("telephony_sip_requests", "SIP requests received, by method",
                                       labels=["method"])
        for method, n in sorted(uas.requests.items()):
            requests.add_metric([method], n)
        yield requests
        responses = CounterMetricFamily("telephony_sip_responses",
                                        "SIP responses sent (not their retransmissions), by request method and "
                                        "status class", labels=["method", "code_class"])
        for (method, cls), n in sorted(uas.responses.items()):
            responses.add_metric([method, f"{cls}xx"], n)
        yield responses
        yield CounterMetricFamily("telephony_sip_malformed_messages", "SIP messages that could not be parsed",
                                  value=uas.counters["malformed"] + uas.counters["dropped"])
        yield GaugeMetricFamily("telephony_sip_dialogs", "SIP dialogs established", value=len(uas.dialogs))

    def _asr(self, svc):
        engine = svc.engine
        if engine is None:
            return
        yield GaugeMetricFamily("telephony_asr_backlog_finals", "Finals waiting for a decoder", value=engine.backlog())
        engines = _engines(engine)
        if not engines:
            return
        seconds = CounterMetricFamily("telephony_asr_decode_seconds",
                                      "Time the decode threads spent decoding (finals and partials)",
                                      labels=["engine"])
        decodes = CounterMetricFamily("telephony_asr_decodes", "Decodes run, finals and partials (drafts)",
                                      labels=["engine", "kind"])
        skipped = CounterMetricFamily("telephony_asr_partials_skipped",
                                      "Partials not decoded: finals waiting, or the partial budget spent",
                                      labels=["engine"])
        degraded = CounterMetricFamily("telephony_asr_degraded_finals",
                                       "Finals decoded greedily because the backlog was long", labels=["engine"])
        wait = GaugeMetricFamily("telephony_asr_backlog_seconds", "How long the oldest waiting final has waited",
                                 labels=["engine"])
        vad = Counter(scored=0, gated=0)
        for e in engines:
            s = e.scheduler.stats
            seconds.add_metric([e.name], s["busy_s"])
            decodes.add_metric([e.name, "final"], s["finals"])
            decodes.add_metric([e.name, "partial"], s["partials"])
            skipped.add_metric([e.name], s["partials_skipped"])
            degraded.add_metric([e.name], s["degraded_finals"])
            wait.add_metric([e.name], e.scheduler.oldest_wait_s())
            v = getattr(e, "vad", None)
            if v is not None:
                gated = v.windows_gated
                vad["scored"] += v.windows_seen - gated
                vad["gated"] += gated + v.windows_gated_inline
        yield from (seconds, decodes, skipped, degraded, wait)
        windows = CounterMetricFamily("telephony_vad_windows",
                                      "32 ms windows of leg audio: scored by the VAD model, or gated as silence "
                                      "by their energy without it", labels=["outcome"])
        for outcome in ("scored", "gated"):
            windows.add_metric([outcome], vad[outcome])
        yield windows

    def _admission(self, adm, manager):
        yield CounterMetricFamily("telephony_admission_admitted", "Calls or sessions admitted",
                                  value=adm.admitted)
        refused = CounterMetricFamily("telephony_admission_refused", "Calls or sessions refused, by reason",
                                      labels=["reason"])
        for kind in REFUSAL_KINDS:
            refused.add_metric([kind], adm.refused_kinds.get(kind, 0))
        yield refused
        yield GaugeMetricFamily("telephony_admission_talking_legs",
                                "Legs that count against the transcription capacity (sent audio recently)",
                                value=adm.talking_legs())
        yield GaugeMetricFamily("telephony_media_clock_lag_seconds",
                                "How late the shared 20 ms media clock runs (smoothed over ~1 s)",
                                value=manager.clock.lag)
        cap = adm.asr_capacity()
        if cap is not None:
            yield GaugeMetricFamily("telephony_asr_capacity_legs",
                                    "Talking legs the decoders keep up with (measured decode cost and speech share)",
                                    value=cap.legs)
            yield GaugeMetricFamily("telephony_asr_decode_cost_ratio",
                                    "Decode seconds per second of speech (measured, smoothed)",
                                    value=cap.cost_per_audio_s)
            yield GaugeMetricFamily("telephony_asr_speech_ratio", "Share of leg audio that is speech (measured)",
                                    value=cap.speech_ratio)

    def _storage(self, w):
        yield GaugeMetricFamily("telephony_database_up", "1 if PostgreSQL took the last write or probe, else 0",
                                value=1 if w.db_up else 0)
        yield GaugeMetricFamily("telephony_journal_pending_records",
                                "Records in the local journal not yet committed to PostgreSQL", value=w.pending)
        yield CounterMetricFamily("telephony_journal_rejected_records",
                                  "Records PostgreSQL refused for good (kept in the journal's rejected table)",
                                  value=w.rejected)
        yield GaugeMetricFamily("telephony_journal_rejected_held_records",
                                "Refused records held in the journal now, until sent back (POST /api/journal/rejected/retry)",
                                value=w.rejected_held)
        yield CounterMetricFamily("telephony_database_written_records", "Records committed to PostgreSQL",
                                  value=w.written)

    def _webhooks(self, s: dict):
        yield GaugeMetricFamily("telephony_webhooks_receivers", "Webhook receivers configured", value=s["endpoints"])
        yield GaugeMetricFamily("telephony_webhooks_pending_events", "Webhook events queued, not yet delivered",
                                value=s["pending"])
        yield GaugeMetricFamily("telephony_webhooks_dead_events", "Webhook events given up on (dead letters)",
                                value=s["dead"])
        yield GaugeMetricFamily("telephony_webhooks_failing_receivers", "Receivers whose last attempt failed",
                                value=s["failing"])
        yield CounterMetricFamily("telephony_webhooks_delivered", "Webhook events delivered by this process",
                                  value=s["delivered"])
        yield CounterMetricFamily("telephony_webhooks_failed_attempts", "Webhook delivery attempts that failed",
                                  value=s["failed_attempts"])


class Metrics:
    """The service's registry (its own, not the library's global one: several services may share a
    process in tests and benchmarks) and the HTTP faces that expose it."""

    def __init__(self, service):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.latency = FinalLatency(self.registry)
        engine = service.engine
        for e in (engine, getattr(engine, "fallback", None)):  # their series exist (empty) before the first final
            if e is not None and e.name != "none":
                self.latency.histogram.labels(e.name)
        self.registry.register(ServiceCollector(service))
        self._runner: web.AppRunner | None = None
        self.port = 0  # the own listener's port, once started

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics if the Accept header asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def handle(self, request: web.Request) -> web.Response:
        body, content_type = self.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def add_route(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.handle)

    async def listen(self, host: str, port: int) -> int:
        """Serve /metrics alone on a listener of its own (no token); returns the port bound."""
        app = web.Application()
        self.add_route(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, self.port)
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
