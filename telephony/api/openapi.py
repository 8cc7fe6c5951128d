"""The OpenAPI 3.1 description of every HTTP route, served at /openapi.json.

Written by hand next to the routes it describes; tests check that every
route the app registers is in it and that responses match its schemas.
"""

from __future__ import annotations

from .. import __version__ as VERSION
from ..store.writer import SOURCES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict:
    return _json(_ref("Error"), description)


_UUID = {"type": "string", "format": "uuid"}
_MOMENT = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
_NULLABLE_STR = {"type": ["string", "null"]}
_AUTH_ERRORS = {"401": _err("missing or invalid bearer token"),
                "403": _err("no token configured and the client is not on loopback, or the Origin is not allowed")}
_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": _UUID}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
    "Status": {"type": "object", "required": ["status", "accepting_calls", "active_calls", "database"],
               "properties": {"status": {"type": "string"}, "accepting_calls": {"type": "boolean"},
                              "active_calls": {"type": "integer"}, "database": {"enum": ["up", "down"]},
                              "active_legs": {"type": "integer"},
                              "journal_pending": {"type": "integer"}, "asr_backlog": {"type": "integer"},
                              "journal_rejected": {"type": "integer", "description": "records refused since start"},
                              "journal_rejected_held": {"type": "integer",
                                                        "description": "refused records held now (/api/journal/rejected)"},
                              "webhooks": {"type": ["object", "null"], "description": "null: no receivers configured",
                                           "properties": {"endpoints": {"type": "integer"},
                                                          "pending": {"type": "integer"}, "dead": {"type": "integer"},
                                                          "delivered": {"type": "integer"},
                                                          "failed_attempts": {"type": "integer"},
                                                          "failing": {"type": "integer",
                                                                      "description": "receivers now failing"}}},
                              "uptime_s": {"type": "number"}}},
    "WebhookDelivery": {
        "type": "object", "required": ["id", "message_id", "endpoint", "event_type", "state", "attempts"],
        "properties": {"id": _UUID, "message_id": {"type": "string", "description": "the webhook-id header"},
                       "endpoint": {"type": "string"}, "event_type": {"type": "string"},
                       "call_id": {"type": ["string", "null"]},
                       "state": {"enum": ["pending", "delivered", "dead"]}, "attempts": {"type": "integer"},
                       "created_at": {"type": "string"}, "resent_at": {"type": ["string", "null"]},
                       "dead_at": {"type": ["string", "null"]}, "delivered_at": {"type": ["string", "null"]},
                       "last_status": {"type": ["integer", "null"]}, "last_error": _NULLABLE_STR}},
    "RejectedRecord": {
        "type": "object", "required": ["seq", "rejected_at", "error", "type", "record"],
        "properties": {"seq": {"type": "integer", "description": "its number in the journal (for retry)"},
                       "rejected_at": {"type": "string", "format": "date-time"},
                       "error": {"type": "string", "description": "what PostgreSQL said"},
                       "type": {"type": ["string", "null"], "description": "CallRecord, LegRecord, UtteranceRecord, ..."},
                       "call_id": {"type": ["string", "null"]},
                       "record": {"type": "object", "description": "the record as journalled: {type, data}"}}},
    "CallSummary": {
        "type": "object", "required": ["id", "source", "started_at", "status"],
        "properties": {
            "id": _UUID, "source": {"enum": list(SOURCES)},
            "external_id": _NULLABLE_STR, "from_uri": _NULLABLE_STR, "to_uri": _NULLABLE_STR,
            "remote_addr": _NULLABLE_STR, "meta": {"type": "object"},
            "started_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
            "status": {"enum": ["active", "completed", "failed", "rejected"]},
            "legs": {"type": "integer"}, "utterances": {"type": "integer"},
            "matches": {"type": "integer", "description": "utterances matching q (only with q)"}}},
    "Leg": {
        "type": "object", "required": ["id", "ordinal", "speaker"],
        "properties": {
            "id": _UUID, "ordinal": {"type": "integer"}, "speaker": {"type": "string"}, "role": _NULLABLE_STR,
            "codec": _NULLABLE_STR, "sample_rate": {"type": ["integer", "null"]},
            "started_ms": {"type": "integer"}, "duration_ms": {"type": ["integer", "null"]},
            "ended_at": {"type": ["string", "null"]},
            **{k: {"type": ["integer", "null"]} for k in (
                "packets_received", "packets_lost", "packets_late", "packets_duplicate", "packets_reordered",
                "packets_malformed", "silence_ms")},
            "packets_foreign": {"type": ["integer", "null"],
                                "description": "datagrams from a source signalling did not announce (or failing SRTP): dropped"},
            "jitter_ms": {"type": ["number", "null"]}, "stats": {"type": ["object", "null"]},
            "meta": {"type": "object"},
            "recording": {"anyOf": [{"type": "null"}, {
                "type": "object", "description": "the leg's audio ([recordings] enabled); null: none, or deleted",
                "required": ["url", "format", "duration_ms"],
                "properties": {"url": {"type": "string"}, "format": {"enum": ["flac", "opus"]},
                               "sample_rate": {"type": "integer"}, "duration_ms": {"type": "integer"},
                               "bytes": {"type": "integer"}, "sha256": {"type": "string"}}}]}}},
    "Utterance": {
        "type": "object", "required": ["id", "leg_id", "speaker", "start_ms", "end_ms", "text"],
        "properties": {"line": {"type": "integer"}, "id": _UUID, "leg_id": _UUID, "speaker": {"type": "string"},
                       "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"},
                       "start_time": {"type": "string"}, "spoken_at": {"type": "string"},
                       "text": {"type": "string"}, "confidence": {"type": ["number", "null"]},
                       "revision": {"type": "integer", "description": "0: the live final; 1: the post-call second "
                                                                      "pass (the best revision of each leg is shown)"}}},
    "Caption": {
        "type": "object", "required": ["type"],
        "properties": {"type": {"enum": ["hello", "partial", "final", "call_start", "call_end"]},
                       "call_id": _NULLABLE_STR, "leg_id": _NULLABLE_STR, "speaker": _NULLABLE_STR,
                       "text": {"type": "string"}, "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"},
                       "confidence": {"type": ["number", "null"]}, "seq": {"type": ["integer", "null"]},
                       "live": {"type": "boolean"}, "replay": {"type": "boolean"}}},
    "TrackLabel": {
        "type": "object", "required": ["speaker"],
        "properties": {"mid": {"type": "string", "description": "transceiver mid of the track"},
                       "track_id": {"type": "string", "description": "or the track id (a=msid)"},
                       "speaker": {"type": "string", "minLength": 1, "maxLength": 64},
                       "role": {"type": "string", "minLength": 1, "maxLength": 64}}},
    "Offer": {
        "type": "object", "required": ["sdp"],
        "properties": {"type": {"const": "offer"}, "sdp": {"type": "string", "minLength": 1},
                       "tracks": {"type": "array", "items": _ref("TrackLabel")},
                       "external_id": {"type": "string", "maxLength": 200,
                                       "description": "the softphone's own call id, stored with the call"},
                       "meta": {"type": "object", "description": "free-form, at most 4 KiB as JSON"},
                       "engine": {"type": "string", "maxLength": 32,
                                  "description": "ASR engine for this session: [asr] engine, or one [webrtc] engines allows"}}},
    "Session": {
        "type": "object", "required": ["session_id", "state", "tracks"],
        "properties": {"session_id": {"type": "string"}, "call_id": _NULLABLE_STR,
                       "state": {"type": "string"}, "end_reason": _NULLABLE_STR,
                       "tracks": {"type": "array", "items": {"type": "object", "properties": {
                           "mid": _NULLABLE_STR, "leg_id": {"type": "string"}, "speaker": {"type": "string"},
                           "codec": {"type": "string"}, "packets": {"type": "integer"},
                           "jitter": {"type": "object", "description": "the leg's jitter-buffer counters so far"}}}}}},
}
SCHEMAS["Call"] = {"allOf": [_ref("CallSummary"), {"type": "object", "properties": {
    "legs": {"type": "array", "items": _ref("Leg")},
    "utterances": {"type": "array", "items": _ref("Utterance")}}}]}
