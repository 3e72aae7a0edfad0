"""Promotion gate, manual promote / rollback with history, and aliases moved outside denseflow.

Pure decisions are tested on ``denseflow.model.promotion``; the registry side runs on a temporary SQLite MLflow
store whose versions point at the tiny model folder (``log_model`` is left to the retrain tests: it takes
~30 s here, a version created from a folder takes milliseconds and behaves the same for aliases and tags).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from denseflow.cli.main import main as cli_main
from denseflow.model.config import EvalConfig, PromotionConfig, RetrainConfig
from denseflow.model.context import EvaluationData, RunContext
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.encoder import encode, encode_corpus, load_encoder
from denseflow.model.evaluation.metrics import evaluate_run, run_from_search
from denseflow.model.index.topk import exact_search
from denseflow.model.promotion import (
    Evidence,
    Move,
    NoPreviousProduction,
    NotComparable,
    Scored,
    decide,
    dump_history,
    paired_evidence,
    parse_history,
    production_stack,
    reconcile,
    record,
    rollback_target,
)
from denseflow.registry.aliases import list_versions, production_version, promote, read_history, rollback
from denseflow.registry.keys import HISTORY_TAG
from denseflow.registry.resolve import resolve_model
from denseflow.tasks import promotion as gate_module
from denseflow.tasks.promotion import reevaluation_tag, run_gate

NAME = "retriever"

# ---------------------------------------------------------------------------------- pure decisions


def scored(version: str, value: float, fingerprint: str = "fp") -> Scored:
    return Scored(version, value, fingerprint)


def test_a_first_candidate_that_loses_to_the_base_model_is_rejected_and_the_base_ships():
    decision = decide(scored("1", 0.60), None, "ndcg@10", 0.005, base=scored("base", 0.63))
    assert not decision.promote
    assert decision.ship_base
    assert decision.outcome == "base model shipped"
    assert "0.6000 vs the base model's system 0.6300" in decision.reason
    assert decision.as_tags()["promotion.base_value"] == "0.630000"


def test_a_margin_win_that_fails_the_paired_test_is_not_promoted_and_the_record_says_which_test():
    noisy = {"base": Evidence(p_better=0.15, queries=300)}
    decision = decide(scored("1", 0.72), None, "ndcg@10", 0.005, base=scored("base", 0.70), evidence=noisy)
    assert not decision.promote
    assert "paired test not passed (one-sided p = 0.150" in decision.reason


def test_a_candidate_significantly_worse_on_unseen_documents_is_not_promoted():
    evidence = {"base": Evidence(p_better=0.001, queries=300, p_worse_unseen=0.01, unseen_queries=104)}
    decision = decide(scored("1", 0.75), None, "ndcg@10", 0.005, base=scored("base", 0.70), evidence=evidence)
    assert not decision.promote
    assert "significantly worse on the 104 unseen-document queries" in decision.reason


def test_a_win_by_the_margin_and_the_paired_test_is_promoted():
    evidence = {"base": Evidence(p_better=0.001, queries=300, p_worse_unseen=0.6, unseen_queries=104)}
    decision = decide(scored("1", 0.75), None, "ndcg@10", 0.005, base=scored("base", 0.70), evidence=evidence)
    assert decision.promote
    assert "p = 0.001" in decision.reason


def test_paired_evidence_tests_unseen_documents_only_with_enough_of_them():
    better = {f"q{i}": 0.8 for i in range(30)}
    worse = {f"q{i}": 0.5 for i in range(30)}
    assert paired_evidence(better, worse, unseen=[f"q{i}" for i in range(5)]).p_worse_unseen is None
    tested = paired_evidence(better, worse, unseen=[f"q{i}" for i in range(25)], permutations=1000)
    assert tested.p_better < 0.05 and tested.unseen_queries == 25 and tested.p_worse_unseen > 0.5


def test_a_candidate_must_beat_production_and_the_base_model_both():
    base = scored("base", 0.63)
    beats_both = decide(scored("3", 0.70), scored("2", 0.65), "ndcg@10", 0.005, base=base)
    assert beats_both.promote
    within_margin_of_base = decide(scored("3", 0.633), scored("2", 0.60), "ndcg@10", 0.005, base=base)
    assert not within_margin_of_base.promote
    assert within_margin_of_base.base_delta == pytest.approx(0.003)
    loses_to_production = decide(scored("3", 0.64), scored("2", 0.70), "ndcg@10", 0.005, base=base)
    assert not loses_to_production.promote
    assert not loses_to_production.ship_base  # production beats the base: it stays


def test_the_base_ships_over_a_production_it_beats_by_the_margin():
    decision = decide(scored("3", 0.60), scored("2", 0.58), "ndcg@10", 0.005, base=scored("base", 0.63))
    assert decision.ship_base
    assert "production v2" in decision.reason


def test_no_production_yet_promotes():
    decision = decide(scored("1", 0.40), None, "ndcg@10", 0.005)
    assert decision.promote and decision.outcome == "promoted"
    assert "no production" in decision.reason
    assert decision.as_tags()["promotion.production_version"] == "none"


def test_better_by_more_than_margin_promotes():
    decision = decide(scored("2", 0.520), scored("1", 0.500), "ndcg@10", 0.005)
    assert decision.promote and decision.reason.startswith("better")
    assert decision.delta == pytest.approx(0.02)
    tags = decision.as_tags()
    assert tags["promotion.candidate_value"] == "0.520000" and tags["promotion.production_value"] == "0.500000"
    assert tags["promotion.delta"] == "+0.020000"


def test_worse_is_rejected():
    decision = decide(scored("2", 0.45), scored("1", 0.50), "ndcg@10", 0.0)
    assert not decision.promote and decision.outcome == "rejected"
    assert decision.reason.startswith("worse")


@pytest.mark.parametrize(("candidate", "label"), [(0.500, "tie"), (0.503, "not better"), (0.505, "not better")])
def test_equal_or_within_margin_is_rejected(candidate, label):
    # 0.505 - 0.500 is exactly the margin: the candidate must beat production by *more* than the margin.
    decision = decide(scored("2", candidate), scored("1", 0.500), "ndcg@10", 0.005)
    assert not decision.promote
    assert decision.reason.startswith(label)


def test_exact_tie_against_a_rounded_registry_figure_is_a_tie_not_worse():
    # Production's figure comes from a registry tag (6 decimals); the candidate's from evaluation (full precision).
    decision = decide(scored("2", 0.41234649), scored("1", 0.412346), "ndcg@10", 0.0)
    assert not decision.promote and decision.reason.startswith("tie") and "-0.0000" not in decision.reason
    assert decision.delta == 0.0
    slightly = decide(scored("2", 0.412345), scored("1", 0.412346), "ndcg@10", 0.0)
    assert slightly.reason.startswith("worse") and "delta -0.000001" in slightly.reason


def test_zero_margin_promotes_any_strict_improvement_but_not_a_tie():
    assert decide(scored("2", 0.5001), scored("1", 0.5), "ndcg@10", 0.0).promote
    assert not decide(scored("2", 0.5), scored("1", 0.5), "ndcg@10", 0.0).promote


def test_different_fingerprints_are_not_compared():
    with pytest.raises(NotComparable, match="re-evaluate production"):
        decide(scored("2", 0.9, "new-data"), scored("1", 0.1, "old-data"), "ndcg@10", 0.0)


def test_candidate_already_production_is_not_promoted_again():
    assert not decide(scored("3", 0.9), scored("3", 0.9), "ndcg@10", 0.0).promote


def test_bad_margin_and_missing_figure_raise():
    with pytest.raises(ValueError, match="margin"):
        decide(scored("2", 0.5), None, "ndcg@10", -0.1)
    with pytest.raises(ValueError, match="nan"):
        decide(scored("2", float("nan")), None, "ndcg@10", 0.0)


def test_promotion_config_validates_metric_and_margin():
    assert RetrainConfig().promotion == PromotionConfig(metric="ndcg@10", margin=0.005, enabled=True)
    with pytest.raises(ValueError):
        PromotionConfig(metric="loss")
    with pytest.raises(ValueError):
        PromotionConfig(margin=-0.01)
    assert PromotionConfig(metric="recall@100").metric == "recall@100"


# ------------------------------------------------------------------------------------- pure history


def moves(*steps: tuple[str | None, str]) -> list[Move]:
    history: list[Move] = []
    for version, action in steps:
        history = record(history, version, action, "t", "")
    return history


def test_rollback_walks_back_down_the_promotions():
    history = moves(("1", "gate"), ("2", "gate"), ("3", "promote"))
    assert production_stack(history) == ["1", "2", "3"]
    assert rollback_target(history) == "2"
    history = record(history, "2", "rollback", "t", "")
    assert rollback_target(history) == "1"
    history = record(history, "1", "rollback", "t", "")
    with pytest.raises(NoPreviousProduction):
        rollback_target(history)


def test_reconcile_records_an_alias_moved_elsewhere():
    history = moves(("1", "gate"), ("2", "gate"))
    assert reconcile(history, "2", "t") == history
    moved = reconcile(history, "5", "t")
    assert moved[-1] == Move("5", "2", "external", "t", "alias moved outside denseflow")
    assert rollback_target(moved) == "2"
    # Production removed by hand: rollback restores the last version that served.
    assert rollback_target(reconcile(history, None, "t")) == "2"


def test_history_round_trips_and_keeps_the_newest_moves_within_the_tag_limit():
    history = moves(*[(str(i), "gate") for i in range(1, 200)])
    text = dump_history(history, max_chars=5000)
    assert len(text) <= 5000
    kept = parse_history(text)
    assert kept[-1] == history[-1] and len(kept) < len(history)
    assert parse_history(dump_history(history[:3])) == history[:3]
    with pytest.raises(ValueError, match="not JSON"):
        parse_history("{oops")


# ------------------------------------------------------------------------------- registry fixtures


@pytest.fixture()
def store(sqlite_registry, tiny_model_dir: Path):
    sqlite_registry.model = tiny_model_dir
    return sqlite_registry


def add_version(store, metrics: dict[str, float], fingerprint: str = "fp") -> str:
    """A registered version of the tiny model tagged the way ``denseflow.tasks.registry.register`` tags it."""
    client = store.client
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    run = client.create_run(store.experiment)
    found = client.create_model_version(NAME, source=store.model.as_uri(), run_id=run.info.run_id)
    tags = {"dataset_fingerprint": fingerprint} | {k.replace("@", "_at_"): f"{v:.6f}" for k, v in metrics.items()}
    for key, value in tags.items():
        client.set_model_version_tag(NAME, found.version, key, value)
    client.set_registered_model_alias(NAME, "candidate", found.version)
    return str(found.version)


def gate(
    store, version: str, metrics: dict[str, float], fingerprint="fp", dataset_dir=None, base_metrics=None, **settings
) -> dict:
    run = store.client.create_run(store.experiment)
    context = RunContext(workspace=store.workspace, run_id=run.info.run_id, precision="fp32", max_seq_length=32)
    return run_gate(
        version,
        metrics,
        EvaluationData(Path(dataset_dir or store.workspace), fingerprint, "test"),
        PromotionConfig(**({"mode": "dense"} | settings)),
        EvalConfig(batch_size=16),
        NAME,
        context,
        base_metrics,
    ).as_dict() | {"run_id": run.info.run_id}


def alias(store, name: str = "production") -> str | None:
    found = production_version(store.client, NAME) if name == "production" else None
    return str(found.version) if found else None


# ----------------------------------------------------------------------------------- gate decisions


def test_gate_first_version_becomes_production_and_records_why(store):
    v1 = add_version(store, {"ndcg@10": 0.40})
    result = gate(store, v1, {"ndcg@10": 0.40})
    assert result["decision"] == "promoted" and result["production"] == "1" and result["previous_production"] is None
    assert alias(store) == "1"
    tags = store.client.get_model_version(NAME, v1).tags
    assert tags["promotion.decision"] == "promoted" and "no production version yet" in tags["promotion.reason"]
    assert tags["promotion.run_id"] == result["run_id"] and tags["eval_split"] == "test"
    run = store.client.get_run(result["run_id"])
    assert run.data.tags["promotion.decision"] == "promoted"
    assert [(m.version, m.action) for m in read_history(store.client, NAME)] == [("1", "gate")]


@pytest.mark.parametrize(
    ("candidate", "decision", "production", "reason"),
    [
        (0.52, "promoted", "2", "better"),
        (0.45, "rejected", "1", "worse"),
        (0.503, "rejected", "1", "not better by more than the margin"),
        (0.50, "rejected", "1", "tie"),
    ],
)
def test_gate_compares_with_production_on_the_same_data(store, candidate, decision, production, reason):
    v1 = add_version(store, {"ndcg@10": 0.50})
    gate(store, v1, {"ndcg@10": 0.50})
    v2 = add_version(store, {"ndcg@10": candidate})
    result = gate(store, v2, {"ndcg@10": candidate}, margin=0.005)
    assert (result["decision"], alias(store)) == (decision, production)
    assert result["reason"].startswith(reason)
    tags = store.client.get_model_version(NAME, v2).tags
    assert tags["promotion.decision"] == decision
    assert tags["promotion.production_version"] == "1" and tags["promotion.production_value"] == "0.500000"
    assert tags["promotion.production_reevaluated"] == "false"
    assert store.client.get_run(result["run_id"]).data.metrics["promotion.delta"] == pytest.approx(candidate - 0.5)


def test_gate_uses_the_configured_metric(store):
    v1 = add_version(store, {"ndcg@10": 0.50, "recall@10": 0.70})
    gate(store, v1, {"ndcg@10": 0.50, "recall@10": 0.70})
    v2 = add_version(store, {"ndcg@10": 0.60, "recall@10": 0.65})
    result = gate(store, v2, {"ndcg@10": 0.60, "recall@10": 0.65}, metric="recall@10", margin=0.0)
    assert result["decision"] == "rejected" and result["metric"] == "recall@10" and alias(store) == "1"
    with pytest.raises(ValueError, match="mrr@10.*was not evaluated"):
        gate(store, v2, {"ndcg@10": 0.6}, metric="mrr@10")


def tiny_model_ndcg(model_dir: Path, dataset_dir: Path) -> float:
    """nDCG@10 of the tiny model on the tiny test split, computed without the gate's code path."""
    dataset = load_beir(dataset_dir, ["test"], RejectLog())
    model = load_encoder(model_dir, 32)
    doc_ids, doc_emb = encode_corpus(model, dataset.corpus, 16, "fp32")
    queries = dataset.split_queries("test")
    query_emb = encode(model, list(queries.values()), "query", 16, "fp32")
    indices, scores = exact_search(query_emb, doc_emb, 100)
    return evaluate_run(run_from_search(list(queries), doc_ids, indices, scores), dataset.qrels["test"])["ndcg@10"]


