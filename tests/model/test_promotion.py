"""What a retrain publishes after its gate (model/promotion.publish_target)."""

from __future__ import annotations

from denseflow.model.promotion import GateOutcome, PublishTarget, publish_target


def outcome(decision: str, production: str | None, base_version: str | None = None) -> GateOutcome:
    return GateOutcome(decision, "why", version="7", production=production, base_version=base_version)


def test_the_promoted_version_or_the_shipped_base_model_is_published():
    assert publish_target(outcome("promoted", "7"), "retriever@6", "retriever") == PublishTarget("7")
    shipped = outcome("base model shipped", "8", base_version="8")
    assert publish_target(shipped, "retriever@6", "retriever") == PublishTarget("8")


def test_production_without_its_index_is_published_again_and_otherwise_nothing_is():
    rejected = outcome("rejected", "6")
    assert publish_target(rejected, "retriever@6", "retriever") is None  # production serves its own index
    assert publish_target(rejected, "retriever@5", "retriever") == PublishTarget("6", repair=True)
    assert publish_target(rejected, None, "retriever") == PublishTarget("6", repair=True)
    assert publish_target(outcome("rejected", None), None, "retriever") is None  # no production yet
    assert publish_target(GateOutcome.skipped("promotion.enabled is false"), None, "retriever") is None
