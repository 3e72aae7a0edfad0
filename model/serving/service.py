"""HTTP search service: ``POST /search`` (or ``GET /search?q=...&k=...&mode=...``) and ``GET /health``.

A request may name a mode (dense, bm25, hybrid); every answer says which ``mode`` produced it.

Bad input gets a 4xx with a message a person can act on: malformed JSON → 400, wrong types or
missing fields → 422 (``k`` must be a JSON integer: not "3", true or 3.0), empty or over-long query, a
query that is not valid Unicode (lone surrogates) and k out of range → 422, a body over 64 KB → 413
(counted as it arrives, so a chunked body without Content-Length is cut off too), a query string over 8 KB
→ 414. An unreadable ``current`` pointer → 503 on /search and "degraded" on /health until it is fixed.

``GET /metrics`` answers in Prometheus' text format (:mod:`denseflow.model.serving.metrics`).

Credentials. With an API key (``denseflow serve --api-key-file FILE``; the file's content, stripped, is the key)
every path but ``/health`` needs it, sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and compared
in constant time (``hmac.compare_digest``); a missing or wrong key → 401. ``/health`` stays open because load
balancers and orchestrators probe it without credentials; it tells versions and counts, no documents. ``/metrics``
is protected (Prometheus sends the key with ``authorization: {credentials_file: ...}`` in its scrape config).
:func:`serve` refuses to bind beyond loopback without a key. The key appears in no log line or error message.

A replica (:class:`~denseflow.model.serving.replica.Replica`) adds to ``/health`` a ``registry`` section (the
version served, the alias's target, when they last agreed) and ``stale``: true while its tracking server does not
answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.datastructures import Secret
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from denseflow.model.index.store import PublishedIndexError
from denseflow.model.serving.metrics import ServiceMetrics
from denseflow.model.serving.replica import DEFAULT_POLL_SECONDS, Replica
from denseflow.model.serving.search import QueryError, Searcher

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_STRING_BYTES = 8 * 1024
# uvicorn's h11 parser drops the connection on a request line over its 16 KB default; a larger allowance lets
# such requests reach the app, which answers 414.
H11_MAX_INCOMPLETE_EVENT_SIZE = 2 * 1024 * 1024
# Paths open without the API key: health probes come from load balancers that hold no credentials.
OPEN_PATHS = ("/health",)
MIN_API_KEY_CHARS = 16


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="Free text; the searcher strips it and checks its length.")
    k: StrictInt = Field(10, description="How many documents to return (a JSON integer).")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        None, description="Search mode; None = the service's mode (by default the one the index was published with)."
    )
    fields: list[Literal["title", "snippet", "text"]] = Field(
        ["title", "snippet"], description="What each hit carries beside id and score (text: the whole document)."
    )


async def _reply(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitRequestSize:
    """ASGI middleware: 413 for a body over ``max_body`` bytes, counted as it arrives (Content-Length or not),
    and 414 for a query string over ``max_query`` bytes. The body (at most ``max_body``) is read here and
    replayed to the app."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES, max_query: int = MAX_QUERY_STRING_BYTES) -> None:
        self.app, self.max_body, self.max_query = app, max_body, max_query

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query:
            await _reply(send, 414, f"query string over {self.max_query} bytes: send long queries with POST")
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request body over {self.max_body} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


