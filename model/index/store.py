"""Published indexes: versioned folders on disk with a manifest, checksums and an atomically moved pointer.

Layout of one published index (``root`` is usually ``<workspace>/indexes``)::

    root/<name>/
        current            one line: the served version (moved with os.replace, never edited in place)
        history.jsonl      every pointer move: publish and rollback, with time and versions (written
                           before the move; a move that did not land is followed by an external line)
        .lock              flock'd while publishing, rolling back or pruning
        v0007/
            index.faiss    the FAISS index; row i is the document doc_ids[i]
            doc_ids.json   original document ids in row order
            model/         the exact model folder that encoded the corpus (queries must use it too)
            bm25/          the BM25 index over the same documents in the same row order (bm25s files)
            docs.sqlite    the documents themselves (id, title, text): search answers with text
            manifest.json  model name/version/run id, corpus fingerprint, dimension, metric, count,
                           index type and parameters, recall check, build time, BM25 parameters, the
                           search mode to serve (dense | bm25 | hybrid, with the fusion weight and
                           method), sha256 of every file (the typed record:
                           :class:`~denseflow.model.index.manifest.Manifest`)

A version is written to ``.staging-*``, fsync'd, re-read and checked, then renamed into place; only
then does ``current`` move, by ``os.replace`` of a temporary file. A crash anywhere before that rename
leaves the previous ``current`` pointing at a complete, checksummed folder.

Document ids are strings in general (BEIR), so the index keeps row positions and ``doc_ids.json``
maps them back; both are covered by the manifest's checksums so they cannot drift apart silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import faiss

from denseflow.model.checksums import folder_checksums, model_checksum
from denseflow.model.index.bm25 import META_FILE as BM25_META_FILE
from denseflow.model.index.bm25 import BM25FormatError, BM25Index
from denseflow.model.index.build import IndexSpec, PublishedIndexError, apply_search_params
from denseflow.model.index.documents import DOCS_FILE, DocumentStore
from denseflow.model.index.manifest import (
    BM25_FOLDER,
    DEFAULT_SEARCH,
    DENSE_ONLY,
    QUERY_TOWER_FOLDER,
    BM25Section,
    DocumentsSection,
    IndexSection,
    Manifest,
    ManifestDraft,
    ModelRef,
    QueryTowerSection,
    SearchSection,
    Verification,
    read_section,
)

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOC_IDS_FILE = "doc_ids.json"
MODEL_FOLDER = "model"
SearchMode = Literal["dense", "bm25", "hybrid"]
FusionMethod = Literal["convex", "zscore", "rrf"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
POINTER = "current"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ChecksumError(PublishedIndexError):
    """A published file does not match the sha256 recorded in its manifest."""


class ModelMismatchError(PublishedIndexError):
    """The manifest names a different model than the one loaded to encode queries."""


class NoPublishedIndexError(PublishedIndexError):
    """No ``current`` pointer (nothing published yet) or it names a missing version."""


class SearchSettingsError(PublishedIndexError):
    """A manifest's search section asks for something this version cannot serve or that is out of range."""


def search_settings(
    mode: str | None = None,
    weight: float | None = None,
    method: str | None = None,
    depth: int | None = None,
) -> dict[str, Any]:
    """The manifest's ``search`` section: the mode to serve by default and the hybrid fusion it uses.

    Unset parts take :data:`DEFAULT_SEARCH` (hybrid, dense weight 0.5, convex). Values are checked here
    because they also arrive from registry tags, which no pydantic model has validated.
    """
    hybrid = DEFAULT_SEARCH["hybrid"]
    settings = {
        "mode": mode if mode is not None else DEFAULT_SEARCH["mode"],
        "hybrid": {
            "weight": float(weight) if weight is not None else hybrid["weight"],
            "method": method if method is not None else hybrid["method"],
            "depth": int(depth) if depth is not None else hybrid["depth"],
        },
    }
    check_search_settings(settings)
    return settings


