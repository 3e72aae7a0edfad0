"""Races on ``production``: gates and promote/rollback at once (issue 11, item 3).

Two defences, each tested on its own: the workspace file lock (processes sharing a workspace run the gate one
after another) and the compare-and-set on the alias (processes sharing only the MLflow server: the one whose
decision went stale stands down and says so). A slowed ``decide`` widens the race window so that, without the
fix, both gates read the same production and both move it (reproduced 3 of 3 in the issue).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from denseflow.model.config import EvalConfig, PromotionConfig
from denseflow.model.context import EvaluationData, RunContext
from denseflow.model.promotion import GateOutcome, decide
from denseflow.registry import aliases
from denseflow.registry.aliases import (
    ProductionChanged,
    move_production,
    production_version,
    promote,
    read_history,
    rollback,
)
from denseflow.tasks import promotion as gate_module
from denseflow.tasks.promotion import run_gate

NAME = "retriever"


@pytest.fixture()
def store(sqlite_registry):
    sqlite_registry.client.create_registered_model(NAME)
    return sqlite_registry


def add_version(store, value: float) -> str:
    run = store.client.create_run(store.experiment)
    found = store.client.create_model_version(NAME, source=(store.tmp / "model").as_uri(), run_id=run.info.run_id)
    store.client.set_model_version_tag(NAME, found.version, "dataset_fingerprint", "fp")
    store.client.set_model_version_tag(NAME, found.version, "ndcg_at_10", f"{value:.6f}")
    return str(found.version)


def gate(store, version: str, value: float, workspace: Path) -> GateOutcome:
    run = store.client.create_run(store.experiment)
    context = RunContext(workspace=workspace, run_id=run.info.run_id, precision="fp32", max_seq_length=32)
    return run_gate(
        version,
        {"ndcg@10": value},
        EvaluationData(workspace, "fp", "test"),
        PromotionConfig(margin=0.0, mode="dense"),
        EvalConfig(batch_size=16),
        NAME,
        context,
    )


def slowed(monkeypatch, delays: list[float]) -> list[threading.Event]:
    """Each gate dawdles between reading production and moving it (the n-th call sleeps delays[n]). The n-th event
    is set once the n-th gate is deciding: it has read production and holds its workspace's lock."""
    calls = iter(range(len(delays)))
    deciding = [threading.Event() for _ in delays]
    guard = threading.Lock()

    def slowly(*args, **kwargs):
        with guard:
            call = next(calls, len(delays) - 1)
        deciding[call].set()
        time.sleep(delays[call])
        return decide(*args, **kwargs)

    monkeypatch.setattr(gate_module, "decide", slowly)
    return deciding


@pytest.fixture()
def slow_decide(monkeypatch):
    # The first call is the setup gate; 3 s apart so a loaded machine still orders the two moves.
    return slowed(monkeypatch, [0.0, 0.4, 3.4])