def test_gate_reevaluates_production_on_new_data_and_caches_it(store, tiny_beir_dir, monkeypatch):
    # Production's registered figure (0.99) came from other data: it must not be compared as is.
    v1 = add_version(store, {"ndcg@10": 0.99}, fingerprint="old-data")
    gate(store, v1, {"ndcg@10": 0.99}, fingerprint="old-data")
    measured = tiny_model_ndcg(store.model, tiny_beir_dir)

    v2 = add_version(store, {"ndcg@10": measured - 0.05}, fingerprint="new-data")
    result = gate(store, v2, {"ndcg@10": measured - 0.05}, fingerprint="new-data", dataset_dir=tiny_beir_dir)
    assert result["decision"] == "rejected" and result["reason"].startswith("worse")
    assert result["production_figure"]["reevaluated"] is True
    assert result["production_figure"]["value"] == pytest.approx(measured, abs=1e-6)
    tags = store.client.get_model_version(NAME, v2).tags
    assert tags["promotion.production_reevaluated"] == "true"
    assert float(tags["promotion.production_value"]) == pytest.approx(measured, abs=1e-6)
    cached = json.loads(store.client.get_model_version(NAME, v1).tags[reevaluation_tag("new-data", "test")])
    assert cached["ndcg@10"] == pytest.approx(measured)
    run = store.client.get_run(result["run_id"])
    assert run.data.metrics["production.ndcg_at_10"] == pytest.approx(measured)
    artifacts = {item.path for item in store.client.list_artifacts(result["run_id"], "evaluation")}
    assert "evaluation/metrics_production.json" in artifacts

    # A second candidate on the same new data uses the cached figure: no model is loaded again.
    def no_download(*args, **kwargs):
        raise AssertionError("production was re-evaluated although its figure is cached")

    monkeypatch.setattr(gate_module, "resolve_model", no_download)
    v3 = add_version(store, {"ndcg@10": measured + 0.05}, fingerprint="new-data")
    result = gate(store, v3, {"ndcg@10": measured + 0.05}, fingerprint="new-data", dataset_dir=tiny_beir_dir)
    assert result["decision"] == "promoted" and alias(store) == "3"
    assert result["delta"] == pytest.approx(0.05, abs=1e-6)