def check_search_settings(settings: Mapping[str, Any], where: str = "search settings") -> None:
    """Raise :class:`SearchSettingsError` for an unknown mode or method, a weight outside [0, 1] or depth < 1."""
    hybrid = settings.get("hybrid", {})
    if settings.get("mode") not in SEARCH_MODES:
        raise SearchSettingsError(f"{where}: search mode {settings.get('mode')!r} is not one of {SEARCH_MODES}")
    if hybrid.get("method") not in get_args(FusionMethod):
        raise SearchSettingsError(f"{where}: fusion method {hybrid.get('method')!r} is not convex or rrf")
    weight = hybrid.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise SearchSettingsError(f"{where}: fusion weight {weight!r} is outside [0, 1]")
    depth = hybrid.get("depth")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise SearchSettingsError(f"{where}: fusion depth {depth!r} must be a positive integer")


# --------------------------------------------------------------------------------------------- checksums


def published_model_checksum(files: Mapping[str, str]) -> str:
    """The model checksum of a version's ``model/`` copy, from its manifest's ``files`` map (no re-reading)."""
    prefix = f"{MODEL_FOLDER}/"
    return model_checksum({rel[len(prefix) :]: sha for rel, sha in files.items() if rel.startswith(prefix)})


def checksum_problems(version_dir: Path, manifest: Manifest, absent_ok: tuple[str, ...] = ()) -> list[str]:
    """Every file missing, extra or differing from the manifest, as ``"<file>: <what>"`` lines, sorted.

    ``absent_ok``: top-level folders a copy may lack (a replica's download has no ``model/`` when the version's
    query tower embeds queries); what is there of them is still checked."""
    recorded = manifest.files
    actual = folder_checksums(version_dir, skip=(MANIFEST,))
    optional = tuple(f"{folder}/" for folder in absent_ok)
    problems = [f"{rel}: missing" for rel in recorded if rel not in actual and not rel.startswith(optional)]
    problems += [f"{rel}: not in the manifest" for rel in actual if rel not in recorded]
    problems += [f"{rel}: sha256 differs" for rel in recorded if rel in actual and actual[rel] != recorded[rel]]
    if not recorded:
        problems.append("manifest records no checksums")
    return sorted(problems)


def verify_checksums(version_dir: Path, manifest: Manifest, absent_ok: tuple[str, ...] = ()) -> None:
    """Raise :class:`ChecksumError` naming every file missing, extra or differing from the manifest."""
    problems = checksum_problems(version_dir, manifest, absent_ok)
    if problems:
        raise ChecksumError(f"{version_dir}: refusing to load, {'; '.join(problems[:5])}")


# --------------------------------------------------------------------------------------------- versions


@dataclass
class LoadedIndex:
    """One published version read back: index (search parameters applied), ids and manifest."""

    path: Path
    index: faiss.Index
    doc_ids: list[str]
    manifest: Manifest
    bm25: BM25Index | None = None
    documents: DocumentStore | None = None  # None for versions published before documents were stored

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def search(self) -> SearchSection:
        """What to serve by default; a version published before BM25 was carried serves dense only."""
        return self.manifest.served_search

    def modes(self) -> tuple[str, ...]:
        """The search modes this version can answer."""
        return SEARCH_MODES if self.bm25 is not None else ("dense",)

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_FOLDER


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    current: bool
    manifest: Manifest | None = None
    broken: str | None = None  # why the manifest could not be read; such a version is listed, never loaded

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {"version": self.version, "current": self.current, "broken": self.broken}
        manifest = self.manifest
        if manifest is None:
            return (
                row
                | dict.fromkeys(("created_at", "model", "index_type", "count", "recall_at_10"))
                | {"search_mode": DENSE_ONLY.mode}
            )
        return row | {
            "created_at": manifest.created_at,
            "model": manifest.model.label,
            "index_type": manifest.index.type,
            "count": manifest.count,
            "recall_at_10": manifest.verification.recall_at_10,
            "search_mode": manifest.served_search.mode,
        }


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"index name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def index_home(root: Path, name: str) -> Path:
    return Path(root) / check_name(name)


