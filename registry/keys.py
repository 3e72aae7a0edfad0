"""Names shared by the registry, the tasks that write to it and the commands that read it."""

from __future__ import annotations

CANDIDATE = "candidate"
PRODUCTION = "production"
HISTORY_TAG = "denseflow.production_history"
LAST_MOVE_TAG = "production.last_move"
KEY_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def metric_key(name: str, prefix: str = "") -> str:
    """MLflow metric names cannot hold ``@``: ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return f"{prefix}{name.replace('@', '_at_')}"


# What serving needs to reproduce a version's registered figures (written at registration, read by the gate
# and by publication).
SERVED_MODE_TAG = "served.mode"
HYBRID_WEIGHT_TAG = "hybrid.weight"
HYBRID_METHOD_TAG = "hybrid.method"
# The whole served system as one JSON record (model/served_system.py); the three tags above stay for old readers.
SERVED_SYSTEM_TAG = "served.system"
# On a version registered from the untouched base model, because it beat the trained candidate.
BASE_MODEL_TAG = "denseflow.base_model"
