"""The negatives study's plan: which runs, with which settings, in which order, and how long they should take.

A *run* is one arm at one tower type, batch size and seed; it becomes one child MLflow run. Untrained arms
(zero-shot base model, BM25 alone) are deterministic and run once. Trained arms run once per seed, in seed
order, so the first complete round of arms lands early and an interrupted study still says something.

Each trained arm is the study's ``mining`` section with its own candidates (``ARM_MINING``); ``bm25-old``
reproduces the setting of the first study (margin on BM25's own scores, uniform over ranks 4-50) as the
control that shows what the new mining changes.

The estimate scales per-CPU rates by sequence length, batch size and texts per row: encoding and a
training step cost about linearly in tokens at these lengths. Rates come from ``EstimateConfig`` (one set
for CPUs with native bf16, one without), or from :func:`measure_rates` on this CPU. What it counts, and
what the caches save:

- the base model's corpus embeddings once (teacher, zero-shot evaluation and the first dense mining round
  share them through the embedding cache);
- per trained run: ``train.max_steps`` steps (an upper bound when early stopping ends sooner; re-mined arms
  split them over their rounds), the dev evaluations TrainConfig asks for, one corpus encoding of the final
  model for evaluation plus one per extra round (re-mining with the round's model), and the train queries
  encoded by the teacher and the dense miner each round;
- BM25 scores of the train queries once per process (``denseflow.model.mining.candidates`` keeps them).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from denseflow.model.config import (
    CompareNegativesConfig,
    DataConfig,
    EvalConfig,
    MiningConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)
from denseflow.model.data.beir import Dataset

UNTRAINED = ("zero-shot", "bm25-alone")
ROUNDED = ("dense-remined", "mix-hard")
# The first study's mining: BM25 candidates, the margin on BM25's own scores, uniform over ranks 4-50.
OLD_SETTING = {
    "candidates": "bm25",
    "filter": "miner_margin",
    "margin": 0.95,
    "selection": "sampled",
    "rank_start": 3,
    "rank_end": 50,
}
# What each trained arm changes in the study's mining section (mix-hard mines BM25 too, see the flow).
ARM_MINING: dict[str, dict] = {
    "random": {"candidates": "random"},
    "bm25-hard": {"candidates": "bm25"},
    "dense-hard": {"candidates": "dense"},
    "dense-remined": {"candidates": "dense"},
    "mix-hard": {"candidates": "dense"},
    "bm25-old": OLD_SETTING,
}
BM25_ARMS = ("bm25-hard", "bm25-old", "mix-hard")
DENSE_ARMS = ("dense-hard", "dense-remined", "mix-hard")
# GradCache runs every mini-batch forward twice (once without gradients to cache embeddings).
CACHED_LOSS_FACTOR = 4 / 3
QUERY_TOKENS = 32  # SciFact claims are one sentence; batches pad to their longest query


@dataclass(frozen=True)
class ArmSpec:
    """One run of the study."""

    arm: str
    towers: str | None = None  # None: not trained
    batch_size: int | None = None
    seed: int | None = None
    sweep: bool = False  # part of a batch-size sweep: the size is in the label and the loss is cached_mnrl

    @property
    def trained(self) -> bool:
        return self.arm not in UNTRAINED

    @property
    def rounds_arm(self) -> bool:
        return self.arm in ROUNDED

    @property
    def variant(self) -> str:
        """What seeds are averaged over: ``bm25-hard/siamese`` (``/b64`` in a sweep)."""
        parts = [self.arm]
        if self.towers:
            parts.append(self.towers)
        if self.sweep:
            parts.append(f"b{self.batch_size}")
        return "/".join(parts)

    @property
    def slug(self) -> str:
        """File-name-safe label of the run: ``bm25-hard_siamese_seed1``."""
        seed = f"_seed{self.seed}" if self.seed is not None else ""
        return self.variant.replace("/", "_") + seed

    def train_settings(self, train: TrainConfig) -> TrainConfig:
        """The shared training settings with this run's seed, towers and (in a sweep) batch size and loss."""
        if not self.trained:
            raise ValueError(f"{self.arm} is not trained")
        update: dict = {"seed": self.seed, "towers": self.towers, "batch_size": self.batch_size}
        if self.sweep:
            update["loss"] = "cached_mnrl"
        return train.model_copy(update=update)


@dataclass(frozen=True)
class ArmResult:
    """One finished run of the study, as the report reads it: the spec, its MLflow child run, its test figures, and
    the files evaluation and mining wrote (per-query metrics, the TREC run, each round's examples)."""

    spec: ArmSpec
    run_id: str
    metrics: dict[str, float]
    recall_curve: list[float]
    per_query_path: str
    run_path: str
    examples_paths: dict[str, str]
    seconds: float


class ArmRunConfig(Section):
    """The settings of one child run, logged as its MLflow params."""

    arm: str
    variant: str
    seed: int | None
    dense_rounds: int | None
    mix_dense_share: float | None
    data: DataConfig
    mining: MiningConfig
    train: TrainConfig
    eval: EvalConfig
    tracking: TrackingConfig


