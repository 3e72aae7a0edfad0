"""A replica serving a registry reference from its cache (model/serving/replica.py), against a fake registry:
download, verification, the swap when the alias moves, the cache kept to N, a registry that stops answering."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from denseflow.model.index.store import ChecksumError
from denseflow.model.serving.replica import (
    AliasWatch,
    RegistryReferenceError,
    RegistryUnavailable,
    RegistryVersion,
    Replica,
    ReplicaCache,
    ReplicaError,
    versions_to_drop,
)
from denseflow.model.serving.service import create_app
from tests.model.serving.conftest import publish_model_version

INDEX = "tiny"


@pytest.fixture(scope="module")
def published(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Model versions 1, 2 and 3 of ``retriever`` with their indexes (v0001..v0003, the torch-free query tower;
    version 2 holds 30 of the 36 documents), and version 4 published without a query tower."""
    from denseflow.model.encoder import load_encoder
    from denseflow.model.onnx_runtime import export_query_tower
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("replica-published")
    beir = write_tiny_beir(root / "beir")
    tower = root / "tower"
    assert export_query_tower(load_encoder(tiny_model_dir), tower, 64) is None
    folders = {
        "1": publish_model_version(root / "indexes", tiny_model_dir, beir, "1", tower),
        "2": publish_model_version(root / "indexes", tiny_model_dir, beir, "2", tower, documents=30),
        "3": publish_model_version(root / "indexes", tiny_model_dir, beir, "3", tower),
        "4": publish_model_version(root / "indexes", tiny_model_dir, beir, "4", None),
    }
    return SimpleNamespace(folders=folders, model_dir=tiny_model_dir)


class FakeRegistry:
    """:class:`~denseflow.model.serving.replica.VersionSource` over folders: what MLflow would hand over."""

    model = "retriever"
    reference = "retriever@production"

    def __init__(self, folders: dict[str, Path], target: str = "1") -> None:
        self.folders, self.target = folders, target
        self.up = True
        self.untagged: set[str] = set()  # versions with no index.<name> tag
        self.tampered: dict[str, str] = {}  # version -> file changed on its way from the store
        self.downloads: list[str] = []
        self.model_downloads: list[str] = []
        self.fail_download: BaseException | None = None

    def resolve(self) -> RegistryVersion:
        if not self.up:
            raise RegistryUnavailable(
                "MLflow tracking server http://127.0.0.1:5000 did not answer (connection refused)"
            )
        if self.target not in self.folders:
            raise RegistryReferenceError(f"{self.reference}: no such alias")
        index_version = None if self.target in self.untagged else self.folders[self.target].name
        return RegistryVersion(self.model, self.target, f"run-{self.target}", INDEX, index_version)

    def download_index(self, version: RegistryVersion, into: Path) -> Path:
        destination = into / version.artifact_path
        # As publication logs it: everything but model/ (the registered model holds the weights).
        shutil.copytree(self.folders[version.version], destination, ignore=lambda folder, names: (
            ["model"] if Path(folder) == self.folders[version.version] else []
        ))  # fmt: skip
        if self.fail_download is not None:
            raise self.fail_download
        if version.version in self.tampered:
            with (destination / self.tampered[version.version]).open("ab") as out:
                out.write(b" ")
        self.downloads.append(version.version)
        return destination

    def download_model(self, version: RegistryVersion, into: Path) -> Path:
        shutil.copytree(self.folders[version.version] / "model", into / "st-model")
        self.model_downloads.append(version.version)
        return into / "st-model"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def replica_of(registry: FakeRegistry, cache: Path, keep: int = 2, clock: Clock | None = None, **options) -> Replica:
    return Replica(
        registry, ReplicaCache(cache, "retriever"), keep=keep, searcher_options=options, clock=clock or Clock()
    )


def cached(cache: Path) -> list[str]:
    return sorted(ReplicaCache(cache, "retriever").cached())


# ---------------------------------------------------------------------------------------------- pure parts


def test_versions_beyond_keep_are_dropped_newest_served_first_never_a_protected_one() -> None:
    served_at = {"1": 10.0, "2": 30.0, "3": 20.0, "4": 40.0}
    assert versions_to_drop(served_at, keep=2) == ["3", "1"]
    assert versions_to_drop(served_at, keep=2, protected={"3"}) == ["1"]
    assert versions_to_drop(served_at, keep=5) == []
    with pytest.raises(ValueError, match="at least 1"):
        versions_to_drop(served_at, keep=0)


