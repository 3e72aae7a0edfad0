"""Contrastive training of a bi-encoder, top to bottom.

The loss is ``MultipleNegativesRankingLoss``: for a batch of (query, positive, negative_1..n) rows, each
query is scored against every positive and every mined negative in the batch, and cross-entropy pulls it
toward its own positive. Batch 32 with one mined negative gives each query 31 in-batch positives of other
queries plus 32 mined negatives to push away. The no-duplicates batch sampler keeps a query's two positives
out of one batch, where one would count as the other's negative. ``CachedMultipleNegativesRankingLoss``
(GradCache) gives the same gradient for large batches in the memory of a small one.

With a dev split, the model is evaluated on it every ``1 / evals_per_epoch`` of an epoch (sentence-transformers'
``InformationRetrievalEvaluator`` on a candidate corpus, see ``dev_eval.py``), checkpoints are taken at the same
steps, and training stops after ``patience`` evaluations without a better dev nDCG@10. Then two choices follow the
project's rule for every dev choice (model/evaluation/choice.py): a prior, overruled only by a one-sided paired
test on the dev queries (p < choices.alpha's default). The **checkpoint**: the last one (what a plain training
keeps), unless dev's best beats it. **WiSE-FT's α** (Wortsman et al. 2022, "Robust fine-tuning of zero-shot
models"), merging ``θ = (1 − α)·θ_base + α·θ_tuned``: the paper's even mix 0.5 (``interpolation_prior``), unless
another α of ``interpolation_grid`` beats it (max-T over the grid, so the best of six cannot win by noise).
Fine-tuning on a few hundred judged queries moves every document embedding, and the ones trained on become
attractors for unseen queries; the merge keeps most of the gain on the training distribution and the base model's
behaviour elsewhere. α = 0 is the base model itself. ``train.interpolation`` fixes α instead.

Without a dev split to select on (none, or fewer queries than ``data.min_dev_queries``, where a dev figure
decides by noise) the configured epochs run to the end and α is the prior, said in the result's ``selection``.

Training runs in ``output_dir/checkpoints``; a re-run with the same ``output_dir`` resumes from the newest
*complete* checkpoint (a crash while one was being written leaves it without ``trainer_state.json``: it is moved
aside, not resumed from), and the finished model is saved to ``output_dir/model``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from torch import nn
from transformers import EarlyStoppingCallback, TrainerCallback

from denseflow.model.config import ChoicesConfig, TrainConfig
from denseflow.model.data.beir import Dataset
from denseflow.model.encoder import load_encoder, make_asymmetric, resolve_base_model, resolve_precision
from denseflow.model.evaluation.choice import Choice, choose_on_evidence, prior_only
from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.mining.negatives import TrainExample
from denseflow.model.training import distributed
from denseflow.model.training.dev_eval import (
    DEV_METRIC,
    dev_document_embeddings,
    dev_evaluator,
    per_query_dev_ndcg,
)
from denseflow.model.training.hybrid_distill import DistillExample, distill_dataset, distill_loss
from denseflow.model.training.lora import add_lora, load_adapted_checkpoint, merge_lora
from denseflow.model.training.model_card import describe_training_data
from denseflow.model.training.pseudo import PseudoPair, pseudo_pairs

CHECKPOINT_PREFIX = "checkpoint-"
# The checkpoint and α follow the project's rule for every dev choice, at its defaults (choices.alpha, permutations).
SIGNIFICANCE = ChoicesConfig().alpha
PERMUTATIONS = ChoicesConfig().permutations


RESULT_FILE = "train_result.json"  # beside the model folder it describes


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    resumed_from: str | None
    precision: str
    step_seconds: list[float] = field(default_factory=list)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    dev_split: str | None = None
    dev_curve: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_dev_ndcg: float | None = None
    used_step: int | None = None  # the checkpoint merged and saved: the last unless dev's paired test chose the best
    kept_base_model: bool = False
    interpolation: float = 1.0
    pseudo_pairs: int = 0
    distill_examples: int = 0
    interpolation_curve: list[tuple[float, float]] = field(default_factory=list)
    selection: str = "none (no dev split)"
    choices: list[dict] = field(default_factory=list)  # the checkpoint and α choices (model/evaluation/choice.py)
    query_layers: int | None = None  # a shallow query tower: its depth, and the model folder it was distilled from
    distilled_from: str | None = None

    @property
    def median_step_seconds(self) -> float:
        times = sorted(self.step_seconds)
        return times[len(times) // 2] if times else 0.0

    def summary_metrics(self) -> dict[str, float]:
        """The figures a run logs for this training (prefixed by the caller): steps, time, α, and dev's best step."""
        summary = {
            "steps": self.steps,
            "seconds": self.seconds,
            "median_step_seconds": self.median_step_seconds,
            "interpolation": self.interpolation,
        }
        if self.best_step is not None:
            summary |= {"best_step": self.best_step, "best_dev_ndcg_at_10": self.best_dev_ndcg}
        return summary

    def metric_histories(self) -> dict[str, list[tuple[int, float]]]:
        """Loss and the dev curves as metric histories (MLflow draws them as charts on the run page); the α curve
        is indexed by its position, its α values a history of their own."""
        curve = self.interpolation_curve
        return {
            "loss": self.loss_history,
            "dev_ndcg_at_10": self.dev_curve,
            "interpolation_dev_ndcg_at_10": [(i, value) for i, (_, value) in enumerate(curve)],
            "interpolation_alpha": [(i, alpha) for i, (alpha, _) in enumerate(curve)],
        }

    def to_json(self) -> str:
        data = asdict(self) | {"model_dir": str(self.model_dir), "median_step_seconds": self.median_step_seconds}
        return json.dumps(data, indent=2)

    def write(self, folder: Path) -> Path:
        """``folder/train_result.json``: the record beside the ``model`` folder it describes."""
        path = Path(folder) / RESULT_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> TrainResult:
        """A record :meth:`to_json` wrote; one written before a field existed takes that field's default."""
        known = {item.name for item in fields(cls)}
        data = {
            name: value for name, value in json.loads(Path(path).read_text(encoding="utf-8")).items() if name in known
        }
        for name in ("loss_history", "dev_curve", "interpolation_curve"):
            data[name] = [tuple(point) for point in data.get(name, [])]
        return cls(**data | {"model_dir": Path(data["model_dir"])})