SCHEMAS["Answer"] = {"allOf": [_ref("Session"), {"type": "object", "required": ["type", "sdp", "location"],
                                                 "properties": {"type": {"const": "answer"}, "sdp": {"type": "string"},
                                                                "location": {"type": "string"},
                                                                "captions": {"type": "string"}}}]}

_FEED = {
    "description": "Caption events as Server-Sent Events (Accept: text/event-stream; `event:` is the type, "
                   "`data:` a Caption) or a WebSocket (Upgrade: websocket; each text message a Caption). "
                   "The first event is `hello`. Browsers may pass the token as `access_token`.",
    "parameters": [{"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"}}],
    "responses": {"101": {"description": "WebSocket upgrade"},
                  "200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                  "406": _err("neither a WebSocket upgrade nor Accept: text/event-stream"),
                  "503": _err("caption feed limit reached"), **_AUTH_ERRORS},
}

PATHS = {
    "/health": {"get": {"summary": "Liveness (with database and backlog status)", "security": [],
                        "responses": {"200": _json(_ref("Status"), "alive")}}},
    "/ready": {"get": {"summary": "Readiness: accepting calls and database up", "security": [],
                       "responses": {"200": _json(_ref("Status"), "ready"), "503": _json(_ref("Status"), "not ready")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4; OpenMetrics when Accept asks for it)",
                         "description": "Names and labels: README, Metrics. Absent with `[metrics] enabled = false`.",
                         "responses": {"200": {"description": "the exposition",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}},
                                       **_AUTH_ERRORS}}},
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": {"description": "OpenAPI 3.1",
                                                    "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/webrtc/sessions": {
        "post": {
            "summary": "Start a WebRTC session (WHIP-style): SDP offer in, SDP answer out",
            "description": "Every audio m-line that sends becomes one leg of a new call, labelled by the client "
                           "per transceiver mid or track id (application/sdp: `?speaker=<mid>:<label>`, repeatable). "
                           "Opus is preferred (decoded at 16 kHz), then G.722, PCMU, PCMA ([webrtc] codecs); "
                           "the answer names one codec per track. "
                           "ICE is not trickled: "
                           "send the offer with its candidates gathered.",
            "parameters": [
                {"name": "speaker", "in": "query", "required": False, "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:.+$"}},
                 "description": "<mid or track id>:<speaker label> (application/sdp bodies)"},
                {"name": "external_id", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                {"name": "engine", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 32},
                 "description": "ASR engine for this session: [asr] engine, or one [webrtc] engines allows"}],
            "requestBody": {"required": True, "content": {
                "application/sdp": {"schema": {"type": "string"}},
                "application/json": {"schema": _ref("Offer")}}},
            "responses": {
                "201": {"description": "answer; Location names the session (DELETE it to hang up)",
                        "headers": {"Location": {"schema": {"type": "string"}},
                                    "X-Call-Id": {"schema": _UUID}, "X-Session-Id": {"schema": {"type": "string"}}},
                        "content": {"application/sdp": {"schema": {"type": "string"}},
                                    "application/json": {"schema": _ref("Answer")}}},
                "400": _err("not SDP, malformed SDP or JSON, missing ICE/DTLS attributes, bad labels"),
                "413": _err("body too large"),
                "415": _err("content type is neither application/sdp nor application/json"),
                "422": _err("no usable audio (SIP 488 Not Acceptable Here): nothing sent to us, no common codec, "
                            "too many tracks"),
                "503": _err("session limit reached or shutting down (Retry-After)"), **_AUTH_ERRORS}},
        "get": {"summary": "Live WebRTC sessions",
                "responses": {"200": _json({"type": "object", "properties": {
                    "sessions": {"type": "array", "items": _ref("Session")},
                    "max_sessions": {"type": "integer"}}}, "sessions"), **_AUTH_ERRORS}}},
    "/webrtc/sessions/{session_id}": {
        "parameters": [_SESSION_ID],
        "get": {"summary": "One live session",
                "responses": {"200": _json(_ref("Session"), "session"), "404": _err("no live session"), **_AUTH_ERRORS}},
        "delete": {"summary": "End the session: the call ends and every final is stored",
                   "responses": {"200": _json(_ref("Session"), "ended"), "404": _err("no live session"),
                                 **_AUTH_ERRORS}}},
    "/api/calls": {"get": {
        "summary": "Stored calls, newest first (any source)",
        "parameters": [
            {"name": "since", "in": "query", "schema": _MOMENT,
             "description": "calls started at or after (RFC 3339 date-time, or a date: midnight UTC)"},
            {"name": "until", "in": "query", "schema": _MOMENT, "description": "calls started before"},
            {"name": "source", "in": "query", "schema": {"enum": list(SOURCES)}},
            {"name": "q", "in": "query", "schema": {"type": "string"},
             "description": "full-text search on utterances (web search syntax: \"exact words\", -not, or)"},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}],
        "responses": {"200": _json({"type": "object", "required": ["calls", "count"], "properties": {
            "calls": {"type": "array", "items": _ref("CallSummary")}, "count": {"type": "integer"}}}, "calls"),
            "400": _err("bad filter"), "503": _err("database unavailable"), **_AUTH_ERRORS}}},
    "/api/calls/live": {"get": {
        "summary": "Calls in progress in this service",
        "responses": {"200": _json({"type": "object", "required": ["calls", "count"], "properties": {
            "calls": {"type": "array", "items": {"type": "object"}}, "count": {"type": "integer"}}}, "live calls"),
            **_AUTH_ERRORS}}},
    "/api/calls/{call_id}": {"get": {
        "summary": "One call with its legs (jitter counters) and utterances",
        "parameters": [_CALL_ID],
        "responses": {"200": _json(_ref("Call"), "the call"), "400": _err("not a UUID"), "404": _err("no such call"),
                      "503": _err("database unavailable"), **_AUTH_ERRORS}}},
    "/api/calls/{call_id}/transcript": {"get": {
        "summary": "The call's transcript as JSON, plain text or WebVTT",
        "parameters": [_CALL_ID, {"name": "format", "in": "query", "schema": {"enum": ["json", "text", "vtt"]},
                                  "description": "default: from Accept (text/vtt, text/plain), else json"}],
        "responses": {"200": {"description": "transcript", "content": {
            "application/json": {"schema": {"type": "object", "properties": {
                "call": {"type": "object"}, "utterances": {"type": "array", "items": _ref("Utterance")}}}},
            "text/plain": {"schema": {"type": "string"}}, "text/vtt": {"schema": {"type": "string"}}}},
            "400": _err("bad call id or format"), "404": _err("no such call"), "503": _err("database unavailable"),
            **_AUTH_ERRORS}}},
    "/api/calls/{call_id}/legs/{leg_id}/recording": {"get": {
        "summary": "The leg's audio as recorded (FLAC or Ogg/Opus), at the leg's own rate, aligned to its transcript",
        "description": "Byte ranges (Range: bytes=...) answer 206 Partial Content. Offset 0 of the audio is the "
                       "leg's `started_ms` in the call: an utterance starts at `start_ms - started_ms` in the file.",
        "parameters": [_CALL_ID, {"name": "leg_id", "in": "path", "required": True, "schema": _UUID}],
        "responses": {"200": {"description": "the file", "content": {"audio/flac": {"schema": {"type": "string", "format": "binary"}},
                                                                     "audio/ogg": {"schema": {"type": "string", "format": "binary"}}}},
                      "206": {"description": "the requested byte range",
                              "content": {"audio/flac": {"schema": {"type": "string", "format": "binary"}},
                                          "audio/ogg": {"schema": {"type": "string", "format": "binary"}}}},
                      "400": _err("not a UUID"), "404": _err("no recording of this leg (or not on this instance)"),
                      "410": _err("deleted by retention"), "416": {"description": "range not satisfiable"},
                      "503": _err("database unavailable"), **_AUTH_ERRORS}}},
    "/api/webhooks/dead": {"get": {
        "summary": "Webhook events given up on (dead letters), newest first",
        "parameters": [{"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
        "responses": {"200": _json({"type": "object", "required": ["dead", "count"], "properties": {
            "dead": {"type": "array", "items": _ref("WebhookDelivery")}, "count": {"type": "integer"}}}, "dead letters"),
            "400": _err("bad limit"), "503": _err("database unavailable"), **_AUTH_ERRORS}}},
    "/api/webhooks/{delivery_id}/resend": {"post": {
        "summary": "Send a dead (or delivered) webhook event again: due now, same webhook-id, fresh retry horizon",
        "parameters": [{"name": "delivery_id", "in": "path", "required": True, "schema": _UUID}],
        "responses": {"202": _json(_ref("WebhookDelivery"), "queued again"), "400": _err("not a UUID"),
                      "404": _err("no such delivery, or it is still pending"), "503": _err("database unavailable"),
                      **_AUTH_ERRORS}}},
    "/api/journal/rejected": {"get": {
        "summary": "Records PostgreSQL refused for good (a constraint or data error), kept in the local journal, oldest first",
        "parameters": [{"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
        "responses": {"200": _json({"type": "object", "required": ["rejected", "count"], "properties": {
            "rejected": {"type": "array", "items": _ref("RejectedRecord")},
            "count": {"type": "integer", "description": "records held (all of them, not only those listed)"}}},
            "refused records"), "400": _err("bad limit"), **_AUTH_ERRORS}}},
    "/api/journal/rejected/retry": {"post": {
        "summary": "Send refused records back to the writer (after fixing the cause); refused again, they come back here",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["seqs"], "additionalProperties": False,
             "properties": {"seqs": {"type": "array", "minItems": 1, "maxItems": 1000,
                                     "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}}},
            {"type": "object", "required": ["all"], "additionalProperties": False,
             "properties": {"all": {"const": True}}}]}}}},
        "responses": {"200": _json({"type": "object", "required": ["requeued", "count", "not_found"], "properties": {
            "requeued": {"type": "array", "items": {"type": "integer"}}, "count": {"type": "integer"},
            "not_found": {"type": "array", "items": {"type": "integer"}}}}, "sent back"),
            "400": _err("not a seq list or {all: true}"), "413": _err("body too large"), **_AUTH_ERRORS}}},
    "/ingest/rtp": {"post": {
        "summary": "Open RTP ports for a call whose audio comes as bare RTP (Asterisk ARI externalMedia, encapsulation=rtp)",
        "description": "One port per leg; give each leg's `external_host` to externalMedia. RTP is taken only from "
                       "`source` (default: this request's address). A leg ends after [sip] media_timeout_s without RTP; "
                       "the call with its last leg, or with DELETE.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["legs"], "additionalProperties": False, "properties": {
                "legs": {"type": "array", "minItems": 1, "maxItems": 8, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "speaker": {"type": "string", "minLength": 1, "maxLength": 100},
                        "format": {"enum": ["ulaw", "alaw", "g722", "opus", "slin", "slin12", "slin16", "slin24",
                                            "slin32", "slin44", "slin48", "slin96", "slin192"]}}}},
                "source": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                           "not": {"anyOf": [{"const": "0.0.0.0"}, {"pattern": "^[0:]+$"}]},
                           "description": "the IP address the RTP comes from"},
                "external_id": {"type": "string", "minLength": 1, "maxLength": 256},
                "meta": {"type": "object", "maxProperties": 50}}}}}},
        "responses": {"201": _json({"type": "object", "required": ["call_id", "source", "legs"], "properties": {
            "call_id": _UUID, "source": {"type": "string"},
            "legs": {"type": "array", "items": {"type": "object", "required": ["id", "speaker", "format", "host", "port",
                                                                              "external_host"], "properties": {
                "id": _UUID, "speaker": {"type": "string"}, "format": {"type": "string"},
                "payload_type": {"type": "integer"}, "host": {"type": "string"}, "port": {"type": "integer"},
                "external_host": {"type": "string"}}}}}}, "the call and its legs' RTP ports"),
            "400": _err("not a valid session"), "413": _err("body too large"),
            "503": _err("at capacity, or no RTP port free (Retry-After)"), **_AUTH_ERRORS}}},
    "/ingest/rtp/{call_id}": {"delete": {
        "summary": "End an RTP fork's call now (what it received is transcribed and stored)",
        "parameters": [_CALL_ID],
        "responses": {"200": _json({"type": "object", "required": ["call_id", "status"], "properties": {
            "call_id": _UUID, "status": {"enum": ["completed", "failed"]}}}, "ended"),
            "400": _err("not a UUID"), "404": _err("no open RTP fork with this id"), **_AUTH_ERRORS}}},
    "/api/captions": {"get": {"summary": "Live captions of every call", **_FEED}},
    "/api/calls/{call_id}/captions": {"get": {
        "summary": "Live captions of one call (replays its finals so far; ends after call_end)",
        **{**_FEED, "parameters": [_CALL_ID, *_FEED["parameters"]],
           "responses": {**_FEED["responses"], "400": _err("not a UUID"), "404": _err("no such call")}}}},
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telephony transcription service", "version": VERSION,
                 "description": "Calls from SIP, SIPREC and WebRTC, transcribed per speaker leg; live captions; "
                                "stored transcripts. Authentication: `Authorization: Bearer <token>` when api.tokens "
                                "is set; with no tokens, loopback clients only."},
        "servers": [{"url": "/"}],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        # Bearer when api.tokens is set; nothing for loopback clients when it is not.
        "security": [{"bearer": []}, {}],
    }
