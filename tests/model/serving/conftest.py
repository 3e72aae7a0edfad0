"""Builders the serving tests share: the tiny corpus published as a version (with or without its documents)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denseflow.model.data.beir import RejectLog, find_file, read_corpus
from denseflow.model.encoder import encode, load_encoder
from denseflow.model.index.build import IndexSpec, build_index
from denseflow.model.index.documents import write_documents
from denseflow.model.index.store import build_manifest, publish


def publish_corpus(root: Path, model_dir: Path, beir_dir: Path, name: str = "tiny") -> tuple[list[str], np.ndarray]:
    """Encode the tiny corpus as documents and publish a Flat index of it with ``model_dir``."""
    model = load_encoder(model_dir)
    corpus = read_corpus(find_file(beir_dir, "corpus.jsonl"), RejectLog())
    doc_ids = list(corpus)
    embeddings = encode(model, [corpus[d].full_text for d in doc_ids], "document")
    spec = IndexSpec()
    identity = {"name": "retriever", "version": model_dir.name, "run_id": None, "tower_type": None}
    manifest = build_manifest(spec, len(doc_ids), embeddings.shape[1], identity, "fp", 0.0, 1.0, 0)
    publish(root, name, build_index(embeddings, spec), doc_ids, model_dir, manifest)
    return doc_ids, embeddings


def publish_with_documents(root: Path, model_dir: Path, beir_dir: Path) -> dict:
    """The tiny corpus published as ``tiny`` with its documents stored; returns the corpus."""
    model = load_encoder(model_dir)
    corpus = read_corpus(find_file(beir_dir, "corpus.jsonl"), RejectLog())
    doc_ids = list(corpus)
    embeddings = encode(model, [corpus[d].full_text for d in doc_ids], "document")
    spec = IndexSpec()
    identity = {"name": "retriever", "version": "1", "run_id": None, "tower_type": None}
    manifest = build_manifest(spec, len(doc_ids), embeddings.shape[1], identity, "fp", 0.0, 1.0, 0)
    root.mkdir(parents=True, exist_ok=True)
    documents = write_documents(root / "docs.sqlite", ((d, corpus[d].title, corpus[d].text) for d in doc_ids))
    publish(root, "tiny", build_index(embeddings, spec), doc_ids, model_dir, manifest, documents_file=documents)
    return corpus


def publish_model_version(
    root: Path,
    model_dir: Path,
    beir_dir: Path,
    model_version: str,
    query_tower_dir: Path | None,
    name: str = "tiny",
    documents: int | None = None,
) -> Path:
    """The tiny corpus (its first ``documents``) published as registered model ``retriever`` version ``model_version``
    would be, with its documents and, given ``query_tower_dir`` (an export of ``model_dir``'s tower), the torch-free
    query tower; returns the version folder."""
    model = load_encoder(model_dir)
    corpus = read_corpus(find_file(beir_dir, "corpus.jsonl"), RejectLog())
    doc_ids = list(corpus)[:documents]
    embeddings = encode(model, [corpus[d].full_text for d in doc_ids], "document")
    spec = IndexSpec()
    identity = {"name": "retriever", "version": model_version, "run_id": None, "tower_type": None}
    manifest = build_manifest(spec, len(doc_ids), embeddings.shape[1], identity, "fp", 0.0, 1.0, 0)
    root.mkdir(parents=True, exist_ok=True)
    stored = write_documents(
        root / f"docs-{model_version}.sqlite", ((d, corpus[d].title, corpus[d].text) for d in doc_ids)
    )
    info = publish(
        root,
        name,
        build_index(embeddings, spec),
        doc_ids,
        model_dir,
        manifest,
        keep=10,
        documents_file=stored,
        query_tower_dir=query_tower_dir,
    )
    return info.path