def plan_study(config: CompareNegativesConfig) -> list[ArmSpec]:
    """Untrained arms first, then every trained arm per seed, tower type and batch size."""
    specs = [ArmSpec(arm) for arm in config.arms if arm in UNTRAINED]
    trained = [arm for arm in config.arms if arm not in UNTRAINED]
    sweep = bool(config.batch_sizes)
    sizes = config.batch_sizes or [config.train.batch_size]
    for seed in config.seeds:
        for towers in config.towers:
            for size in sizes:
                specs += [ArmSpec(arm, towers, size, seed, sweep) for arm in trained]
    return specs


def run_config(config: CompareNegativesConfig, spec: ArmSpec) -> ArmRunConfig:
    mining = config.mining
    train = config.train
    if spec.trained:
        # Validated, not model_copy'd: an arm's overrides must still make a consistent mining section.
        mining = MiningConfig.model_validate(mining.model_dump() | ARM_MINING[spec.arm] | {"seed": spec.seed})
        train = spec.train_settings(train)
    return ArmRunConfig(
        arm=spec.arm,
        variant=spec.variant,
        seed=spec.seed,
        dense_rounds=config.dense_rounds if spec.rounds_arm else None,
        mix_dense_share=config.mix_dense_share if spec.arm == "mix-hard" else None,
        data=config.data,
        mining=mining,
        train=train,
        eval=config.eval,
        tracking=config.tracking,
    )


def split_steps(steps: int, rounds: int) -> list[int]:
    """``steps`` over ``rounds`` as evenly as possible, the remainder on the last rounds: 40 over 3 → 13, 13, 14."""
    if rounds < 1 or steps < rounds:
        raise ValueError(f"cannot split {steps} steps over {rounds} rounds")
    base, extra = divmod(steps, rounds)
    return [base + (1 if index >= rounds - extra else 0) for index in range(rounds)]


def rounds_of(config: CompareNegativesConfig, spec: ArmSpec) -> int:
    return config.dense_rounds if spec.rounds_arm else 1


@dataclass(frozen=True)
class Rates:
    """Per-CPU rates at 128 tokens, batch 32, one negative; ``source`` says where they come from."""

    docs_per_second_at_128: float
    step_seconds_at_128: float
    source: str


def cpu_rates(config: CompareNegativesConfig) -> Rates:
    """The configured rates for this CPU: native bf16 or not decides (as ``train.precision: auto`` does)."""
    from denseflow.model.encoder import resolve_precision

    rates = config.estimate
    if resolve_precision(config.train.precision) == "bf16":
        return Rates(
            rates.bf16_docs_per_second_at_128, rates.bf16_step_seconds_at_128, "configured for a CPU with native bf16"
        )
    return Rates(
        rates.docs_per_second_at_128, rates.step_seconds_at_128, "configured for an fp32 CPU without native bf16"
    )


def measure_rates(
    config: CompareNegativesConfig, dataset: Dataset, steps: int = 3, workdir: Path | None = None
) -> Rates:
    """Rates timed on this CPU: ``steps`` training steps with the study's settings, and one encoding batch.

    The median step (the first pays for lazy initialisation) and the encoding rate are scaled back to 128
    tokens and batch 32, the reference the estimate scales from.
    """
    import time

    from denseflow.model.encoder import encode, load_encoder, resolve_base_model
    from denseflow.model.mining.negatives import mine_negatives
    from denseflow.model.training.trainer import train_bi_encoder

    train = config.train
    length = train.max_seq_length
    settings = train.model_copy(update={"max_steps": steps, "save_steps": 10_000})
    mining = MiningConfig(candidates="random", num_negatives=config.mining.num_negatives, seed=0)
    examples, _ = mine_negatives(dataset, config.data.train_split, mining)
    examples = examples[: settings.batch_size * (steps + 1)]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = train_bi_encoder(examples, dataset, settings, Path(tmp), progress=False)
    step = result.median_step_seconds / _step_factor(config, settings)
    model = load_encoder(resolve_base_model(train.base_model), length)
    texts = [document.full_text for document in list(dataset.corpus.values())[: 2 * config.eval.batch_size]]
    encode(model, texts[:8], "document", config.eval.batch_size, config.eval.precision)  # warm-up
    started = time.perf_counter()
    encode(model, texts, "document", config.eval.batch_size, config.eval.precision)
    docs_per_second = len(texts) / (time.perf_counter() - started)
    return Rates(docs_per_second * length / 128, step, f"measured on this CPU ({steps} steps)")


def _step_factor(config: CompareNegativesConfig, settings: TrainConfig) -> float:
    """A step's cost relative to 128 tokens, batch 32 and one negative (rows of 3 texts)."""
    texts = (2 + config.mining.num_negatives) / 3
    loss = CACHED_LOSS_FACTOR if settings.loss == "cached_mnrl" else 1.0
    return (config.train.max_seq_length / 128) * (settings.batch_size / 32) * texts * loss


