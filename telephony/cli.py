"""The ``telephony`` command line.

Errors a user can fix (bad input, bad config, database unreachable, model
missing) print one line on stderr and exit non-zero; ``--debug`` shows the
traceback of anything unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from . import logs
from .config import ConfigError, load_settings

EXIT_USAGE, EXIT_INPUT, EXIT_FAILURE = 2, 3, 1


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _user_errors() -> tuple[type[BaseException], ...]:
    from .asr.models import ModelError
    from .formats import FormatError
    from .media.codecs import CodecError
    from .ingest import IngestError
    from .store.database import DatabaseError
    from .store.journal import JournalError
    from .store.queries import CallNotFound, InvalidQuery
    from .status import ServiceUnreachable
    from .store.writer import WriterClosed
    from .second_pass import NoRecording

    return (ConfigError, ModelError, IngestError, DatabaseError, CodecError, FormatError, JournalError,
            CallNotFound, InvalidQuery, WriterClosed, ServiceUnreachable, NoRecording)


# -- commands ---------------------------------------------------------------

async def cmd_serve(args, settings) -> int:
    from .service import serve

    await serve(settings)
    return 0


async def cmd_transcribe(args, settings) -> int:
    from tqdm import tqdm

    from .batch import transcribe_call
    from .formats import render
    from .ingest import load_call
    from .runtime import Runtime

    calls = [load_call(path) for path in args.files]  # every file is checked before work starts
    total_s = sum(c.duration_ms / 1000 * len(c.legs) for c in calls)
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and total_s > 30)
    async with Runtime(settings) as rt:
        with tqdm(total=round(total_s, 1), unit="s audio", disable=not show, file=sys.stderr, leave=False) as bar:
            for call in calls:
                result = await transcribe_call(call, settings, rt.engine, rt.writer, progress=bar.update)
                rows = [{"speaker": u.speaker, "start_ms": u.start_ms, "end_ms": u.end_ms, "text": u.text,
                         "confidence": u.confidence} for u in result.utterances()]
                if args.format == "text" and len(calls) > 1:
                    print(f"== {call.path} (call {result.record.id})")
                print(render(rows, args.format, call={"id": result.record.id, "source": "file", "external_id": call.path}))
                if args.format == "text":
                    print(f"-- call {result.record.id}: {len(call.legs)} legs, {len(rows)} utterances", file=sys.stderr)
    return 0


async def cmd_replay(args, settings) -> int:
    from .replay import replay_file

    await replay_file(args.file, settings, speed=args.speed)
    return 0


async def _query_engine(settings):
    from sqlalchemy.ext.asyncio import create_async_engine

    from .store.database import resolve_database_url

    return create_async_engine(await resolve_database_url(settings))


async def cmd_calls(args, settings) -> int:
    from .store.queries import list_calls

    engine = await _query_engine(settings)
    try:
        rows = await list_calls(engine, source=args.source, phrase=args.phrase, limit=args.limit,
                                since=_parse_time(args.since), until=_parse_time(args.until))
    finally:
        await engine.dispose()
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(f"{'call id':36}  {'started':19}  {'source':7}  {'status':9}  {'legs':>4}  {'utts':>4}  from")
    for r in rows:
        print(f"{str(r['id']):36}  {str(r['started_at'])[:19]:19}  {r['source']:7}  {r['status']:9}  "
              f"{r.get('legs', ''):>4}  {r.get('utterances', ''):>4}  {r.get('from_uri') or r.get('external_id') or ''}")
    return 0


async def cmd_transcript(args, settings) -> int:
    from .formats import render
    from .store.queries import transcript

    engine = await _query_engine(settings)
    try:
        rows = await transcript(engine, args.call_id)
    finally:
        await engine.dispose()
    print(render(rows, args.format, call={"id": args.call_id}))
    return 0


async def cmd_retranscribe(args, settings) -> int:
    from .second_pass import retranscribe
    from .store.queries import parse_call_id

    if bool(args.call_id) == bool(args.since):
        raise CliError("give a CALL_ID or --since ISO (not both)", EXIT_USAGE)
    if args.call_id:
        ids = [str(parse_call_id(args.call_id))]
    else:
        from datetime import timezone

        from sqlalchemy import text

        since = _parse_time(args.since)
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)  # a bare time means UTC
        engine = await _query_engine(settings)
        try:
            async with engine.connect() as conn:  # calls with a recording still on disk
                ids = [str(r.call_id) for r in (await conn.execute(text(
                    "SELECT DISTINCT r.call_id, c.started_at FROM recordings r JOIN calls c ON c.id = r.call_id"
                    " WHERE c.started_at >= :since AND c.ended_at IS NOT NULL AND r.deleted_at IS NULL"
                    " ORDER BY c.started_at"),
                    {"since": since})).all()]
        finally:
            await engine.dispose()
        if not ids:
            raise CliError(f"no ended call with a recording since {args.since}", EXIT_INPUT)
    await retranscribe(settings, ids, model=args.model, redo=args.redo)
    return 0


async def cmd_db(args, settings) -> int:
    from .store.database import resolve_database_url, stop_embedded
    from .store.migrate import current_revision, upgrade_async

    url = await resolve_database_url(settings)
    try:
        if args.action == "upgrade":
            await upgrade_async(url)
        print(f"database at revision {await asyncio.to_thread(current_revision, url)}")
    finally:
        if not settings.database.url:
            stop_embedded()
    return 0


async def cmd_bench(args, settings) -> int:
    if args.target != "core":  # each endpoint load has its own module and options (bench/<target>.py main)
        import importlib

        bench = importlib.import_module(f".bench.{args.target}", __package__)
        await asyncio.to_thread(bench.main, args.extra)
        return 0
    if args.extra:
        raise CliError(f"unrecognized arguments: {' '.join(args.extra)}", EXIT_USAGE)
    from .bench.core import run_bench
    from .config import WebhookSettings

    settings.webhooks = WebhookSettings()  # benchmark calls are not calls to tell a CRM about

    await run_bench(settings, args)
    return 0


async def cmd_webhooks(args, settings) -> int:
    from .webhooks import outbox

    if args.action == "resend" and bool(args.ids) == bool(args.all):
        raise CliError("give either delivery ids (as `telephony webhooks dead` lists them) or --all", EXIT_USAGE)
    if args.action == "dead" and (args.ids or args.all):
        raise CliError("`webhooks dead` takes no ids (did you mean `webhooks resend`?)", EXIT_USAGE)
    if not 1 <= args.limit <= 10000:
        raise CliError(f"--limit must be within 1..10000, got {args.limit}", EXIT_USAGE)
    engine = await _query_engine(settings)
    try:
        if args.action == "dead":
            rows = await outbox.dead_letters(engine, args.limit)
            if args.json:
                print(json.dumps(rows, default=str, indent=2))
                return 0
            print(f"{'delivery id':36}  {'dead since':19}  {'event':15}  {'tries':>5}  {'endpoint':30}  last error")
            for r in rows:
                print(f"{r['id']:36}  {str(r['dead_at'])[:19]:19}  {r['event_type']:15}  {r['attempts']:>5}  "
                      f"{r['endpoint'][:30]:30}  {r['last_error'] or ''}")
            print(f"{len(rows)} dead letter(s)" + ("; `telephony webhooks resend --all` sends them again" if rows else ""),
                  file=sys.stderr)
        elif args.all:
            print(f"{await outbox.resend_all_dead(engine)} dead letter(s) queued again")
        else:
            for delivery_id in args.ids:
                row = await outbox.resend(engine, delivery_id)
                print(f"{row['id']}  {row['event_type']} {row['message_id']} to {row['endpoint']}: queued again")
    except outbox.BadId as exc:
        raise CliError(str(exc), EXIT_INPUT) from None
    except outbox.NotFound as exc:
        raise CliError(str(exc), EXIT_INPUT) from None
    finally:
        await engine.dispose()
    return 0


def _service_url(settings, url: str | None = None) -> str:
    host = settings.service.http_host
    if host in ("", "0.0.0.0", "::"):  # bound to every address: ask it on loopback
        host = "127.0.0.1"
    return url or f"http://{host if ':' not in host else f'[{host}]'}:{settings.service.http_port}"


async def cmd_journal(args, settings) -> int:
    """Refused records: straight from the journal file when the service is stopped, else through
    the running service's API (it holds the journal's lock)."""
    from .api.journal import MAX_LIMIT, rejected_entry
    from .store.journal import JOURNAL_FILE, Journal, JournalInUse

    if args.action == "retry" and bool(args.seqs) == bool(args.all):
        raise CliError("give either seqs (as `telephony journal rejected` lists them) or --all", EXIT_USAGE)
    if args.action == "rejected" and (args.seqs or args.all):
        raise CliError("`journal rejected` takes no seqs (did you mean `journal retry`?)", EXIT_USAGE)
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CliError(f"--limit must be within 1..{MAX_LIMIT}, got {args.limit}", EXIT_USAGE)
    seqs = None if args.all else args.seqs
    path = settings.data_dir / JOURNAL_FILE
    journal = None
    if args.url is None:
        if not path.exists():
            print(f"no journal at {path}: nothing was ever refused", file=sys.stderr)
            return 0
        try:
            journal = Journal(path)
        except JournalInUse:
            journal = None  # the service runs: ask it
    if journal is not None:
        try:
            if args.action == "rejected":
                rows = [rejected_entry(*r) for r in journal.rejected_rows(args.limit)]
                held = journal.rejected_count()
            else:
                found = journal.requeue(seqs)
        finally:
            journal.close()
        if args.action == "retry":
            _print_requeued(found, seqs, "the service stores them when it next starts")
            return 0
    else:
        from .status import call_api

        url, token = _service_url(settings, args.url), (settings.api.tokens or [None])[0]
        if args.action == "rejected":
            body = await call_api(url, "GET", f"/api/journal/rejected?limit={args.limit}", token)
            rows, held = body["rejected"], body["count"]
        else:
            body = await call_api(url, "POST", "/api/journal/rejected/retry", token,
                                  {"all": True} if seqs is None else {"seqs": seqs})
            _print_requeued(body["requeued"], seqs, "the running service is storing them")
            return 0
    if args.json:
        print(json.dumps({"rejected": rows, "count": held}, indent=2, default=str))
        return 0
    print(f"{'seq':>8}  {'refused at':19}  {'record':16}  {'call id':36}  error")
    for r in rows:
        print(f"{r['seq']:>8}  {r['rejected_at'][:19]:19}  {str(r['type'])[:16]:16}  {str(r['call_id'] or '')[:36]:36}  "
              f"{r['error'].splitlines()[0][:160] if r['error'] else ''}")
    print(f"{held} refused record(s) held" + ("; fix the cause, then `telephony journal retry --all`" if held else ""),
          file=sys.stderr)
    return 0


def _print_requeued(found: list[int], asked: list[int] | None, where: str) -> None:
    print(f"{len(found)} record(s) sent back to the writer; {where}")
    missing = sorted(set(asked or []) - set(found))
    if missing:
        raise CliError(f"not among the refused records: {', '.join(map(str, missing))}", EXIT_INPUT)


async def cmd_status(args, settings) -> int:
    from .status import fetch_status, render_status

    url = _service_url(settings, args.url)
    status = await fetch_status(url, token=(settings.api.tokens or [None])[0])
    print(json.dumps(status, indent=2, default=str) if args.json else render_status(status))
    return 0


def _parse_time(value):
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"bad time {value!r}: use ISO 8601, e.g. 2026-11-23 or 2026-11-23T14:00", EXIT_USAGE) from None


# -- parser -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telephony", description="Telephony call transcription service.")
    p.add_argument("--config", help="TOML settings file (default: $TELEPHONY_CONFIG, else built-in defaults)")
    p.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the service (HTTP, SIP, WebRTC)").set_defaults(func=cmd_serve)

    t = sub.add_parser("transcribe", help="transcribe WAV, raw ulaw/alaw, or pcap/pcapng files as fast as possible")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("--format", choices=["text", "json", "vtt"], default="text")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal, for long work)")
    t.set_defaults(func=cmd_transcribe)

    r = sub.add_parser("replay", help="stream a file through the real-time pipeline as a live call")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_replay)

    c = sub.add_parser("calls", help="list stored calls")
    c.add_argument("--source", choices=["sip", "siprec", "webrtc", "file"])
    c.add_argument("--phrase", help="only calls whose transcript matches (full-text search)")
    c.add_argument("--since")
    c.add_argument("--until")
    c.add_argument("--limit", type=int, default=50)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calls)

    tr = sub.add_parser("transcript", help="print one call's transcript")
    tr.add_argument("call_id")
    tr.add_argument("--format", choices=["text", "json", "vtt"], default="text")
    tr.set_defaults(func=cmd_transcript)

    rt = sub.add_parser("retranscribe", help="re-transcribe recorded calls with the second-pass model (revision 1)",
                        description="telephony retranscribe CALL_ID | --since ISO")
    rt.add_argument("call_id", nargs="?", metavar="CALL_ID")
    rt.add_argument("--since", help="every ended call with a recording started at or after this time (ISO 8601)")
    rt.add_argument("--model", help="Whisper model (default: [second_pass] model)")
    rt.add_argument("--redo", action="store_true", help="decode legs again that already have a second-pass revision")
    rt.set_defaults(func=cmd_retranscribe)

    st = sub.add_parser("status", help="what the running service is doing (reads its /health and /metrics)")
    st.add_argument("--url", help="the service's HTTP address (default: from service.http_host/http_port)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    w = sub.add_parser("webhooks", help="webhook dead letters: list, resend; make a signing secret",
                       description="telephony webhooks dead | resend ID... | resend --all | secret")
    w.add_argument("action", choices=["dead", "resend", "secret"])
    w.add_argument("ids", nargs="*", metavar="ID", help="delivery ids (resend)")
    w.add_argument("--all", action="store_true", help="resend every dead letter")
    w.add_argument("--limit", type=int, default=100, help="dead: how many, newest first")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_webhooks)

    j = sub.add_parser("journal", help="records PostgreSQL refused for good (kept in the journal): list, retry",
                       description="telephony journal rejected | retry SEQ... | retry --all. Works on the journal "
                                   "file when the service is stopped, through its API when it runs.")
    j.add_argument("action", choices=["rejected", "retry"])
    j.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="journal seqs (retry)")
    j.add_argument("--all", action="store_true", help="retry every refused record")
    j.add_argument("--limit", type=int, default=100, help="rejected: how many, oldest first")
    j.add_argument("--json", action="store_true")
    j.add_argument("--url", help="the running service's HTTP address (default: from service.http_host/http_port)")
    j.set_defaults(func=cmd_journal)

    d = sub.add_parser("db", help="database schema")
    d.add_argument("action", choices=["upgrade", "current"])
    d.set_defaults(func=cmd_db)

    b = sub.add_parser("bench", help="measure pipeline cost, ASR speed, WER and final latency; prints a table, writes JSON",
                       description="telephony bench [core] [options] | telephony bench sip|webrtc|streaming|forks [--help]")
    b.add_argument("target", nargs="?", choices=["core", "sip", "webrtc", "streaming", "forks"], default="core",
                   help="core: pipeline, WER and latency (default); sip / webrtc: load from real peers over loopback; "
                        "streaming: legs per core with a streaming speech service; forks: WebSocket ingest streams per core")
    b.add_argument("--legs", type=int, default=10, help="concurrent real-time legs for the latency run")
    b.add_argument("--duration", type=float, default=60.0, help="seconds of audio per leg in the latency run")
    b.add_argument("--prompts", type=int, default=60, help="Asterisk prompts in the WER run")
    b.add_argument("--only", action="append", choices=["pipeline", "asr", "wer", "codecs", "latency"],
                   help="run only these parts (codecs: WER through μ-law, G.722 and Opus RTP)")
    b.add_argument("--out", default="bench.json")
    b.set_defaults(func=cmd_bench)
    b.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format=logs.TEXT_FORMAT)
    if args.command == "webhooks" and args.action == "secret":  # needs no settings: it fixes a missing secret
        from .webhooks import new_secret

        print(new_secret())
        return 0
    try:
        settings = load_settings(args.config)
        if args.debug:
            settings.service.log_level = "DEBUG"
        level = settings.service.log_level.upper() if args.command == "serve" or args.debug else "WARNING"
        logs.configure(level, settings.service.log_format, debug=args.debug, data_dir=settings.data_dir)
        return asyncio.run(args.func(args, settings))
    except CliError as exc:
        print(f"telephony: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("telephony: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"telephony: error: {exc}", file=sys.stderr)
            return EXIT_INPUT if type(exc).__name__ in ("IngestError", "CodecError", "InvalidQuery", "CallNotFound",
                                                         "NoRecording") else EXIT_FAILURE
        if args.debug:
            raise
        print(f"telephony: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
