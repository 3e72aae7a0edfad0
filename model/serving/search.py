"""Query-time search over the published index: encode one query with the index's own model, search.

The :class:`Searcher` serves whatever ``current`` points at, in one of three modes: ``dense`` (FAISS),
``bm25`` (the version's BM25 index) or ``hybrid`` (both rankings, top ``depth`` each, fused by
:func:`denseflow.model.fusion.fuse_query` with the weight and method the manifest records, the
same fusion retrain evaluated). The default is the mode the version was published with.

It loads the model stored with that version (the exact weights that encoded the corpus), so an index is
never queried through another model's embedding space. When ``current`` moves it loads the new version
beside the old one and swaps both together; a version that fails its checks is refused and the old one
keeps serving.

A replica (:mod:`denseflow.model.serving.replica`) serves one downloaded version folder instead: there is no
``current`` to follow, the replica hands each new folder to :meth:`Searcher.serve_folder`, and the same swap applies.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from denseflow.model.checksums import model_fingerprint
from denseflow.model.evaluation.metrics import ranked
from denseflow.model.fusion import fuse_query
from denseflow.model.index.build import search
from denseflow.model.index.manifest import Manifest, ModelRef
from denseflow.model.index.store import (
    MODEL_FOLDER,
    SEARCH_MODES,
    LoadedIndex,
    ModelMismatchError,
    PublishedIndexError,
    SearchSettingsError,
    index_home,
    load_version,
    published_model_checksum,
    read_pointer,
)
from denseflow.model.index.store import NoPublishedIndexError as NoPublishedIndexError
from denseflow.model.serving.batching import MicroBatcher
from denseflow.model.serving.query_tower import OnnxQueryTower
from denseflow.model.serving.snippets import MAX_TEXT_CHARS, Snippet, make_snippet

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2000
MAX_K = 1000


class QueryError(ValueError):
    """The query or k cannot be served; the message says why (a 4xx for the HTTP service)."""


FIELDS = ("title", "snippet", "text")
DEFAULT_FIELDS = ("title", "snippet")
MAX_TITLE_CHARS = 300


def validate_fields(fields: Any) -> tuple[str, ...]:
    if fields is None:
        return ()
    if isinstance(fields, str):
        fields = [part.strip() for part in fields.split(",") if part.strip()]
    unknown = [field for field in fields if field not in FIELDS]
    if unknown:
        raise QueryError(f"fields must be among {', '.join(FIELDS)}, got {', '.join(map(str, unknown))}")
    return tuple(fields)


def with_documents(
    hits: list[Hit], stored: dict[str, tuple[str, str]], query: str, fields: tuple[str, ...]
) -> list[Hit]:
    """The hits with the asked fields filled from their stored documents, each bounded in size."""
    filled = []
    for hit in hits:
        if hit.doc_id not in stored:
            filled.append(hit)
            continue
        title, body = stored[hit.doc_id]
        filled.append(
            replace(
                hit,
                title=title[:MAX_TITLE_CHARS] if "title" in fields else None,
                snippet=make_snippet(body, query) if "snippet" in fields else None,
                text=body[:MAX_TEXT_CHARS] if "text" in fields else None,
            )
        )
    return filled


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    title: str | None = None
    snippet: Snippet | None = None
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"rank": self.rank, "doc_id": self.doc_id, "score": self.score}
        if self.title is not None:
            row["title"] = self.title
        if self.snippet is not None:
            row["snippet"] = self.snippet.plain()
            row["highlights"] = [list(span) for span in self.snippet.spans]
        if self.text is not None:
            row["text"] = self.text
        return row


@dataclass(frozen=True)
class SearchResult:
    query: str
    k: int
    hits: list[Hit]
    index_version: str
    model: str
    encode_ms: float
    search_ms: float
    mode: str = "dense"

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "k": self.k,
            "mode": self.mode,
            "index_version": self.index_version,
            "model": self.model,
            "encode_ms": round(self.encode_ms, 3),
            "search_ms": round(self.search_ms, 3),
            "hits": [hit.as_dict() for hit in self.hits],
        }


@dataclass(frozen=True)
class LoadedModel:
    """A model together with the identity the manifest must name: name, version and file checksum."""

    model: Any  # a SentenceTransformer, or the torch-free OnnxQueryTower of the published version
    checksum: str
    name: str | None = None
    version: str | None = None
    source: str = ""
    backend: str = "torch"


@dataclass(frozen=True)
class _State:
    index: LoadedIndex
    model: LoadedModel
    precision: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def model_label(self) -> str:
        return str(ModelRef(name=self.model.name, version=self.model.version).label)


def check_model(manifest: Manifest, loaded: LoadedModel, dimension: int) -> None:
    """Refuse a manifest whose model is not ``loaded``: checksum, name/version and dimension must agree."""
    named = manifest.model
    where = f"index {manifest.name}/{manifest.version}"
    if named.checksum != loaded.checksum:
        raise ModelMismatchError(
            f"{where} was built with model {named.name}@{named.version} "
            f"(checksum {str(named.checksum)[:12]}), but the loaded model {loaded.source} "
            f"has checksum {loaded.checksum[:12]}: refusing to pair them"
        )
    if loaded.name is not None and (named.name, str(named.version)) != (loaded.name, str(loaded.version)):
        raise ModelMismatchError(
            f"{where} names model {named.name}@{named.version}, "
            f"but {loaded.name}@{loaded.version} is loaded: refusing to pair them"
        )
    model_dim = (
        loaded.model.dimension if isinstance(loaded.model, OnnxQueryTower) else loaded.model.get_embedding_dimension()
    )
    if model_dim != dimension:
        raise ModelMismatchError(f"{where} has dimension {dimension}, the model produces {model_dim}")


def validate_query(query: Any, k: Any, max_k: int = MAX_K, max_chars: int = MAX_QUERY_CHARS) -> tuple[str, int]:
    if not isinstance(query, str):
        raise QueryError("query must be a string")
    text = query.strip()
    if not text:
        raise QueryError("query is empty")
    if len(text) > max_chars:
        raise QueryError(f"query is {len(text)} characters long; the limit is {max_chars}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise QueryError("k must be an integer")
    if not 1 <= k <= max_k:
        raise QueryError(f"k must be between 1 and {max_k}, got {k}")
    return text, k


class Searcher:
    """Searches the index ``current`` names under ``root/name``, reloading when the pointer moves.

    ``model_dir`` pins an external model folder instead of the copy stored with each version; versions
    built with any other model are then refused. ``reload_interval_s`` bounds how often the pointer
    file is read (0 = before every query). ``threads`` caps intra-op threads for query encoding.
    ``backend``: ``auto`` runs the query tower on ONNX Runtime when it exports and matches PyTorch
    (see :mod:`denseflow.model.serving.onnx_backend`), ``onnx`` insists on it, ``torch`` never tries.
    ``onnx-int8`` runs it int8-quantized where that keeps the probes' cosine to PyTorch at
    ``int8_min_cosine``, else falls back to ONNX fp32 (then PyTorch) and says so in the log and ``health()``.
    ``mode`` (dense, bm25, hybrid) overrides the mode each version was published with; a version that
    cannot serve it (no BM25 index) is refused like a corrupt one.
    ``folder``: serve that one version folder (a replica's download, :meth:`for_folder`) instead of following
    ``current``; a copy without ``model/`` embeds queries with its query tower.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        model_dir: Path | None = None,
        reload_interval_s: float = 1.0,
        threads: int | None = None,
        max_k: int = MAX_K,
        max_query_chars: int = MAX_QUERY_CHARS,
        backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto",
        int8_min_cosine: float = 0.99,
        mode: str | None = None,
        batch_wait_ms: float = 0.0,
        max_batch: int = 32,
        folder: Path | None = None,
    ) -> None:
        if mode is not None and mode not in SEARCH_MODES:
            raise ValueError(f"search mode {mode!r} is not one of {', '.join(SEARCH_MODES)}")
        self.mode = mode
        self.root = Path(root)
        self.backend = backend
        self.int8_min_cosine = int8_min_cosine
        self.threads = threads
        self.name = name
        self.reload_interval_s = reload_interval_s
        self.max_k = max_k
        self.max_query_chars = max_query_chars
        self.last_error: str | None = None
        self.pointer_error: str | None = None
        self._pinned = self._load_model(Path(model_dir), None) if model_dir else None
        # Concurrent queries embedded together (model/serving/batching.py); 0 ms = each alone.
        self._batcher = MicroBatcher(self._encode, batch_wait_ms / 1e3, max_batch) if batch_wait_ms > 0 else None
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._refused: str | None = None
        self._folder = Path(folder) if folder is not None else None
        if self._folder is not None:
            self._state = self._load(self._folder, previous=None)
            return
        version = read_pointer(self.root, name)
        if version is None:
            raise NoPublishedIndexError(f"{index_home(self.root, name)}: nothing published yet")
        self._state = self._load(index_home(self.root, name) / version, previous=None)

    @classmethod
    def for_folder(cls, folder: Path, name: str, **options: Any) -> Searcher:
        """A searcher of one version folder that follows no pointer; :meth:`serve_folder` swaps in another."""
        return cls(Path(folder).parent, name, folder=Path(folder), reload_interval_s=float("inf"), **options)

    # ------------------------------------------------------------------ loading
    def _load_model(
        self,
        model_dir: Path,
        manifest: Manifest | None,
        checksum: str | None = None,
        query_tower: Path | None = None,
    ) -> LoadedModel:
        """``checksum`` of files already verified against a manifest; otherwise the folder is hashed here.

        With ``query_tower`` (the version's torch-free export, verified with its files) and a backend that allows
        ONNX, queries are embedded there and torch is never imported."""
        named = manifest.model if manifest is not None else ModelRef()
        if query_tower is not None and self.backend in ("auto", "onnx"):
            tower = OnnxQueryTower(query_tower, self.threads)
            return LoadedModel(tower, checksum or model_fingerprint(model_dir), named.name,
                               named.version, str(model_dir), "onnxruntime (torch-free)")  # fmt: skip
        import torch

        from denseflow.model.encoder import load_encoder
        from denseflow.model.serving.onnx_backend import use_onnx_for_queries

        if self.threads:
            torch.set_num_threads(self.threads)

        # Queries at their own length; versions published before it was recorded used the documents' one.
        model = load_encoder(model_dir, named.query_length)
        checksum = checksum or model_fingerprint(model_dir)
        backend = "torch"
        if self.backend != "torch":
            wanted = "int8" if self.backend == "onnx-int8" else "fp32"
            kept = use_onnx_for_queries(model, self.threads, precision=wanted, min_cosine=self.int8_min_cosine)
            if kept:
                backend = "onnxruntime" if kept == "fp32" else "onnxruntime-int8"
            elif self.backend == "onnx":
                raise RuntimeError(f"{model_dir}: the query tower could not run on ONNX Runtime (see the log)")
        return LoadedModel(model, checksum, named.name, named.version, str(model_dir), backend)

    def _load(self, path: Path, previous: _State | None) -> _State:
        # A replica's copy of a version may leave out model/ when its query tower embeds queries (the download
        # then skips the weights); in the workspace a missing model/ is damage, refused like any missing file.
        model_less = self._folder is not None and not (path / MODEL_FOLDER).is_dir()
        loaded = load_version(path, verify=True, absent_ok=(MODEL_FOLDER,) if model_less else ())
        exported = loaded.manifest.query_tower
        if model_less and (exported is None or self.backend not in ("auto", "onnx")):
            raise PublishedIndexError(
                f"{path}: no {MODEL_FOLDER}/ folder, and no query tower to embed queries without it"
                + (f" (backend {self.backend} needs the model)" if exported is not None else "")
            )
        version = loaded.version
        if self.mode is not None and self.mode not in loaded.modes():
            raise SearchSettingsError(f"{loaded.path}: no BM25 index, so it cannot serve mode {self.mode!r}")
        manifest = loaded.manifest
        stored_checksum = published_model_checksum(manifest.files)  # the files were just verified against this map
        if stored_checksum != manifest.model.checksum:
            raise ModelMismatchError(f"{loaded.path}: manifest's model checksum does not match its model/ files")
        named = manifest.model
        if self._pinned is not None:
            model = self._pinned
        elif previous is not None and previous.model.checksum == named.checksum:
            # Same weights: keep the warm model, but take the identity the new manifest gives it.
            model = replace(previous.model, name=named.name, version=named.version)
        else:
            tower = loaded.path / exported.folder if exported is not None else None
            model = self._load_model(loaded.model_dir, manifest, stored_checksum, tower)
        check_model(manifest, model if self._pinned is None else _unnamed(model), loaded.index.d)
        precision = "fp32"
        if not isinstance(model.model, OnnxQueryTower):
            from denseflow.model.encoder import native_bf16, tower_type

            expected_towers = named.tower_type
            if expected_towers and expected_towers != tower_type(model.model):
                raise ModelMismatchError(f"{loaded.path}: manifest says {expected_towers} towers, model is not")
            if manifest.precision == "bf16" and native_bf16():
                precision = "bf16"
        log.info("serving index %s/%s with model %s", self.name, version, model.source or named.name)
        if loaded.documents is None:
            log.warning(
                "index %s/%s was published without its documents: hits carry ids and scores only (publish again "
                "to serve titles and snippets)",
                self.name,
                version,
            )
        return _State(loaded, model, precision)

    def maybe_reload(self, force: bool = False) -> bool:
        """Follow ``current`` if it moved; returns True when a new version was swapped in."""
        if self._folder is not None:
            return False  # one folder, no pointer: the replica swaps with serve_folder
        now = time.monotonic()
        if not force and now - self._checked_at < self.reload_interval_s:
            return False
        with self._lock:
            self._checked_at = now
            try:
                version = read_pointer(self.root, self.name)
            except (PublishedIndexError, OSError, UnicodeDecodeError) as err:
                # Garbage, binary or unreadable: refuse to answer from a version nobody points at any more.
                self.pointer_error = " ".join(f"{self.name}: current pointer unreadable: {err}".split())
                return False
            self.pointer_error = None
            if version == self._state.index.version:
                self._refused, self.last_error = None, None  # a restored pointer clears the degraded state
                return False
            if version is None or version == self._refused:
                return False
            try:
                state = self._load(index_home(self.root, self.name) / version, previous=self._state)
            except Exception as err:  # a bad version must not take the service down
                self._refused = version
                self.last_error = f"refused {self.name}/{version}: {err}"
                log.error(self.last_error)
                return False
            self._state, self._refused, self.last_error = state, None, None
            return True

    def serve_folder(self, folder: Path) -> None:
        """Load ``folder`` beside the version being served, then swap both index and model in one assignment.

        In-flight queries finish on the state they read; a folder that fails its checks raises, and the version
        being served keeps serving."""
        with self._lock:
            self._state = self._load(Path(folder), previous=self._state)
            self._folder, self.last_error = Path(folder), None

    @property
    def default_mode(self) -> str:
        """The mode a query that names none is answered in."""
        return self.mode or self._state.index.search.mode

    # ------------------------------------------------------------------ querying
    def encode_query(self, query: str) -> np.ndarray:
        return self._encode(self._state, [query])

    @staticmethod
    def _encode(state: _State, texts: list[str]) -> np.ndarray:
        if isinstance(state.model.model, OnnxQueryTower):
            return state.model.model.encode(texts)
        from denseflow.model.encoder import encode

        return encode(state.model.model, texts, role="query", batch_size=len(texts), precision=state.precision)

    def _mode_for(self, state: _State, requested: Any) -> str:
        if requested is not None and requested not in SEARCH_MODES:
            raise QueryError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {requested!r}")
        mode = requested or self.mode or state.index.search.mode
        if mode not in state.index.modes():
            raise QueryError(f"index {self.name}/{state.index.version} has no BM25 index: it serves dense only")
        return mode

    def search(self, query: Any, k: Any = 10, mode: Any = None, fields: Any = DEFAULT_FIELDS) -> SearchResult:
        """Top ``k`` for ``query`` in ``mode`` (None: the searcher's mode, else the version's published one).

        ``fields``: what each hit carries beside id and score, from the version's stored documents: ``title``,
        ``snippet`` (a window around the query's terms) and ``text`` (the whole text, bounded); versions
        published before documents were stored answer with ids only."""
        fields = validate_fields(fields)
        text, k = validate_query(query, k, self.max_k, self.max_query_chars)
        self.maybe_reload()
        if self.pointer_error is not None:
            raise PublishedIndexError(self.pointer_error)
        state = self._state  # one read: model and indexes always come from the same version
        mode = self._mode_for(state, mode)
        fusion = state.index.search.hybrid
        depth = k if mode == "dense" else max(k, fusion.depth)
        start = time.perf_counter()
        dense: dict[str, float] = {}
        encoded = start
        if mode != "bm25":
            if self._batcher is not None:
                vector = self._batcher.encode(id(state), state, text)
            else:
                vector = self._encode(state, [text])
            encoded = time.perf_counter()
            scores, rows = search(state.index.index, vector, min(depth, state.index.index.ntotal))
            dense = {
                state.index.doc_ids[row]: float(score)
                for row, score in zip(rows[0], scores[0], strict=True)
                if row >= 0
            }
        ranking = dense
        if mode != "dense":
            assert state.index.bm25 is not None  # _mode_for checked it
            # A document scoring 0 shares no term with the query; min-max would lift a page of them to 1.
            sparse = {doc_id: score for doc_id, score in state.index.bm25.search(text, depth) if score > 0}
            ranking = sparse if mode == "bm25" else fuse_query(dense, sparse, fusion.weight, fusion.method)
        done = time.perf_counter()
        hits = [Hit(rank, doc_id, ranking[doc_id]) for rank, doc_id in enumerate(ranked(ranking)[:k], start=1)]
        if fields and state.index.documents is not None:
            hits = with_documents(hits, state.index.documents.get_many([hit.doc_id for hit in hits]), text, fields)
        return SearchResult(
            text,
            k,
            hits,
            state.index.version,
            state.model_label,
            (encoded - start) * 1e3,
            (done - encoded) * 1e3,
            mode,
        )

    def health(self) -> dict[str, Any]:
        state = self._state
        manifest = state.index.manifest
        named = manifest.model
        return {
            "status": "ok" if self.last_error is None and self.pointer_error is None else "degraded",
            "index": self.name,
            "index_version": state.index.version,
            "documents": int(state.index.index.ntotal),
            "index_type": manifest.index.type,
            "model": named.name,
            "model_version": named.version,
            "model_run_id": named.run_id,
            "query_backend": state.model.backend,
            "search_mode": self.mode or state.index.search.mode,
            "modes": list(state.index.modes()),
            "fusion": state.index.search.to_dict()["hybrid"],
            "pointer": None if self.pointer_error or self._folder else _pointer_or_none(self.root, self.name),
            "last_error": self.pointer_error or self.last_error,
        }


def _pointer_or_none(root: Path, name: str) -> str | None:
    try:
        return read_pointer(root, name)
    except (PublishedIndexError, OSError, UnicodeDecodeError):
        return None


def _unnamed(model: LoadedModel) -> LoadedModel:
    """A pinned model folder carries no registry identity of its own: only its checksum is compared."""
    return replace(model, name=None, version=None)
