from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from denseflow.model.config import RetrainConfig
from denseflow.model.context import build_context


def test_the_run_context_takes_its_encoding_settings_from_the_config_whole(tmp_path: Path) -> None:
    config = RetrainConfig.model_validate(
        {
            "train": {"precision": "bf16", "max_seq_length": 96},
            "eval": {"precision": "fp32", "batch_size": 8},
            "bm25": {"k1": 1.2, "b": 0.75},
        }
    )
    context = build_context(tmp_path, "run-1", config)
    # eval.precision is what corpus and queries are encoded at; train.precision stays training's own.
    assert context.precision == "fp32"
    assert (context.max_seq_length, context.eval_batch_size) == (96, 8)
    assert (context.bm25.k1, context.bm25.b) == (1.2, 0.75)
    assert context.run_dir == tmp_path / "runs" / "run-1"


def test_mining_reads_documents_at_the_training_length_and_evaluation_at_their_own(tmp_path: Path) -> None:
    config = RetrainConfig.model_validate({"train": {"max_seq_length": 96}, "eval": {"precision": "fp32"}})
    context = replace(build_context(tmp_path, "run-1", config), document_max_seq_length=256)
    assert (context.encoding.query_length, context.encoding.document_length) == (96, 256)
    assert (context.mining_encoding.query_length, context.mining_encoding.document_length) == (96, 96)
    assert context.mining_encoding.cache_dir == context.encoding.cache_dir
