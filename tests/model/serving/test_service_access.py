"""Who may use the search service (model/serving/service.py): the API key, and the refusal to bind beyond loopback
without one. The key never appears in an answer or a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from denseflow.model.serving.search import Searcher
from denseflow.model.serving.service import check_bind, create_app, is_loopback, read_api_key
from tests.model.serving.conftest import publish_corpus

KEY = "k3y-9f0c2a7e5d1b4c68a0e3"


@pytest.fixture(scope="module")
def searcher(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("service-access")
    publish_corpus(root / "indexes", tiny_model_dir, write_tiny_beir(root / "beir"))
    return Searcher(root / "indexes", "tiny", reload_interval_s=0)


@pytest.fixture()
def client(searcher: Searcher) -> TestClient:
    return TestClient(create_app(searcher, api_key=KEY))


@pytest.mark.parametrize("path", ["/search?q=cancer", "/metrics", "/docs", "/openapi.json"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong-bearer", "wrong-header", "not-bearer"],
)
def test_every_path_but_health_needs_the_key(client: TestClient, path: str, headers: dict[str, str]) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["error"]
    assert KEY not in response.text


def test_the_key_as_a_bearer_token_or_x_api_key_is_let_in(client: TestClient) -> None:
    bearer = client.post("/search", json={"query": "cancer tumor", "k": 3}, headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200, bearer.text
    header = client.get("/search", params={"q": "cancer tumor", "k": 3}, headers={"X-API-Key": KEY})
    assert header.status_code == 200
    assert [hit["doc_id"] for hit in header.json()["hits"]] == [hit["doc_id"] for hit in bearer.json()["hits"]]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_health_stays_open_for_load_balancers(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["index_version"] == "v0001"


def test_refused_requests_are_counted(client: TestClient) -> None:
    client.get("/search?q=x")
    client.get("/search?q=x", headers={"X-API-Key": "nope"})
    text = client.get("/metrics", headers={"X-API-Key": KEY}).text
    assert "denseflow_unauthorized_requests_total 2.0" in text
    assert 'denseflow_search_requests_total{mode="dense"}' not in text  # refused before they were searches


def test_without_a_key_the_service_is_open(searcher: Searcher) -> None:
    assert TestClient(create_app(searcher)).get("/search?q=cancer").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "search.example.org"])
def test_binding_beyond_loopback_without_a_key_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match=r"refusing to bind .* without an API key: pass --api-key-file"):
        check_bind(host, None)
    check_bind(host, KEY)


def test_the_key_file_is_read_stripped_and_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {KEY}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        key = read_api_key(path)
    assert str(key) == KEY
    assert KEY not in repr(key)
    assert "readable by other users" in caplog.text and KEY not in caplog.text
    path.write_text("short")
    path.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_api_key(path)
    assert "shorter than 16" in caplog.text and "short" not in caplog.text.replace("shorter", "")


@pytest.mark.parametrize(("content", "message"), [("\n", "is empty"), ("two words", "whitespace")])
def test_an_unusable_key_file_is_refused_without_echoing_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        read_api_key(path)
    assert "words" not in str(raised.value)
    with pytest.raises(ValueError, match="unreadable"):
        read_api_key(tmp_path / "missing")