def test_production_is_measured_as_it_is_served(store, tiny_beir_dir):
    """A production served hybrid, registered on other data, is re-measured here fused with BM25 at its weight."""
    v1 = add_version(store, {"ndcg@10": 0.99}, fingerprint="other-data")
    for key, value in {"served.mode": "hybrid", "hybrid.weight": "0.5", "hybrid.method": "convex"}.items():
        store.client.set_model_version_tag(NAME, v1, key, value)
    promote(NAME, v1)
    v2 = add_version(store, {"ndcg@10": 0.10})
    result = gate(store, v2, {"ndcg@10": 0.10}, dataset_dir=tiny_beir_dir)
    assert result["production_figure"]["reevaluated"] is True
    assert result["production_figure"]["value"] < 0.99
    cached = store.client.get_model_version(NAME, v1).tags
    assert reevaluation_tag("fp", "test", "hybrid") in cached


def test_the_gate_names_the_base_model_figure_and_refuses_a_candidate_below_it(store):
    v1 = add_version(store, {"ndcg@10": 0.40})
    result = gate(store, v1, {"ndcg@10": 0.40}, base_metrics={"ndcg@10": 0.45})
    assert result["promote"] is False
    assert result["ship_base"] is True
    assert result["base_figure"]["value"] == 0.45
    assert alias(store) is None  # the flow registers the base and moves production to it (tests/flows/test_retrain.py)
    tags = store.client.get_model_version(NAME, v1).tags
    assert tags["promotion.base_value"] == "0.450000"