def training_record(model_dir: str | Path) -> TrainResult | None:
    """The record of a model folder trained in a workspace (``<training folder>/model``, the record beside it);
    None for a folder that was not trained here (a base model)."""
    path = Path(model_dir).parent / RESULT_FILE
    return TrainResult.read(path) if path.is_file() else None


def to_hf_dataset(
    examples: list[TrainExample], data: Dataset, pseudo: list[PseudoPair] | None = None
) -> datasets.Dataset:
    """Columns ``anchor, positive, negative_1..n``: the layout MultipleNegativesRankingLoss reads. Pseudo pairs
    (their one negative repeated into every negative column) follow the judged ones; the sampler shuffles."""
    num_negatives = min(len(example.negatives) for example in examples)
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns |= {f"negative_{i + 1}": [] for i in range(num_negatives)}
    for example in examples:
        columns["anchor"].append(data.queries[example.query_id])
        columns["positive"].append(data.corpus[example.positive_id].full_text)
        for i, negative in enumerate(example.negatives[:num_negatives]):
            columns[f"negative_{i + 1}"].append(data.corpus[negative.doc_id].full_text)
    for pair in pseudo or []:
        columns["anchor"].append(pair.query)
        columns["positive"].append(pair.positive)
        for i in range(num_negatives):
            columns[f"negative_{i + 1}"].append(pair.negative)
    return datasets.Dataset.from_dict(columns)


