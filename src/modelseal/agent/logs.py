"""One JSON object per line on stderr: what was asked, of which path, with what outcome.

Only fields the agent chose are written — never a body or a header value other than the device
name — so nothing a container sends (MACs, nonces, ephemeral keys) or the vault answers (sealed
keys) can reach a log.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

_lock = threading.Lock()


class JsonLog:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def event(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        stream = self._stream or sys.stderr
        with _lock:
            stream.write(line)
            stream.flush()
