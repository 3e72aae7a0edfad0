"""A stateless search replica: serve what a registry alias names, from a local cache, and follow the alias.

``denseflow serve --model retriever@production`` needs no shared folder with the machine that published. Every
published version is logged under its model version's run (``indexes/<index>/<index version>/``: index, ids,
documents, BM25, the query tower and the manifest with the sha256 of every file), and the version carries the tag
``index.<index>``. A replica resolves the alias, downloads that folder into its cache, checks every file against the
manifest, and serves it with the ordinary :class:`~denseflow.model.serving.search.Searcher`. A background poll
follows the alias: a new target is fetched beside the version being served, verified, and swapped in (in-flight
queries finish on the state they started with); versions beyond the last ``keep`` served are then deleted.

The cache mirrors the run's artifact layout under the model version::

    <cache>/<model>/
        .lock                                      held for the replica's lifetime: one writer per cache folder
        .partial-<version>-<random>/               a download in progress (removed at the next start)
        served-<reference>.json                    the version last served for that reference (e.g. production)
        <version>/indexes/<index>/<index version>/ a verified version: only ever renamed in whole

So a crash (or ``kill -9``) mid-download leaves a ``.partial-*`` folder that nothing loads, never half a version.
When the tracking server stops answering, the replica keeps serving what it has and says ``stale`` in ``/health``;
it also starts from the cache alone when the server is down but it served this reference before.

Nothing here talks to MLflow: the registry is a :class:`VersionSource` (:mod:`denseflow.registry.replica_source`),
so this logic is tested with a local store and with fakes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from denseflow.model.index.build import PublishedIndexError
from denseflow.model.index.manifest import Manifest
from denseflow.model.index.store import (
    MANIFEST,
    MODEL_FOLDER,
    ChecksumError,
    checksum_problems,
    fsync_dir,
    fsync_tree,
    read_manifest,
)
from denseflow.model.serving.search import Searcher

log = logging.getLogger(__name__)

DEFAULT_KEEP_VERSIONS = 2
DEFAULT_POLL_SECONDS = 30.0
INDEX_TAG_PREFIX = "index."  # the model-version tag publication sets: index.<index name> = index version
_PARTIAL_PREFIX = ".partial-"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class ReplicaError(PublishedIndexError):
    """The replica cannot serve what was asked: no published index for the version, a busy cache, nothing cached."""


class RegistryUnavailable(RuntimeError):
    """The tracking server did not answer (down, unreachable, refusing): the replica keeps serving its cache."""


class RegistryReferenceError(ValueError):
    """The registry answered, and the model, alias or version asked for does not exist."""


@dataclass(frozen=True)
class RegistryVersion:
    """What a reference resolved to: the model version, its run, and the index version its tag names."""

    model: str
    version: str
    run_id: str
    index_name: str
    index_version: str | None  # None: the version has no ``index.<index_name>`` tag (nothing published for it)

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.version, self.index_name, self.index_version)

    @property
    def artifact_path(self) -> str:
        """Where publication logged the index under the version's run (tasks/publish.py:log_index_artifact)."""
        return f"indexes/{self.index_name}/{self.index_version}"

    @property
    def label(self) -> str:
        index = f"index {self.index_name}/{self.index_version}" if self.index_version else "no index"
        return f"{self.model} version {self.version} ({index})"


class VersionSource(Protocol):
    """The registry as a replica needs it (implemented with MLflow in denseflow.registry.replica_source)."""

    model: str
    reference: str  # what is followed, e.g. ``retriever@production``

    def resolve(self) -> RegistryVersion:
        """The version the reference names now; :class:`RegistryUnavailable` when the server does not answer,
        :class:`RegistryReferenceError` when it answers that there is no such model, alias or version."""
        ...

    def download_index(self, version: RegistryVersion, into: Path) -> Path:
        """Download the version's index artifact folder somewhere under ``into``; returns that folder."""
        ...

    def download_model(self, version: RegistryVersion, into: Path) -> Path:
        """Download the registered model's sentence-transformers folder under ``into``; returns that folder."""
        ...


# --------------------------------------------------------------------------------------------- the cache


