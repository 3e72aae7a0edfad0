"""The retrain summary people read: systems side by side, partitions, dev intervals, the gate's three figures
(model/evaluation/summary.py)."""

from __future__ import annotations

from denseflow.model.evaluation.summary import summary_markdown, system_rows
from denseflow.model.promotion import GateOutcome, Scored, decide

METRICS = {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@1": 0.4, "recall@10": 0.7, "recall@100": 0.9}


def summary_with(promotion: dict) -> dict:
    unseen = {"queries": 104, "metrics": {"ndcg@10": 0.6400}}
    return {
        "mlflow_run_id": "abc",
        "registered_model": "retriever",
        "version": "2",
        "dataset_fingerprint": "fp",
        "dev_split": "dev",
        "dev_method": "document groups",
        "selection_split": "dev",
        "served_mode": "hybrid",
        "served_mode_chosen_by": "dev ndcg@10: hybrid 0.7 > dense 0.6",
        "base_served_mode": "hybrid",
        "metrics": {"trained": METRICS, "hybrid": METRICS | {"ndcg@10": 0.55}, "zero-shot+bm25": METRICS},
        "partitions": {
            "trained": {"seen_docs": {"queries": 5, "metrics": None}, "unseen_docs": unseen},
            "hybrid": {"seen_docs": {"queries": 5, "metrics": None}, "unseen_docs": unseen},
        },
        "dev_metrics": {"hybrid": {"ndcg@10": 0.7}},
        "dev_intervals": {"hybrid": [0.65, 0.75]},
        "promotion": promotion,
    }


def test_systems_are_listed_served_first_with_partitions_and_the_dev_interval():
    decision = decide(Scored("2", 0.55, "fp"), None, "ndcg@10", 0.005, base=Scored("base", 0.5, "fp"))
    promotion = GateOutcome.of(decision, "2", "2", None, "2026-12-03T00:00:00Z").as_dict()
    rows = system_rows(summary_with(promotion))
    assert [row[0] for row in rows] == ["trained + BM25", "trained dense", "base model + BM25"]
    hybrid = rows[0]
    assert hybrid[1] == "0.5500"
    assert hybrid[2] == "– (5 q)"  # too few seen-document queries for a figure
    assert hybrid[3] == "0.6400 (104 q)"
    assert hybrid[6] == "0.7000 [0.650, 0.750]"
    assert hybrid[7] == "candidate (served mode)"
    assert rows[2][7] == "base system"


def test_the_markdown_names_the_decision_and_all_three_figures():
    decision = decide(
        Scored("2", 0.52, "fp"), Scored("1", 0.5, "fp", reevaluated=True), "ndcg@10", 0.005, Scored("base", 0.51, "fp")
    )
    promotion = GateOutcome.of(decision, "2", "2", "1", "2026-12-03T00:00:00Z").as_dict()
    text = summary_markdown(summary_with(promotion), "test")
    assert "## promotion gate: **promoted**" in text
    assert "| candidate | 2 | 0.5200 | no |" in text
    assert "| production | 1 | 0.5000 | yes |" in text
    assert "| base model's system | base | 0.5100 | no |" in text
    assert "production → version 2." in text
