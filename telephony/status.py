"""``telephony status``: the running service, as its own ``/health``, live-call list and
``/metrics`` describe it.

Reads only what the service publishes over HTTP, so it works from any machine that
can reach it, and says so in one line when nothing answers. ``/metrics`` adds totals since
start (finals and their latency, RTP quality, admission); it is read with prometheus-client's
parser and left out when the service does not let us read it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT_S = 5.0


class ServiceUnreachable(RuntimeError):
    """Nothing (or not the telephony service) answers at the address; the message is one line."""


async def fetch_status(url: str, token: str | None = None) -> dict:
    """``/health`` of the service at ``url``, plus ``live_calls`` when ``/api/calls/live`` lets us read it."""
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with _session(url) as http:
        async with http.get(f"{url}/health") as r:
            if r.status != 200 or r.content_type != "application/json":
                raise ServiceUnreachable(f"{url} answered HTTP {r.status} on /health: not the telephony service?")
            status = await r.json()
        async with http.get(f"{url}/api/calls/live", headers=headers) as r:
            status["live_calls"] = (await r.json())["calls"] if r.status == 200 else None
        async with http.get(f"{url}/metrics", headers=headers) as r:
            status["metrics"] = _metrics(await r.text()) if r.status == 200 else None
    status["url"] = url
    return status


async def call_api(url: str, method: str, path: str, token: str | None = None, payload=None) -> dict:
    """One JSON request to the running service's API; ServiceUnreachable (one line) when it fails."""
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with _session(url) as http:
        async with http.request(method, url + path, json=payload, headers=headers) as r:
            body = await r.json(content_type=None) if r.content_type == "application/json" else None
            if r.status >= 400 or not isinstance(body, dict):
                why = body.get("message") if isinstance(body, dict) else f"HTTP {r.status}"
                raise ServiceUnreachable(f"{method} {url}{path}: {r.status} {why}")
            return body


@asynccontextmanager
async def _session(url: str):
    """An HTTP session to the service at ``url``; failing to reach it is one ServiceUnreachable line."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            yield http
    except aiohttp.InvalidURL:
        raise ServiceUnreachable(f"not an HTTP address: {url!r}") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = "no answer within 5 s" if isinstance(exc, TimeoutError) else (
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ServiceUnreachable(f"the service is not running at {url} ({reason})") from None


def summarise_metrics(exposition: str) -> dict:
    """Totals since start from a /metrics scrape, summed over sources and engines."""
    samples = [s for family in text_string_to_metric_families(exposition) for s in family.samples]

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == name)

    buckets: dict[float, float] = {}
    for s in samples:
        if s.name == "telephony_asr_final_latency_seconds_bucket":
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
    finals = int(total("telephony_asr_final_latency_seconds_count"))

    def bound(q: float) -> str | None:  # the histogram bucket the q-quantile falls in
        if not finals:
            return None
        le = next(le for le, n in sorted(buckets.items()) if n >= q * finals)
        return f"≤ {le:g} s" if le != float("inf") else f"> {max(b for b in buckets if b != le):g} s"

    refused = {s.labels["reason"]: int(s.value) for s in samples
               if s.name == "telephony_admission_refused_total" and s.value}
    return {"finals": finals, "latency_p50": bound(0.5), "latency_p95": bound(0.95),
            "rtp_received": int(total("telephony_rtp_packets_received_total")),
            "rtp_lost": int(total("telephony_rtp_packets_lost_total")),
            "rtp_late": int(total("telephony_rtp_packets_late_total")),
            "admitted": int(total("telephony_admission_admitted_total")), "refused": refused}


def _metrics(exposition: str) -> dict | None:
    try:
        return summarise_metrics(exposition)
    except (ValueError, KeyError):  # not what this version of the service exposes: leave it out
        return None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def render_status(s: dict) -> str:
    lines = [f"telephony at {s['url']}: up {_duration(s.get('uptime_s', 0))}, "
             + ("accepting calls" if s.get("accepting_calls") else "NOT accepting calls (stopping)")]
    lines.append(f"calls     {s.get('active_calls', 0)} live, {s.get('active_legs', 0)} leg(s)")
    lines.append(f"asr       backlog {s.get('asr_backlog', 0)}")
    lines.append(f"database  {s.get('database')}; journal {s.get('journal_pending', 0)} pending"
                 f", {s.get('journal_rejected', 0)} refused since start"
                 + (f", {s['journal_rejected_held']} held (`telephony journal rejected`)"
                    if s.get("journal_rejected_held") else ""))
    hooks = s.get("webhooks")
    if hooks is None:
        lines.append("webhooks  none configured")
    else:
        line = (f"webhooks  {hooks['endpoints']} receiver(s): {hooks['pending']} pending, {hooks['dead']} dead, "
                f"{hooks['delivered']} delivered since start")
        if hooks.get("failing"):
            line += f"; {hooks['failing']} receiver(s) failing (see the service log)"
        if hooks["dead"]:
            line += " (telephony webhooks dead)"
        lines.append(line)
    m = s.get("metrics")
    if m:
        if m["finals"]:
            lines.append(f"finals    {m['finals']} stored since start; end of speech → stored: "
                         f"p50 {m['latency_p50']}, p95 {m['latency_p95']}")
        expected = m["rtp_received"] + m["rtp_lost"]
        if expected:
            lines.append(f"media     {m['rtp_received']} RTP packets received since start, "
                         f"{100 * m['rtp_lost'] / expected:.1f} % lost, {100 * m['rtp_late'] / expected:.1f} % late")
        refused = ", ".join(f"{reason} {n}" for reason, n in sorted(m["refused"].items()))
        lines.append(f"admission {m['admitted']} admitted, {sum(m['refused'].values())} refused since start"
                     + (f" ({refused})" if refused else ""))
    now = datetime.now(timezone.utc)
    for call in s.get("live_calls") or []:
        try:
            age = (now - datetime.fromisoformat(call["started_at"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            age = 0
        speakers = ", ".join(leg["speaker"] for leg in call.get("legs", []))
        lines.append(f"  {call['id']}  {call['source']:7} {_duration(age):>8}  {len(call.get('legs', []))} leg(s)"
                     + (f" ({speakers})" if speakers else ""))
    return "\n".join(lines)