# ----------------------------------------------------------------------------- promote and rollback


def test_promote_and_rollback_follow_the_history(store):
    versions = [add_version(store, {"ndcg@10": 0.1 * i}) for i in range(1, 4)]
    with pytest.raises(NoPreviousProduction):
        rollback(NAME)
    for version in versions:
        promote(NAME, version, reason=f"ship {version}")
    assert alias(store) == "3"
    assert rollback(NAME, "bad week")["production"] == "2"
    assert alias(store) == "2"
    assert rollback(NAME)["production"] == "1"
    with pytest.raises(NoPreviousProduction):
        rollback(NAME)
    promote(NAME, "3")
    assert rollback(NAME)["previous"] == "3" and alias(store) == "1"
    history = read_history(store.client, NAME)
    assert [(m.version, m.previous, m.action) for m in history] == [
        ("1", None, "promote"),
        ("2", "1", "promote"),
        ("3", "2", "promote"),
        ("2", "3", "rollback"),
        ("1", "2", "rollback"),
        ("3", "1", "promote"),
        ("1", "3", "rollback"),
    ]
    assert history[0].reason == "ship 1" and history[3].reason == "bad week"
    last_move = json.loads(store.client.get_model_version(NAME, "1").tags["production.last_move"])
    assert last_move["action"] == "rollback" and last_move["previous"] == "3"
    with pytest.raises(Exception, match="(?i)not found|does not exist"):
        promote(NAME, "99")


