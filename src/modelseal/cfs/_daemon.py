"""Run a server in a detached process and return only once it says it is ready (or failed).

The detached process does all the work (opening, decrypting, mounting): the plaintext buffers are
MADV_DONTFORK, so decrypting before the fork would leave the server without them. Its outcome
comes back over a pipe as one JSON line: either the ready report or the ModelSealError it raised,
which the caller re-raises (same class, same message, same exit code). Nothing is mounted when an
error comes back, because the server only mounts after every model opened.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ModelSealError
from .errors import CfsError

Ready = Callable[[dict[str, Any]], None]


def _rebuild(report: dict[str, Any]) -> ModelSealError:
    cls: type[ModelSealError] = CfsError
    with contextlib.suppress(ImportError, AttributeError):
        found = getattr(importlib.import_module(str(report["module"])), str(report["type"]))
        if isinstance(found, type) and issubclass(found, ModelSealError):
            cls = found
    err = cls.__new__(cls)
    ModelSealError.__init__(err, str(report["message"]))
    return err


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _send(fd: int, report: dict[str, Any]) -> None:
    data = (json.dumps(report) + "\n").encode()
    with contextlib.suppress(OSError):
        os.write(fd, data)


def spawn(server: Callable[[Ready], None]) -> dict[str, Any]:
    """Run ``server(ready)`` in a new session; return the dict it passes to ``ready``.

    Double fork: the server is re-parented to init, so the caller never has a zombie to reap.
    """
    sys.stdout.flush()  # else buffered output would be written twice, once per process
    sys.stderr.flush()
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the forked children
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        code = 1
        pipe = [w]  # -1 once handed over: the number may be reused by a later open()

        def report(message: dict[str, Any]) -> None:
            if pipe[0] >= 0:
                _send(pipe[0], message)
                os.close(pipe[0])
                pipe[0] = -1

        def ready(info: dict[str, Any]) -> None:
            report({"ok": True, **info})
            _detach_stdio()
            os.chdir("/")

        try:
            server(ready)
            code = 0
        except ModelSealError as e:
            report({"ok": False, "type": type(e).__name__, "module": type(e).__module__,
                    "message": e.diagnostic})
            code = e.exit_code
        except BaseException as e:
            report({"ok": False, "type": "CfsError", "module": __name__,
                    "message": f"the server failed: {type(e).__name__}: {e}"})
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(first, 0)
    with os.fdopen(r, "rb") as f:
        line = f.readline()
    if not line:
        raise CfsError("the server exited before it was ready (killed?)")
    outcome: dict[str, Any] = json.loads(line)
    if not outcome.get("ok"):
        raise _rebuild(outcome)
    return outcome
