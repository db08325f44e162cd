"""Prometheus metrics and the JSON request log of the vault, both fed by one plain ASGI middleware.

``GET /v1/sys/metrics`` answers the text exposition format (prometheus_client, with the vault's own
registry, never the process-global one):

    modelseal_vault_requests_total{method, route, status}      every HTTP request
    modelseal_vault_request_duration_seconds{route}            latency histogram
    modelseal_vault_releases_total{route, outcome}             /v1/release, /v1/attest/release:
                                                               granted | denied | error
    modelseal_vault_sealed                                     1 while the barrier is sealed
    modelseal_vault_audit_records                              audit chain length (read per scrape)
    process_*                                                  CPU, memory, open files

Every label is bounded by construction: ``route`` is the matched route's template
(``/v1/keys/{name}``, or ``unmatched`` when no route ran: an unknown path, or a request refused
while sealed), never the path a client sent; methods outside the HTTP set count as ``other``;
nothing names a device, a key or a token. A release's outcome is read from its status (200
granted, 403 the one refusal, anything else error), so the release route itself is not touched.

The scrape needs an admin or auditor token, unless the server runs with ``--metrics-public``.
Scrapes are not audited (one record every 15 s would drown the chain); refused ones are.

The request log is one JSON object per line (``JsonLog``, shared with the edge agent): ts, level,
event "request", method, route, status, ms, and for token-authenticated requests domain and actor
(the token's accessor). It never holds a token, a body, a header, a key, a PSK or a MAC: only the
fields named here are written, and the route is the template, not the path.

The middleware is plain ASGI (no BaseHTTPMiddleware). The key release is answered before it (by
release_fastpath.py, through the same RequestRecorder): two clock reads, a dict lookup, three
counter increments (~2 µs in all) and one log line (~6 µs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...service.http import NO_STORE
from ...service.logs import JsonLog, JsonLogHandler
from ..errors import PermissionDenied
from .callers import Principal
from .http_common import API_PREFIX
from .schema import AuditRecord
from .store import Store

METRICS_PATH = f"{API_PREFIX}/sys/metrics"
# Where the app's token check leaves the authenticated caller for the request log line.
PRINCIPAL = "modelseal.principal"
METRICS_ROLES = ("admin", "auditor")
RELEASE_ROUTES = (f"{API_PREFIX}/release", f"{API_PREFIX}/attest/release")
RELEASE_OUTCOMES = ("granted", "denied", "error")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
# Releases take ~1 ms on loopback; model uploads can take minutes.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class _StateCollector(Collector):
    """Sealed state and audit chain length, read when scraped (never stale, nothing to update)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "modelseal_vault_sealed",
            "1 while the vault is sealed (key routes answer 503)",
            value=1.0 if self.store.barrier.sealed else 0.0,
        )
        length = self._audit_length()
        if length is not None:  # an unreachable database shows as a missing series, not as 0
            yield GaugeMetricFamily(
                "modelseal_vault_audit_records", "records in the audit hash chain", value=length
            )

    def _audit_length(self) -> float | None:
        try:
            with self.store.engine.connect() as conn:
                # Sequence numbers run 1..n without gaps (audit verify checks it): max is the count.
                return float(conn.execute(select(func.max(AuditRecord.seq))).scalar() or 0)
        except Exception:
            return None


class VaultMetrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelseal_vault_requests",
            "HTTP requests by route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelseal_vault_request_duration_seconds",
            "time from request to the end of the answer, by route template",
            ("route",),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.releases = Counter(
            "modelseal_vault_releases",
            "key releases by outcome: granted, denied (the one refusal), error (malformed, overloaded, "
            "unavailable)",
            ("route", "outcome"),
            registry=self.registry,
        )
        for route in RELEASE_ROUTES:  # present from the start, so rate() sees the first release
            for outcome in RELEASE_OUTCOMES:
                self.releases.labels(route, outcome)
        self.registry.register(_StateCollector(store))
        ProcessCollector(registry=self.registry)
        self._children: dict[tuple[str, str, int], Callable[[float], None]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        record = self._children.get((method, route, status))
        if record is None:
            record = self._child(method, route, status)
        record(seconds)

    def _child(self, method: str, route: str, status: int) -> Callable[[float], None]:
        # Children are looked up once per (method, route, status), not per request: labels() takes
        # a lock and builds a tuple, which the hot path should not pay.
        count = self.requests.labels(method, route, str(status))
        latency = self.latency.labels(route)
        release = None
        if route in RELEASE_ROUTES:
            outcome = "granted" if status == 200 else "denied" if status == 403 else "error"
            release = self.releases.labels(route, outcome)

        def record(seconds: float) -> None:
            count.inc()
            latency.observe(seconds)
            if release is not None:
                release.inc()

        self._children[(method, route, status)] = record
        return record

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestRecorder:
    """Counts, times and logs one answered request: the metrics and the JSON log line.

    Shared by the observing middleware and the key release's fast path (release_fastpath.py).
    """

    def __init__(self, metrics: VaultMetrics, log: JsonLog | None) -> None:
        self.metrics = metrics
        self.log = log

    def __call__(
        self, method: str, route: str, status: int, seconds: float, who: Principal | None = None
    ) -> None:
        method = method if method in METHODS else "other"
        self.metrics.observe(method, route, status, seconds)
        if self.log is not None:
            fields: dict[str, object] = {
                "method": method,
                "route": route,
                "status": status,
                "ms": round(seconds * 1000, 2),
            }
            if who is not None:
                fields["domain"], fields["actor"] = who.domain, who.accessor
            level = "error" if status >= 500 else "warning" if status >= 400 else "info"
            self.log.event("request", level=level, **fields)


class RequestObserver:
    """Counts, times and logs every HTTP request, after its answer went out."""

    def __init__(
        self,
        app: ASGIApp,
        record: RequestRecorder,
        routes: Callable[[], Iterable[BaseRoute]],
    ) -> None:
        self.app = app
        self.record = record
        self._routes = routes
        self._templates: dict[object, str] = {}

    def _template(self, scope: Scope) -> str:
        # Starlette's router sets scope["endpoint"] for every route it runs, FastAPI's sets
        # scope["route"] only for its own: the endpoint is the one key both leave behind.
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        template = self._templates.get(endpoint)
        if template is None:
            self._templates = {
                getattr(r, "endpoint", None): r.path for r in self._routes() if isinstance(r, Route)
            }
            template = self._templates.setdefault(endpoint, UNMATCHED)
        return template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            who = scope.get(PRINCIPAL)
            self.record(
                scope["method"],
                self._template(scope),
                status,
                time.perf_counter() - started,
                who if isinstance(who, Principal) else None,
            )


def install(
    app: FastAPI,
    store: Store,
    *,
    public: bool = False,
    log: JsonLog | None = None,
    on_auth: Callable[[Principal], None] | None = None,
) -> RequestRecorder:
    """Add GET /v1/sys/metrics and the observing middleware (outermost when called last); the
    recorder, for requests answered outside the middleware (release_fastpath.py)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series: double the output
    metrics = VaultMetrics(store)

    # Under /v1/sys/, so it answers while sealed (the sealed gauge matters most then); the token is
    # checked without the sealed check of the app's other routes.
    @app.get(METRICS_PATH, response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def scrape(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        if not public:
            scheme, _, token = (authorization or "").partition(" ")
            who = store.authenticate(token.strip() if scheme.lower() == "bearer" else None)
            request.scope[PRINCIPAL] = who
            if on_auth is not None:
                on_auth(who)
            if who.role not in METRICS_ROLES:
                error = PermissionDenied(f"role {who.role} may not read metrics")
                store.record_refusal(who, "sys.metrics", "", error)
                raise error
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

    record = RequestRecorder(metrics, log)
    app.add_middleware(RequestObserver, record=record, routes=lambda: app.routes)
    return record


def configure_logging(log: JsonLog) -> None:
    """Route uvicorn's, asyncio's and Python's warnings through ``log``: every stderr line is JSON.

    uvicorn's access log stays off (the middleware writes the request lines, with route templates
    instead of raw paths and query strings).
    """
    handler = JsonLogHandler(log)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate, access.disabled = [], False, True
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