def test_the_watch_records_when_the_alias_and_the_served_version_last_agreed() -> None:
    one = RegistryVersion("retriever", "1", "r1", INDEX, "v0001")
    two = RegistryVersion("retriever", "2", "r2", INDEX, "v0002")
    watch = AliasWatch("retriever@production").observed(one, 100.0).serving(one, 100.0)
    assert watch.agreed_at == 100.0
    watch = watch.observed(two, 130.0)  # moved; not fetched yet
    assert (watch.agreed_at, watch.seconds_since_agreed(140.0)) == (100.0, 40.0)
    watch = watch.unreachable("down", 160.0)
    assert watch.stale and watch.as_dict(160.0)["stale"] is True
    watch = watch.observed(two, 190.0).serving(two, 191.0)
    assert not watch.stale and watch.agreed_at == 191.0 and watch.error is None
    health = watch.as_dict(200.0)
    assert (health["served_version"], health["alias_version"], health["seconds_since_agreed"]) == ("2", "2", 9.0)


# ---------------------------------------------------------------------------------------------- start


def test_starts_on_an_empty_cache_downloads_verifies_and_serves(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        searcher = replica.start()
        result = searcher.search("cancer tumor", 5)
        assert result.index_version == "v0001" and len(result.hits) == 5
        assert searcher.health()["query_backend"] == "onnxruntime (torch-free)"
        health = replica.health()
        assert (health["served_version"], health["alias_version"], health["stale"]) == ("1", "1", False)
        assert health["agreed_at"] is not None
    version_dir = tmp_path / "cache" / "retriever" / "1" / "indexes" / INDEX / "v0001"
    assert (version_dir / "manifest.json").is_file()
    assert not (version_dir / "model").exists()  # the query tower embeds queries: the weights were not fetched
    assert not list((tmp_path / "cache" / "retriever").glob(".partial-*"))
    # A restart finds it in the cache and downloads nothing.
    with replica_of(registry, tmp_path / "cache") as again:
        again.start()
    assert registry.downloads == ["1"]


def test_a_version_without_a_query_tower_fetches_the_registered_model(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders, target="4")
    with replica_of(registry, tmp_path / "cache") as replica:
        result = replica.start().search("cancer tumor", 3)
    assert result.index_version == "v0004"
    assert registry.model_downloads == ["4"]
    assert (tmp_path / "cache" / "retriever" / "4" / "indexes" / INDEX / "v0004" / "model" / "modules.json").is_file()


def test_a_file_that_fails_its_checksum_is_refused_by_name_and_never_cached(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    registry.tampered["1"] = "doc_ids.json"
    with pytest.raises(ChecksumError, match=r"retriever version 1 .*doc_ids\.json: sha256 differs"):
        replica_of(registry, tmp_path / "cache").start()
    assert cached(tmp_path / "cache") == []
    assert not list((tmp_path / "cache" / "retriever").glob(".partial-*"))


def test_a_crash_mid_download_leaves_no_version_and_its_leftovers_go_at_the_next_start(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    registry.fail_download = OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        replica_of(registry, tmp_path / "cache").start()
    assert cached(tmp_path / "cache") == []
    # What kill -9 leaves: a partial folder, never a version folder.
    leftover = tmp_path / "cache" / "retriever" / ".partial-1-deadbeef" / "index" / "indexes" / INDEX / "v0001"
    shutil.copytree(published.folders["1"], leftover)
    registry.fail_download = None
    with replica_of(registry, tmp_path / "cache") as replica:
        assert replica.start().search("brain neuron", 3).index_version == "v0001"
    assert not leftover.exists()


def test_a_reference_that_does_not_exist_is_an_error_at_start(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders, target="nope")
    with pytest.raises(RegistryReferenceError, match="retriever@production"):
        replica_of(registry, tmp_path / "cache").start()


def test_a_second_replica_on_the_same_cache_is_refused(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as first:
        first.start()
        with pytest.raises(ReplicaError, match="in use by another replica"):
            replica_of(registry, tmp_path / "cache").start()
    with replica_of(registry, tmp_path / "cache") as after:  # released on close
        after.start()


# ---------------------------------------------------------------------------------------------- following the alias


def test_an_alias_move_swaps_under_load_and_the_cache_keeps_the_last_n(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    clock = Clock()
    with replica_of(registry, tmp_path / "cache", keep=2, clock=clock) as replica:
        searcher = replica.start()
        answers: list[tuple[str, int]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def query() -> None:
            while not stop.is_set():
                try:
                    result = searcher.search("virus antibody", 36)
                    answers.append((result.index_version, len(result.hits)))
                except BaseException as err:  # noqa: BLE001 - every failure is the finding
                    errors.append(err)

        threads = [threading.Thread(target=query) for _ in range(4)]
        for thread in threads:
            thread.start()
        registry.target = "2"
        clock.now += 30
        assert replica.poll_once() is True
        for _ in range(200):  # bounded: until queries answered from the new version (10 s at most)
            if ("v0002", 30) in answers[-8:] or errors:
                break
            threading.Event().wait(0.05)
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        # Each answer wholly from one version: v0001 holds 36 documents, v0002 30.
        assert set(answers) <= {("v0001", 36), ("v0002", 30)}
        assert ("v0001", 36) in answers and ("v0002", 30) in answers
        health = replica.health()
        assert (health["served_version"], health["alias_version"]) == ("2", "2")
        assert health["agreed_at"].startswith("1970-01-12")  # the fake clock's time of the swap

        registry.target = "3"
        clock.now += 30
        assert replica.poll_once() is True
        # Served last: 3, then 2; version 1 is beyond the 2 kept.
        assert cached(tmp_path / "cache") == ["2/indexes/tiny/v0002", "3/indexes/tiny/v0003"]
        clock.now += 30
        assert replica.poll_once() is False
        assert cached(tmp_path / "cache") == ["2/indexes/tiny/v0002", "3/indexes/tiny/v0003"]
        assert searcher.search("virus antibody", 3).index_version == "v0003"
        assert not (tmp_path / "cache" / "retriever" / "1").exists()  # emptied parents go too


def test_keep_one_drops_the_replaced_version_at_the_next_poll(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache", keep=1) as replica:
        replica.start()
        registry.target = "2"
        assert replica.poll_once() is True
        assert cached(tmp_path / "cache") == ["1/indexes/tiny/v0001", "2/indexes/tiny/v0002"]
        assert replica.poll_once() is False
        assert cached(tmp_path / "cache") == ["2/indexes/tiny/v0002"]


def test_an_unreachable_registry_is_stale_and_the_cached_version_keeps_serving(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    clock = Clock()
    with replica_of(registry, tmp_path / "cache", clock=clock) as replica:
        app = TestClient(create_app(replica.start(), replica=replica))
        registry.up = False
        clock.now += 90
        assert replica.poll_once() is False
        health = app.get("/health").json()
        assert health["stale"] is True and health["registry"]["stale"] is True
        assert health["registry"]["seconds_since_agreed"] == 90.0
        assert "did not answer" in health["registry"]["last_error"]
        assert app.post("/search", json={"query": "gene mutation", "k": 3}).json()["index_version"] == "v0001"
        metrics = app.get("/metrics").text
        assert "denseflow_registry_stale 1.0" in metrics
        assert "denseflow_alias_seconds_since_agreed 90.0" in metrics
        assert 'index_version="v0001"' in metrics and 'model_version="1"' in metrics
        # It answers again, with production moved meanwhile: caught up at the next poll.
        registry.up, registry.target = True, "2"
        clock.now += 30
        assert replica.poll_once() is True
        health = app.get("/health").json()
        assert (health["stale"], health["registry"]["served_version"], health["index_version"]) == (False, "2", "v0002")


def test_a_restart_with_the_registry_down_serves_what_it_served_before(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders, target="2")
    with replica_of(registry, tmp_path / "cache") as replica:
        replica.start()
    registry.up = False
    with replica_of(registry, tmp_path / "cache") as restarted:
        assert restarted.start().search("bone fracture", 3).index_version == "v0002"
        assert restarted.watch.stale and restarted.watch.served is not None
        assert restarted.health()["alias_version"] is None
    with pytest.raises(ReplicaError, match="nothing to serve"):
        replica_of(registry, tmp_path / "empty-cache").start()


def test_a_new_version_without_an_index_is_named_and_the_old_one_keeps_serving(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        searcher = replica.start()
        registry.target = "2"
        registry.untagged.add("2")
        assert replica.poll_once() is False
        assert "retriever version 2 (no index)" in str(replica.watch.error)
        assert "index.tiny" in str(replica.watch.error)
        assert searcher.search("heart artery", 3).index_version == "v0001"
        registry.untagged.clear()  # the index got published: picked up at the next poll
        assert replica.poll_once() is True
        assert searcher.search("heart artery", 3).index_version == "v0002"


def test_a_tampered_new_version_is_refused_once_and_the_old_one_keeps_serving(
    published: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        app = TestClient(create_app(replica.start(), replica=replica))
        registry.target = "2"
        registry.tampered["2"] = "index.faiss"
        assert replica.poll_once() is False
        assert "index.faiss: sha256 differs" in caplog.text
        health = app.get("/health").json()
        assert health["status"] == "degraded" and "index.faiss" in health["registry"]["last_error"]
        assert health["index_version"] == "v0001"
        assert replica.poll_once() is False  # not downloaded again until the alias moves
        assert registry.downloads == ["1", "2"]
        assert "index.faiss" in str(replica.watch.error)
        assert cached(tmp_path / "cache") == ["1/indexes/tiny/v0001"]


def test_a_full_disk_is_reported_and_retried_at_the_next_poll(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        searcher = replica.start()
        registry.target = "2"
        registry.fail_download = OSError(28, "No space left on device")
        assert replica.poll_once() is False
        assert "No space left on device" in str(replica.health()["last_error"])
        assert searcher.search("cancer", 3).index_version == "v0001"
        registry.fail_download = None
        assert replica.poll_once() is True


def test_polling_runs_on_a_thread_until_closed(published: SimpleNamespace, tmp_path: Path) -> None:
    registry = FakeRegistry(published.folders)
    replica = replica_of(registry, tmp_path / "cache")
    searcher = replica.start()
    registry.target = "2"
    replica.start_polling(0.05)
    try:
        for _ in range(400):  # bounded: 20 s at most
            if searcher.health()["index_version"] == "v0002":
                break
            threading.Event().wait(0.05)
        assert searcher.health()["index_version"] == "v0002"
    finally:
        replica.close()


def test_a_restart_onto_a_version_that_cannot_be_served_serves_the_previous_one(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        replica.start()
    registry.target = "2"
    registry.tampered["2"] = "docs.sqlite"
    with replica_of(registry, tmp_path / "cache") as restarted:
        assert restarted.start().search("cancer", 3).index_version == "v0001"
        assert "docs.sqlite: sha256 differs" in str(restarted.watch.error)
        health = restarted.health()
        assert (health["served_version"], health["alias_version"], health["stale"]) == ("1", "2", False)
        assert restarted.poll_once() is False  # refused: not downloaded again until the alias moves
    assert registry.downloads == ["1", "2"]


def test_a_version_that_verifies_but_cannot_be_served_leaves_nothing_in_the_cache(
    published: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept, it would count toward the last ``keep`` served and push out a version a rollback needs."""
    from denseflow.model.serving.search import Searcher

    def cannot_serve(self: Searcher, folder: Path) -> None:
        raise ValueError(f"{folder}: index dimension 8, the model encodes 16")

    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache", keep=2) as replica:
        searcher = replica.start()
        registry.target = "3"
        assert replica.poll_once() is True
        monkeypatch.setattr(Searcher, "serve_folder", cannot_serve)
        registry.target = "2"
        assert replica.poll_once() is False
        assert "index dimension 8" in str(replica.watch.error)
        assert searcher.search("cancer", 3).index_version == "v0003"
        assert cached(tmp_path / "cache") == ["1/indexes/tiny/v0001", "3/indexes/tiny/v0003"]


def test_a_transient_failure_to_serve_keeps_the_download_for_the_next_poll(
    published: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from denseflow.model.serving.search import Searcher

    real = Searcher.serve_folder
    failures = [OSError(24, "Too many open files")]

    def fails_once(self: Searcher, folder: Path) -> None:
        if failures:
            raise failures.pop()
        real(self, folder)

    registry = FakeRegistry(published.folders)
    with replica_of(registry, tmp_path / "cache") as replica:
        searcher = replica.start()
        monkeypatch.setattr(Searcher, "serve_folder", fails_once)
        registry.target = "2"
        assert replica.poll_once() is False
        assert "Too many open files" in str(replica.watch.error)
        assert replica.poll_once() is True
        assert searcher.search("cancer", 3).index_version == "v0002"
        assert registry.downloads == ["1", "2"]
