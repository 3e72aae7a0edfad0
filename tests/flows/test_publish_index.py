from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from denseflow.flows.publish_index import PublishResult
from denseflow.model.config import DataConfig, EncodeConfig, IndexConfig, PublishConfig, RunnerConfig
from denseflow.model.index.store import list_versions, load_current
from denseflow.model.serving.search import Searcher

pytestmark = pytest.mark.usefixtures("prefect_harness")  # the suite's one temporary Prefect server


def make_config(
    workspace: Path, model_dir: Path, beir_dir: Path, precision: str = "fp32", **overrides
) -> PublishConfig:
    """Precision is always explicit: ``auto`` would resolve differently on CPUs with and without native bf16.

    A bf16 request keeps bf16 on any CPU (emulated where not native): the agreement floor is set low because
    the tiny random model's bf16 drift says nothing about a real one's.
    """
    floor = {"bf16_min_cosine": 0.5} if precision == "bf16" else {}
    return PublishConfig(
        workspace=workspace,
        model=str(model_dir),
        data=DataConfig(path=beir_dir),
        encode=EncodeConfig(shard_size=10, batch_size=8, precision=precision, **floor),
        index=IndexConfig(name="tiny", **overrides.pop("index", {})),
        **overrides,
    )


def embeddings_of(workspace: Path) -> np.ndarray:
    """The vectors the current (flat) version serves, in its row order."""
    index = load_current(workspace / "indexes", "tiny").index
    return index.reconstruct_n(0, index.ntotal)


def segments_of(workspace: Path) -> dict[str, int]:
    """Each embedding cache segment's modification time, by path."""
    return {str(path): path.stat().st_mtime_ns for path in (workspace / "cache" / "embeddings").rglob("seg-*.npz")}


@pytest.fixture(scope="module")
def local_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PublishResult]:
    """One publication under Prefect's default runner; the tests below compare against it or build on it."""
    from denseflow.flows.publish_index import run_publish
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("publish")
    beir_dir = write_tiny_beir(root / "beir")
    return root / "local", beir_dir, run_publish(make_config(root / "local", tiny_model_dir, beir_dir))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-compiled"])