def needs_model(manifest: Manifest, backend: str) -> bool:
    """Whether serving a version needs its ``model/`` weights: yes without an exported query tower, or when the
    backend asked for runs the model itself (torch, int8 quantised from it); otherwise the tower embeds queries."""
    return manifest.query_tower is None or backend not in ("auto", "onnx")


def verify_download(folder: Path, version: RegistryVersion, with_model: bool) -> Manifest:
    """The downloaded folder's manifest, once it names this model version and index version and every file
    matches its sha256; otherwise :class:`ChecksumError` naming the files (at most five) that do not."""
    manifest = read_manifest(folder)
    named = manifest.model
    if (named.name, str(named.version), manifest.version) != (version.model, version.version, version.index_version):
        raise ChecksumError(
            f"{version.label}: the downloaded manifest is for model {named.name} version "
            f"{named.version}, index version {manifest.version}: refusing it"
        )
    problems = checksum_problems(folder, manifest, absent_ok=() if with_model else (MODEL_FOLDER,))
    if problems:
        raise ChecksumError(
            f"{version.label}: {version.artifact_path} of run {version.run_id} does not match its manifest: "
            f"{'; '.join(problems[:5])}" + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return manifest


def versions_to_drop(last_served: Mapping[str, float], keep: int, protected: Collection[str] = ()) -> list[str]:
    """Cached versions beyond the ``keep`` most recently served, never one in ``protected`` (the one serving, and
    the one it just replaced, which in-flight queries may still read)."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    newest_first = sorted(last_served, key=lambda key: last_served[key], reverse=True)
    return [key for key in newest_first[keep:] if key not in protected]


class ReplicaCache:
    """The cached versions of one registered model: ``<root>/<model>/``, laid out as the module docstring says."""

    def __init__(self, root: Path, model: str) -> None:
        self.home = Path(root) / _safe(model)
        self._lock: IO[str] | None = None

    def acquire(self) -> None:
        """Hold the cache for this process; a second replica on the same folder is refused (it would delete
        versions the first one serves)."""
        if self._lock is not None:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        handle = (self.home / ".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ReplicaError(
                f"cache folder {self.home} is in use by another replica: give each replica its own --cache-dir"
            ) from None
        self._lock = handle
        for partial in self.home.glob(f"{_PARTIAL_PREFIX}*"):  # a download a crash cut short
            shutil.rmtree(partial, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def folder(self, version: RegistryVersion) -> Path:
        return self.home / _safe(version.version) / version.artifact_path

    def complete(self, version: RegistryVersion) -> Path | None:
        """The cached folder of ``version`` when there is one (folders are renamed in only once verified)."""
        folder = self.folder(version)
        return folder if version.index_version and (folder / MANIFEST).is_file() else None

    @contextlib.contextmanager
    def partial(self, version: RegistryVersion) -> Iterator[Path]:
        """A scratch folder beside the versions (same filesystem, so :meth:`commit` is a rename), always removed."""
        folder = self.home / f"{_PARTIAL_PREFIX}{_safe(version.version)}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staged: Path, version: RegistryVersion) -> Path:
        """Rename a verified folder into place, flushed to disk first: the cache never holds half a version."""
        final = self.folder(version)
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_tree(staged)
        os.rename(staged, final)
        fsync_dir(final.parent)
        return final

    def cached(self) -> dict[str, float]:
        """``{folder relative to the cache: when it was last served}`` of every cached version."""
        return {
            manifest.parent.relative_to(self.home).as_posix(): manifest.parent.stat().st_mtime
            for manifest in self.home.glob(f"*/indexes/*/*/{MANIFEST}")
        }

    def mark_served(self, version: RegistryVersion, reference: str) -> None:
        """Record ``version`` as the one served for ``reference``: its folder's time orders the cache, and the
        record lets a restart with the tracking server down serve it again."""
        folder = self.folder(version)
        os.utime(folder)
        record = self.home / f"served-{_safe(reference)}.json"
        tmp = record.with_name(f".{record.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(asdict(version)), encoding="utf-8")
        os.replace(tmp, record)

    def last_served(self, reference: str) -> RegistryVersion | None:
        record = self.home / f"served-{_safe(reference)}.json"
        try:
            found = RegistryVersion(**json.loads(record.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        return found if self.complete(found) else None

    def drop(self, relative: str) -> None:
        """Delete one cached version: renamed out of its place first, so it never looks like a whole version."""
        folder = self.home / relative
        trash = self.home / f"{_PARTIAL_PREFIX}deleting-{uuid.uuid4().hex[:8]}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        for parent in folder.parents:  # <version>/indexes/<index>/ left empty
            if parent == self.home:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()


def _safe(name: str) -> str:
    """A registry name as one path component (model names and aliases may hold characters a path should not)."""
    cleaned = _SAFE_NAME.sub("_", name)
    if cleaned in ("", ".", ".."):
        raise ValueError(f"{name!r} cannot name a cache folder")
    return cleaned


# --------------------------------------------------------------------------------------------- what is followed


@dataclass(frozen=True)
class AliasWatch:
    """What the replica knows about the reference it follows; replaced whole, so readers never see half an update.

    ``agreed_at``: the last time the registry was seen naming the version being served. ``stale``: the last poll
    got no answer from the tracking server, so the alias may have moved without the replica knowing."""

    reference: str
    served: RegistryVersion | None = None
    target: RegistryVersion | None = None
    agreed_at: float | None = None
    checked_at: float | None = None
    stale: bool = False
    error: str | None = None

    def _agrees(self, served: RegistryVersion | None, target: RegistryVersion | None) -> bool:
        return served is not None and target is not None and served.key == target.key

    def observed(self, target: RegistryVersion, now: float) -> AliasWatch:
        agreed = now if self._agrees(self.served, target) else self.agreed_at
        return replace(self, target=target, checked_at=now, stale=False, error=None, agreed_at=agreed)

    def serving(self, served: RegistryVersion, now: float) -> AliasWatch:
        agreed = now if self._agrees(served, self.target) else self.agreed_at
        return replace(self, served=served, agreed_at=agreed, error=None if agreed == now else self.error)

    def unreachable(self, why: str, now: float) -> AliasWatch:
        return replace(self, stale=True, checked_at=now, error=why)

    def failed(self, why: str) -> AliasWatch:
        return replace(self, error=why)

    def unresolved(self, why: str, now: float) -> AliasWatch:
        """The server answered, but the reference names nothing servable (an alias deleted, say): not stale."""
        return replace(self, stale=False, checked_at=now, error=why)

    def seconds_since_agreed(self, now: float) -> float | None:
        return None if self.agreed_at is None else max(0.0, now - self.agreed_at)

    def as_dict(self, now: float) -> dict[str, Any]:
        def stamp(at: float | None) -> str | None:
            return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

        since = self.seconds_since_agreed(now)
        return {
            "reference": self.reference,
            "served_version": self.served.version if self.served else None,
            "served_index_version": self.served.index_version if self.served else None,
            "alias_version": self.target.version if self.target else None,
            "alias_index_version": self.target.index_version if self.target else None,
            "agreed_at": stamp(self.agreed_at),
            "seconds_since_agreed": None if since is None else round(since, 3),
            "checked_at": stamp(self.checked_at),
            "stale": self.stale,
            "last_error": self.error,
        }


# --------------------------------------------------------------------------------------------- the replica


class Replica:
    """Serves what ``source`` resolves to, from ``cache``, and follows it (see the module docstring).

    ``searcher_options`` go to :class:`Searcher` (threads, backend, mode, batching); ``keep`` versions stay cached.
    Use as a context manager, or call :meth:`close`: it stops polling and releases the cache.
    """

    def __init__(
        self,
        source: VersionSource,
        cache: ReplicaCache,
        keep: int = DEFAULT_KEEP_VERSIONS,
        searcher_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.source, self.cache, self.keep, self.clock = source, cache, keep, clock
        self.options = dict(searcher_options or {})
        self.watch = AliasWatch(source.reference)
        self.poll_seconds: float | None = None
        self._searcher: Searcher | None = None
        self._refused: tuple[str, str, str | None] | None = None  # not fetched again until the reference moves
        self._refused_why = ""
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            raise RuntimeError("the replica has not started: call start() first")
        return self._searcher

    # ------------------------------------------------------------------ start and poll
    def start(self) -> Searcher:
        """Take the cache, resolve the reference, fetch and verify its version (unless cached), and load it.

        With the tracking server down, the version last served for this reference is served from the cache
        (``stale``); so it is when the reference names a version that cannot be served (no index, a file that fails
        its checksum, a failed download), with :attr:`watch` saying why. With nothing cached that is an error, as is
        a reference the registry says does not exist."""
        self.cache.acquire()
        try:
            self._start()
        except BaseException:
            self.cache.release()
            raise
        return self.searcher

    def _start(self) -> None:
        now = self.clock()
        try:
            target = self.source.resolve()
        except RegistryUnavailable as err:
            cached = self.cache.last_served(self.source.reference)
            if cached is None:
                raise ReplicaError(f"{err}; and {self.cache.home} holds no version of {self.source.reference} "
                                   "served before: nothing to serve") from err  # fmt: skip
            log.warning("%s; serving %s from the cache until it answers", err, cached.label)
            self._open(cached)
            self.watch = self.watch.unreachable(str(err), now).serving(cached, now)
            self.cache.mark_served(cached, self.source.reference)
            return
        self.watch = self.watch.observed(target, now)
        try:
            self._open(target)
        except Exception as err:
            cached = self.cache.last_served(self.source.reference)
            if cached is None or cached.key == target.key:
                raise
            why = self._not_served(target, err)
            log.error("%s; serving %s from the cache", why, cached.label)
            self._open(cached)
            self.watch = self.watch.serving(cached, now).failed(why)
            return
        self.watch = self.watch.serving(target, now)
        self.cache.mark_served(target, self.source.reference)
        self._drop_old(protected=())

    def _not_served(self, target: RegistryVersion, err: Exception) -> str:
        """Why ``target`` is not served, in one line; a version whose files or contents are wrong is remembered, so
        it is not downloaded again until the reference moves (a failed download is retried at the next poll)."""
        if _transient(err):
            return _one_line(f"could not fetch {target.label}: {err}")
        why = str(err) if str(err).startswith(target.label) else f"{target.label}: {err}"
        self._refused, self._refused_why = target.key, _one_line(f"refused {why}")
        return self._refused_why

    def poll_once(self) -> bool:
        """Look the reference up once; when it names another version, fetch, verify and swap to it. Returns True
        on a swap. Never raises for the registry or a bad version: the version being served keeps serving and
        :attr:`watch` says why."""
        with self._poll_lock:
            now = self.clock()
            try:
                target = self.source.resolve()
            except RegistryUnavailable as err:
                if not self.watch.stale:
                    log.warning("%s: serving %s from the cache until it answers", err, self._served_label())
                self.watch = self.watch.unreachable(str(err), now)
                return False
            except Exception as err:  # the registry answered, with nothing servable (alias deleted, say)
                self.watch = self.watch.unresolved(_one_line(err), now)
                log.error("%s", self.watch.error)
                return False
            if self.watch.stale:
                log.info("the tracking server answers again: %s is %s", self.source.reference, target.label)
            served = self.watch.served
            self.watch = self.watch.observed(target, now)
            if served is not None and target.key == served.key:
                self._refused = None
                self._drop_old(protected=())
                return False
            if target.key == self._refused:
                self.watch = self.watch.failed(self._refused_why)
                return False
            try:
                self._open(target)
            except Exception as err:
                self.watch = self.watch.failed(self._not_served(target, err))
                log.error("%s; still serving %s", self.watch.error, self._served_label())
                return False
            self._refused = None
            self.watch = self.watch.serving(target, now)
            self.cache.mark_served(target, self.source.reference)
            # The version just replaced stays until the next poll: queries that started on it may still read it.
            self._drop_old(protected=[self.cache.folder(served)] if served is not None else [])
            log.info("now serving %s (was %s)", target.label, served.label if served else "nothing")
            return True

    def start_polling(self, interval_s: float = DEFAULT_POLL_SECONDS) -> None:
        """Poll every ``interval_s`` seconds on a daemon thread until :meth:`close`."""
        if interval_s <= 0:
            raise ValueError(f"the poll interval must be positive, got {interval_s}")
        self.poll_seconds = interval_s

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll_once()
                except Exception:  # never let one surprise end the polling: the replica would silently freeze
                    log.exception("polling %s failed", self.source.reference)

        self._thread = threading.Thread(target=loop, name="denseflow-replica-poll", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.cache.release()

    def health(self) -> dict[str, Any]:
        return self.watch.as_dict(self.clock()) | {"cache": str(self.cache.home), "poll_seconds": self.poll_seconds}

    # ------------------------------------------------------------------ fetching
    def _served_label(self) -> str:
        return self.watch.served.label if self.watch.served else "nothing"

    def _open(self, version: RegistryVersion) -> None:
        """Fetch ``version`` (unless cached) and serve it; a cached copy that no longer verifies is fetched again.
        A copy downloaded now that cannot be served is dropped (:meth:`_drop_unserved`)."""
        folder, fresh = self._fetch(version)
        try:
            self._serve(folder, version)
            return
        except ChecksumError as err:
            if fresh:
                self._drop_unserved(folder)
                raise
            log.warning("cached %s fails its checks (%s): downloading it again", version.label, err)
            self.cache.drop(folder.relative_to(self.cache.home).as_posix())
        except Exception as err:
            if fresh and not _transient(err):
                self._drop_unserved(folder)
            raise
        folder, _ = self._fetch(version)
        try:
            self._serve(folder, version)
        except Exception as err:
            if not _transient(err):
                self._drop_unserved(folder)
            raise

    def _drop_unserved(self, folder: Path) -> None:
        """A version downloaded now and refused leaves the cache at once: never served, it must not count toward the
        ``keep`` versions a rollback may need. (A transient failure keeps it: the next poll serves it from the
        cache instead of downloading it again.)"""
        try:
            self.cache.drop(folder.relative_to(self.cache.home).as_posix())
        except OSError as err:
            log.warning("could not drop %s, which cannot be served: %s", folder, err)

    def _serve(self, folder: Path, version: RegistryVersion) -> None:
        if self._searcher is None:
            self._searcher = Searcher.for_folder(folder, version.index_name, **self.options)
        else:
            self._searcher.serve_folder(folder)

    def _fetch(self, version: RegistryVersion) -> tuple[Path, bool]:
        """The verified cache folder of ``version``, and whether it was downloaded now."""
        if not version.index_version:
            raise ReplicaError(
                f"{version.label}: nothing published for it (no {INDEX_TAG_PREFIX}{version.index_name} tag on the "
                "version): publish its index first"
            )
        cached = self.cache.complete(version)
        backend = str(self.options.get("backend", "auto"))
        if cached is not None and needs_model(read_manifest(cached), backend) and not (cached / MODEL_FOLDER).is_dir():
            # Cached for the exported query tower alone, now asked for a backend that runs the model: fetched whole.
            log.info("cached %s has no model weights, which --backend %s needs: downloading it again", version.label,
                     backend)  # fmt: skip
            self.cache.drop(cached.relative_to(self.cache.home).as_posix())
            cached = None
        if cached is not None:
            return cached, False
        started = time.perf_counter()
        with self.cache.partial(version) as scratch:
            folder = self.source.download_index(version, scratch / "index")
            manifest = read_manifest(folder)
            with_model = needs_model(manifest, backend)
            if with_model:
                os.rename(self.source.download_model(version, scratch / "model"), folder / MODEL_FOLDER)
            verify_download(folder, version, with_model)
            final = self.cache.commit(folder, version)
        size = sum(path.stat().st_size for path in final.rglob("*") if path.is_file())
        log.info("downloaded and verified %s: %.1f MB in %.1f s%s", version.label, size / 1e6,
                 time.perf_counter() - started, "" if with_model else " (query tower, no model weights)")  # fmt: skip
        return final, True

    def _drop_old(self, protected: Collection[Path]) -> None:
        serving = [self.cache.folder(self.watch.served)] if self.watch.served else []
        keep = {path.relative_to(self.cache.home).as_posix() for path in [*serving, *protected]}
        for relative in versions_to_drop(self.cache.cached(), self.keep, keep):
            try:
                self.cache.drop(relative)
                log.info("dropped cached version %s (keeping the last %d served)", relative, self.keep)
            except OSError as err:
                log.warning("could not drop cached version %s: %s", relative, err)


def _transient(err: BaseException) -> bool:
    """A failure the next poll may not meet (the server went away mid-download, a full disk, too many open files):
    retried at the next poll. Anything else refuses the version until the reference moves."""
    return isinstance(err, RegistryUnavailable | OSError)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