def test_alias_moved_outside_denseflow_is_honoured(store):
    v1, v2, v3, v4 = (add_version(store, {"ndcg@10": value}) for value in (0.5, 0.55, 0.6, 0.58))
    gate(store, v1, {"ndcg@10": 0.5})
    gate(store, v2, {"ndcg@10": 0.55})
    assert alias(store) == "2"
    # A person moves production in the MLflow UI (same API call the UI makes).
    MlflowClient(store.uri).set_registered_model_alias(NAME, "production", v3)

    resolved = resolve_model(f"{NAME}@production", store.workspace)
    assert resolved.version == "3" and (resolved.local_dir / "modules.json").is_file()
    assert resolve_model(f"models:/{NAME}@production", store.workspace).version == "3"

    result = gate(store, v4, {"ndcg@10": 0.58})
    assert result["previous_production"] == "3" and result["decision"] == "rejected"
    assert store.client.get_model_version(NAME, v4).tags["promotion.production_value"] == "0.600000"

    assert rollback(NAME)["production"] == "2"
    actions = [(m.version, m.action) for m in read_history(store.client, NAME)]
    assert actions == [("1", "gate"), ("2", "gate"), ("3", "external"), ("2", "rollback")]
    registered = store.client.get_registered_model(NAME)
    assert json.loads(registered.tags[HISTORY_TAG])[-1]["action"] == "rollback"


