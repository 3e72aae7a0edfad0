"""Settings resolved once per run, passed whole to every stage.

A flow builds one ``RunContext`` at its start (workspace, run folder, caches, MLflow run id, the precision the
CPU supports, the sequence length) so no stage re-derives them and no two stages can disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from denseflow.model.encoder import resolve_precision
from denseflow.model.index.bm25 import BM25Settings


@dataclass(frozen=True)
class RunContext:
    workspace: Path
    run_id: str
    precision: Literal["bf16", "fp32"]
    max_seq_length: int
    train_batch_size: int = 32
    eval_batch_size: int = 64
    # Corpus texts are encoded at their own length (model/encoder.py:document_length); None = max_seq_length.
    document_max_seq_length: int | None = None
    bm25: BM25Settings = field(default_factory=BM25Settings)

    @property
    def document_length(self) -> int:
        return self.document_max_seq_length or self.max_seq_length

    @property
    def run_dir(self) -> Path:
        return self.workspace / "runs" / self.run_id

    @property
    def cache_dir(self) -> Path:
        """Corpus embeddings shared across runs (keyed by model, corpus and settings)."""
        return self.workspace / "cache" / "embeddings"


def build_context(
    workspace: Path,
    run_id: str,
    precision: Literal["auto", "bf16", "fp32"],
    max_seq_length: int,
    train_batch_size: int = 32,
    eval_batch_size: int = 64,
    bm25: BM25Settings | None = None,
) -> RunContext:
    """Resolve ``precision: auto`` against this CPU once; everything else is taken as given."""
    return RunContext(
        workspace=Path(workspace),
        run_id=run_id,
        precision=resolve_precision(precision),
        max_seq_length=max_seq_length,
        train_batch_size=train_batch_size,
        eval_batch_size=eval_batch_size,
        bm25=bm25 or BM25Settings(),
    )


@dataclass(frozen=True)
class EvaluationData:
    """The ingested dataset a decision is measured on: where it is, its fingerprint and the judged split."""

    dataset_dir: Path
    fingerprint: str
    split: str
