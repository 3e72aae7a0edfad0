"""A publication's index between build and publish: built from the cached vectors, held to recall@10 against exact
search, and written with its draft manifest to a private build folder that :func:`denseflow.model.index.store.publish`
then moves into place.

The build folder is the hand-over between the build task and the publish task (a Dask worker may run either):
``index.faiss``, ``doc_ids.json``, the caller's part of the manifest and, when the export works, the ONNX query
tower.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
from sentence_transformers import SentenceTransformer

from denseflow.model.config import EncodeConfig, IndexConfig
from denseflow.model.encoder import encode, load_encoder, tower_type
from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.index.build import check_recall, timed_build
from denseflow.model.index.manifest import CorpusRecord, EncodeRecord, ManifestDraft, ModelRef, SearchSection
from denseflow.model.index.publication import PrecisionChoice, PublishPlan, assemble_embeddings
from denseflow.model.index.store import DOC_IDS_FILE, INDEX_FILE, QUERY_TOWER_FOLDER, build_manifest
from denseflow.model.onnx_runtime import export_query_tower
from denseflow.model.served_system import ServedSystem

PARTIAL_MANIFEST = "manifest.partial.json"  # the caller's part, from build to publish
VERIFY_BATCH = 64


@dataclass(frozen=True)
class ModelToPublish:
    """The model a publication encodes with: its registry identity (None for a bare folder) and search settings."""

    name: str
    version: str | None
    run_id: str | None
    model_dir: str
    search: dict[str, Any] = field(default_factory=dict)
    served: ServedSystem | None = None  # the version's served-system record (None for a bare folder)

    def bm25(self, configured: BM25Settings) -> BM25Settings:
        """BM25 as the version was evaluated with it; ``configured`` for a bare model folder."""
        return self.served.bm25 if self.served is not None else configured

    def identity(self, encoder: SentenceTransformer, document_length: int | None) -> ModelRef:
        """The manifest's model section: who encoded the corpus, its towers and both lengths."""
        return ModelRef(
            name=self.name,
            version=self.version,
            run_id=self.run_id,
            tower_type=tower_type(encoder),
            max_seq_length=document_length or encoder.max_seq_length,
            query_max_seq_length=self.served.query_max_seq_length if self.served else None,
        )


@dataclass(frozen=True)
class VerifiedIndex:
    """An index built from the cached vectors, its recall@10 against exact search checked, and its draft
    manifest."""

    index: faiss.Index
    doc_ids: list[str]
    manifest: ManifestDraft
    index_type: str
    recall_at_10: float
    build_seconds: float


def build_verified_index(
    plan: PublishPlan,
    model: ModelToPublish,
    encoder: SentenceTransformer,
    index_config: IndexConfig,
    choice: PrecisionChoice,
    encode_config: EncodeConfig,
) -> VerifiedIndex:
    """Build the configured index over the plan's cached vectors and hold it to recall@10 against exact search
    (``check_recall`` raises below ``index_config.recall_floor``), with the sample queries encoded by ``encoder``
    in the publication's precision; no query sample: sampled documents stand in."""
    snapshot = plan.snapshot
    doc_ids, embeddings = assemble_embeddings(plan)
    spec = index_config.spec()
    index, build_seconds = timed_build(embeddings, spec)
    queries = snapshot.verify_queries()
    query_embeddings = (
        encode(encoder, queries, "query", VERIFY_BATCH, choice.precision)  # type: ignore[arg-type]
        if queries
        else None
    )
    recall = check_recall(
        index, embeddings, spec, index_config.recall_floor, query_embeddings, index_config.verify_queries
    )
    verified = len(queries) if queries else min(index_config.verify_queries, len(doc_ids))
    identity = model.identity(encoder, encode_config.max_seq_length)
    manifest = replace(
        build_manifest(
            spec, len(doc_ids), embeddings.shape[1], identity, snapshot.fingerprint, build_seconds, recall, verified
        ),
        encode=EncodeRecord(
            **asdict(choice),
            batch_size=encode_config.batch_size,
            documents_encoded=plan.to_encode,
            documents_reused=plan.reused,
        ),
        corpus=CorpusRecord(snapshot.corpus_dir, snapshot.rejected_rows),
        search=SearchSection.from_dict(model.search) if model.search else None,
        served_system=model.served,
    )
    return VerifiedIndex(index, doc_ids, manifest, spec.type, recall, build_seconds)


def write_build(built: VerifiedIndex, parent: Path) -> Path:
    """A new private build folder under ``parent`` holding the index, its ids and the draft manifest."""
    build_dir = parent / f"build-{uuid.uuid4().hex[:8]}"
    build_dir.mkdir()
    faiss.write_index(built.index, str(build_dir / INDEX_FILE))
    (build_dir / DOC_IDS_FILE).write_text(json.dumps(built.doc_ids), encoding="utf-8")
    (build_dir / PARTIAL_MANIFEST).write_text(json.dumps(built.manifest.to_dict()), encoding="utf-8")
    return build_dir


def read_build(build_dir: Path) -> tuple[faiss.Index, list[str], ManifestDraft]:
    """What :func:`write_build` wrote: the index, its ids and the draft manifest."""
    index = faiss.read_index(str(build_dir / INDEX_FILE))
    doc_ids = json.loads((build_dir / DOC_IDS_FILE).read_text(encoding="utf-8"))
    partial = build_dir / PARTIAL_MANIFEST
    return index, doc_ids, ManifestDraft.from_dict(json.loads(partial.read_text(encoding="utf-8")), partial)


def built_query_tower(build_dir: Path) -> Path | None:
    """The build's exported query tower, None when it was not exported."""
    folder = build_dir / QUERY_TOWER_FOLDER
    return folder if folder.is_dir() else None


def export_build_query_tower(model_dir: str, build_dir: Path, query_length: int | None) -> str | None:
    """Export the query tower at its own length into the build folder, checked against the model; why not, when it
    was not (an optional speed-up: publication goes on without it, and search loads the model instead)."""
    folder = build_dir / QUERY_TOWER_FOLDER
    try:
        return export_query_tower(load_encoder(model_dir, query_length), folder, query_length)
    except Exception as err:  # noqa: BLE001 - an optional speed-up: publication goes on without it
        shutil.rmtree(folder, ignore_errors=True)
        return f"export failed: {type(err).__name__}: {err}"
