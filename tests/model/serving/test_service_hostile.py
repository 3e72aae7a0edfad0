"""The HTTP service under hostile input (issue 11, item 6): 4xx, never 5xx, and it keeps answering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denseflow.model.serving.search import Searcher
from denseflow.model.serving.service import MAX_BODY_BYTES, create_app
from tests.conftest import write_tiny_beir
from tests.model.serving.conftest import publish_corpus


@pytest.fixture(scope="module")
def published(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    publish_corpus(root / "indexes", tiny_model_dir, write_tiny_beir(root / "beir"))
    return root / "indexes"


@pytest.fixture(scope="module")
def client(published: Path) -> TestClient:
    return TestClient(create_app(Searcher(published, "tiny", reload_interval_s=0)), raise_server_exceptions=False)


def still_answers(client: TestClient) -> None:
    response = client.post("/search", json={"query": "heart", "k": 2})
    assert response.status_code == 200 and len(response.json()["hits"]) == 2


def test_chunked_body_without_content_length_is_cut_off_at_the_limit(client):
    def chunks():
        for _ in range(256):  # 4 MB, in 16 KB chunks, with no Content-Length (Transfer-Encoding: chunked)
            yield b"x" * 16384

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and str(MAX_BODY_BYTES) in response.json()["error"]
    still_answers(client)


@pytest.mark.parametrize(
    "body",
    [
        '{"query": "\\ud800 heart", "k": 3}',
        '{"query": "heart \\udfff", "k": 3}',
    ],
)
def test_lone_surrogate_is_a_4xx(client, body):
    response = client.post("/search", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and "surrogate" in response.json()["error"]
    still_answers(client)


@pytest.mark.parametrize("k", ["3", True, 3.0, None, [3]])
def test_k_must_be_a_json_integer(client, k):
    response = client.post("/search", json={"query": "heart", "k": k})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("k:")


def test_get_with_a_huge_query_string_is_414(client):
    response = client.get("/search", params={"q": "x" * 60_000})  # httpx itself refuses URLs over 64 KB
    assert response.status_code == 414 and "POST" in response.json()["error"]
    assert client.get("/search", params={"q": "heart", "k": "3"}).status_code == 200


def test_a_1mb_query_string_is_414_at_the_asgi_level(client):
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/search",
        "raw_path": b"/search",
        "query_string": b"q=" + b"x" * 1_000_000,
        "headers": [],
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 414


def test_garbage_or_empty_pointer_is_503_then_recovers(published, tiny_model_dir):
    client = TestClient(create_app(Searcher(published, "tiny", reload_interval_s=0)), raise_server_exceptions=False)
    pointer = published / "tiny" / "current"
    good = pointer.read_text()
    try:
        for garbage in (b"", b"\x00\xff\xfe garbage", b"../../etc/passwd", b"v0001\nv0002\n"):
            pointer.write_bytes(garbage)
            response = client.post("/search", json={"query": "heart"})
            assert response.status_code == 503, (garbage, response.text)
            assert "\n" not in response.json()["error"] and "pointer" in response.json()["error"]
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert "pointer" in health.json()["last_error"]
        # A version that fails to load, then the pointer restored: degraded must not stick.
        pointer.write_text("v0999")
        assert client.get("/health").json()["status"] == "degraded"
    finally:
        pointer.write_text(good)
    assert client.get("/health").json()["status"] == "ok"
    still_answers(client)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_any_body_is_answered_without_5xx(client, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/search", content=body, headers=headers)
    assert response.status_code < 500, (body, response.text)
    json.loads(response.text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=50), k=st.text(max_size=6))
def test_any_query_string_is_answered_without_5xx(client, q, k):
    response = client.get("/search", params={"q": q, "k": k})
    assert response.status_code < 500, (q, k, response.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=st.text(max_size=40),
    k=st.one_of(
        st.integers(-5, 2000), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)
    ),
)
def test_any_json_query_is_answered_without_5xx(client, query, k):
    response = client.post("/search", json={"query": query, "k": k})
    assert response.status_code < 500, (query, k, response.text)
    still_answers(client)