def test_local_run_publishes_a_searchable_index(
    precision: str, local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from denseflow.flows.publish_index import run_publish

    workspace, beir_dir, result = local_run
    compiled = precision.endswith("-compiled")
    precision = precision.removesuffix("-compiled")
    if precision != "fp32":
        workspace = tmp_path / precision
        config = make_config(workspace, tiny_model_dir, beir_dir, precision)
        if compiled:
            config = config.model_copy(update={"encode": config.encode.model_copy(update={"compile": "on"})})
        result = run_publish(config)
    assert result.compiled is compiled and result.summary()["compiled"] is compiled
    assert result.documents == 36
    assert (result.shards, result.documents_encoded, result.documents_reused) == (4, 36, 0)
    assert result.version == "v0001"
    assert result.precision == precision
    assert result.recall_at_10 == 1.0
    published = load_current(workspace / "indexes", "tiny")
    manifest = published.manifest
    assert manifest["count"] == 36
    assert manifest["model"]["run_id"] is None
    assert manifest["index"]["type"] == "flat"
    assert manifest["encode"]["precision"] == precision
    assert (manifest["encode"]["documents_encoded"], manifest["encode"]["documents_reused"]) == (36, 0)
    assert manifest["corpus"]["rejected_rows"] == 0
    assert published.doc_ids[:2] == ["heart-d0", "heart-d1"]
    assert len(Searcher(workspace / "indexes", "tiny").search("what about brain neuron", k=3).hits) == 3


def test_dask_run_with_two_worker_processes_equals_local_run(
    local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from denseflow.flows.publish_index import run_publish

    local_workspace, beir_dir, local = local_run
    runner = RunnerConfig(kind="dask", dask_workers=2)
    dask = run_publish(make_config(tmp_path / "dask", tiny_model_dir, beir_dir, runner=runner))
    # A separate workspace: the Dask run cannot reuse the local run's cached embeddings.
    assert dask.documents_encoded == 36
    np.testing.assert_allclose(embeddings_of(tmp_path / "dask"), embeddings_of(local_workspace), rtol=0, atol=1e-6)
    dask_ids = load_current(tmp_path / "dask" / "indexes", "tiny").doc_ids
    assert dask_ids == load_current(local_workspace / "indexes", "tiny").doc_ids


def test_recall_floor_stops_publication_and_republish_encodes_nothing(
    local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from denseflow.flows.publish_index import run_publish

    workspace = tmp_path / "ws"
    shutil.copytree(local_run[0], workspace)  # the module's publication stays as it was for the other tests
    beir_dir = local_run[1]
    stamps = segments_of(workspace)
    (bm25_meta,) = (workspace / "encode").glob("corpus-*/bm25-*/denseflow.json")
    bm25_stamp = bm25_meta.stat().st_mtime_ns
    poor = {"type": "ivf", "factory": "IVF6,Flat", "ivf_nprobe": 1, "recall_floor": 0.99}
    with pytest.raises(Exception, match="below the floor 0.9900: not published"):
        run_publish(make_config(workspace, tiny_model_dir, beir_dir, index=poor))
    assert [v.version for v in list_versions(workspace / "indexes", "tiny")] == ["v0001"]
    assert load_current(workspace / "indexes", "tiny").manifest["index"]["type"] == "flat"

    hnsw = run_publish(make_config(workspace, tiny_model_dir, beir_dir, index={"type": "hnsw"}))
    assert hnsw.version == "v0002"
    assert hnsw.recall_at_10 >= 0.99
    assert (hnsw.documents_encoded, hnsw.documents_reused) == (0, 36)
    assert segments_of(workspace) == stamps
    assert bm25_meta.stat().st_mtime_ns == bm25_stamp  # the same corpus: its BM25 index is not built again
    assert load_current(workspace / "indexes", "tiny").manifest["index"]["search_params"] == {"efSearch": 128}


def test_registered_model_is_resolved_and_index_logged_to_its_run(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from denseflow.flows.publish_index import run_publish
    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig()
    configure_tracking(tracking, tmp_path)
    # Registered the cheap way (plain artifacts, no flavour): resolution only needs the model folder.
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_model_dir), "model")
    client = MlflowClient()
    client.create_registered_model("retriever")
    version = client.create_model_version("retriever", f"runs:/{run.info.run_id}/model", run.info.run_id).version
    version = str(version)  # the SQLite store returns an int; the registry API speaks strings
    client.set_registered_model_alias("retriever", "production", version)

    config = make_config(tmp_path, tiny_model_dir, tiny_beir_dir).model_copy(
        update={"model": "retriever@production", "tracking": tracking}
    )
    result = run_publish(config)
    assert result.model.version == version
    assert result.model.run_id == run.info.run_id
    manifest = load_current(tmp_path / "indexes", "tiny").manifest
    assert (manifest["model"]["name"], manifest["model"]["version"]) == ("retriever", version)
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "indexes/tiny/v0001")}
    # Every file search needs, in the same version folder: a replica can serve the version from the registry.
    names = ("index.faiss", "doc_ids.json", "manifest.json", "bm25", "docs.sqlite", "query_tower")
    assert artifacts == {f"indexes/tiny/v0001/{name}" for name in names}
    logged = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="indexes/tiny/v0001/manifest.json", dst_path=str(tmp_path / "dl")
            )
        ).read_text()
    )
    assert logged["files"] == manifest["files"]
    assert MlflowClient().get_model_version("retriever", version).tags["index.tiny"] == "v0001"
    logged_metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert (logged_metrics["publish.documents_encoded"], logged_metrics["publish.documents_reused"]) == (36, 0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_publication_reuses_the_corpus_embeddings_evaluation_cached(
    precision: str, local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from denseflow.flows.publish_index import run_publish
    from denseflow.model.data.beir import RejectLog, load_beir
    from denseflow.model.encoder import cached_corpus_embeddings

    _, beir_dir, _ = local_run
    corpus = load_beir(beir_dir, ["test"], RejectLog()).corpus
    # Cached in another document order: the rows must still land on the right ids.
    reordered = dict(reversed(list(corpus.items())))
    cache = tmp_path / "cache" / "embeddings"
    cached_ids, cached = cached_corpus_embeddings(tiny_model_dir, reordered, cache, precision=precision)

    reused = run_publish(make_config(tmp_path, tiny_model_dir, beir_dir, precision))
    assert reused.precision == precision
    assert (reused.shards, reused.documents_encoded, reused.documents_reused) == (0, 0, 36)
    published_ids = load_current(tmp_path / "indexes", "tiny").doc_ids
    assert published_ids == load_current(local_run[0] / "indexes", "tiny").doc_ids
    expected = cached[[cached_ids.index(doc_id) for doc_id in published_ids]]
    np.testing.assert_allclose(embeddings_of(tmp_path), expected, rtol=0, atol=1e-6)
    if precision == "fp32":
        np.testing.assert_allclose(embeddings_of(tmp_path), embeddings_of(local_run[0]), rtol=0, atol=1e-5)


def test_a_changed_corpus_encodes_only_new_and_edited_documents_and_drops_deleted_ones(
    local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from denseflow.flows.publish_index import run_publish

    workspace, beir_dir, _ = local_run
    first_workspace = tmp_path / "ws"
    shutil.copytree(workspace, first_workspace)  # the module's publication, cache included
    changed = tmp_path / "changed"
    shutil.copytree(beir_dir, changed)
    rows = [json.loads(line) for line in (changed / "corpus.jsonl").read_text().splitlines()]
    rows[0]["text"] += " now with an erratum"
    deleted = rows.pop(1)["_id"]
    rows.append({"_id": "new-doc", "title": "Brand new", "text": "a document added after the first publication"})
    (changed / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = run_publish(make_config(first_workspace, tiny_model_dir, changed))
    assert (result.documents, result.documents_encoded, result.documents_reused) == (36, 2, 34)
    served = load_current(first_workspace / "indexes", "tiny")
    assert deleted not in served.doc_ids
    assert "new-doc" in served.doc_ids
    fresh = tmp_path / "fresh"
    run_publish(make_config(fresh, tiny_model_dir, changed))
    # Cached and new vectors together equal encoding the changed corpus from nothing.
    np.testing.assert_allclose(embeddings_of(first_workspace), embeddings_of(fresh), rtol=0, atol=1e-5)
    assert served.doc_ids == load_current(fresh / "indexes", "tiny").doc_ids
    # BM25 took the unchanged documents' term counts from the first publication: the same scores as from nothing.
    fresh_bm25 = load_current(fresh / "indexes", "tiny").bm25
    for query in ("erratum", "brand new document", rows[2]["text"]):
        np.testing.assert_allclose(served.bm25.scores(query), fresh_bm25.scores(query), rtol=1e-6)


def test_search_embeds_queries_with_the_published_query_tower_without_torch(
    local_run: tuple[Path, Path, PublishResult], tiny_model_dir: Path
) -> None:
    """`denseflow search` used to import torch and sentence-transformers for a 13 ms encode."""
    import subprocess
    import sys

    from denseflow.model.encoder import encode, load_encoder

    workspace = local_run[0]
    published = load_current(workspace / "indexes", "tiny")
    assert (published.path / "query_tower" / "model.onnx").is_file()
    assert any(name.startswith("query_tower/") for name in published.manifest["files"])  # under the checksums
    fast, slow = Searcher(workspace / "indexes", "tiny"), Searcher(workspace / "indexes", "tiny", backend="torch")
    assert fast.health()["query_backend"] == "onnxruntime (torch-free)"
    queries = ["what about brain neuron", "heart rate", "gene"]
    reference = encode(load_encoder(tiny_model_dir), queries, "query")
    np.testing.assert_allclose(np.vstack([fast.encode_query(q) for q in queries]), reference, atol=1e-4)
    for query in queries:
        ours, theirs = fast.search(query, k=5, mode="dense").hits, slow.search(query, k=5, mode="dense").hits
        assert [hit.doc_id for hit in ours] == [hit.doc_id for hit in theirs]
        np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-4)

    script = (
        "import sys, json; from denseflow.cli.main import main; "
        f"code = main(['search', 'brain neuron', '-k', '3', '--name', 'tiny', '--workspace', {str(workspace)!r}, '--json']); "
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, 'st': 'sentence_transformers' in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict == {"code": 0, "torch": False, "st": False}, done.stderr[-2000:]
