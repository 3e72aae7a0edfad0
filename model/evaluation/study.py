"""The negatives study's plan: which runs, with which settings, in which order, and how long they should take.

A *run* is one arm at one tower type, batch size and seed; it becomes one child MLflow run. Untrained arms
(zero-shot base model, BM25 alone) are deterministic and run once. Trained arms run once per seed, in seed
order, so the first complete round of arms lands early and an interrupted study still says something.

The estimate scales measured rates (``EstimateConfig``) by sequence length, batch size and texts per row:
encoding and a training step cost about linearly in tokens at these lengths (MiniLM-L6 on this CPU encodes
9.5 docs/s at 256 tokens and 20 at 128). What it counts, and what the caches save:

- the base model's corpus embeddings once (zero-shot evaluation and the first dense mining round share them);
- per trained run: ``train.max_steps`` steps (dense arms split them over their rounds) and one corpus
  encoding of the final model for evaluation, plus one per extra dense round (re-mining with the new model;
  the intermediate round's evaluation then reuses those embeddings);
- BM25 scores of the train queries once per process (``denseflow.model.mining.negatives`` keeps them); mining itself is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from denseflow.model.config import (
    CompareConfig,
    DataConfig,
    EvalConfig,
    MiningConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)

UNTRAINED = ("zero-shot", "bm25-alone")
ROUNDED = ("dense-hard", "mix-hard")
STRATEGY = {"random": "random", "bm25-hard": "bm25", "dense-hard": "dense", "mix-hard": "dense"}
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


def plan_study(config: CompareConfig) -> list[ArmSpec]:
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


def run_config(config: CompareConfig, spec: ArmSpec) -> ArmRunConfig:
    mining = config.mining
    train = config.train
    if spec.trained:
        mining = mining.model_copy(update={"strategy": STRATEGY[spec.arm], "seed": spec.seed})
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


def rounds_of(config: CompareConfig, spec: ArmSpec) -> int:
    return config.dense_rounds if spec.rounds_arm else 1


@dataclass
class StudyEstimate:
    """Seconds per run (in plan order) and for the shared base-model corpus encoding."""

    runs: list[tuple[str, float]]
    shared_seconds: float
    details: dict[str, float] = field(default_factory=dict)

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
        lines = [f"{slug:<40} {seconds / 60:6.1f} min" for slug, seconds in self.runs]
        lines.append(f"{'shared: base model corpus embeddings':<40} {self.shared_seconds / 60:6.1f} min")
        lines.append(f"{'total':<40} {self.total_seconds / 60:6.1f} min")
        return "\n".join(lines)


def estimate_study(
    config: CompareConfig, documents: int, train_queries: int, test_queries: int, specs: list[ArmSpec] | None = None
) -> StudyEstimate:
    rates = config.estimate
    length = config.train.max_seq_length
    corpus = documents / (rates.docs_per_second_at_128 * 128 / length)

    def queries(count: int) -> float:
        return count / (rates.docs_per_second_at_128 * 128 / min(length, QUERY_TOKENS))

    def step(settings: TrainConfig) -> float:
        texts = (2 + config.mining.num_negatives) / 3
        factor = CACHED_LOSS_FACTOR if settings.loss == "cached_mnrl" else 1.0
        return rates.step_seconds_at_128 * (length / 128) * (settings.batch_size / 32) * texts * factor

    specs = plan_study(config) if specs is None else specs
    bm25_mined = False
    runs = []
    for spec in specs:
        seconds = rates.run_overhead_seconds + queries(test_queries)
        if spec.arm == "bm25-alone":
            seconds += test_queries * rates.bm25_query_seconds
        elif spec.trained:
            rounds = rounds_of(config, spec)
            seconds += config.train.max_steps * step(spec.train_settings(config.train))
            seconds += corpus * rounds  # evaluation, plus one re-mining encoding per extra round
            seconds += (rounds - 1) * rates.run_overhead_seconds
            if spec.rounds_arm:
                seconds += rounds * queries(train_queries)
            if spec.arm in ("bm25-hard", "mix-hard") and not bm25_mined:
                seconds += train_queries * rates.bm25_query_seconds
                bm25_mined = True
        runs.append((spec.slug, seconds))
    needs_base = any(spec.arm == "zero-shot" or spec.rounds_arm for spec in specs)
    return StudyEstimate(
        runs=runs,
        shared_seconds=corpus if needs_base else 0.0,
        details={"corpus_encoding_seconds": corpus, "step_seconds": step(config.train)},
    )
