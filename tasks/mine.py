"""Mine: build train_examples.jsonl with the configured negative strategy; log what the guards removed."""

from __future__ import annotations

from pathlib import Path

from denseflow.model.config import MiningConfig
from denseflow.model.data.assemble import read_skip_above
from denseflow.model.data.beir import RejectLog, assert_no_leak, load_beir
from denseflow.model.mining.negatives import make_scorer, mine_negatives, mining_summary, write_examples
from denseflow.tasks.tracking import log_artifact, log_metrics
from prefect import task


@task(name="mine")
def mine(
    dataset_dir: Path,
    mining: MiningConfig,
    train_split: str,
    eval_split: str,
    run_dir: Path,
    run_id: str,
    cache_dir: Path,
    model_dir: str | None = None,
    max_seq_length: int | None = None,
    metric_prefix: str = "mine.",
) -> str:
    """Returns the path of ``train_examples.jsonl``; ``model_dir`` is the encoder for dense mining."""
    dataset = load_beir(Path(dataset_dir), [train_split, eval_split], RejectLog())
    assert_no_leak(dataset.qrels[train_split], dataset, eval_split)
    scorer = make_scorer(mining.strategy, dataset, train_split, model_dir, cache_dir, max_seq_length)
    examples, report = mine_negatives(
        dataset,
        train_split,
        num_negatives=mining.num_negatives,
        seed=mining.seed,
        scorer=scorer,
        source=mining.strategy,
        rank_start=mining.rank_start,
        rank_end=mining.rank_end,
        relative_margin=mining.relative_margin,
        extra_negatives=read_skip_above(Path(dataset_dir)) if mining.skip_above_per_example else None,
        max_extra=mining.skip_above_per_example,
    )
    path = write_examples(examples, Path(run_dir) / "train_examples.jsonl")
    log_metrics(run_id, report.as_metrics() | mining_summary(examples), prefix=metric_prefix)
    log_artifact(run_id, path)
    return str(path)