def at_once(*calls) -> list:
    """Run the calls in threads released together; results (or exceptions) in call order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:  # noqa: BLE001 - handed back to the test
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def assert_history_is_a_chain(store) -> list:
    """Every move starts where the one before ended: no move was lost or overwritten."""
    history = read_history(store.client, NAME)
    for before, after in zip(history, history[1:], strict=False):
        assert after.previous == before.version, history
    current = production_version(store.client, NAME)
    assert history[-1].version == (str(current.version) if current else None)
    return history


def test_two_gates_on_one_workspace_run_one_after_another(store, slow_decide):
    v1 = add_version(store, 0.50)
    assert gate(store, v1, 0.50, store.workspace).decision == "promoted"
    v2, v3 = add_version(store, 0.60), add_version(store, 0.70)

    results = at_once(lambda: gate(store, v2, 0.60, store.workspace), lambda: gate(store, v3, 0.70, store.workspace))
    assert not any(isinstance(result, Exception) for result in results), results
    # Serialised: whichever ran second compared against the first's outcome, so the best version is production
    # (v3 first → v2 rejected as worse; v2 first → v3 beats it too). Never the lower-scoring one.
    assert str(production_version(store.client, NAME).version) == v3
    promoted = [result.version for result in results if result.decision == "promoted"]
    history = assert_history_is_a_chain(store)
    assert [move.version for move in history[1:]] == sorted(promoted, key=lambda v: history_index(history, v))
    assert len(history) == 1 + len(promoted)


def history_index(history, version: str) -> int:
    return next(i for i, move in enumerate(history) if move.version == version)


def test_two_gates_sharing_only_the_server_exactly_one_moves_and_the_loser_is_told(store, slow_decide):
    v1 = add_version(store, 0.50)
    gate(store, v1, 0.50, store.workspace)
    v2, v3 = add_version(store, 0.60), add_version(store, 0.70)

    # Separate workspaces: no common file lock, only the compare-and-set on the alias.
    results = at_once(
        lambda: gate(store, v2, 0.60, store.tmp / "ws-a"), lambda: gate(store, v3, 0.70, store.tmp / "ws-b")
    )
    decisions = sorted(result.decision for result in results)
    assert decisions == ["conflict", "promoted"], results
    winner = next(result for result in results if result.decision == "promoted")
    loser = next(result for result in results if result.decision == "conflict")
    assert str(production_version(store.client, NAME).version) == winner.version
    assert "production moved" in loser.reason and loser.production == winner.version
    tags = store.client.get_model_version(NAME, loser.version).tags
    assert tags["promotion.decision"] == "conflict"
    history = assert_history_is_a_chain(store)
    assert [(move.version, move.action) for move in history] == [(v1, "gate"), (winner.version, "gate")]


def test_two_gates_moving_in_the_same_instant_still_leave_one_winner(store, monkeypatch):
    # Both decide at the same moment and may both pass the re-read (MLflow has no atomic alias update): the
    # check after writing tells a gate whose move was overwritten, so no gate claims a production it is not.
    slowed(monkeypatch, [0.0, 0.4, 0.4])
    v1 = add_version(store, 0.50)
    gate(store, v1, 0.50, store.workspace)
    v2, v3 = add_version(store, 0.60), add_version(store, 0.70)
    results = at_once(
        lambda: gate(store, v2, 0.60, store.tmp / "ws-a"), lambda: gate(store, v3, 0.70, store.tmp / "ws-b")
    )
    production = str(production_version(store.client, NAME).version)
    assert production in {result.version for result in results if result.decision == "promoted"}, results
    for result in results:
        assert result.decision in ("promoted", "conflict")
        if result.decision == "conflict":
            assert result.production == production


def test_promote_racing_a_gate_is_not_overwritten_by_a_stale_decision(store, slow_decide):
    v1 = add_version(store, 0.50)
    gate(store, v1, 0.50, store.workspace)
    v2, v3 = add_version(store, 0.60), add_version(store, 0.10)

    def person() -> dict:
        assert slow_decide[1].wait(30)  # the gate has read production (v1) and is deciding
        return promote(NAME, v3, "hotfix", workspace=store.tmp / "laptop")

    result, promoted = at_once(lambda: gate(store, v2, 0.60, store.tmp / "ws-a"), person)
    assert promoted["production"] == v3
    assert result.decision == "conflict" and str(production_version(store.client, NAME).version) == v3
    assert_history_is_a_chain(store)


def test_promote_on_the_same_workspace_waits_for_the_gate(store, slow_decide):
    v1 = add_version(store, 0.50)
    gate(store, v1, 0.50, store.workspace)
    v2, v3 = add_version(store, 0.60), add_version(store, 0.10)

    def person() -> dict:
        assert slow_decide[1].wait(30)  # the gate holds the workspace's lock
        return promote(NAME, v3, "hotfix", workspace=store.workspace)

    result, promoted = at_once(lambda: gate(store, v2, 0.60, store.workspace), person)
    # The gate finished first (it held the lock), then the person's promotion landed on top: both recorded.
    assert result.decision == "promoted" and promoted["previous"] == v2
    assert str(production_version(store.client, NAME).version) == v3
    history = assert_history_is_a_chain(store)
    assert [(move.version, move.action) for move in history] == [(v1, "gate"), (v2, "gate"), (v3, "promote")]
    assert rollback(NAME, workspace=store.workspace)["production"] == v2


def test_move_production_refuses_a_stale_expectation(store):
    v1, v2 = add_version(store, 0.5), add_version(store, 0.6)
    move_production(store.client, NAME, v1, "promote", "first", expected=None)
    with pytest.raises(ProductionChanged, match="v none → v1|vnone → v1"):
        move_production(store.client, NAME, v2, "gate", "stale", expected=None)
    assert str(production_version(store.client, NAME).version) == v1
    assert len(read_history(store.client, NAME)) == 1


def test_history_is_written_before_the_alias_so_a_crash_between_loses_no_line(store, monkeypatch):
    v1, v2 = add_version(store, 0.5), add_version(store, 0.6)
    promote(NAME, v1, workspace=store.workspace)

    class Crash(BaseException):
        pass

    real = MlflowClient.set_registered_model_alias

    def crash(self, *args, **kwargs):
        raise Crash

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(Crash):
        promote(NAME, v2, workspace=store.workspace)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    # The alias never moved; the recorded move is reconciled (an "external" line back to v1), not lost.
    assert str(production_version(store.client, NAME).version) == v1
    promote(NAME, v2, workspace=store.workspace)
    actions = [(move.version, move.action) for move in read_history(store.client, NAME)]
    assert actions == [(v1, "promote"), (v2, "promote"), (v1, "external"), (v2, "promote")]


def test_the_lock_is_in_the_workspace(store):
    with aliases.production_lock(NAME, store.workspace) as path:
        assert path.parent == store.workspace / "locks" and path.name == f"production-{NAME}.lock"
