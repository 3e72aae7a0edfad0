"""Mine: build train_examples.jsonl (candidates → false-negative filter → selection); log what each part did."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from denseflow.model.config import MiningConfig
from denseflow.model.context import RunContext
from denseflow.model.data.assemble import read_skip_above
from denseflow.model.data.beir import RejectLog, assert_no_leak, load_beir
from denseflow.model.encoder import resolve_base_model
from denseflow.model.evaluation.plots import plot_negatives
from denseflow.model.mining.filters import load_teacher
from denseflow.model.mining.negatives import (
    MiningResult,
    make_scorer,
    mine_negatives,
    mining_summary,
    write_examples,
)
from denseflow.tasks.tracking import log_artifact, log_metrics


def resolve_teacher(teacher: str, base_model: str, workspace: Path | None = None) -> str | None:
    """The folder of ``mining.teacher``: ``base``, a model folder, or a registry reference; None for ``none``.

    A registry reference (``retriever@production``, ``retriever/3``) is resolved here, where MLflow is
    configured, so the miner below only ever sees a folder. Anything that does not lead to a loadable
    sentence-transformers folder is a configuration error naming the setting.
    """
    name = teacher.strip()
    if name.lower() == "none":
        return None
    if name.lower() == "base":
        return base_model
    folder = Path(name).expanduser()
    if not folder.is_dir():
        try:
            from denseflow.registry.resolve import resolve_model

            folder = resolve_model(name, workspace).local_dir
        except Exception as error:  # MLflow raises several types for an unknown name, alias or version
            raise ValueError(
                f"mining.teacher: {teacher!r} is neither a model folder nor a registry model that resolves ({error})"
            ) from error
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ValueError(f"mining.teacher: {str(folder)!r} is not a sentence-transformers model folder")
    return str(folder)


@task(name="mine")
def mine(
    dataset_dir: Path,
    mining: MiningConfig,
    train_split: str,
    eval_split: str,
    context: RunContext,
    model_dir: str | None = None,
    base_model: str | None = None,
    out_dir: Path | None = None,
    metric_prefix: str = "mine.",
) -> MiningResult:
    """Write ``train_examples.jsonl`` to ``out_dir`` (default: the run's folder) and its negatives plot.

    ``model_dir`` ranks dense candidates (the base model, or the model of the round before when re-mining);
    ``base_model`` is what ``teacher: base`` means (default ``model_dir``). The teacher and the dense candidates
    read documents at the training length (``context.max_seq_length``), the length the pairs are trained at, not
    at the length evaluation reads them (``context.document_length``): their corpus embeddings are cached apart.
    """
    out_dir = Path(out_dir) if out_dir is not None else context.run_dir
    dataset = load_beir(Path(dataset_dir), [train_split, eval_split], RejectLog())
    assert_no_leak(dataset.qrels[train_split], dataset, eval_split)
    base = base_model or model_dir or resolve_base_model(None)
    teacher_dir = resolve_teacher(mining.teacher, base, context.workspace)
    encoding = context.mining_encoding
    try:
        teacher = load_teacher(teacher_dir, dataset, train_split, encoding) if teacher_dir is not None else None
    except (OSError, ValueError) as error:
        raise ValueError(f"mining.teacher: cannot load {teacher_dir!r}: {error}") from error
    scorer = make_scorer(mining.candidates, dataset, train_split, model_dir or base, encoding, bm25=context.bm25)
    extras = read_skip_above(Path(dataset_dir)) if mining.skip_above_per_example else None
    examples, report = mine_negatives(dataset, train_split, mining, scorer, teacher, extras)
    path = write_examples(examples, out_dir / "train_examples.jsonl")
    log_metrics(context.run_id, report.as_metrics() | dict(mining_summary(examples)), prefix=metric_prefix)
    log_artifact(context.run_id, path)
    title = f"{mining.candidates} negatives ({mining.selection}, {metric_prefix.rstrip('.')})"
    stage = metric_prefix.removeprefix("mine.").strip(".").replace(".", "_")
    plot_path = plot_negatives(
        {mining.candidates: examples}, out_dir / (f"negatives_{stage}.png" if stage else "negatives.png"), title
    )
    log_artifact(context.run_id, plot_path, "plots")
    return MiningResult(str(path), len(examples), str(plot_path))
