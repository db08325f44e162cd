"""HTTP plumbing the vault and the agent share: the JSON error shape, no caching of answers, and
reading a request body with a ceiling for the hand-parsed routes."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse

# Answers carry keys, tokens or decisions: no proxy or client may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": {"code", "message"}}``, the one error body of every route."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit``: refused while reading, never buffered whole."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