class RequireApiKey:
    """ASGI middleware: 401 for a request without the API key, except on ``open_paths``. It runs before the body
    is read, so a request without the key costs nothing more; ``on_refused`` counts refusals (``/metrics``)."""

    def __init__(
        self,
        app: ASGIApp,
        key: Secret,
        open_paths: tuple[str, ...] = OPEN_PATHS,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.app, self.open_paths, self.on_refused = app, open_paths, on_refused
        self._key = str(key).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        offered = _offered_key(dict(scope.get("headers") or []))
        if offered is None or not hmac.compare_digest(offered, self._key):
            if self.on_refused is not None:
                self.on_refused()
            message = "missing or wrong API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            await _reply(send, 401, message, [(b"www-authenticate", b'Bearer realm="denseflow"')])
            return
        await self.app(scope, receive, send)


def _offered_key(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization", b"")
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(b"x-api-key", b"").strip() or None


# Where a /search endpoint records the mode it answers in, for SearchMetrics: the request's state (scope["state"]).
SEARCH_MODE_STATE = "search_mode"


class SearchMetrics:
    """ASGI middleware: every ``/search`` request counted and timed, by the mode the endpoint recorded in the
    request's state (``unknown`` when it was refused before the endpoint ran) and the status it was answered with."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/search":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app raises before starting a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            mode = scope.setdefault("state", {}).get(SEARCH_MODE_STATE)
            self.metrics.observe(mode, status, time.perf_counter() - started)


def _valid_unicode(query: str) -> str:
    """A lone surrogate (``"\\ud800"`` in JSON) cannot be encoded, tokenized or echoed back: refuse it."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as err:
        raise QueryError(f"query is not valid Unicode (lone surrogate at position {err.start})") from None
    return query


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(searcher: Searcher, api_key: Secret | str | None = None, replica: Replica | None = None) -> FastAPI:
    """The service over ``searcher``; with ``api_key`` every path but ``/health`` needs it; with ``replica``
    ``/health`` and ``/metrics`` report what it follows in the registry."""
    app = FastAPI(title="denseflow search", version="1")
    metrics = ServiceMetrics(searcher, replica)
    app.state.metrics = metrics

    # The last added runs first: the key is checked before anything is read, then requests are counted.
    app.add_middleware(LimitRequestSize)
    app.add_middleware(SearchMetrics, metrics=metrics)
    if api_key is not None:
        key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        app.add_middleware(RequireApiKey, key=key, on_refused=metrics.unauthorized.inc)

    def record_mode(http: Request, mode: str | None) -> None:
        # Read by SearchMetrics after the answer; the searcher's default when the request named none.
        http.scope.setdefault("state", {})[SEARCH_MODE_STATE] = mode or searcher.default_mode

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(PublishedIndexError)
    async def _unavailable(_: Request, exc: PublishedIndexError) -> JSONResponse:
        message = " ".join(str(exc).split())  # one line
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        status = 400 if any(error.get("type") == "json_invalid" for error in errors) else 422
        message = "malformed JSON body" if status == 400 else _describe(errors)
        return JSONResponse({"error": message, "detail": _describe(errors)}, status_code=status)

    @app.exception_handler(QueryError)
    async def _bad_query(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        searcher.maybe_reload()
        body = searcher.health()
        if replica is not None:
            registry = replica.health()
            body |= {"stale": registry["stale"], "registry": registry}
            if registry["last_error"] and not registry["stale"]:  # a version refused or not fetched: say so
                body["status"] = "degraded"
        return body

    @app.get("/metrics")
    def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/search")
    async def search_post(request: SearchRequest, http: Request) -> dict[str, Any]:
        record_mode(http, request.mode)
        # Encoding is CPU-bound torch work: off the event loop, so /health stays responsive.
        result = await run_in_threadpool(
            searcher.search, _valid_unicode(request.query), request.k, request.mode, tuple(request.fields)
        )
        record_mode(http, result.mode)
        return result.as_dict()

    @app.get("/search")
    async def search_get(
        http: Request,
        q: str,
        k: int = 10,
        mode: Literal["dense", "bm25", "hybrid"] | None = None,
        fields: str = "title,snippet",
    ) -> dict[str, Any]:
        record_mode(http, mode)
        result = await run_in_threadpool(searcher.search, _valid_unicode(q), k, mode, fields)
        record_mode(http, result.mode)
        return result.as_dict()

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_bind(host: str, api_key: Secret | str | None) -> None:
    """Refuse to listen beyond loopback without an API key: anyone who reaches the port could read the corpus."""
    if api_key is None and not is_loopback(host):
        raise ValueError(
            f"refusing to bind {host} without an API key: pass --api-key-file FILE (clients then send "
            "'Authorization: Bearer <key>'), or bind to 127.0.0.1"
        )


def read_api_key(path: Path) -> Secret:
    """The key in ``path`` (its content, stripped). Errors name the file, never its content."""
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ValueError(f"API key file {path}: unreadable ({reason})") from None
    if not key:
        raise ValueError(f"API key file {path} is empty")
    if any(char.isspace() for char in key):
        raise ValueError(f"API key file {path}: the key holds whitespace (one line, no spaces)")
    if len(key) < MIN_API_KEY_CHARS:
        log.warning("the API key in %s is shorter than %d characters: `openssl rand -hex 32` makes a good one",
                    path, MIN_API_KEY_CHARS)  # fmt: skip
    if os.stat(path).st_mode & 0o077:
        log.warning("API key file %s is readable by other users: chmod 600 it", path)
    return Secret(key)


def serve(
    searcher: Searcher,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: Secret | str | None = None,
    replica: Replica | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> None:
    """Run the service until interrupted; a ``replica`` polls its reference every ``poll_seconds`` meanwhile."""
    import uvicorn

    check_bind(host, api_key)
    if replica is not None:
        replica.start_polling(poll_seconds)
    try:
        uvicorn.run(
            create_app(searcher, api_key, replica),
            host=host,
            port=port,
            log_level="info",
            h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT_SIZE,
        )
    finally:
        if replica is not None:
            replica.close()
