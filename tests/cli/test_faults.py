"""Fault injection (issue 11): kill -9 the ``denseflow retrain`` command at chosen points, re-run, check the end state.

One workspace is shared by the cases, which build on each other (a full CLI retrain per case would take minutes):
each case is a module-scoped fixture that runs after the one it depends on and records what it left at that
moment, so every test passes alone (``-k publish`` runs cases 1 and 2) and in any order:

0. the workspace starts with a published index (``v0001``, a model folder's), as if something was served already;
1. a retrain is killed (SIGKILL) as soon as a training checkpoint folder appears, i.e. while it is written;
2. the re-run resumes (or restarts) training, registers version 1, the gate promotes it, and it is killed as the
   publish step starts: ``production`` has moved, its index is not published, and its MLflow run is not
   FINISHED (retrain ends its run only after publication);
3. two retrains start at once: both finish; each registers a version, the gate (under the workspace lock) keeps
   exactly one ``production``, the history has no lost move, and production's missing index is published.

Each subprocess is the real command (``.venv/bin/denseflow retrain --config``) with ``DENSEFLOW_HOME``, a SQLite
``MLFLOW_TRACKING_URI`` in the test's folder and ``HF_HUB_OFFLINE=1``. The commands talk to the suite's Prefect
test server (``PREFECT_API_URL``) instead of each starting a temporary one: that saves ~40 s per command here, and
what the temporary server does on kill -9 is tests/cli/test_orphans.py's subject. Loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from denseflow.registry.keys import HISTORY_TAG
from tests.conftest import write_tiny_beir

pytestmark = pytest.mark.faults

DENSEFLOW = Path(sys.executable).with_name("denseflow")
STEP_TIMEOUT_S = 480.0  # a bound far above one command on a loaded machine
POLL_S = 0.02
INDEX = "default"


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]
    config: Path
    uri: str
    runs_seen: set[str] = field(default_factory=set)

    @property
    def home(self) -> Path:
        return self.root / "ws"

    @property
    def indexes(self) -> Path:
        return self.home / "indexes"

    def client(self) -> MlflowClient:
        # Both URIs: an earlier test in the same process may have set MLflow's global registry URI.
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def new_runs(self) -> list[str]:
        """MLflow runs created since the last call, oldest first."""
        client = self.client()
        experiment = client.get_experiment_by_name("faults")
        runs = (
            client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"]) if experiment else []
        )
        fresh = [run.info.run_id for run in runs if run.info.run_id not in self.runs_seen]
        self.runs_seen.update(fresh)
        return fresh

    def status(self, run_id: str) -> str:
        return self.client().get_run(run_id).info.status


@dataclass
class Attempt:
    process: subprocess.Popen
    log: Path
    started: float

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def start_retrain(ws: Workspace, label: str) -> Attempt:
    log = ws.root / f"{label}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(DENSEFLOW), "retrain", "--config", str(ws.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ws.env,
            cwd=ws.root,
            start_new_session=True,  # its own process group, so anything it started can be cleaned up after
        )
    return Attempt(process, log, time.monotonic())


def kill_when(attempt: Attempt, ready: Callable[[], bool], what: str) -> float:
    """SIGKILL the command as soon as ``ready()``; returns the seconds it ran. Fails if it ended first."""
    deadline = attempt.started + STEP_TIMEOUT_S
    while not ready():
        if attempt.process.poll() is not None:
            pytest.fail(f"retrain ended (status {attempt.process.returncode}) before {what}:\n{attempt.tail()}")
        if time.monotonic() > deadline:
            cleanup(attempt)
            pytest.fail(f"no {what} within {STEP_TIMEOUT_S:.0f} s:\n{attempt.tail()}")
        time.sleep(POLL_S)
    os.kill(attempt.process.pid, signal.SIGKILL)
    attempt.process.wait(timeout=30)
    cleanup(attempt)
    return time.monotonic() - attempt.started


def finish(attempt: Attempt) -> int:
    try:
        return attempt.process.wait(timeout=max(1.0, attempt.started + STEP_TIMEOUT_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        cleanup(attempt)
        pytest.fail(f"retrain did not finish within {STEP_TIMEOUT_S:.0f} s:\n{attempt.tail()}")
    finally:
        cleanup(attempt)


def cleanup(attempt: Attempt) -> None:
    """Whatever the command itself started (its process group) goes with it."""
    try:
        os.killpg(attempt.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if attempt.process.poll() is None:
        attempt.process.wait(timeout=30)


def checkpoint_folders(ws: Workspace) -> list[Path]:
    return sorted(ws.home.glob("training/*/checkpoints/checkpoint-*"))


def publishing(ws: Workspace, attempt: Attempt) -> bool:
    """The publish step has begun: the subflow's first log line, or the store's staging folder."""
    if any((ws.indexes / INDEX).glob(".staging-*")):
        return True
    return "for flow 'publish_index'" in attempt.output()


def served_model(ws: Workspace) -> str | None:
    from denseflow.model.index.store import published_model_label

    return published_model_label(ws.indexes, INDEX)


def production(ws: Workspace) -> list[str]:
    """Every version carrying the production alias (the registry allows one; checked, not assumed)."""
    client = ws.client()
    versions = [str(found.version) for found in client.search_model_versions("name = 'retriever'")]
    # Search results omit aliases: each version is read whole.
    return sorted(v for v in versions if "production" in client.get_model_version("retriever", v).aliases)


def search_answers(ws: Workspace, query: str = "heart artery") -> dict:
    result = subprocess.run(
        [str(DENSEFLOW), "search", query, "-k", "3", "--json"],
        env=ws.env,
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def seed_published_index(home: Path, model_dir: Path, beir_dir: Path) -> None:
    """What a workspace that already served something has: one published version (a model folder's)."""
    from denseflow.model.data.beir import RejectLog, load_beir
    from denseflow.model.encoder import encode, load_encoder
    from denseflow.model.index.build import IndexSpec, build_index
    from denseflow.model.index.store import build_manifest, publish

    corpus = load_beir(beir_dir, ["test"], RejectLog()).corpus
    embeddings = encode(load_encoder(model_dir, 32), [doc.full_text for doc in corpus.values()], "document", 16)
    spec = IndexSpec()
    index = build_index(embeddings, spec)
    manifest = build_manifest(spec, len(corpus), embeddings.shape[1], {"name": "seed"}, "seed", 0.0, 1.0, 0)
    publish(home / "indexes", INDEX, index, list(corpus), model_dir, manifest)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_harness: None) -> Iterator[Workspace]:
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("faults")
    beir = write_tiny_beir(root / "beir")
    config = root / "retrain.yaml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "data": {"path": str(beir)},
                "mining": {"candidates": "bm25", "rank_end": 10, "teacher": "none"},
                "train": {
                    "base_model": str(tiny_model_dir),
                    "batch_size": 8,
                    "epochs": 1,
                    "max_seq_length": 32,
                    "save_steps": 1,  # a checkpoint at every step: the kill in case 1 lands inside one
                    # α 0: the trained model is the base model itself, so every gate's outcome is fixed: the first
                    # ships the base model (version 2 beside candidate 1), later ones tie with it.
                    "interpolation": 0.0,
                },
                "eval": {"batch_size": 16},
                "tracking": {"experiment": "faults"},
            }
        )
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = os.environ | {
        "DENSEFLOW_HOME": str(root / "ws"),
        "MLFLOW_TRACKING_URI": uri,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    env.pop("DENSEFLOW_DEBUG", None)
    workspace = Workspace(root, env, config, uri)
    seed_published_index(workspace.home, tiny_model_dir, beir)
    yield workspace


@dataclass(frozen=True)
class KilledInTraining:
    """What case 1 left, read as soon as the command was killed (later cases change the workspace)."""

    run_id: str
    status: str
    production: list[str]
    served: str | None
    complete_checkpoint_left: bool


@dataclass(frozen=True)
class KilledInPublish:
    """What case 2 left, read as soon as the command was killed."""

    run_id: str
    output: str
    incomplete_checkpoints: list[Path]
    killed_in_training_status: str
    production: list[str]
    served: str | None


@pytest.fixture(scope="module")
def killed_in_training(ws: Workspace) -> KilledInTraining:
    """Case 1: SIGKILL as soon as ``checkpoint-N/`` appears, i.e. while a checkpoint is written."""
    attempt = start_retrain(ws, "1-killed-in-training")
    kill_when(attempt, lambda: bool(checkpoint_folders(ws)), "a checkpoint folder")
    complete = any((c / "trainer_state.json").is_file() for c in checkpoint_folders(ws))
    (killed,) = ws.new_runs()
    return KilledInTraining(killed, ws.status(killed), production(ws), served_model(ws), complete)


@pytest.fixture(scope="module")
def killed_in_publish(ws: Workspace, killed_in_training: KilledInTraining) -> KilledInPublish:
    """Case 2: the re-run, killed as its publish step starts."""
    attempt = start_retrain(ws, "2-killed-in-publish")
    kill_when(attempt, lambda: publishing(ws, attempt), "the publish step")
    incomplete = [c for c in checkpoint_folders(ws) if not (c / "trainer_state.json").is_file()]
    (killed,) = ws.new_runs()
    return KilledInPublish(
        killed,
        attempt.output(),
        incomplete,
        ws.status(killed_in_training.run_id),
        production(ws),
        served_model(ws),
    )


def test_kill_9_while_a_checkpoint_is_written_leaves_the_served_index_alone(
    killed_in_training: KilledInTraining,
) -> None:
    """The checkpoint is usually cut short (no trainer_state.json).

    The killed attempt's MLflow run stays RUNNING: kill -9 gives the process no chance to end it, and nothing else
    may mark it (FINISHED would claim a success; a SIGTERM or Ctrl-C does mark it FAILED, see test_run_lifecycle).
    """
    assert killed_in_training.status == "RUNNING"
    assert killed_in_training.production == []
    assert killed_in_training.served == "seed"


def test_rerun_resumes_then_kill_9_as_publish_starts_leaves_the_previous_index_serving(
    killed_in_training: KilledInTraining, killed_in_publish: KilledInPublish
) -> None:
    """The re-run gets past the cut-short checkpoint (item 1: renamed ``incomplete-checkpoint-*``, resumed from a
    complete one when there is one, else restarted), registers version 1, loses to the base model, which ships as
    version 2, and is killed as its publish step starts: production points at a version without an index (item 2's
    state); the previously published version keeps serving, and the run killed in training is still RUNNING."""
    assert "training resumed from" in killed_in_publish.output or not killed_in_training.complete_checkpoint_left
    assert killed_in_publish.incomplete_checkpoints == []
    assert killed_in_publish.killed_in_training_status == "RUNNING"
    assert killed_in_publish.production == ["2"]
    assert killed_in_publish.served == "seed"


def test_the_run_killed_during_publish_is_not_marked_finished(
    ws: Workspace, killed_in_publish: KilledInPublish
) -> None:
    assert ws.status(killed_in_publish.run_id) != "FINISHED"


def test_two_retrains_at_once_both_finish_with_one_production_and_its_index_published(
    ws: Workspace, killed_in_training: KilledInTraining, killed_in_publish: KilledInPublish
) -> None:
    """Two retrains on one workspace: training runs once (the second waits on the training lock and reuses it),
    the gate runs one at a time (a tie against production: no move), and production's missing index is published
    by the re-runs (item 2). Exactly one production, no history line lost, nothing published before is gone."""
    attempts = [start_retrain(ws, f"3-concurrent-{n}") for n in (1, 2)]
    codes = [finish(attempt) for attempt in attempts]
    for code, attempt in zip(codes, attempts, strict=True):
        assert code == 0, attempt.tail()
    finished = ws.new_runs()
    assert sorted(ws.status(run) for run in finished) == ["FINISHED", "FINISHED"]
    assert ws.status(killed_in_training.run_id) == "RUNNING"  # not rewritten by later runs
    assert production(ws) == ["2"]
    history = json.loads(ws.client().get_registered_model("retriever").tags[HISTORY_TAG])
    assert [(move["version"], move["action"]) for move in history] == [("2", "gate")]
    versions = sorted(str(v.version) for v in ws.client().search_model_versions("name = 'retriever'"))
    assert versions == ["1", "2", "3", "4"]

    assert served_model(ws) == "retriever@2"
    from denseflow.model.index.store import list_versions

    listed = list_versions(ws.indexes, INDEX)
    assert listed[0].version == "v0001"  # the version served before the faults is still there
    assert listed[0].manifest["model"]["name"] == "seed"
    assert not [v.version for v in listed if v.broken]
    answer = search_answers(ws)
    assert answer["model"] == "retriever@2"
    assert len(answer["hits"]) == 3
