"""The index manifest: what one published version holds and how to serve it, as one typed record.

Publication writes it: the caller (the publish task, a benchmark, a test) builds a :class:`ManifestDraft` (model
identity, corpus fingerprint, index type, build and recall figures, the encoding, the search to serve) and
:func:`denseflow.model.index.store.publish` completes it into a :class:`Manifest` (version, count, dimension,
BM25, documents, query tower, the sha256 of every file) written as ``manifest.json`` beside those files. The
store (:func:`~denseflow.model.index.store.read_manifest`, the one reader), :class:`~denseflow.model.serving.search.Searcher`, ``denseflow index list``, replicas and the copy logged
under the model version in the registry all read it back through :meth:`Manifest.from_dict`.

On disk it stays plain JSON (:meth:`Manifest.to_dict`, the same keys and values as before it was typed), so any
tool reads it. A field added after the first published versions is optional, and ``None`` (or the section's
absence) means what it meant for them: no ``search`` section serves dense only, no ``query_tower`` embeds
queries with the model, no ``documents`` answers with ids only, a BM25 section without its tokenizer is loaded
with the one its own folder records.

``format_version`` names the on-disk format. A reader refuses a version it does not know (a newer denseflow
wrote it) with :class:`ManifestError` rather than misreading it; a manifest without the key is format 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.index.build import IndexSpec, PublishedIndexError
from denseflow.model.index.documents import DOCS_FILE
from denseflow.model.served_system import ServedSystem, ServedSystemError

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS: tuple[int, ...] = (1,)
BM25_FOLDER = "bm25"
QUERY_TOWER_FOLDER = "query_tower"
DEFAULT_SEARCH = {"mode": "hybrid", "hybrid": {"weight": 0.5, "method": "convex", "depth": 100}}


class ManifestError(PublishedIndexError, ValueError):
    """A manifest this denseflow cannot read: not a JSON object, a section of the wrong shape, a required field
    missing, or a ``format_version`` it does not know."""


# --------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelRef:
    """The model that encoded the corpus (and must encode queries): its registry identity, towers and lengths.

    ``version`` and ``run_id`` are None for a model published from a bare folder; ``checksum`` is set by
    publication from the version's own ``model/`` files."""

    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    tower_type: str | None = None  # "symmetric" | "asymmetric"; None: not recorded, not checked
    max_seq_length: int | None = None  # the documents' length
    query_max_seq_length: int | None = None  # None: queries at the documents' length (versions before it)
    checksum: str | None = None

    @property
    def label(self) -> str | None:
        """``name@version``; a model published from a folder has no version, so its name alone."""
        if self.name is None and self.version is None:
            return None
        return f"{self.name}@{self.version}" if self.version is not None else str(self.name)

    @property
    def query_length(self) -> int | None:
        """The length queries are embedded at."""
        return self.query_max_seq_length or self.max_seq_length


@dataclass(frozen=True)
class IndexSection:
    """The FAISS index: its type, factory string, the parameters applied at load time and those it was built with."""

    type: str | None = None
    factory: str | None = None
    search_params: dict[str, Any] = field(default_factory=dict)
    build_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: IndexSpec, count: int, dimension: int) -> IndexSection:
        return cls(
            spec.type,
            spec.factory_string(count, dimension),
            spec.search_params(),
            {"hnsw_ef_construction": spec.hnsw_ef_construction} if spec.type == "hnsw" else {},
        )


@dataclass(frozen=True)
class Verification:
    """Recall@10 of the index against exact search, on how many queries (None: an exact index, nothing to check)."""

    recall_at_10: float | None = None
    queries: int | None = None


@dataclass(frozen=True)
class EncodeRecord:
    """How the corpus was encoded: the precision kept and the one asked for, the check against fp32 that decided it
    (:class:`~denseflow.model.index.publication.PrecisionChoice`'s fields), the batch, and how many documents were
    encoded now versus taken from the embedding cache."""

    precision: str | None = None
    requested: str | None = None
    sample_docs: int | None = None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    neighbour_recall: float | None = None
    fallback: str | None = None
    batch_size: int | None = None
    documents_encoded: int | None = None
    documents_reused: int | None = None


@dataclass(frozen=True)
class CorpusRecord:
    """Where the corpus was read from, and how many of its rows were rejected."""

    path: str | None = None
    rejected_rows: int | None = None


