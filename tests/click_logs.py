"""Click logs and QA files written for tests: result pages, configs, and the positives a load found."""

from __future__ import annotations

import json
from pathlib import Path

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import (
    SourceResult,
    query_id,
    query_key,
)


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def page(query: str, docs: list[str], clicks: dict[int, float | None], impression: str, **extra) -> list[dict]:
    """One result page: ``docs`` shown at positions 1.., ``clicks`` maps a clicked position to its dwell."""
    return [
        {
            "query": query,
            "doc_id": doc_id,
            "position": position,
            "clicked": position in clicks,
            "dwell": clicks.get(position),
            "timestamp": "2025-03-01T10:00:00Z",
            "session_id": "s1",
            "impression_id": impression,
        }
        | extra
        for position, doc_id in enumerate(docs, start=1)
    ]


def click_config(path: Path, corpus: Path, **clicks) -> DataConfig:
    # The tiny dataset's judged test split evaluates; every click query trains.
    return DataConfig(source="clicks", path=path, corpus=corpus, judged_eval=True, splits={"train": 1.0}, clicks=clicks)


def positives_of(result: SourceResult, query: str, split: str = "train") -> set[str]:
    return set(result.dataset.qrels[split].get(query_id(query_key(query)), {}))