def route_columns(columns: Sequence[str]) -> dict[str, str]:
    """The anchor to the query tower, every text column after it to the document tower (a label to neither)."""
    return {column: "query" if column == "anchor" else "document" for column in columns if column != "label"}


def build_model(settings: TrainConfig) -> SentenceTransformer:
    """The base model in the configured towers; ``query_only`` freezes the document tower (it stays the base)."""
    model = load_encoder(resolve_base_model(settings.base_model), settings.max_seq_length)
    if settings.towers == "siamese":
        return model
    model = make_asymmetric(model)
    if settings.towers == "query_only":
        for parameter in model[0].sub_modules["document"].parameters():
            parameter.requires_grad_(False)
    return model


def interpolate(base: SentenceTransformer, tuned: SentenceTransformer, weight: float) -> SentenceTransformer:
    """WiSE-FT: ``(1 − weight)·base + weight·tuned``, parameter by parameter (same architecture)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"train.interpolation {weight} is outside [0, 1]")
    merged = copy.deepcopy(tuned)
    base_state = base.state_dict()
    merged.load_state_dict(
        {
            name: torch.lerp(base_state[name].to(value.dtype), value, weight) if value.is_floating_point() else value
            for name, value in tuned.state_dict().items()
        }
    )
    return merged


def choose_checkpoint(
    best: SentenceTransformer,
    last: SentenceTransformer | None,
    evaluator: InformationRetrievalEvaluator,
    precision: str,
    documents: np.ndarray | None = None,
) -> tuple[SentenceTransformer, Choice]:
    """The end of the configured schedule (the prior: what a plain training keeps) unless dev's best checkpoint
    beats it by the paired test on the dev queries."""
    if last is None:
        return best, prior_only("checkpoint", "best", "the best dev checkpoint is the last one", SIGNIFICANCE)
    per_query = {
        "last": per_query_dev_ndcg(last, evaluator, precision, documents),
        "best": per_query_dev_ndcg(best, evaluator, precision, documents),
    }
    choice = choose_on_evidence("checkpoint", "last", per_query, SIGNIFICANCE, PERMUTATIONS)
    return (best if choice.used == "best" else last), choice


def choose_interpolation(
    base: SentenceTransformer,
    tuned: SentenceTransformer,
    evaluator: InformationRetrievalEvaluator,
    grid: list[float],
    prior: float,
    precision: str = "fp32",
    documents: np.ndarray | None = None,
) -> tuple[float, list[tuple[float, float]], Choice]:
    """WiSE-FT's α: the prior (0.5, the paper's even mix) unless another α of ``grid`` beats it on dev by the paired
    test (max-T over the grid). Returns α, the dev curve (mean nDCG@10 per α) and the recorded choice."""
    alphas = sorted(set(grid) | {prior})
    per_query = {
        f"{alpha:g}": per_query_dev_ndcg(interpolate(base, tuned, alpha), evaluator, precision, documents)
        for alpha in alphas
    }
    choice = choose_on_evidence("interpolation", f"{prior:g}", per_query, SIGNIFICANCE, PERMUTATIONS)
    curve = [(alpha, sum(per_query[f"{alpha:g}"].values()) / len(per_query[f"{alpha:g}"])) for alpha in alphas]
    return float(choice.used), curve, choice


def last_checkpoint_model(checkpoints: Path, best_checkpoint: str | None, settings: TrainConfig):
    """The newest checkpoint's model, None when it is the best one (already loaded) or missing."""
    last = last_complete_checkpoint(checkpoints)
    if last is None or (best_checkpoint and Path(last).resolve() == Path(best_checkpoint).resolve()):
        return None
    if settings.adapter == "lora":
        adapted = add_lora(build_model(settings), settings.towers, settings.lora_rank)
        load_adapted_checkpoint(adapted, last)
        return merge_lora(adapted, build_model(settings))
    return load_encoder(last, settings.max_seq_length)


