"""One JSON object per line on stderr: what was asked, of which path, with what outcome.

Only fields the agent chose are written — never a body or a header value other than the device
name — so nothing a container sends (MACs, nonces, ephemeral keys) or the vault answers (sealed
keys) can reach a log. The vault's request log (modelseal.vault.server.metrics) writes through the same
class, so both services' lines parse the same way.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import IO, Any

_lock = threading.Lock()


class JsonLog:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self.dropped = 0  # lines that could not be written (a full disk under a log file)

    def event(self, event: str, *, level: str = "info", **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        stream = self._stream or sys.stderr
        with _lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                # A log that can't be written must not fail the request it describes (ENOSPC under
                # a log file, a closed pipe): the line is lost, the answer is not.
                self.dropped += 1


class JsonLogHandler(logging.Handler):
    """Sends stdlib logging records (uvicorn's own, asyncio's, warnings) to a JsonLog, one line each.

    Only the logger, the level and the message's first 500 characters are kept, and of an exception
    only its type: a traceback can quote a request line or a frame's text, and a log is not the
    place to find out which.
    """

    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()[:500]}
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = type(record.exc_info[1]).__name__
            self.log.event("log", level=record.levelname.lower(), **fields)
        except Exception:
            self.handleError(record)