@dataclass(frozen=True)
class HybridSection:
    """The fusion a hybrid query uses: the dense weight, the method and how deep each ranking is read."""

    weight: float
    method: str
    depth: int


@dataclass(frozen=True)
class SearchSection:
    """The mode served by default (dense, bm25, hybrid) and the hybrid fusion.

    Read as written: :func:`denseflow.model.index.store.check_search_settings` judges the values when a version is
    loaded (so a version with a bad section is still listed, and refused only when served)."""

    mode: str
    hybrid: HybridSection

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "search") -> SearchSection:
        hybrid = _mapping(_mapping(data, where).get("hybrid") or {}, f"{where}.hybrid")
        return cls(data.get("mode"), HybridSection(hybrid.get("weight"), hybrid.get("method"), hybrid.get("depth")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A version published before BM25 was carried has no search section: it serves dense only.
DENSE_ONLY = SearchSection("dense", HybridSection(**DEFAULT_SEARCH["hybrid"]))


@dataclass(frozen=True)
class BM25Section:
    """The BM25 index beside the dense one: its folder and the metadata its ``denseflow.json`` records."""

    folder: str = BM25_FOLDER
    library: str | None = None
    tokenizer: str | None = None  # None: published before the analyzer was recorded whole
    stemmer: str | None = None
    stopwords: str | None = None
    documents: int | None = None
    k1: float | None = None
    b: float | None = None
    method: str | None = None
    idf_method: str | None = None

    def settings(self) -> BM25Settings | None:
        """The settings the index must have been built with (None when they were not recorded whole);
        :class:`~denseflow.model.index.bm25.BM25FormatError` for a tokenizer this denseflow cannot run."""
        if self.tokenizer is None or self.k1 is None or self.b is None:
            return None
        return BM25Settings.from_tokenizer(self.tokenizer, float(self.k1), float(self.b))


@dataclass(frozen=True)
class DocumentsSection:
    """The stored documents (id, title, text) that search answers carry."""

    file: str = DOCS_FILE
    count: int | None = None


@dataclass(frozen=True)
class QueryTowerSection:
    """The torch-free query tower (ONNX and its tokenizer)."""

    folder: str = QUERY_TOWER_FOLDER


# --------------------------------------------------------------------------------------------- the record


@dataclass(frozen=True, kw_only=True)
class ManifestDraft:
    """The caller's part of a manifest: what it knows before publication (see :meth:`complete`)."""

    model: ModelRef = field(default_factory=ModelRef)
    corpus_fingerprint: str | None = None
    index: IndexSection = field(default_factory=IndexSection)
    build_seconds: float | None = None
    verification: Verification = field(default_factory=Verification)
    encode: EncodeRecord | None = None  # None: published by a caller that did not record it (tests, benchmarks)
    corpus: CorpusRecord | None = None
    search: SearchSection | None = None  # None in a draft: publication picks hybrid with BM25, else dense
    served_system: ServedSystem | None = None  # the model version's served-system record; None for a bare folder

    @classmethod
    def from_dict(cls, data: Any, path: Path | str | None = None) -> ManifestDraft:
        where = str(path) if path is not None else "manifest"
        return cls(**_draft_fields(_mapping(data, where, "manifest is not a JSON object"), where))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": asdict(self.model),
            "corpus_fingerprint": self.corpus_fingerprint,
            "index": asdict(self.index),
            "build_seconds": self.build_seconds,
            "verification": asdict(self.verification),
            "served_system": self.served_system.as_dict() if self.served_system is not None else None,
        }
        optional = {"encode": self.encode, "corpus": self.corpus, "search": self.search}
        return data | {key: asdict(value) for key, value in optional.items() if value is not None}

    def complete(self, **published: Any) -> Manifest:
        """The whole manifest: this draft with what publication adds (version, count, files, ...)."""
        return Manifest(**({f.name: getattr(self, f.name) for f in fields(ManifestDraft)} | published))


@dataclass(frozen=True, kw_only=True)
class Manifest(ManifestDraft):
    """A published version's ``manifest.json``, read (:func:`~denseflow.model.index.store.read_manifest`, :meth:`from_dict`) or about to be written
    (:meth:`to_dict`)."""

    format_version: int = FORMAT_VERSION
    name: str | None = None  # the index name
    version: str  # the index version, ``v0007``
    created_at: str | None = None
    count: int
    dimension: int
    metric: str = "inner_product"
    normalized: bool = True
    files: dict[str, str] = field(default_factory=dict)  # sha256 of every file but the manifest, by relative path
    bm25: BM25Section | None = None  # None: dense only
    query_tower: QueryTowerSection | None = None  # None: queries are embedded with the model
    documents: DocumentsSection | None = None  # None: answers carry ids and scores only

    @classmethod
    def from_dict(cls, data: Any, path: Path | str | None = None) -> Manifest:
        """The manifest ``data`` (read from ``path``, named in errors) holds; the format version is checked first."""
        where = str(path) if path is not None else "manifest"
        data = _mapping(data, where, "manifest is not a JSON object")
        found = data.get("format_version", 1)
        if isinstance(found, bool) or found not in KNOWN_FORMAT_VERSIONS:
            known = ", ".join(map(str, KNOWN_FORMAT_VERSIONS))
            raise ManifestError(
                f"{where}: manifest format_version {found!r} is not one this denseflow reads ({known}): "
                "a newer denseflow wrote it, upgrade to load this version"
            )
        missing = [key for key in ("version", "count", "dimension") if key not in data]
        if missing:
            raise ManifestError(f"{where}: manifest has no {', '.join(missing)}")
        return cls(
            **_draft_fields(data, where),
            format_version=found,
            name=data.get("name"),
            version=data["version"],
            created_at=data.get("created_at"),
            count=data["count"],
            dimension=data["dimension"],
            metric=data.get("metric", "inner_product"),
            normalized=data.get("normalized", True),
            files=dict(_mapping(data.get("files") or {}, f"{where}: files")),
            bm25=_optional(BM25Section, data.get("bm25"), f"{where}: bm25"),
            query_tower=_optional(QueryTowerSection, data.get("query_tower"), f"{where}: query_tower"),
            documents=_optional(DocumentsSection, data.get("documents"), f"{where}: documents"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON written to ``manifest.json``."""
        data = super().to_dict() | {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "count": self.count,
            "dimension": self.dimension,
            "metric": self.metric,
            "normalized": self.normalized,
            "files": dict(self.files),
        }
        optional = {"bm25": self.bm25, "query_tower": self.query_tower, "documents": self.documents}
        return data | {key: asdict(value) for key, value in optional.items() if value is not None}

    def __getitem__(self, key: str) -> Any:
        """The record as written, by its JSON key (``manifest["encode"]["precision"]``), for tools and tests that
        read the file's shape; code reads the attributes."""
        return self.to_dict()[key]

    @property
    def served_search(self) -> SearchSection:
        """What to serve by default; a version published before BM25 was carried serves dense only."""
        return self.search or DENSE_ONLY

    @property
    def precision(self) -> str | None:
        """The precision the corpus was encoded in (None: not recorded, so fp32)."""
        return self.encode.precision if self.encode is not None else None


# --------------------------------------------------------------------------------------------- parsing

_Section = TypeVar("_Section")


def _mapping(data: Any, where: str, message: str = "not a JSON object") -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: {message}")
    return data


def read_section(cls: type[_Section], data: Any, where: str) -> _Section:
    """A section from its JSON object: known keys taken as written, absent ones at their defaults."""
    data = _mapping(data, where)
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _optional(cls: type[_Section], data: Any, where: str) -> _Section | None:
    """An optional section: absent (or empty, as readers always treated it) is None."""
    return read_section(cls, data, where) if data else None


def _draft_fields(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    served = data.get("served_system")
    try:
        served_system = ServedSystem.from_dict(_mapping(served, f"{where}: served_system")) if served else None
    except ServedSystemError:
        # The record documents the version; serving reads ``search`` and ``bm25``. One this denseflow cannot read
        # (a later schema, a stemmer missing here) must not stop the version from loading: format_version is the gate.
        served_system = None
    search = data.get("search")
    return {
        "model": read_section(ModelRef, data.get("model") or {}, f"{where}: model"),
        "corpus_fingerprint": data.get("corpus_fingerprint"),
        "index": read_section(IndexSection, data.get("index") or {}, f"{where}: index"),
        "build_seconds": data.get("build_seconds"),
        "verification": read_section(Verification, data.get("verification") or {}, f"{where}: verification"),
        "encode": _optional(EncodeRecord, data.get("encode"), f"{where}: encode"),
        "corpus": _optional(CorpusRecord, data.get("corpus"), f"{where}: corpus"),
        "search": SearchSection.from_dict(search, f"{where}: search") if search else None,
        "served_system": served_system,
    }