def build_loss(model: SentenceTransformer, settings: TrainConfig) -> MultipleNegativesRankingLoss:
    gather = distributed.world_size() > 1  # data-parallel hook: in-batch negatives from every process
    if settings.loss == "cached_mnrl":
        return CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=settings.mini_batch_size, gather_across_devices=gather
        )
    if settings.loss == "gist":
        guide = load_encoder(resolve_base_model(settings.base_model), settings.max_seq_length)
        return GISTEmbedLoss(model, guide=guide)
    return MultipleNegativesRankingLoss(model, gather_across_devices=gather)


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if suffix.isdigit() else -1


def _is_complete(checkpoint: Path) -> bool:
    """transformers writes ``trainer_state.json`` after the weights, optimizer and RNG state."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint a crash did not cut short. Incomplete ones are renamed ``incomplete-checkpoint-N``
    (kept for inspection; the trainer's rotation ignores them) so no later run trips over them."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (path for path in checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if _checkpoint_step(path) >= 0),
        key=_checkpoint_step,
        reverse=True,
    )
    for checkpoint in found:
        if _is_complete(checkpoint):
            return str(checkpoint)
        checkpoint.rename(checkpoint.with_name(f"incomplete-{checkpoint.name}-{time.time_ns()}"))
    return None


class AdaptedModelTrainer(SentenceTransformerTrainer):
    """Reloads the best checkpoint of a LoRA-adapted model into it (the library's reload builds plain modules)."""

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint:
            load_adapted_checkpoint(self.model, self.state.best_model_checkpoint)


class _StepClock(TrainerCallback):
    """Wall time of each optimizer step and the logged losses, for the run's record."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.losses: list[tuple[int, float]] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' callback API
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.step_seconds.append(time.perf_counter() - self._started)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


def train_bi_encoder(
    examples: list[TrainExample],
    data: Dataset,
    settings: TrainConfig,
    output_dir: Path,
    dev_split: str | None = None,
    progress: bool = True,
    data_name: str = "training data",
    data_fingerprint: str = "",
    bm25: BM25Settings | None = None,
    distill: Sequence[DistillExample] = (),
) -> TrainResult:
    """Train on ``examples``; with ``dev_split`` (judged in ``data``), select the checkpoint and α on it.

    ``distill`` (hybrid-teacher labels, ``hybrid_distill.py``) is a second dataset under its own loss, mixed into the
    same steps by sentence-transformers' multi-dataset sampler (each batch from one dataset, in proportion to size).
    """
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    pseudo = pseudo_pairs(
        data.corpus, settings.pseudo_queries, round(settings.pseudo_query_ratio * len(examples)), settings.seed
    )
    judged = to_hf_dataset(examples, data, pseudo)
    model = build_model(settings)
    if settings.adapter == "lora":
        model = add_lora(model, settings.towers, settings.lora_rank)
    precision = resolve_precision(settings.precision)
    train_dataset: datasets.Dataset | datasets.DatasetDict = judged
    loss: nn.Module | dict[str, nn.Module] = build_loss(model, settings)
    # Asymmetric models route each column to its tower; siamese models ignore the mapping.
    router_mapping: dict = route_columns(judged.column_names)
    if distill:
        train_dataset = datasets.DatasetDict({"judged": judged, "hybrid": distill_dataset(distill, data.corpus)})
        loss = {"judged": loss, "hybrid": distill_loss(model, settings.hybrid_distill.loss)}
        router_mapping = {name: route_columns(part.column_names) for name, part in train_dataset.items()}
    examples_per_epoch = sum(part.num_rows for part in train_dataset.values()) if distill else judged.num_rows
    training_positives = {example.positive_id for example in examples}
    evaluator = (
        dev_evaluator(
            data, dev_split, settings.dev_candidates, training_positives=training_positives, bm25_settings=bm25
        )
        if dev_split
        else None
    )
    if evaluator is not None:
        eval_steps = max(1, math.ceil(examples_per_epoch / settings.batch_size / settings.evals_per_epoch))
        schedule = {
            "eval_strategy": "steps",
            "eval_steps": eval_steps,
            "save_steps": eval_steps,
            "load_best_model_at_end": True,
            "metric_for_best_model": DEV_METRIC,
            "greater_is_better": True,
        }
    else:
        schedule = {"save_steps": settings.save_steps}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=distributed.per_process_batch_size(settings.batch_size),  # data-parallel hook
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers v5)
        bf16=precision == "bf16",
        use_cpu=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        router_mapping=router_mapping,
        save_strategy="steps",
        save_total_limit=2,  # with selection: the best and the newest
        **schedule,
        logging_steps=max(1, min(10, settings.save_steps)),
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    clock = _StepClock()
    callbacks: list[TrainerCallback] = [clock]
    if evaluator is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.patience))
    trainer_class = AdaptedModelTrainer if settings.adapter == "lora" else SentenceTransformerTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
    )
    resume_from = last_complete_checkpoint(checkpoints)
    started = time.perf_counter()
    baseline = [(0, float(evaluator(model)[DEV_METRIC.removeprefix("eval_")]))] if evaluator and not resume_from else []
    trainer.train(resume_from_checkpoint=resume_from)
    model_dir = output_dir / "model"
    dev_curve = baseline + [
        (int(entry["step"]), float(entry[DEV_METRIC])) for entry in trainer.state.log_history if DEV_METRIC in entry
    ]
    base = build_model(settings)
    tuned = merge_lora(trainer.model, build_model(settings)) if settings.adapter == "lora" else trainer.model
    curve: list[tuple[float, float]] = []
    choices: list[Choice] = []
    used_step = trainer.state.global_step
    if settings.interpolation is not None:
        alpha, selection = settings.interpolation, f"α {settings.interpolation:g} configured"
    elif evaluator is not None:
        # A frozen document tower is the base model's in every candidate: its dev corpus is encoded once.
        documents = dev_document_embeddings(base, evaluator, precision) if settings.towers == "query_only" else None
        last = last_checkpoint_model(checkpoints, trainer.state.best_model_checkpoint, settings)
        tuned, checkpoint_choice = choose_checkpoint(tuned, last, evaluator, precision, documents)
        alpha, curve, alpha_choice = choose_interpolation(
            base, tuned, evaluator, settings.interpolation_grid, settings.interpolation_prior, precision, documents
        )
        choices = [checkpoint_choice, alpha_choice]
        if checkpoint_choice.used == "best":
            used_step = trainer.state.best_global_step
        selection = f"{checkpoint_choice.used} checkpoint, α {alpha:g}, on {dev_split} (priors unless a paired test)"
    else:
        alpha = settings.interpolation_prior
        selection = f"none (no dev split to select on): last checkpoint, prior α {alpha:g}"
    if trainer.is_world_process_zero():  # data-parallel hook: one process writes the model
        merged = interpolate(base, tuned, alpha)
        describe_training_data(
            merged, data_name, data_fingerprint, resolve_base_model(settings.base_model) == resolve_base_model(None)
        )
        merged.save(str(model_dir))
    return TrainResult(
        model_dir=model_dir,
        steps=trainer.state.global_step,
        seconds=time.perf_counter() - started,
        resumed_from=resume_from,
        precision=precision,
        step_seconds=clock.step_seconds,
        loss_history=clock.losses,
        dev_split=dev_split,
        dev_curve=dev_curve,
        best_step=trainer.state.best_global_step if evaluator else None,
        best_dev_ndcg=trainer.state.best_metric if evaluator else None,
        used_step=used_step,
        kept_base_model=alpha == 0,
        interpolation=alpha,
        pseudo_pairs=len(pseudo),
        distill_examples=len(distill),
        interpolation_curve=curve,
        selection=selection,
        choices=[choice.as_dict() for choice in choices],
    )
