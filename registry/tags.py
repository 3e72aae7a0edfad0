"""The tags a version is registered with, built from its evaluation, and read back as the search it serves.

Written at registration (flows/retrain.py); the promotion gate reads them back to measure production as it is
served. They live here, beside the tag names in registry/keys.py, because the names are the registry's: model/
stays free of them.
"""

from __future__ import annotations

from denseflow.model.config import EvalConfig
from denseflow.model.evaluation.evaluate import EvaluationResult, Fusion
from denseflow.model.fusion import NEUTRAL_WEIGHT
from denseflow.model.served_system import ServedSystem
from denseflow.registry.keys import HYBRID_METHOD_TAG, HYBRID_WEIGHT_TAG, SERVED_MODE_TAG, SERVED_SYSTEM_TAG, metric_key


def registration_tags(
    served: EvaluationResult, dense: EvaluationResult, fused: EvaluationResult, mode: str, mode_reason: str
) -> dict[str, str]:
    """What serving needs to reproduce the registered figures, and each mode's own figures beside them (all
    queries and each seen-/unseen-document partition). ``served`` is ``dense`` or ``fused``, whichever ships."""
    tags = {SERVED_MODE_TAG: mode, "served.mode_chosen_by": mode_reason[:250]}
    if mode == "hybrid" and fused.fusion is not None:
        tags |= {HYBRID_WEIGHT_TAG: f"{fused.fusion.weight:.4f}", HYBRID_METHOD_TAG: fused.fusion.method}
    for role, item in (("trained", dense), ("hybrid", fused), ("", served)):
        prefix = f"{role}." if role else ""
        if role:
            tags |= {metric_key(name, prefix): f"{value:.6f}" for name, value in item.metrics.items()}
        for name, part in item.partitions.items():
            if part.metrics is not None:
                tags[metric_key("ndcg@10", f"{prefix}{name}.")] = f"{part.metrics['ndcg@10']:.6f}"
            tags[f"{prefix}{name}.queries"] = str(part.queries)
    return tags


def served_fusion(tags: dict[str, str], settings: EvalConfig) -> Fusion | None:
    """How a version is served, read from its registration tags: fused with BM25 at its own registered weight and
    method, or dense alone (``None``; versions registered before modes existed were dense)."""
    if tags.get(SERVED_MODE_TAG, "dense") != "hybrid":
        return None
    weight = float(tags.get(HYBRID_WEIGHT_TAG, NEUTRAL_WEIGHT))
    return Fusion.of(weight, tags.get(HYBRID_METHOD_TAG, settings.fusion), settings)  # type: ignore[arg-type]


def served_record(tags: dict[str, str]) -> ServedSystem:
    """A version's served-system record; for a version registered before records existed, what it was evaluated
    with then (unstemmed BM25, documents at 128 tokens), so it keeps serving as registered."""
    if SERVED_SYSTEM_TAG in tags:
        return ServedSystem.from_json(tags[SERVED_SYSTEM_TAG])
    return ServedSystem.legacy(
        tags.get(SERVED_MODE_TAG, "dense"),
        tags.get(HYBRID_METHOD_TAG, "convex"),
        float(tags.get(HYBRID_WEIGHT_TAG, 0.5)),
    )
