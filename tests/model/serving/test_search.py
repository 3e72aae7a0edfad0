from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from denseflow.model.data.beir import RejectLog, find_file, read_queries
from denseflow.model.encoder import encode, load_encoder, make_asymmetric
from denseflow.model.index.store import read_pointer
from denseflow.model.index.topk import exact_search
from denseflow.model.serving.search import ModelMismatchError, QueryError, Searcher, validate_query
from tests.model.serving.conftest import publish_corpus, publish_with_documents


@pytest.fixture(scope="module")
def asymmetric_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("asym") / "asymmetric"
    model = make_asymmetric(load_encoder(tiny_model_dir))
    # Different query-tower weights, so a query encoded by the document tower would rank differently.
    query_tower = model[0].sub_modules["query"][0]
    generator = torch.Generator().manual_seed(0)
    for parameter in query_tower.parameters():
        parameter.data.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save(str(folder))
    return folder


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("towers", ["siamese", "asymmetric"])
def test_search_equals_exact_numpy_search(
    towers: str, backend: str, tiny_model_dir: Path, asymmetric_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    model_dir = tiny_model_dir if towers == "siamese" else asymmetric_model_dir
    doc_ids, embeddings = publish_corpus(tmp_path, model_dir, tiny_beir_dir)
    searcher = Searcher(tmp_path, "tiny", reload_interval_s=0, backend=backend)
    assert searcher.health()["query_backend"] == {"torch": "torch", "onnx": "onnxruntime"}[backend]
    queries = read_queries(find_file(tiny_beir_dir, "queries.jsonl"), RejectLog())
    model = load_encoder(model_dir)
    for query in list(queries.values())[:6]:
        result = searcher.search(query, k=7)
        expected_rows, expected_scores = exact_search(encode(model, [query], "query"), embeddings, 7)
        assert [hit.doc_id for hit in result.hits] == [doc_ids[i] for i in expected_rows[0]]
        np.testing.assert_allclose([hit.score for hit in result.hits], expected_scores[0], rtol=1e-5, atol=1e-6)
        assert [hit.rank for hit in result.hits] == list(range(1, 8))
    assert result.index_version == "v0001"
    assert result.model == f"retriever@{model_dir.name}"
    if towers == "asymmetric":
        as_document = encode(model, [query], "document")
        assert not np.allclose(as_document, encode(model, [query], "query"))


def test_k_larger_than_corpus_returns_every_document(tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    doc_ids, _ = publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    result = Searcher(tmp_path, "tiny").search("heart", k=500)
    assert sorted(hit.doc_id for hit in result.hits) == sorted(doc_ids)


def test_reloads_when_current_moves_and_pairs_the_new_model(
    tiny_model_dir: Path, asymmetric_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    searcher = Searcher(tmp_path, "tiny", reload_interval_s=0)
    assert searcher.health()["index_version"] == "v0001"
    _, embeddings = publish_corpus(tmp_path, asymmetric_model_dir, tiny_beir_dir)
    result = searcher.search("brain neuron", k=3)
    assert result.index_version == "v0002"
    assert result.model == "retriever@asymmetric"
    query = encode(load_encoder(asymmetric_model_dir), ["brain neuron"], "query")
    np.testing.assert_allclose(result.hits[0].score, float((embeddings @ query[0]).max()), rtol=1e-5)
    health = searcher.health()
    assert health["documents"] == 36
    assert health["model_version"] == "asymmetric"
    assert health["status"] == "ok"


def test_refuses_a_bad_new_version_and_keeps_serving(tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    searcher = Searcher(tmp_path, "tiny", reload_interval_s=0)
    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    (tmp_path / "tiny" / "v0002" / "index.faiss").write_bytes(b"corrupt")
    result = searcher.search("virus", k=2)
    assert result.index_version == "v0001"
    health = searcher.health()
    assert health["status"] == "degraded"
    assert "sha256 differs" in health["last_error"]
    assert read_pointer(tmp_path, "tiny") == "v0002"
    with pytest.raises(Exception, match="sha256 differs"):
        Searcher(tmp_path, "tiny")


def test_manifest_naming_another_model_is_refused(
    tiny_model_dir: Path, asymmetric_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    # A pinned model folder that is not the one the index was built with.
    with pytest.raises(ModelMismatchError, match="refusing to pair them"):
        Searcher(tmp_path, "tiny", model_dir=asymmetric_model_dir)
    assert Searcher(tmp_path, "tiny", model_dir=tiny_model_dir).search("bone", k=1).hits

    # A manifest edited to claim different model weights than the files stored with it.
    manifest_path = tmp_path / "tiny" / "v0001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["checksum"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatchError, match="does not match its model/ files"):
        Searcher(tmp_path, "tiny")


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [
        ("", 10, "query is empty"),
        ("   ", 10, "query is empty"),
        ("x" * 2001, 10, "2001 characters"),
        (None, 10, "must be a string"),
        ("ok", 0, "between 1 and 1000"),
        ("ok", 1001, "between 1 and 1000"),
        ("ok", True, "must be an integer"),
        ("ok", "5", "must be an integer"),
    ],
)
def test_validate_query(query: object, k: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        validate_query(query, k)
    assert validate_query("  fine  ", 3) == ("fine", 3)


def test_onnx_query_tower_matches_torch_and_leaves_documents_alone(asymmetric_model_dir: Path) -> None:
    from denseflow.model.serving.onnx_backend import OnnxTransformer, query_transformer, use_onnx_for_queries

    model = load_encoder(asymmetric_model_dir)
    texts = ["heart failure", "a much longer query about the immune response to a viral infection"]
    queries, documents = encode(model, texts, "query"), encode(model, texts, "document")
    assert use_onnx_for_queries(model, threads=1)
    assert isinstance(query_transformer(model).model, OnnxTransformer)
    np.testing.assert_allclose(encode(model, texts, "query"), queries, atol=1e-5)
    np.testing.assert_array_equal(encode(model, texts, "document"), documents)


def test_onnx_swap_is_undone_when_it_does_not_match(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from denseflow.model.serving import onnx_backend

    model = load_encoder(tiny_model_dir)
    original = onnx_backend.query_transformer(model).model
    monkeypatch.setattr(onnx_backend, "PROBES", ["x", "y y"])
    assert not onnx_backend.use_onnx_for_queries(model, tolerance=-1.0)  # nothing can be within a negative bound
    assert onnx_backend.query_transformer(model).model is original


def test_hits_carry_the_title_and_a_snippet_from_the_stored_documents(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    corpus = publish_with_documents(tmp_path / "indexes", tiny_model_dir, tiny_beir_dir)
    searcher = Searcher(tmp_path / "indexes", "tiny", reload_interval_s=0)
    result = searcher.search("bone fracture", k=3)
    first = result.hits[0]
    assert first.title == corpus[first.doc_id].title
    assert first.snippet is not None and first.snippet.plain()
    assert first.text is None  # only asked for
    row = result.as_dict()["hits"][0]
    assert set(row) == {"rank", "doc_id", "score", "title", "snippet", "highlights"}
    with_text = searcher.search("bone fracture", k=1, fields="title,text").hits[0]
    assert with_text.text == corpus[with_text.doc_id].text and with_text.snippet is None
    with pytest.raises(QueryError, match="fields must be among"):
        searcher.search("bone", k=1, fields="body")


def test_a_version_published_without_documents_serves_ids_and_says_so_once(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)  # no documents file: a version from before
    with caplog.at_level("WARNING"):
        searcher = Searcher(tmp_path, "tiny", reload_interval_s=0)
        hits = searcher.search("bone", k=2).hits
        searcher.search("heart", k=2)
    assert [hit.title for hit in hits] == [None, None]
    assert set(searcher.search("bone", k=1).as_dict()["hits"][0]) == {"rank", "doc_id", "score"}
    warnings = [record for record in caplog.records if "without its documents" in record.getMessage()]
    assert len(warnings) == 1


def test_a_documents_file_that_fails_its_checksum_is_refused_like_the_index(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    from denseflow.model.index.store import ChecksumError, load_version

    publish_with_documents(tmp_path / "indexes", tiny_model_dir, tiny_beir_dir)
    version = tmp_path / "indexes" / "tiny" / read_pointer(tmp_path / "indexes", "tiny")
    with (version / "docs.sqlite").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"tampered")
    with pytest.raises(ChecksumError, match="docs.sqlite"):
        load_version(version)


def test_micro_batched_searches_answer_as_one_at_a_time(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    import threading

    publish_corpus(tmp_path, tiny_model_dir, tiny_beir_dir)
    queries = list(read_queries(find_file(tiny_beir_dir, "queries.jsonl"), RejectLog()).values())[:8]
    alone = Searcher(tmp_path, "tiny", backend="torch")
    batched = Searcher(tmp_path, "tiny", backend="torch", batch_wait_ms=50)
    expected = {query: alone.search(query, k=5) for query in queries}
    answers: dict[str, object] = {}
    start = threading.Barrier(len(queries))

    def ask(query: str) -> None:
        start.wait()
        answers[query] = batched.search(query, k=5)

    threads = [threading.Thread(target=ask, args=(query,)) for query in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for query in queries:
        got, want = answers[query].hits, expected[query].hits
        assert [hit.doc_id for hit in got] == [hit.doc_id for hit in want]
        np.testing.assert_allclose([hit.score for hit in got], [hit.score for hit in want], atol=1e-5)
    assert batched._batcher is not None and batched._batcher.batches < len(queries)