def test_list_versions_shows_aliases_metrics_and_decisions(store):
    v1 = add_version(store, {"ndcg@10": 0.5, "recall@10": 0.7}, fingerprint="abc")
    gate(store, v1, {"ndcg@10": 0.5})
    add_version(store, {"ndcg@10": 0.4})
    rows = list_versions(NAME)
    assert [row["version"] for row in rows] == ["2", "1"]
    assert rows[0]["aliases"] == ["candidate"] and rows[1]["aliases"] == ["production"]
    assert rows[1]["metrics"] == {"ndcg@10": 0.5, "recall@10": 0.7}
    assert rows[1]["dataset_fingerprint"] == "abc" and rows[1]["decision"] == "promoted"


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_models_list_promote_rollback(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    for value in (0.5, 0.6):
        add_version(store, {"ndcg@10": value}, fingerprint="cafe")
    workspace = ["--workspace", str(store.workspace)]
    assert cli_main(["promote", "1", "--reason", "first", *workspace]) == 0
    assert cli_main(["promote", "2", *workspace]) == 0
    capsys.readouterr()
    assert cli_main(["models", "list", *workspace]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["version", "aliases", "ndcg@10"]
    assert table[1].split()[:3] == ["2", "candidate,production", "0.6000"] and "cafe" in table[1]
    assert cli_main(["rollback", "--reason", "regression", *workspace]) == 0
    assert json.loads(capsys.readouterr().out)["production"] == "1"
    assert cli_main(["rollback", *workspace]) == 2
    assert "no earlier production version" in capsys.readouterr().err
    assert cli_main(["promote", "7", *workspace]) == 2
    assert cli_main(["models", "list", "--json", *workspace]) == 0
    assert json.loads(capsys.readouterr().out)[1]["aliases"] == ["production"]


def test_ui_command_points_mlflow_at_the_workspace_store(tmp_path):
    from denseflow.cli.models import ui_command

    command = ui_command("sqlite:///x/mlflow.db", tmp_path, "127.0.0.1", 5123)
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:///x/mlflow.db"
    assert command[command.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert command[-6:] == ["--workers", "1", "--host", "127.0.0.1", "--port", "5123"]