@dataclass
class StudyEstimate:
    """Seconds per run (in plan order) and for the shared base-model corpus encoding."""

    runs: list[tuple[str, float]]
    shared_seconds: float
    details: dict[str, float] = field(default_factory=dict)
    rates: Rates | None = None

    @property
    def total_seconds(self) -> float:
        return self.shared_seconds + sum(seconds for _, seconds in self.runs)

    def remaining_seconds(self, done: int, elapsed: float) -> float:
        """The rest of the plan, scaled by how much slower than estimated the finished runs were.

        Never scaled down: a resumed study finds its first runs cached, which says nothing about the rest.
        """
        planned_done = self.shared_seconds + sum(seconds for _, seconds in self.runs[:done])
        rest = sum(seconds for _, seconds in self.runs[done:])
        return rest * max(1.0, elapsed / planned_done if planned_done > 0 and done else 1.0)

    def describe(self) -> str:
        lines = []
        if self.rates is not None:
            lines.append(
                f"rates ({self.rates.source}): a step of batch 32 at 128 tokens {self.rates.step_seconds_at_128:.1f} s, "
                f"encoding {self.rates.docs_per_second_at_128:.0f} docs/s at 128 tokens; this study: "
                f"{self.details.get('step_seconds', 0):.1f} s per step"
            )
        lines += [f"{slug:<40} {seconds / 60:6.1f} min" for slug, seconds in self.runs]
        lines.append(f"{'shared: base model corpus embeddings':<40} {self.shared_seconds / 60:6.1f} min")
        lines.append(f"{'total':<40} {self.total_seconds / 60:6.1f} min")
        return "\n".join(lines)


def estimate_study(
    config: CompareNegativesConfig,
    documents: int,
    train_queries: int,
    test_queries: int,
    specs: list[ArmSpec] | None = None,
    rates: Rates | None = None,
    document_length: int | None = None,
) -> StudyEstimate:
    """Seconds per run from the data's size and this CPU's rates. ``document_length``: the tokens documents are
    read at for evaluation and mining (the study's, from the corpus); training's length when not given."""
    rates = rates or cpu_rates(config)
    fixed = config.estimate
    length = config.train.max_seq_length
    # Encoding cost grows about linearly with the tokens read (MiniLM-sized models, a few hundred tokens).
    docs_per_second = rates.docs_per_second_at_128 * 128 / (document_length or length)
    corpus = documents / docs_per_second

    def queries(count: float) -> float:
        return count / (rates.docs_per_second_at_128 * 128 / min(length, QUERY_TOKENS))

    def step(settings: TrainConfig) -> float:
        return rates.step_seconds_at_128 * _step_factor(config, settings)

    # Dev selection, where TrainConfig offers it: evaluations per epoch over a candidate corpus of each dev
    # query's positives and BM25 top-N (getattr: the settings arrive with the recipe work).
    dev_share = getattr(config.data, "dev_share", 0.0)
    evals_per_epoch = getattr(config.train, "evals_per_epoch", 0)
    dev_queries = train_queries * dev_share
    dev_docs = dev_queries * (getattr(config.train, "dev_candidates", 10) + 1)
    dev_eval = dev_docs / docs_per_second + queries(dev_queries)
    fit_queries = max(1.0, train_queries - dev_queries)

    def dev_evaluations(steps: int, settings: TrainConfig) -> float:
        epochs = steps * settings.batch_size / fit_queries
        return math.ceil(epochs * evals_per_epoch) * dev_eval if dev_queries >= 1 else 0.0

    specs = plan_study(config) if specs is None else specs
    bm25_mined = False
    runs = []
    for spec in specs:
        seconds = fixed.run_overhead_seconds + queries(test_queries)
        if spec.arm == "bm25-alone":
            seconds += test_queries * fixed.bm25_query_seconds
        elif spec.trained:
            rounds = rounds_of(config, spec)
            settings = spec.train_settings(config.train)
            seconds += config.train.max_steps * step(settings)
            seconds += sum(dev_evaluations(steps, settings) for steps in split_steps(config.train.max_steps, rounds))
            seconds += corpus * rounds  # evaluation, plus one re-mining encoding per extra round
            seconds += (rounds - 1) * fixed.run_overhead_seconds
            encoders = (config.mining.uses_teacher) + (spec.arm in DENSE_ARMS)  # teacher and dense miner
            seconds += rounds * encoders * queries(train_queries)
            if spec.arm in BM25_ARMS and not bm25_mined:
                seconds += train_queries * fixed.bm25_query_seconds
                bm25_mined = True
        runs.append((spec.slug, seconds))
    needs_base = any(spec.arm == "zero-shot" or spec.trained for spec in specs)
    return StudyEstimate(
        runs=runs,
        shared_seconds=corpus if needs_base else 0.0,
        details={
            "corpus_encoding_seconds": corpus,
            "step_seconds": step(config.train),
            "dev_evaluation_seconds": dev_eval if dev_queries >= 1 else 0.0,
        },
        rates=rates,
    )
