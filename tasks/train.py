"""Train: fine-tune the bi-encoder on mined examples, selecting on dev; resumable, and reused when nothing changed."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

from filelock import FileLock
from prefect import task

from denseflow.model.config import HybridDistillConfig, TrainConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset, RejectLog, load_beir
from denseflow.model.encoder import model_fingerprint, resolve_base_model
from denseflow.model.evaluation.choice import Choice
from denseflow.model.evaluation.plots import plot_dev_selection
from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.mining.negatives import read_examples
from denseflow.model.training.hybrid_distill import MIN_DOCUMENTS, DistillExample, hybrid_labels
from denseflow.model.training.shallow import (
    check_query_layers,
    distill_query_tower,
    distillation_texts,
    folder_query_depth,
    tower_key,
)
from denseflow.model.training.trainer import (
    RESULT_FILE,
    TrainResult,
    to_hf_dataset,
    train_bi_encoder,
    training_record,
)
from denseflow.tasks.tracking import log_artifact, log_choice, log_metric_history, log_metrics, run_logger, set_tags

# Settings of the shallow query tower distilled after training (model/training/shallow.py): not training's inputs.
SHALLOW_TOWER_SETTINGS = {
    "query_layers",
    "query_layers_tolerance",
    "query_distill_texts",
    "query_distill_epochs",
    "query_contrastive_epochs",
}

KEYED_WHEN_SET = {"adapter", "lora_rank", "hybrid_distill"}
# Bumped when what a training folder holds changes for the same inputs: 2 = checkpoint and α chosen under the
# paired test (priors: the last checkpoint, α 0.5), where 1 took dev's best of each.
SELECTION_RULE = 2


def training_key(
    examples_path: Path,
    settings: TrainConfig,
    dataset_fingerprint: str,
    dev_split: str | None,
    bm25: BM25Settings | None = None,
    context: RunContext | None = None,
) -> str:
    """Same examples, texts, base weights, settings and dev split → same folder, so a re-run resumes or reuses.

    The examples file holds ids only; the dataset fingerprint covers the texts behind them, and the base model's
    checksum covers a model folder whose weights changed under the same path. Hybrid distillation also reads the
    corpus at the run's document length, with the run's BM25 (covered below) and precision.
    """
    digest = hashlib.sha256(Path(examples_path).read_bytes())
    # Settings added after trainings were cached count only when set: adding one keeps every existing folder's key.
    unset = {
        name
        for name in KEYED_WHEN_SET
        if getattr(settings, name) == TrainConfig.model_fields[name].get_default(call_default_factory=True)
    }
    digest.update(settings.model_dump_json(exclude=SHALLOW_TOWER_SETTINGS | unset).encode())
    if settings.hybrid_distill.queries != "none" and context is not None:
        encoding = context.encoding
        digest.update(f"|{encoding.query_length}|{encoding.document_length}|{encoding.precision}".encode())
    digest.update(f"{dataset_fingerprint}|{dev_split}|selection {SELECTION_RULE}".encode())
    if bm25 is not None:  # dev's candidate corpus is BM25's top documents
        digest.update(bm25.tokenizer.encode() + f"|{bm25.k1}|{bm25.b}".encode())
    digest.update(model_fingerprint(resolve_base_model(settings.base_model)).encode())
    return digest.hexdigest()[:16]


def trained_folder(
    dataset_dir: Path,
    examples_path: Path,
    settings: TrainConfig,
    train_split: str,
    dev_split: str | None,
    dataset_fingerprint: str,
    context: RunContext,
) -> Path:
    """The training folder of these inputs, trained first when it holds no finished result (resumed after a crash)."""
    output_dir = (
        context.workspace
        / "training"
        / training_key(Path(examples_path), settings, dataset_fingerprint, dev_split, context.bm25, context)
    )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    result_path = output_dir / RESULT_FILE
    # Two runs with the same key on one workspace would write the same checkpoints: the second waits, then reuses.
    with FileLock(str(output_dir) + ".lock"):
        if not result_path.is_file():
            splits = [train_split] + ([dev_split] if dev_split else [])
            dataset = load_beir(Path(dataset_dir), splits, RejectLog())
            examples = read_examples(Path(examples_path))
            distill = hybrid_teacher_labels(
                dataset,
                len(examples),
                dataset_dir,
                examples_path,
                settings,
                train_split,
                dev_split,
                dataset_fingerprint,
                context,
            )
            result = train_bi_encoder(
                examples,
                dataset,
                settings,
                output_dir,
                dev_split,
                data_name=f"dataset {dataset_fingerprint}",
                data_fingerprint=dataset_fingerprint,
                bm25=context.bm25,
                distill=distill,
            )
            if result.resumed_from:
                run_logger().info("training resumed from %s", result.resumed_from)
            result.write(output_dir)
    return output_dir


def hybrid_teacher_labels(
    dataset: Dataset,
    judged_pairs: int,
    dataset_dir: Path,
    examples_path: Path,
    settings: TrainConfig,
    train_split: str,
    dev_split: str | None,
    dataset_fingerprint: str,
    context: RunContext,
) -> list[DistillExample]:
    """The hybrid teacher's labels for ``settings.hybrid_distill`` (none when it is off); a ``trained`` teacher's
    dense half is these settings' training without distillation (trained here, or reused from the workspace)."""
    distill = settings.hybrid_distill
    if distill.queries == "none":
        return []
    if len(dataset.corpus) < MIN_DOCUMENTS:
        message = f"{len(dataset.corpus)} documents (< {MIN_DOCUMENTS}): no pseudo-queries, distillation skipped"
        run_logger().warning("train.hybrid_distill: %s", message)
        set_tags(context.run_id, {"train.hybrid_distill": message})
        return []
    teacher_dir = resolve_base_model(settings.base_model)
    if distill.teacher == "trained":
        plain = settings.model_copy(update={"hybrid_distill": HybridDistillConfig()})
        teacher_folder = trained_folder(
            dataset_dir, examples_path, plain, train_split, dev_split, dataset_fingerprint, context
        )
        teacher_dir = str(teacher_folder / "model")
    labels = hybrid_labels(
        dataset.corpus, judged_pairs, distill, teacher_dir, context.encoding, context.bm25, settings.seed
    )
    log_metrics(
        context.run_id,
        {"drawn": labels.drawn, "dropped_round_trip": labels.dropped_round_trip, "kept": len(labels.examples)},
        prefix="train.hybrid_distill.",
    )
    run_logger().info(
        "hybrid teacher (%s dense half): %d of %d %s pseudo-queries kept (%d dropped by the round-trip filter)",
        distill.teacher,
        len(labels.examples),
        labels.drawn,
        distill.queries,
        labels.dropped_round_trip,
    )
    return labels.examples


