"""Tasks of the negatives study that the retrain stages do not cover: child runs, mixing, and the report.

Mining, training and evaluation are the retrain tasks themselves (tasks/mine.py, train.py, evaluate.py),
called per arm with the child run's id and a metric prefix per round.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.evaluation.compare_negatives.plan import ArmResult, ArmRunConfig, ArmSpec
from denseflow.model.evaluation.compare_negatives.report import StudyReport
from denseflow.model.evaluation.compare_negatives.report_files import variant_metrics, write_report
from denseflow.model.mining.negatives import MiningResult, mining_summary, mix_examples, read_examples, write_examples
from denseflow.tasks.tracking import log_artifact, log_metrics, run_metrics, set_tags, start_tracking_run


def start_arm_run(config: ArmRunConfig, spec: ArmSpec, flow_run_id: str | None, parent_run_id: str) -> str:
    """A child run of the study's parent run, with the arm's settings as params and its identity as tags."""
    run_id = start_tracking_run(config, flow_run_id, spec.slug, parent_run_id=parent_run_id)
    tags = {
        "study.arm": spec.arm,
        "study.variant": spec.variant,
        "study.seed": "none" if spec.seed is None else str(spec.seed),
        "towers": spec.towers or "none",
        "study.batch_size": "none" if spec.batch_size is None else str(spec.batch_size),
    }
    set_tags(run_id, tags)
    return run_id


@task(name="mix-negatives")
def mix(
    first: MiningResult,
    second: MiningResult,
    second_share: float,
    seed: int,
    out_dir: Path,
    run_id: str,
    metric_prefix: str = "mine.",
) -> MiningResult:
    """``train_examples.jsonl`` taking each negative from the second file with probability ``second_share``."""
    mixed, taken = mix_examples(
        read_examples(Path(first.examples_path)), read_examples(Path(second.examples_path)), second_share, seed
    )
    path = write_examples(mixed, Path(out_dir) / "train_examples.jsonl")
    counts = {"examples": len(mixed), "taken_first": taken["first"], "taken_second": taken["second"]}
    log_metrics(run_id, counts | dict(mining_summary(mixed)), prefix=metric_prefix)
    log_artifact(run_id, path)
    return MiningResult(str(path), len(mixed))


@task(name="compare-negatives-report")
def report(
    runs: list[ArmResult],
    out_dir: Path,
    parent_run_id: str,
    title: str,
    permutations: int,
    notes: list[str],
    dataset_dir: Path,
    split: str,
    train_split: str = "train",
    dev_split: str | None = None,
) -> StudyReport:
    """The study's report files (model/evaluation/compare_negatives/report_files.py) from the arms and what each
    logged; logged to the parent run with per-variant metrics, and a Prefect table."""
    dataset = load_beir(Path(dataset_dir), [split, train_split] + ([dev_split] if dev_split else []), RejectLog())
    logged = {item.run_id: run_metrics(item.run_id) for item in runs}
    study, summaries = write_report(
        runs, logged, dataset, split, train_split, dev_split, Path(out_dir), title, notes, permutations
    )
    log_artifact(parent_run_id, Path(out_dir), "report")
    for summary in summaries:
        log_metrics(parent_run_id, variant_metrics(summary), prefix=f"{summary.variant.replace('/', '_')}.")
    create_table_artifact(
        table=study.rows, key="compare-negatives", description=f"{title} (MLflow run {parent_run_id})"
    )
    return study
