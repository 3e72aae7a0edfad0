"""``/metrics`` (model/serving/metrics.py): requests, errors and latency by mode, the version served, and for a
replica the seconds since the alias last agreed, in Prometheus' text format."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from denseflow.model.serving.search import Searcher
from denseflow.model.serving.service import create_app
from tests.model.serving.conftest import publish_corpus


@pytest.fixture(scope="module")
def searcher(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("metrics")
    publish_corpus(root / "indexes", tiny_model_dir, write_tiny_beir(root / "beir"))
    return Searcher(root / "indexes", "tiny", reload_interval_s=0)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` as Prometheus would parse the page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_requests_errors_and_latency_are_counted_by_mode(searcher: Searcher) -> None:
    client = TestClient(create_app(searcher))
    assert client.post("/search", json={"query": "cancer tumor", "k": 3}).status_code == 200
    assert client.get("/search", params={"q": "brain", "mode": "dense"}).status_code == 200
    assert client.post("/search", json={"query": "", "k": 3}).status_code == 422
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("denseflow_search_requests_total", (("mode", "dense"),))] == 3.0
    assert found[("denseflow_search_requests_total", (("mode", "unknown"),))] == 1.0  # refused before any mode
    assert found[("denseflow_search_errors_total", (("mode", "dense"), ("status", "422")))] == 1.0
    assert found[("denseflow_search_errors_total", (("mode", "unknown"), ("status", "400")))] == 1.0
    assert found[("denseflow_search_latency_seconds_count", (("mode", "dense"),))] == 3.0
    assert found[("denseflow_search_latency_seconds_bucket", (("le", "+Inf"), ("mode", "dense")))] == 3.0
    served = {labels: value for (name, labels), value in found.items() if name == "denseflow_served_info"}
    assert served == {
        (("index", "tiny"), ("index_version", "v0001"), ("model", "retriever"), ("model_version", "model")): 1.0
    }
    assert not any(name.startswith("denseflow_alias") for name, _ in found)  # no registry to agree with


def test_two_apps_in_one_process_keep_their_own_counts(searcher: Searcher) -> None:
    first, second = TestClient(create_app(searcher)), TestClient(create_app(searcher))
    first.get("/search", params={"q": "virus"})
    assert samples(first.get("/metrics").text)[("denseflow_search_requests_total", (("mode", "dense"),))] == 1.0
    assert ("denseflow_search_requests_total", (("mode", "dense"),)) not in samples(second.get("/metrics").text)
