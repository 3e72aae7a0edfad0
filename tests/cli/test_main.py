"""The CLI ends every failure with one line on stderr, never a traceback (issue 11, item 7)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denseflow.cli.main import MLFLOW_HTTP_DEFAULTS, main


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DENSEFLOW_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("DENSEFLOW_DEBUG", raising=False)
    for name in MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_retrain_against_an_unreachable_tracking_server_fails_fast_in_one_line(home, monkeypatch, capsys):
    import prefect.server.api.server  # noqa: F401 - import time (long on a loaded machine) is not the point

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert main(["retrain"]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unreachable" in err
    assert "Traceback" not in err


def test_mlflow_http_retries_are_bounded_unless_the_user_chose(home, monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    main(["config"])
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


def test_retrain_on_unusable_data_prints_the_ingest_line(home, capsys):
    garbage = home / "pairs.jsonl"
    garbage.write_text("not json\n" * 50)
    config = home / "retrain.yaml"
    config.write_text(f"data:\n  source: qa\n  path: {garbage}\n")
    assert main(["retrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("denseflow retrain: error:")
    assert "Traceback" not in err


def test_a_base_model_that_cannot_be_loaded_fails_before_anything_is_registered(home, capsys):
    assert main(["retrain", "--set", f"train.base_model={home / 'no-such-model'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.base_model" in err and "no-such-model" in err
    assert not (home / "ws" / "mlflow.db").exists()


def test_non_utf8_argument_is_one_line(home, capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of a Latin-1 byte in argv
    assert main(["search", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "denseflow: error: argument 'caf\\\\xe9' is not valid UTF-8"


def test_unexpected_errors_are_one_line_unless_debugging(home, capsys, monkeypatch):
    assert main(["retrain", "--config", str(home / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "FileNotFoundError" in err
    assert "DENSEFLOW_DEBUG" in err
    monkeypatch.setenv("DENSEFLOW_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["retrain", "--config", str(home / "missing.yaml")])


# Commands whose arbitrary arguments end quickly (no store migration, no Prefect server, no training).
COMMANDS = ["retrain", "ingest", "config", "index", "search", "simulate-clicks", "frobnicate", "--help-me", ""]
ARGUMENT = st.one_of(
    st.sampled_from(["--config", "--source", "beir", "--out", "--path", "list", "rollback", "-k", "0", "--mode"]),
    st.text(max_size=12),  # includes lone surrogates (non-UTF-8 argv bytes) and control characters
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), rest=st.lists(ARGUMENT, min_size=1, max_size=4))
def test_any_arguments_end_with_a_status_and_no_traceback(home, capsys, command, rest):
    argv = [command, *rest] if command else rest
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: usage line + one error line, status 2 (0 for --help)
        status = exit_.code
    captured = capsys.readouterr()
    assert status in (0, 1, 2), (argv, status)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    if status:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("denseflow"), (argv, captured.err)


def test_a_newline_in_an_argument_does_not_split_the_error_line(capsys):
    with pytest.raises(SystemExit):
        main(["retrain", "bad\nline"])
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "denseflow: error: unrecognized arguments: bad\\nline"
