"""A shallow query tower: the trained query tower's first N layers, distilled onto the full tower.

Documents are encoded offline by the full document tower; at search time only the query tower runs, and its
depth is where a query's time goes. The query tower has to share nothing with the document tower but the space
it maps into, so it can be made shallower than the document tower (asymmetric pruning with distillation: KALE,
Campos et al. 2023, 2–3× faster query encoders at ~1 % recall loss).

The student starts as a copy of the trained model with its query tower cut to the first ``layers`` transformer
layers; the document tower is the trained one, untouched and frozen, so the corpus embeddings do not change.
It then learns in two phases, both with sentence-transformers' trainer and losses:

1. ``MSELoss`` to the full query tower's embeddings (sentence-transformers' layer-reduction distillation) over the
   train queries and pseudo-queries drawn from the corpus (sentences and titles; never dev or test queries);
2. ``MultipleNegativesRankingLoss`` on the judged pairs, documents through the frozen document tower.

Which depth ships is :func:`choose_depth`'s rule: the smallest depth whose served dev nDCG@10 is within a
tolerance of the full tower's.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MSELoss, MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.training_args import BatchSamplers

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import Dataset
from denseflow.model.encoder import (
    load_encoder,
    make_asymmetric,
    model_fingerprint,
    resolve_precision,
    role_transformers,
)
from denseflow.model.training.pseudo import pseudo_pairs

DISTILL_BATCH_SIZE = 64
DISTILL_LEARNING_RATE = 1e-4  # sentence-transformers' layer-reduction distillation example


def query_tower_depth(model: SentenceTransformer) -> int:
    """The number of transformer layers the query tower runs."""
    (transformer,) = role_transformers(model, "query")
    return int(transformer.auto_model.config.num_hidden_layers)


def folder_query_depth(model_dir: str | Path) -> int:
    """:func:`query_tower_depth` of a saved model, from its transformer configs without loading weights (through
    transformers' ``AutoConfig``, which maps each architecture's own name: DistilBERT's ``n_layers``, T5's
    ``num_layers``). A two-tower model's shallower tower is its query tower."""
    from transformers import AutoConfig

    depths = []
    for path in sorted(Path(model_dir).rglob("config.json")):
        try:
            depths.append(int(AutoConfig.from_pretrained(path.parent, local_files_only=True).num_hidden_layers))
        except (ValueError, OSError, AttributeError, TypeError):
            continue  # not a transformer's config (sentence-transformers writes config_sentence_transformers.json)
    if not depths:
        raise ValueError(f"train.query_layers: {model_dir} has no transformer config with a layer count")
    return min(depths)


def check_query_layers(layers: Sequence[int], depth: int) -> None:
    """``train.query_layers`` against the model's depth: a clear error before anything trains."""
    too_deep = [value for value in layers if value > depth]
    if too_deep:
        raise ValueError(f"train.query_layers: {too_deep} exceed the query tower's {depth} layers (choose 1-{depth})")


def truncated_query_tower(model: SentenceTransformer, layers: int) -> SentenceTransformer:
    """A copy of ``model`` whose query tower keeps its first ``layers`` layers; the document tower is shared
    unchanged (a siamese model is split into two towers first), and frozen."""
    check_query_layers([layers], query_tower_depth(model))
    student = make_asymmetric(copy.deepcopy(model))
    (transformer,) = role_transformers(student, "query")
    bert = transformer.auto_model
    if not isinstance(getattr(getattr(bert, "encoder", None), "layer", None), torch.nn.ModuleList):
        raise ValueError(
            f"train.query_layers: a {type(bert).__name__} query tower cannot be cut (a BERT-style encoder.layer is "
            "needed); leave train.query_layers empty"
        )
    bert.encoder.layer = torch.nn.ModuleList(list(bert.encoder.layer)[:layers])
    bert.config.num_hidden_layers = layers
    for parameter in student[0].sub_modules["document"].parameters():
        parameter.requires_grad_(False)
    return student


def distillation_texts(data: Dataset, train_split: str, count: int, seed: int = 42) -> list[str]:
    """The train queries, then pseudo-queries from the corpus (a sentence, a title) up to ``count`` texts."""
    texts = [data.queries[query_id] for query_id in data.qrels.get(train_split, {}) if query_id in data.queries]
    texts = texts[:count]
    remaining = count - len(texts)
    if remaining > 0:
        sentences = [pair.query for pair in pseudo_pairs(data.corpus, "ict", remaining, seed)]
        titles = [pair.query for pair in pseudo_pairs(data.corpus, "title", remaining, seed)]
        # Interleaved, so a short budget still holds both kinds.
        mixed = [text for pair in zip(sentences, titles, strict=False) for text in pair]
        mixed += sentences[len(titles) :] + titles[len(sentences) :]
        texts += mixed[:remaining]
    return texts