def read_manifest(version_dir: Path) -> Manifest:
    """A version folder's manifest. Missing: :class:`NoPublishedIndexError`; not JSON: :class:`ChecksumError`, a
    damaged file like any other (a replica downloads it again); a format this denseflow does not read or a
    section of the wrong shape: :class:`~denseflow.model.index.manifest.ManifestError`."""
    path = Path(version_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise NoPublishedIndexError(f"{path}: manifest missing") from err
    except json.JSONDecodeError as err:
        raise ChecksumError(f"{path}: manifest is not valid JSON ({err})") from err
    return Manifest.from_dict(data, path)


def read_pointer(root: Path, name: str) -> str | None:
    """The version ``current`` names, or None when nothing was published."""
    try:
        version = (index_home(root, name) / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not _VERSION_RE.match(version):
        raise NoPublishedIndexError(f"{index_home(root, name) / POINTER}: unexpected content {version!r}")
    return version


def list_versions(root: Path, name: str) -> list[VersionInfo]:
    """Every version folder, oldest first; staging folders are not versions.

    A version whose manifest is missing or does not parse is listed with ``broken`` saying why (hiding it would
    hide the damage, and its number is still taken); loading or rolling back to it is refused.
    """
    home = index_home(root, name)
    current = read_pointer(root, name) if home.is_dir() else None
    found = []
    for path in sorted(home.iterdir() if home.is_dir() else [], key=lambda p: _version_number(p.name)):
        if path.is_dir() and _VERSION_RE.match(path.name):
            try:
                manifest = read_manifest(path)
            except PublishedIndexError as err:
                found.append(VersionInfo(path.name, path, path.name == current, broken=str(err)))
                continue
            found.append(VersionInfo(path.name, path, path.name == current, manifest))
    return found


def load_version(version_dir: Path, verify: bool = True, absent_ok: tuple[str, ...] = ()) -> LoadedIndex:
    """Read a version folder; with ``verify`` every file's sha256 is checked against the manifest first
    (``absent_ok``: folders the copy may lack, see :func:`checksum_problems`)."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    if verify:
        verify_checksums(version_dir, manifest, absent_ok)
    index = faiss.read_index(str(version_dir / INDEX_FILE))
    doc_ids = json.loads((version_dir / DOC_IDS_FILE).read_text(encoding="utf-8"))
    if index.ntotal != len(doc_ids) or index.ntotal != manifest.count or index.d != manifest.dimension:
        raise ChecksumError(
            f"{version_dir}: index has {index.ntotal}×{index.d}, doc_ids {len(doc_ids)}, "
            f"manifest says {manifest.count}×{manifest.dimension}"
        )
    apply_search_params(index, manifest.index.search_params)
    loaded = LoadedIndex(version_dir, index, doc_ids, manifest)
    if manifest.bm25 is not None:
        folder = version_dir / manifest.bm25.folder
        try:
            loaded.bm25 = BM25Index.load(folder, doc_ids, expected=manifest.bm25.settings())
        except (OSError, ValueError, BM25FormatError) as err:  # bm25s raises plain errors on a damaged file
            raise ChecksumError(f"{folder}: refusing to load the BM25 index, {err}") from err
    if manifest.documents is not None:
        loaded.documents = DocumentStore(version_dir / manifest.documents.file)
    check_search_settings(loaded.search.to_dict(), f"{version_dir / MANIFEST}")
    if loaded.search.mode not in loaded.modes():
        raise SearchSettingsError(f"{version_dir}: manifest serves {loaded.search.mode!r} but has no BM25 index")
    return loaded


def load_current(root: Path, name: str, verify: bool = True) -> LoadedIndex:
    version = read_pointer(root, name)
    if version is None:
        raise NoPublishedIndexError(f"{index_home(root, name)}: nothing published yet (no '{POINTER}' pointer)")
    return load_version(index_home(root, name) / version, verify=verify)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One writer per index name at a time (publishers, rollbacks); readers never take the lock."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(path)


def _version_number(name: str) -> int:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else -1


def _next_version(home: Path) -> str:
    # Counting orphans too (folders renamed in but never pointed at) so a version name is never reused.
    numbers = [_version_number(p.name) for p in home.iterdir()] if home.is_dir() else []
    return f"v{max([0, *numbers]) + 1:04d}"


def _move_pointer(home: Path, version: str) -> None:
    """Point ``current`` at ``version``: readers see the old name or the new one, never a partial file."""
    tmp = home / f".{POINTER}.{uuid.uuid4().hex}.tmp"
    _write_durably(tmp, version + "\n")
    os.replace(tmp, home / POINTER)
    fsync_dir(home)


HISTORY = "history.jsonl"


def read_history(root: Path, name: str) -> list[dict[str, Any]]:
    """Every pointer move recorded, oldest first (a line cut short by a crash is skipped)."""
    path = index_home(root, name) / HISTORY
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            entries.append(json.loads(line))
    return [entry for entry in entries if isinstance(entry, dict)]


def _log_history(home: Path, action: str, previous: str | None, version: str) -> None:
    """Append a move, written (fsync'd) *before* the pointer moves, like the registry's alias history.

    A crash between the two leaves a recorded move that did not happen; this reconciles first: when the last
    line's ``to`` is not the pointer's version (that crash, or a person editing ``current``), an ``external``
    line records what ``current`` really named, so the history always replays to the pointer.
    """
    now = datetime.now(UTC).isoformat()
    entries = read_history(home.parent, home.name)
    lines = []
    if entries and entries[-1].get("to") != previous:
        lines.append({"time": now, "action": "external", "from": entries[-1].get("to"), "to": previous})
    lines.append({"time": now, "action": action, "from": previous, "to": version})
    with (home / HISTORY).open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps(entry) + "\n" for entry in lines))
        out.flush()
        os.fsync(out.fileno())


def publish(
    root: Path,
    name: str,
    index: faiss.Index,
    doc_ids: list[str],
    model_dir: Path,
    manifest: ManifestDraft,
    keep: int = 3,
    bm25_dir: Path | None = None,
    documents_file: Path | None = None,
    query_tower_dir: Path | None = None,
) -> VersionInfo:
    """Write a new version, verify it by reading it back, rename it into place, then move ``current``.

    ``manifest`` carries what the caller knows (model identity, corpus fingerprint, build and
    verification figures); this completes it with version, count, dimension, metric, creation time and checksums.
    ``bm25_dir``, a folder :meth:`BM25Index.save` wrote over ``doc_ids`` in the same order, is copied in as
    ``bm25/`` so both indexes share one manifest, one set of checksums and one ``current`` move;
    ``documents_file`` (:func:`~denseflow.model.index.documents.write_documents`) is copied in the same way, and
    ``query_tower_dir`` (the torch-free query tower, :mod:`denseflow.model.serving.query_tower`) as ``query_tower/``.
    """
    if index.ntotal != len(doc_ids):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(doc_ids)} doc ids were given")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc ids are not unique")
    home = index_home(root, name)
    with _locked(home):
        for stale in home.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        version = _next_version(home)
        staging = home / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            faiss.write_index(index, str(staging / INDEX_FILE))
            (staging / DOC_IDS_FILE).write_text(json.dumps(doc_ids), encoding="utf-8")
            shutil.copytree(model_dir, staging / MODEL_FOLDER, ignore=shutil.ignore_patterns("checkpoint-*"))
            bm25 = query_tower = documents = None
            if bm25_dir is not None:
                shutil.copytree(bm25_dir, staging / BM25_FOLDER)
                meta = json.loads((staging / BM25_FOLDER / BM25_META_FILE).read_text(encoding="utf-8"))
                bm25 = read_section(
                    BM25Section, {"folder": BM25_FOLDER, **meta}, str(staging / BM25_FOLDER / BM25_META_FILE)
                )
            if query_tower_dir is not None:
                shutil.copytree(query_tower_dir, staging / QUERY_TOWER_FOLDER)
                query_tower = QueryTowerSection(QUERY_TOWER_FOLDER)
            if documents_file is not None:
                shutil.copyfile(documents_file, staging / DOCS_FILE)
                documents = DocumentsSection(DOCS_FILE, DocumentStore(staging / DOCS_FILE).count())
            # Without BM25 only dense can be served, whatever the caller's default would have been.
            search = manifest.search or SearchSection.from_dict(search_settings("hybrid" if bm25_dir else "dense"))
            files = folder_checksums(staging, skip=(MANIFEST,))
            full = manifest.complete(
                model=replace(manifest.model, checksum=published_model_checksum(files)),
                search=search,
                name=name,
                version=version,
                created_at=datetime.now(UTC).isoformat(),
                count=int(index.ntotal),
                dimension=int(index.d),
                files=files,
                bm25=bm25,
                query_tower=query_tower,
                documents=documents,
            )
            _write_durably(staging / MANIFEST, json.dumps(full.to_dict(), indent=2, sort_keys=True))
            fsync_tree(staging)
            load_version(staging, verify=True)
            final = home / version
            os.rename(staging, final)
            fsync_dir(home)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        previous = read_pointer(root, name)
        _log_history(home, "publish", previous, version)  # before the move: a crash between loses no line
        _move_pointer(home, version)
        prune(root, name, keep, _have_lock=True)
        return VersionInfo(version, final, True, full)


def prune(root: Path, name: str, keep: int, _have_lock: bool = False) -> list[str]:
    """Delete all but the newest ``keep`` versions; ``current`` is never deleted. Returns removed names."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    home = index_home(root, name)
    with contextlib.nullcontext() if _have_lock else _locked(home):
        current = read_pointer(root, name)
        versions = sorted(
            (p.name for p in home.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)), key=_version_number
        )
        doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v != current]
        for version in doomed:
            # Rename first so a reader never sees a half-deleted folder under a version name.
            trash = home / f".staging-deleting-{version}-{uuid.uuid4().hex[:8]}"
            os.rename(home / version, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return doomed


def rollback(root: Path, name: str, to: str | None = None) -> VersionInfo:
    """Move ``current`` to ``to`` or, by default, the newest version older than it (verified first)."""
    home = index_home(root, name)
    with _locked(home):
        current = read_pointer(root, name)
        versions = [v.version for v in list_versions(root, name) if not v.broken]
        if to is None:
            older = [v for v in versions if current is None or _version_number(v) < _version_number(current)]
            if not older:
                raise NoPublishedIndexError(f"{home}: no version older than {current} to roll back to")
            to = older[-1]
        elif to not in versions:
            raise NoPublishedIndexError(f"{home}: version {to!r} not found (have {', '.join(versions) or 'none'})")
        loaded = load_version(home / to, verify=True)
        _log_history(home, "rollback", current, to)
        _move_pointer(home, to)
        return VersionInfo(to, loaded.path, True, loaded.manifest)


def build_manifest(
    spec: IndexSpec,
    count: int,
    dimension: int,
    model: ModelRef | Mapping[str, Any],
    corpus_fingerprint: str,
    build_seconds: float,
    recall: float | None,
    verify_queries: int,
    extra: Mapping[str, Any] | None = None,
) -> ManifestDraft:
    """The caller-side part of a manifest (see :func:`publish` for the rest). ``model``: the identity, typed or as
    its JSON object; ``extra``: further draft sections (``encode``, ``corpus``, ``search``, ``served_system``) as
    they are written, read like a manifest's (``dataclasses.replace`` sets them typed)."""
    unknown = set(extra or {}) - {"encode", "corpus", "search", "served_system"}
    if unknown:
        raise ValueError(f"build_manifest: no manifest section {', '.join(sorted(unknown))} to set")
    sections = ManifestDraft.from_dict(dict(extra or {}), "build_manifest extra")
    return replace(
        sections,
        model=model if isinstance(model, ModelRef) else read_section(ModelRef, model, "build_manifest model"),
        corpus_fingerprint=corpus_fingerprint,
        index=IndexSection.of(spec, count, dimension),
        build_seconds=round(build_seconds, 3),
        verification=Verification(recall, verify_queries),
    )


def published_model_label(root: Path, name: str) -> str | None:
    """``name@version`` of the model whose index ``current`` serves; None when nothing (readable) is published."""
    try:
        version = read_pointer(root, name)
        if version is None:
            return None
        manifest = read_manifest(index_home(root, name) / version)
    except (OSError, ValueError, PublishedIndexError):
        return None
    return manifest.model.label
