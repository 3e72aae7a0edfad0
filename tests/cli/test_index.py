"""``denseflow search|serve`` (cli/index.py) as a replica of a registry reference, and the refusals that come before
anything is loaded: a public bind without an API key, an unusable key file, an alias that does not exist."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from denseflow.cli.main import MLFLOW_HTTP_DEFAULTS, main
from tests.model.serving.conftest import publish_model_version
from tests.registry.test_replica_source import register


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DENSEFLOW_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("DENSEFLOW_DEBUG", raising=False)
    for name in MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7"])
def test_serve_refuses_to_bind_beyond_loopback_without_a_key(
    home: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", host]) == 2
    err = one_error_line(capsys)
    assert f"refusing to bind {host} without an API key" in err and "--api-key-file" in err


def test_serve_refuses_an_unusable_key_file_without_showing_it(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = home / "key"
    key_file.write_text("secret with spaces")
    assert main(["serve", "--host", "0.0.0.0", "--api-key-file", str(key_file)]) == 2
    err = one_error_line(capsys)
    assert "whitespace" in err and "secret" not in err


def test_search_model_pulls_production_from_the_registry(
    home: Path,
    sqlite_registry: SimpleNamespace,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from denseflow.model.encoder import load_encoder
    from denseflow.model.onnx_runtime import export_query_tower
    from tests.conftest import write_tiny_beir

    tower = home / "tower"
    assert export_query_tower(load_encoder(tiny_model_dir), tower, 64) is None
    folder = publish_model_version(home / "published", tiny_model_dir, write_tiny_beir(home / "beir"), "1", tower)
    version = register(sqlite_registry, tiny_model_dir, folder)
    sqlite_registry.client.set_registered_model_alias("retriever", "production", version)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_registry.uri)

    argv = ["search", "--model", "retriever@production", "--name", "tiny", "--json", "-k", "3", "cancer tumor"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["index_version"], answer["model"], len(answer["hits"])) == ("v0001", "retriever@1", 3)
    # Its own cache, so a one-off search runs beside a replica serving from the same workspace.
    assert (home / "ws" / "search-cache" / "retriever" / "1" / "indexes" / "tiny" / "v0001").is_dir()

    assert main(["search", "--model", "retriever@candidate", "--name", "tiny", "cancer"]) == 2
    assert "retriever@candidate: no such alias" in one_error_line(capsys)