def _arguments(output_dir: Path, settings: TrainConfig, epochs: float, learning_rate: float, batch_size: int, **extra):  # noqa: ANN003, ANN202
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.1,
        bf16=resolve_precision(settings.precision) == "bf16",
        use_cpu=True,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )


@dataclass(frozen=True)
class DistilledTower:
    model_dir: Path
    layers: int
    distill_texts: int
    contrastive_pairs: int


def distill_query_tower(
    teacher_dir: str | Path,
    layers: int,
    texts: Sequence[str],
    training_data: datasets.Dataset | None,
    settings: TrainConfig,
    output_dir: Path,
) -> DistilledTower:
    """Cut the query tower of ``teacher_dir`` to ``layers``, distil it onto the full tower over ``texts``, then
    train it on ``training_data`` (``anchor, positive, negative_*`` columns) with the contrastive loss; saved to
    ``output_dir/model``."""
    teacher = load_encoder(teacher_dir, settings.max_seq_length)
    targets = teacher.encode(
        list(texts), task="query", batch_size=DISTILL_BATCH_SIZE, convert_to_numpy=True, normalize_embeddings=False
    )
    student = truncated_query_tower(teacher, layers)
    mse_data = datasets.Dataset.from_dict({"text": list(texts), "label": [row.tolist() for row in targets]})
    SentenceTransformerTrainer(
        model=student,
        args=_arguments(
            output_dir / "distill",
            settings,
            settings.query_distill_epochs,
            DISTILL_LEARNING_RATE,
            DISTILL_BATCH_SIZE,
            router_mapping={"text": "query"},
        ),
        train_dataset=mse_data,
        loss=MSELoss(student),
    ).train()
    pairs = 0
    if training_data is not None and settings.query_contrastive_epochs > 0 and len(training_data) >= 2:
        columns = training_data.column_names
        SentenceTransformerTrainer(
            model=student,
            args=_arguments(
                output_dir / "contrastive",
                settings,
                settings.query_contrastive_epochs,
                settings.learning_rate,
                settings.batch_size,
                batch_sampler=BatchSamplers.NO_DUPLICATES,
                router_mapping={column: "query" if column == "anchor" else "document" for column in columns},
            ),
            train_dataset=training_data,
            loss=MultipleNegativesRankingLoss(student),
        ).train()
        pairs = len(training_data)
    model_dir = output_dir / "model"
    # Saved beside, then renamed: a run killed mid-save leaves no folder a later run would take as finished.
    partial = output_dir / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    student.save(str(partial))
    partial.rename(model_dir)
    return DistilledTower(model_dir, layers, len(texts), pairs)


@dataclass(frozen=True)
class DepthChoice:
    used: int
    full_depth: int
    dev_ndcg: dict[int, float]
    reason: str


def tower_key(
    teacher_dir: str | Path,
    layers: int,
    settings: TrainConfig,
    texts: Sequence[str],
    dataset_fingerprint: str,
    examples: bytes,
) -> str:
    """The folder key of a student: everything its distillation reads. The teacher's weights, the settings it
    trains with (not the choice's tolerance, nor the other depths), the texts, and the judged pairs (``examples``,
    the examples file: ids, so the dataset's fingerprint too)."""
    distill_settings = settings.model_dump_json(exclude={"query_layers", "query_layers_tolerance", "base_model"})
    digest = hashlib.sha256(f"{model_fingerprint(teacher_dir)}|{layers}|{distill_settings}".encode())
    digest.update(f"{dataset_fingerprint}|".encode() + examples)
    digest.update("\n".join(texts).encode())
    return digest.hexdigest()[:16]


def choose_depth(
    dev_ndcg: Mapping[int, float], full_depth: int, tolerance: float, can_choose: bool, why_not: str = ""
) -> DepthChoice:
    """The smallest depth whose served dev nDCG@10 is within ``tolerance`` of the full tower's; the full tower when
    dev is too small to tell (``can_choose`` false: the prior is the tower that was trained)."""
    if not can_choose or full_depth not in dev_ndcg:
        return DepthChoice(full_depth, full_depth, dict(dev_ndcg), f"prior: the full tower ({why_not})")
    full = dev_ndcg[full_depth]
    for depth in sorted(dev_ndcg):
        if full - dev_ndcg[depth] <= tolerance:
            reason = (
                f"{depth} layers: dev {dev_ndcg[depth]:.4f} within {tolerance:g} of the full tower's {full:.4f}"
                if depth != full_depth
                else f"no shallower tower within {tolerance:g} of the full tower's dev {full:.4f}"
            )
            return DepthChoice(depth, full_depth, dict(dev_ndcg), reason)
    return DepthChoice(full_depth, full_depth, dict(dev_ndcg), "full tower")
