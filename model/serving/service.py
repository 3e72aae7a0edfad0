"""HTTP search service: ``POST /search`` (or ``GET /search?q=...&k=...&mode=...``) and ``GET /health``.

A request may name a mode (dense, bm25, hybrid); every answer says which ``mode`` produced it.

Bad input gets a 4xx with a message a person can act on: malformed JSON → 400, wrong types or
missing fields → 422 (``k`` must be a JSON integer: not "3", true or 3.0), empty or over-long query, a
query that is not valid Unicode (lone surrogates) and k out of range → 422, a body over 64 KB → 413
(counted as it arrives, so a chunked body without Content-Length is cut off too), a query string over 8 KB
→ 414. An unreadable ``current`` pointer → 503 on /search and "degraded" on /health until it is fixed.
Binding is to loopback unless the caller asks otherwise: the service has no authentication.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from denseflow.model.index.store import PublishedIndexError
from denseflow.model.serving.search import QueryError, Searcher

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_STRING_BYTES = 8 * 1024
# uvicorn's h11 parser drops the connection on a request line over its 16 KB default; a larger allowance lets
# such requests reach the app, which answers 414.
H11_MAX_INCOMPLETE_EVENT_SIZE = 2 * 1024 * 1024


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


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
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


def create_app(searcher: Searcher) -> FastAPI:
    app = FastAPI(title="denseflow search", version="1")

    app.add_middleware(LimitRequestSize)

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
        return searcher.health()

    @app.post("/search")
    async def search_post(request: SearchRequest) -> dict[str, Any]:
        # Encoding is CPU-bound torch work: off the event loop, so /health stays responsive.
        result = await run_in_threadpool(
            searcher.search, _valid_unicode(request.query), request.k, request.mode, tuple(request.fields)
        )
        return result.as_dict()

    @app.get("/search")
    async def search_get(
        q: str, k: int = 10, mode: Literal["dense", "bm25", "hybrid"] | None = None, fields: str = "title,snippet"
    ) -> dict[str, Any]:
        result = await run_in_threadpool(searcher.search, _valid_unicode(q), k, mode, fields)
        return result.as_dict()

    return app


def serve(searcher: Searcher, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the search service has no authentication", host)
    uvicorn.run(
        create_app(searcher),
        host=host,
        port=port,
        log_level="info",
        h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT_SIZE,
    )
