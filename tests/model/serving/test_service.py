from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from denseflow.model.serving.search import Searcher
from denseflow.model.serving.service import create_app
from tests.model.serving.conftest import publish_corpus


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("service")
    publish_corpus(root / "indexes", tiny_model_dir, write_tiny_beir(root / "beir"))
    return TestClient(create_app(Searcher(root / "indexes", "tiny", reload_interval_s=0)))


def test_health_reports_versions_and_count(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["index_version"] == "v0001"
    assert body["documents"] == 36
    assert body["model"] == "retriever"
    assert body["model_version"] == "model"


def test_search_post_and_get(client: TestClient) -> None:
    response = client.post("/search", json={"query": "cancer tumor", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["hits"]) == 5
    assert body["index_version"] == "v0001"
    assert [hit["rank"] for hit in body["hits"]] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    same = client.get("/search", params={"q": "cancer tumor", "k": 5}).json()
    assert [hit["doc_id"] for hit in same["hits"]] == [hit["doc_id"] for hit in body["hits"]]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"query": "", "k": 5}, 422, "query is empty"),
        ({"query": "  ", "k": 5}, 422, "query is empty"),
        ({"query": "x" * 5000, "k": 5}, 422, "5000 characters"),
        ({"query": "ok", "k": 0}, 422, "between 1 and 1000"),
        ({"query": "ok", "k": 5000}, 422, "between 1 and 1000"),
        ({"query": "ok", "k": "many"}, 422, "k: Input should be a valid integer"),
        ({"k": 5}, 422, "query: Field required"),
        ({"query": "ok", "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ({"query": ["a"], "k": 5}, 422, "query: Input should be a valid string"),
        ({"query": "ok", "fields": ["body"]}, 422, "fields"),
    ],
)
def test_bad_input_gets_4xx_with_message(client: TestClient, payload: dict, status: int, message: str) -> None:
    response = client.post("/search", json=payload)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_json_and_oversized_body(client: TestClient) -> None:
    response = client.post("/search", content=b'{"query": "ok", ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "malformed JSON body"
    response = client.post("/search", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.get("/search", params={"q": "", "k": 3}).status_code == 422
    assert client.get("/search", params={"q": "ok", "k": "x"}).status_code == 422


def test_an_unknown_field_in_a_get_is_named(client: TestClient) -> None:
    response = client.get("/search", params={"q": "bone", "fields": "title,body"})
    assert response.status_code == 422
    assert "body" in response.json()["error"]


def test_hits_carry_title_and_snippet_and_text_only_when_asked(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import write_tiny_beir
    from tests.model.serving.conftest import publish_with_documents

    publish_with_documents(tmp_path / "indexes", tiny_model_dir, write_tiny_beir(tmp_path / "beir"))
    app = TestClient(create_app(Searcher(tmp_path / "indexes", "tiny", reload_interval_s=0)))
    hit = app.post("/search", json={"query": "bone fracture", "k": 1}).json()["hits"][0]
    assert hit["title"].startswith(("bone", "heart", "brain", "cancer", "virus", "gene"))
    assert hit["snippet"] and "text" not in hit
    full = app.post("/search", json={"query": "bone fracture", "k": 1, "fields": ["text"]}).json()["hits"][0]
    assert set(full) == {"rank", "doc_id", "score", "text"}