@task(name="train")
def train(
    dataset_dir: Path,
    examples_path: Path,
    settings: TrainConfig,
    train_split: str,
    dev_split: str | None,
    dataset_fingerprint: str,
    context: RunContext,
    metric_prefix: str = "train.",
) -> str:
    """The trained model folder: the last checkpoint merged with the base at α 0.5, unless dev's paired test
    overrules either (model/training/trainer.py); a training of the same inputs is reused, or resumed after a crash.
    Logs the record's figures, its dev curves as metric histories, its choices and the dev-selection plot."""
    output_dir = trained_folder(
        dataset_dir, examples_path, settings, train_split, dev_split, dataset_fingerprint, context
    )
    result_path = output_dir / RESULT_FILE
    record = TrainResult.read(result_path)
    if record.kept_base_model:
        run_logger().warning("α 0 was best on dev: the base model's weights are kept")
    run_logger().info("training selection: %s", record.selection)
    for choice in record.choices:
        log_choice(context, Choice(**choice), prefix=metric_prefix)
    log_metrics(context.run_id, record.summary_metrics(), prefix=metric_prefix)
    for name, points in record.metric_histories().items():
        log_metric_history(context.run_id, f"{metric_prefix}{name}", points)
    set_tags(context.run_id, {f"{metric_prefix}selection": record.selection})
    if record.dev_curve or record.interpolation_curve:
        plot = plot_dev_selection(
            record.dev_curve,
            record.interpolation_curve,
            context.run_dir / f"{metric_prefix}dev_selection.png",
            f"choices on dev: {record.selection}",
            used_step=record.used_step,  # None for a training cached before it was recorded: no marker
            used_alpha=record.interpolation,
        )
        log_artifact(context.run_id, plot, "plots")
    log_artifact(context.run_id, result_path)
    return str(record.model_dir)


@task(name="distill-query-towers")
def distill_query_towers(
    model_dir: str,
    dataset_dir: Path,
    examples_path: Path,
    settings: TrainConfig,
    train_split: str,
    dataset_fingerprint: str,
    context: RunContext,
) -> dict[int, str]:
    """A shallow query tower of each depth in ``settings.query_layers`` below the model's, distilled onto
    ``model_dir``'s query tower (model/training/shallow.py); each reused when its inputs are unchanged."""
    if not settings.query_layers:
        return {}
    depth = folder_query_depth(model_dir)
    check_query_layers(settings.query_layers, depth)
    depths = [layers for layers in settings.query_layers if layers < depth]
    if not depths:
        return {}
    dataset = load_beir(Path(dataset_dir), [train_split], RejectLog())
    texts = distillation_texts(dataset, train_split, settings.query_distill_texts, settings.seed)
    pairs = to_hf_dataset(read_examples(Path(examples_path)), dataset)
    teacher = training_record(model_dir)
    examples = Path(examples_path).read_bytes()
    towers: dict[int, str] = {}
    for layers in depths:
        key = tower_key(model_dir, layers, settings, texts, dataset_fingerprint, examples)
        output_dir = context.workspace / "training" / f"query-{layers}-layers-{key}"
        with FileLock(str(output_dir) + ".lock"):
            if not (output_dir / "model").is_dir():
                run_logger().info("distilling a %d-layer query tower onto %s's %d", layers, model_dir, depth)
                started = time.perf_counter()
                tower = distill_query_tower(model_dir, layers, texts, pairs, settings, output_dir)
                log_metrics(
                    context.run_id,
                    {"seconds": time.perf_counter() - started, "texts": tower.distill_texts},
                    prefix=f"query_layers.{layers}.distill.",
                )
                # The version's model card reads the training record beside its model folder: the teacher's, and
                # how this student was made from it.
                if teacher is not None:
                    student = replace(teacher, model_dir=tower.model_dir, query_layers=layers, distilled_from=model_dir)
                    student.write(output_dir)
        towers[layers] = str(output_dir / "model")
    return towers
