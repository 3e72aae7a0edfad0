"""Settings resolved once per run, passed whole to every stage.

A flow builds one ``RunContext`` at its start (workspace, run folder, caches, MLflow run id, the precision the
CPU supports, the sequence length) so no stage re-derives them and no two stages can disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from denseflow.model.config import BM25Config, EvalConfig, TrainConfig
from denseflow.model.encoder import EncodingSettings, resolve_precision
from denseflow.model.index.bm25 import BM25Settings


class FlowSettings(Protocol):
    """What a flow's config hands its context: RetrainConfig and CompareNegativesConfig both have these sections."""

    @property
    def train(self) -> TrainConfig: ...

    @property
    def eval(self) -> EvalConfig: ...

    @property
    def bm25(self) -> BM25Config: ...


@dataclass(frozen=True)
class RunContext:
    workspace: Path
    run_id: str
    precision: Literal["bf16", "fp32"]
    max_seq_length: int
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

    @property
    def encoding(self) -> EncodingSettings:
        """How evaluation, the gate and hybrid distillation encode: documents at their own length."""
        return EncodingSettings(
            self.cache_dir, self.max_seq_length, self.document_length, self.eval_batch_size, self.precision
        )

    @property
    def mining_encoding(self) -> EncodingSettings:
        """How mining encodes (the dense candidates and the teacher): documents at the training length, the length
        the mined pairs are trained at, in batches of the encoder's default size."""
        return EncodingSettings(self.cache_dir, self.max_seq_length, self.max_seq_length, precision=self.precision)


def build_context(workspace: Path, run_id: str, config: FlowSettings) -> RunContext:
    """The run's settings from its config, whole: encoding precision and batch from ``eval`` (``auto`` resolved
    against this CPU once), the query length from ``train``, BM25 from ``bm25``."""
    return RunContext(
        workspace=Path(workspace),
        run_id=run_id,
        precision=resolve_precision(config.eval.precision),
        max_seq_length=config.train.max_seq_length,
        eval_batch_size=config.eval.batch_size,
        bm25=config.bm25.settings(),
    )


@dataclass(frozen=True)
class EvaluationData:
    """The ingested dataset a decision is measured on: where it is, its fingerprint and the judged split."""

    dataset_dir: Path
    fingerprint: str
    split: str
