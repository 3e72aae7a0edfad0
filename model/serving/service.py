"""HTTP search service: ``POST /search`` (or ``GET /search?q=...&k=...``) and ``GET /health``.

Bad input gets a 4xx with a message a person can act on: malformed JSON → 400, wrong types or
missing fields → 422, empty or over-long query and k out of range → 422 from the searcher's checks.
Binding is to loopback unless the caller asks otherwise: the service has no authentication.
"""

from __future__ import annotations

import logging
from typing import Any

from denseflow.model.serving.search import QueryError, Searcher
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_BODY_BYTES = 64 * 1024


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="Free text; the searcher strips it and checks its length.")
    k: int = Field(10, description="How many documents to return.")


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(searcher: Searcher) -> FastAPI:
    app = FastAPI(title="denseflow search", version="1")

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # noqa: ANN001, ANN202 - Starlette's middleware signature
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

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
        result = await run_in_threadpool(searcher.search, request.query, request.k)
        return result.as_dict()

    @app.get("/search")
    async def search_get(q: str, k: int = 10) -> dict[str, Any]:
        result = await run_in_threadpool(searcher.search, q, k)
        return result.as_dict()

    return app


def serve(searcher: Searcher, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the search service has no authentication", host)
    uvicorn.run(create_app(searcher), host=host, port=port, log_level="info")
