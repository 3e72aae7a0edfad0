"""The one validated configuration every flow takes; loadable from YAML.

Defaults run the bundled SciFact dataset with the bundled all-MiniLM-L6-v2 model on one machine, with
no server. Unknown keys are errors, so a typo in a YAML file fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A settings section. A nested section given as a mapping merges key by key over *this* section's default
    for it, not over the nested class's own defaults: ``{"mining": {"rank_end": 20}}`` changes that key of
    retrain's mining defaults and nothing else (retrain's ``teacher: none`` stays)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _merge_over_section_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            given = merged.get(name)
            if not isinstance(given, dict):
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                merged[name] = _merge_section(default.model_dump(), given, type(default))
        return merged


def _merge_section(default: dict, given: dict, section: type[BaseModel]) -> dict:
    """``given`` over ``default``. Where ``given`` uses a section's old name for a key, the default under the new
    name is left out so the section's own validator can translate the old one."""
    merged = default | given
    for old, new in RENAMED_KEYS.get(section.__name__, {}).items():
        if old in given and new not in given:
            merged.pop(new, None)
    return merged


RENAMED_KEYS: dict[str, dict[str, str]] = {"MiningConfig": {"strategy": "candidates"}}


class ClickConfig(Section):
    """How click-log rows become positives and skip-above negatives (``data.source: clicks``)."""

    rule: Literal["dwell", "ctr"] = Field("dwell", description="dwell: a long click; ctr: click-through rate.")
    dwell_threshold: float = Field(30.0, ge=0, description="Seconds; a click this long is a satisfied click.")
    min_satisfied_clicks: int = Field(1, ge=1, description="dwell rule: satisfied clicks needed for a positive.")
    ctr_threshold: float = Field(0.3, gt=0, description="ctr rule: (debiased) click-through rate needed.")
    min_impressions: int = Field(5, ge=1, description="ctr rule: fewer impressions than this decide nothing.")
    propensity: Literal["none", "power", "table"] = Field(
        "none", description="ctr rule position-bias correction: weight each click by 1 / P(examined | position)."
    )
    propensity_power: float = Field(1.0, gt=0, description="power: P(examined | k) = (1/k)^power.")
    propensity_table: list[float] | None = Field(None, description="table: P(examined | k) for k = 1, 2, ...")
    propensity_floor: float = Field(0.05, gt=0, le=1, description="Clip propensities here (caps weights at 20).")
    skip_above: bool = Field(True, description="Documents shown above a click and skipped become hard negatives.")
    min_skips: int = Field(1, ge=1, description="Times a document must be skipped to count as a negative.")
    max_skip_above_per_query: int = Field(10, ge=1, description="At most this many skip-above negatives per query.")
    impression_buffer: int = Field(
        10_000, ge=1, description="Result pages kept open while streaming; the oldest closes first (memory bound)."
    )

    @model_validator(mode="after")
    def _table(self) -> ClickConfig:
        if self.propensity == "table" and not self.propensity_table:
            raise ValueError("propensity 'table' needs propensity_table")
        if self.propensity_table and not all(0 < p <= 1 for p in self.propensity_table):
            raise ValueError("propensity_table values must lie in (0, 1]")
        return self


class DataConfig(Section):
    source: Literal["beir", "clicks", "qa"] = Field("beir", description="Format of data.path (see docs/sources.md).")
    path: Path | None = Field(
        None, description="BEIR folder, or a click / QA file or folder of files; None = the bundled SciFact."
    )
    train_split: str = Field("train", description="Qrels split mined and trained on.")
    eval_split: str = Field("test", description="Qrels split evaluated; its queries never reach training.")
    corpus: Path | None = Field(
        None,
        description="clicks: BEIR folder or corpus.jsonl the doc ids refer to (None = bundled SciFact); "
        "qa: a corpus the passages join (None = the passages alone).",
    )
    judged_eval: bool = Field(
        False, description="clicks/qa: evaluate on the corpus folder's judged eval_split instead of a hash split."
    )
    splits: dict[str, float] = Field(
        {"train": 0.8, "dev": 0.1, "test": 0.1}, description="clicks/qa: share of queries per split, by query hash."
    )
    split_salt: str = Field("denseflow", description="Changing it reshuffles every query's split.")
    dev_split: str = Field(
        "dev", description="Split every choice is made on (checkpoint, fusion weight); carved from train if absent."
    )
    dev_share: float = Field(
        0.1, ge=0, lt=0.5, description="Share of train queries carved into dev by query-id hash (0 = no dev split)."
    )
    min_dev_train_queries: int = Field(
        20, ge=2, description="Below this many train queries no dev split is carved: training runs without selection."
    )
    min_dev_queries: int = Field(
        30,
        ge=1,
        description="Fewer dev queries than this choose nothing (a figure over a few queries decides by noise): "
        "training runs its epochs to the end and the documented priors are used (train.interpolation_prior, "
        "the even fusion mix, hybrid served); dev is still reported, with its bootstrap interval.",
    )
    fields: dict[str, str] = Field({}, description="clicks/qa: our field name -> the file's column name.")
    min_usable_share: float = Field(0.8, ge=0, le=1, description="Fail when fewer source rows than this are usable.")
    max_line_bytes: int = Field(1_048_576, ge=64, description="Longer lines are rejected without being parsed.")
    clicks: ClickConfig = ClickConfig()

    @model_validator(mode="after")
    def _splits(self) -> DataConfig:
        if self.source == "beir":
            return self
        if any(share < 0 for share in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise ValueError("data.splits: shares must be >= 0 and sum to more than 0")
        if self.splits.get(self.train_split, 0) <= 0:
            raise ValueError(f"data.splits: train split {self.train_split!r} needs a share > 0")
        if self.judged_eval and self.splits.get(self.eval_split, 0) > 0:
            raise ValueError(f"data.judged_eval: split {self.eval_split!r} comes from the judgments; drop its share")
        if not self.judged_eval and self.splits.get(self.eval_split, 0) <= 0:
            raise ValueError(f"data.splits: eval split {self.eval_split!r} needs a share > 0 (or judged_eval)")
        return self


class MiningConfig(Section):
    """Negative mining in three parts: candidates, a false-negative filter, selection (model/mining/)."""

    candidates: Literal["random", "bm25", "dense"] = Field(
        "bm25",
        description="random: uniform; bm25: BM25 near misses; dense: the model's own near misses (the base "
        "model, or in the study's re-mined arm the model of the round before).",
    )
    teacher: str = Field(
        "base",
        min_length=1,
        description="Dense model scoring the false-negative filter: base (train.base_model), a model folder, "
        "a registry reference (retriever@production, retriever/3), or none (no filter).",
    )
    margin: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Drop candidates the teacher scores above margin × its score of the positive (NV-Retriever "
        "TopK-PercPos).",
    )
    max_similarity: float | None = Field(
        None, gt=-1, le=1, description="Also drop candidates the teacher scores above this cosine (None = no ceiling)."
    )
    filter: Literal["teacher", "miner_margin"] = Field(
        "teacher",
        description="teacher: the margin applies to the teacher's scores. miner_margin: to the miner's own scores "
        "(the old setting, kept only for the study's control arm).",
    )
    selection: Literal["top", "sampled"] = Field(
        "top", description="top: the highest-ranked survivors; sampled: uniform over the rank window's survivors."
    )
    rank_start: int = Field(0, ge=0, description="Skip miner ranks 1..rank_start (sampled windows: e.g. 3).")
    rank_end: int = Field(50, ge=1, description="Candidates: the miner's top rank_end documents.")
    num_negatives: int = Field(1, ge=1, le=3, description="Mined negatives per (query, positive) pair.")
    skip_above_per_example: int = Field(
        1, ge=0, description="Click-log skip-above negatives per example, taken before mined ones (0 = none)."
    )
    seed: int = Field(42, description="Seed of negative sampling and random fill.")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: object) -> object:
        # `strategy` was renamed `candidates` (same values); `relative_margin` applied to the miner's own
        # score, which is no longer a default anyone should inherit silently.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "strategy" in data:
            if "candidates" in data:
                raise ValueError("mining.strategy is the old name of mining.candidates: give one of them")
            data["candidates"] = data.pop("strategy")
        if "relative_margin" in data:
            raise ValueError(
                "mining.relative_margin was removed: use mining.margin (applied to the teacher's scores), or "
                "filter: miner_margin with margin to reproduce the old rule on the miner's scores"
            )
        return data

    @model_validator(mode="after")
    def _window(self) -> MiningConfig:
        if self.rank_end - self.rank_start < self.num_negatives:
            raise ValueError(
                f"mining.rank_start/rank_end: the window of ranks {self.rank_start + 1}..{self.rank_end} holds "
                f"fewer than mining.num_negatives ({self.num_negatives})"
            )
        if not self.teacher.strip():
            raise ValueError("mining.teacher: empty; use base, none, a model folder or a registry reference")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.teacher.strip().lower() != "none"


class HybridDistillConfig(Section):
    """Distilling the served hybrid into the dense model over pseudo-queries from every document (GPL's recipe, the
    hybrid in the cross-encoder's place; model/training/hybrid_distill.py). Off unless ``queries`` is set."""

    queries: Literal["none", "title", "first_sentence"] = Field(
        "none",
        description="Claim-like pseudo-queries drawn from the corpus, one per drawn document: its title or its first "
        "sentence; none = no distillation.",
    )
    ratio: float = Field(1.0, gt=0, description="Pseudo-queries per judged training pair, mixed into the same epochs.")
    loss: Literal["margin_mse", "kl"] = Field(
        "margin_mse", description="MarginMSELoss (GPL's) or DistillKLDivLoss on the teacher's scores."
    )
    teacher: Literal["base", "trained"] = Field(
        "base",
        description="The teacher hybrid's dense half: the base model, or the tower trained on the judged pairs alone "
        "(one extra training, reused from the workspace when it exists).",
    )
    candidates: int = Field(20, ge=2, description="The teacher's top-N a pseudo-query's negatives are drawn from.")
    negatives: int = Field(3, ge=1, description="Negatives per pseudo-query, drawn from the teacher's top-N.")

    @model_validator(mode="after")
    def _negatives_fit(self) -> HybridDistillConfig:
        if self.negatives >= self.candidates:
            raise ValueError(
                f"train.hybrid_distill.negatives ({self.negatives}) must be below candidates ({self.candidates})"
            )
        return self


class TrainConfig(Section):
    base_model: str | None = Field(None, description="Model folder or name; None = bundled all-MiniLM-L6-v2.")
    towers: Literal["siamese", "asymmetric", "query_only"] = Field(
        "query_only",
        description="siamese: shared weights; asymmetric: separate query and document towers (Router); query_only: "
        "asymmetric with the document tower frozen at the base model (chosen on SciFact's document-grouped dev: "
        "as good as siamese on dev, documents keep the base model's embeddings; docs/results.md).",
    )
    loss: Literal["mnrl", "cached_mnrl", "gist"] = Field(
        "mnrl",
        description="MultipleNegativesRankingLoss; its GradCache version for batches beyond memory; or GISTEmbedLoss "
        "with the base model as guide (drops in-batch negatives the guide scores above the positive).",
    )
    mini_batch_size: int = Field(16, ge=1, description="GradCache mini-batch of cached_mnrl.")
    epochs: float = Field(
        2.0,
        gt=0,
        description="Passes over the training examples (an upper bound with dev: the best checkpoint is kept).",
    )
    max_steps: int = Field(-1, description="Stop after this many steps (overrides epochs when > 0).")
    batch_size: int = Field(
        32, ge=2, description="Examples per step; each query gets batch_size - 1 in-batch negatives."
    )
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak AdamW learning rate (linear decay); chosen on dev (README, recipe sweep)."
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up the learning rate.")
    max_seq_length: int = Field(
        128, ge=8, description="Tokens per text for training and encoding (SciFact abstracts average ~330)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 autocast only where the CPU has bf16 instructions, else fp32."
    )
    save_steps: int = Field(
        50, ge=1, description="Checkpoint every N steps when there is no dev split (else at every dev evaluation)."
    )
    evals_per_epoch: int = Field(
        2,
        ge=1,
        description="Dev evaluations (and checkpoints) per epoch; the last checkpoint is kept unless the best by dev "
        "nDCG@10 beats it by the paired test.",
    )
    patience: int = Field(
        3, ge=1, description="Stop after this many dev evaluations without a better nDCG@10 (early stopping)."
    )
    dev_candidates: int = Field(
        10,
        ge=1,
        description="Dev evaluation corpus: the dev positives, each dev query's BM25 top-N, and the training positives.",
    )
    interpolation: float | None = Field(
        None,
        ge=0,
        le=1,
        description="WiSE-FT weight of the fine-tuned model in (1-α)·base + α·tuned; None = interpolation_prior "
        "unless another α of interpolation_grid beats it on dev by the paired test (choices.alpha); 1 = no merge.",
    )
    interpolation_grid: list[float] = Field(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1, description="α values tried on dev (0 = the base model)."
    )
    pseudo_queries: Literal["none", "title", "ict"] = Field(
        "none",
        description="Self-supervised pairs from the corpus mixed into training: title → text, or a sentence → the "
        "rest of its document (inverse cloze), so every document is trained on, not only the judged ones.",
    )
    pseudo_query_ratio: float = Field(
        0.5, ge=0, le=1, description="Pseudo pairs per judged training pair (with pseudo_queries other than none)."
    )
    interpolation_prior: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The prior α (WiSE-FT's recommended even mix): used unless dev's paired test overrules it, and "
        "always without enough dev queries.",
    )
    seed: int = Field(42, description="Seed of model init, data order and dropout.")
    adapter: Literal["none", "lora"] = Field(
        "none",
        description="lora: train a low-rank adapter on the trained towers instead of their weights (a regulariser), "
        "merged into plain weights before saving.",
    )
    lora_rank: int = Field(8, ge=1, description="Rank of the LoRA adapter (with adapter: lora).")
    hybrid_distill: HybridDistillConfig = Field(
        default_factory=HybridDistillConfig, description="Hybrid-teacher distillation over pseudo-queries (off)."
    )
    # A shallow query tower (model/training/shallow.py): distilled after training, so not part of training's key.
    query_layers: list[int] = Field(
        [],
        description="Depths of a shallow query tower to try: each student keeps the trained query tower's first N "
        "layers and is distilled onto it (MSE on train and corpus pseudo-queries, then the contrastive loss); the "
        "smallest N whose served dev nDCG@10 is within query_layers_tolerance of the full tower ships. [] = the "
        "full tower only. Documents stay encoded by the full document tower.",
    )
    query_layers_tolerance: float = Field(
        0.005, ge=0, description="How much served dev nDCG@10 a shallow query tower may give up against the full one."
    )
    query_distill_texts: int = Field(
        4000, ge=1, description="Texts a shallow query tower is distilled on: the train queries, then pseudo-queries."
    )
    query_distill_epochs: float = Field(2.0, gt=0, description="Epochs of MSE distillation onto the full tower.")
    query_contrastive_epochs: float = Field(
        1.0, ge=0, description="Epochs of the contrastive loss on the judged pairs after distillation (0 = none)."
    )

    @field_validator("query_layers", mode="before")
    @classmethod
    def _layers_as_list(cls, value: object) -> object:
        return [value] if isinstance(value, int) else value

    @field_validator("query_layers")
    @classmethod
    def _layers_positive(cls, layers: list[int]) -> list[int]:
        if any(depth < 1 for depth in layers):
            raise ValueError(f"train.query_layers: every depth must be at least 1, got {layers}")
        return sorted(set(layers))

    @model_validator(mode="after")
    def _launcher_supports_towers(self) -> TrainConfig:
        # DDP over a Router (one tower per column, called once per column) fails in backward with "Expected to
        # mark a variable ready only once"; only the shared-weights model is data-parallel here.
        if self.launcher == "torchrun" and self.towers != "siamese":
            raise ValueError(
                f"train.launcher torchrun trains siamese towers only; set train.towers: siamese (got {self.towers})"
            )
        return self

    @field_validator("interpolation_grid")
    @classmethod
    def _grid_in_unit_interval(cls, grid: list[float]) -> list[float]:
        if any(not 0 <= alpha <= 1 for alpha in grid):
            raise ValueError(f"train.interpolation_grid: every α must lie in [0, 1], got {grid}")
        return grid

    # Data-parallel training (model/training/distributed.py); batch_size above stays the global batch.
    launcher: Literal["none", "torchrun"] = Field(
        "none", description="none: one process; torchrun: nproc_per_node processes, in-batch negatives gathered."
    )
    nproc_per_node: int = Field(1, ge=1, description="torchrun: processes on this node (GPUs, or CPU process groups).")


class EvalConfig(Section):
    ks: list[int] = Field([1, 5, 10, 20, 100], description="Cut-offs of recall@k (nDCG and MRR are @10).")
    batch_size: int = Field(64, ge=1, description="Texts per encoding batch.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="As train.precision, for encoding.")
    fusion: Literal["convex", "zscore", "rrf"] = Field(
        "convex",
        description="The prior hybrid: convex = weight·dense + (1-weight)·BM25 on per-query min-max normalised "
        "scores; zscore = the same on scores normalised by mean ± 3σ (Qdrant's DBSF); rrf = reciprocal rank fusion.",
    )
    fusion_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Dense weight of the hybrid; None = the even prior 0.5, replaced by the dev winner among "
        "fusion_methods × fusion_grid only when it beats the prior by a paired test on dev.",
    )
    fusion_methods: list[Literal["convex", "zscore", "rrf"]] = Field(
        ["convex", "zscore", "rrf"], min_length=1, description="Fusion methods dev may choose among."
    )
    fusion_grid: list[float] = Field(
        [round(0.1 * step, 1) for step in range(11)], min_length=1, description="Dense weights dev may choose among."
    )
    rrf_k: int = Field(60, ge=1, description="RRF's rank offset k (Cormack et al. 2009).")
    document_max_seq_length: int | None = Field(
        None,
        ge=8,
        description="Tokens a corpus document is read at when encoded for evaluation and publication; None = the "
        "model's own length, shortened to the corpus's 95th-percentile length (never past its position limit). "
        "Queries keep train.max_seq_length.",
    )
    fusion_depth: int = Field(100, ge=10, description="Documents each system contributes to the fusion.")

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "baselines" in data:
            raise ValueError(
                "eval.baselines was removed: the zero-shot base model and BM25 are always evaluated, because the "
                "promotion gate compares every candidate with the base model's own system"
            )
        return data


class BM25Config(Section):
    """BM25 as the field runs it: one analyzer and parameter set for mining, evaluation, the gate, publication and
    serving (model/index/bm25.py). Defaults are Anserini's BEIR baseline: Lucene's English stopwords, Snowball
    English stems, k1 0.9, b 0.4."""

    stemmer: str | None = Field(
        "english", description="Snowball language of PyStemmer (english, porter, french, ...); none = no stemming."
    )
    stopwords: Literal["english", "short", "none"] = Field(
        "english", description="english: Lucene's English list (bm25s's); short: denseflow's old list; none."
    )
    k1: float = Field(0.9, gt=0, description="Term-frequency saturation (Anserini's BEIR setting).")
    b: float = Field(0.4, ge=0, le=1, description="Length normalisation (Anserini's BEIR setting).")
    alternatives: list[tuple[float, float]] = Field(
        [(1.2, 0.75), (1.5, 0.75)],
        description="Other (k1, b) tried on dev; one replaces the prior (k1, b) only when it beats it by a paired "
        "test on dev (p < choices.alpha).",
    )

    @field_validator("stemmer", mode="before")
    @classmethod
    def _stemmer_known(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        import Stemmer  # PyStemmer: a light C extension, so configs still load without bm25s

        languages = sorted(Stemmer.algorithms())
        if value not in languages:
            raise ValueError(f"bm25.stemmer: {value!r} is not available; choose one of {languages} or none")
        return value

    def settings(self, k1: float | None = None, b: float | None = None):  # noqa: ANN201 - BM25Settings, lazily
        from denseflow.model.index.bm25 import BM25Settings

        return BM25Settings(self.k1 if k1 is None else k1, self.b if b is None else b, self.stemmer, self.stopwords)


class ChoicesConfig(Section):
    """How dev overrules a documented prior (fusion, BM25's k1/b, the served mode, WiSE-FT's α, the checkpoint,
    the recipe): only when the dev winner beats the prior by a one-sided paired randomisation test."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired test on dev.")
    permutations: int = Field(10_000, ge=100, description="Resamples of the paired randomisation test.")
    recipes: dict[str, dict[str, Any]] = Field(
        {"siamese-free": {"towers": "siamese", "interpolation": 1.0}},
        description="Training recipes tried beside train: (the prior, the conservative recipe), each a set of train "
        "settings over it; one replaces the prior only when its served dev nDCG@10 beats the prior's by the paired "
        "test. Each costs a training run and a corpus encode.",
    )
    min_recipe_dev_queries: int = Field(
        80,
        ge=1,
        description="Fewer dev queries than this train no alternative recipe: each costs a training run and a corpus "
        "encode, and on fewer queries the paired test detects only gains a recipe change rarely gives (about 0.06 "
        "nDCG@10 at 72). A collection of ~800+ train queries (dev ~80+) tries them.",
    )

    def recipes_to_try(self, dev_queries: int, can_choose: bool = True) -> tuple[list[str], str]:
        """The alternative recipes worth training with ``dev_queries`` to choose on, and, when none, why."""
        if not self.recipes:
            return [], "no alternative recipes configured"
        if not can_choose:
            return [], "no dev split large enough to choose on"
        if dev_queries < self.min_recipe_dev_queries:
            return [], f"{dev_queries} dev queries < choices.min_recipe_dev_queries {self.min_recipe_dev_queries}"
        return list(self.recipes), ""

    @field_validator("recipes")
    @classmethod
    def _recipes_are_train_settings(cls, recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in recipes.items():
            if name == PRIOR_RECIPE:
                raise ValueError(f"choices.recipes: {PRIOR_RECIPE!r} names the train: section itself")
            try:
                TrainConfig.model_validate(overrides)
            except ValueError as err:
                raise ValueError(f"choices.recipes.{name}: not train settings ({err})") from err
        return recipes


PRIOR_RECIPE = "prior"


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="None = MLFLOW_TRACKING_URI or sqlite in the workspace.")
    experiment: str = Field("denseflow", description="MLflow experiment of the runs.")
    registered_model: str = Field("retriever", description="Registered model name; aliases candidate/production.")


class PromotionConfig(Section):
    """The gate at the end of ``retrain``: ``production`` moves only to a version that beats it and the base
    model's own system (zero-shot, alone or fused with BM25 at its own dev-chosen weight)."""

    enabled: bool = Field(True, description="False = register the candidate and leave production alone.")
    metric: str = Field(
        "ndcg@10", pattern=r"^(ndcg@10|mrr@10|recall@\d+)$", description="Higher-is-better metric on data.eval_split."
    )
    margin: float = Field(
        0.005, ge=0, description="The candidate must beat production by more than this (absolute, same data)."
    )
    publish_on_promotion: bool = Field(True, description="Run publish_index for the version the gate promotes.")
    mode: Literal["auto", "dense", "hybrid"] = Field(
        "auto",
        description="The search mode that will be served, and the gate compares in: auto = hybrid only when it "
        "beats dense on dev (hybrid without a dev split large enough to choose on).",
    )


class RetrainConfig(Section):
    workspace: Path | None = Field(None, description="None = DENSEFLOW_HOME or ./.denseflow")
    run_name: str | None = Field(None, description="MLflow run name; None = MLflow picks one.")
    data: DataConfig = DataConfig()
    # BM25's top negatives unfiltered: on SciFact's dev split the base-model teacher filter (margin 0.95) cost
    # 0.015 dense and 0.009 hybrid dev nDCG@10 at lr 1e-4 (README, "A recipe chosen on dev"): all-MiniLM-L6 is
    # too weak a teacher to tell false negatives from hard ones. Name a stronger teacher where judgments are sparse.
    mining: MiningConfig = MiningConfig(teacher="none")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    bm25: BM25Config = BM25Config()
    choices: ChoicesConfig = ChoicesConfig()

    @model_validator(mode="after")
    def _recipes_valid_over_train(self) -> RetrainConfig:
        # Checked whole before anything trains: a recipe valid alone can clash with train: (torchrun + towers).
        for name in self.choices.recipes:
            try:
                self.recipe(name)
            except ValueError as err:
                raise ValueError(f"choices.recipes.{name} over train: is not valid: {err}") from err
        return self

    def recipe(self, name: str) -> TrainConfig:
        """The train settings of recipe ``name``: ``train:`` itself for the prior, else it with the recipe's
        settings over it."""
        if name == PRIOR_RECIPE:
            return self.train
        return TrainConfig.model_validate(self.train.model_dump() | self.choices.recipes[name])

    @classmethod
    def from_yaml(cls, path: Path) -> RetrainConfig:
        return cls.model_validate(load_yaml(path))


class EncodeConfig(Section):
    batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "bf16", "fp32", "int8"] = Field(
        "auto",
        description="auto = bf16 only on CPUs with native bf16; int8 = ONNX Runtime dynamic quantization. "
        "bf16 and int8 are kept only if they match fp32 on a sample, else publication encodes in fp32.",
    )
    bf16_min_cosine: float = Field(
        0.99, gt=0, le=1, description="Least bf16-vs-fp32 cosine on the sample to keep bf16."
    )
    int8_min_mean_cosine: float = Field(
        0.99, gt=0, le=1, description="Least mean int8-vs-fp32 cosine on the sample to keep int8."
    )
    int8_min_neighbour_recall: float = Field(
        0.98, ge=0, le=1, description="Least neighbour recall@10 of int8 vs fp32 within the sample to keep int8."
    )
    check_sample_docs: int = Field(
        128, ge=11, description="Documents the bf16/int8 quality check encodes both ways (from the first shards)."
    )
    max_seq_length: int | None = Field(None, ge=8, description="None = the model's own setting.")
    shard_size: int = Field(512, ge=1, description="Documents per encoding task (the unit mapped over workers).")
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the document encoder for bf16 publication (checked against eager, else eager); "
        "auto = when at least 20,000 documents are to be encoded, where the compile time is won back.",
    )


class IndexConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    type: Literal["flat", "hnsw", "ivf", "ivfpq", "hnsw_sq"] = Field(
        "flat",
        description="ivfpq: IVF with product-quantized codes (pq_m bytes a vector); hnsw_sq: HNSW over 8-bit scalar "
        "codes. Both compress the vectors, so their recall is lower: set recall_floor for them (bench/ann_1m.py).",
    )
    factory: str | None = Field(None, description="A faiss.index_factory string overriding type (expert use).")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nlist: int | None = Field(None, ge=1, description="None = about 4·sqrt(n) lists.")
    ivf_nprobe: int = Field(32, ge=1, description="Lists searched per query (ivf, ivfpq).")
    pq_m: int | None = Field(None, ge=1, description="ivfpq sub-quantizers (bytes per vector); None = dimension / 8.")
    pq_bits: int = Field(8, ge=1, le=12, description="ivfpq bits per sub-quantizer code.")
    recall_floor: float = Field(0.99, ge=0, le=1, description="Least recall@10 vs exact for approximate indexes.")
    verify_queries: int = Field(200, ge=1)
    keep_versions: int = Field(3, ge=1)
    search_mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        None, description="Mode served by default; None = the model version's served.mode tag, else hybrid."
    )
    fusion_weight: float | None = Field(
        None, ge=0, le=1, description="Hybrid dense weight; None = the version's hybrid.weight tag, else 0.5."
    )
    fusion_method: Literal["convex", "zscore", "rrf"] | None = Field(
        None, description="Hybrid fusion; None = the version's hybrid.method tag, else convex."
    )
    fusion_depth: int = Field(100, ge=1, description="Documents each system contributes to a hybrid query.")

    def spec(self):  # noqa: ANN201 - denseflow.model.index.build.IndexSpec, imported lazily so configs load without faiss
        from denseflow.model.index.build import IndexSpec

        fields = self.model_dump(include={"type", "factory", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"})
        return IndexSpec(
            **fields, ivf_nlist=self.ivf_nlist, ivf_nprobe=self.ivf_nprobe, pq_m=self.pq_m, pq_bits=self.pq_bits
        )


class RunnerConfig(Section):
    kind: Literal["local", "dask"] = Field("local", description="local = Prefect's thread-pool runner.")
    local_workers: int = Field(
        1, ge=1, description="Shards encoded at once by the local runner; torch already uses every core per shard."
    )
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster; None = start one.")
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)
    torch_threads: int | None = Field(
        None, ge=1, description="Intra-op threads per shard; None = dask_threads_per_worker on Dask, all cores locally."
    )


class PublishConfig(Section):
    workspace: Path | None = Field(None, description="None = DENSEFLOW_HOME or ./.denseflow")
    model: str = Field(
        "retriever@production", description="Registered model with @alias or /version, or a model folder."
    )
    data: DataConfig = DataConfig()
    encode: EncodeConfig = EncodeConfig()
    index: IndexConfig = IndexConfig()
    runner: RunnerConfig = RunnerConfig()
    tracking: TrackingConfig = TrackingConfig()
    bm25: BM25Config = BM25Config()

    @classmethod
    def from_yaml(cls, path: Path) -> PublishConfig:
        return cls.model_validate(load_yaml(path))


CompareArm = Literal[
    "zero-shot", "bm25-alone", "random", "bm25-hard", "dense-hard", "dense-remined", "bm25-old", "mix-hard"
]
# The study trains every arm on make run's recipe (TrainConfig's defaults: learning rate, sequence length, dev
# selection of the checkpoint and of the WiSE-FT α) for the steps make run takes on SciFact: 2 epochs of its
# ~830 train pairs at batch 32. A fixed step count, so every arm takes the same number of optimizer steps.
STUDY_TRAIN_DEFAULTS = {"max_steps": 52}


class EstimateConfig(Section):
    """Rates the study's time estimate scales from (MiniLM-L6, batch 32, one negative, 128 tokens).

    Two sets: CPUs without native bf16 (fp32) and CPUs with it (bf16 autocast); docs/benchmarks.md gives the
    machine and date the defaults were measured on. ``denseflow compare-negatives --plan --measure`` times a few real steps and an encoding
    batch on the CPU it runs on and uses those instead.
    """

    docs_per_second_at_128: float = Field(20.0, gt=0, description="fp32 corpus encoding at 128 tokens; ∝ 1/length.")
    step_seconds_at_128: float = Field(14.0, gt=0, description="fp32: one step, batch 32, one negative, 128 tokens.")
    bf16_docs_per_second_at_128: float = Field(
        120.0, gt=0, description="Native bf16 encoding (the step-time ratio applied to encoding; --measure to check)."
    )
    bf16_step_seconds_at_128: float = Field(2.0, gt=0, description="Native bf16: one step as above.")
    bm25_query_seconds: float = Field(0.03, ge=0, description="BM25 scores of one query over the corpus.")
    run_overhead_seconds: float = Field(
        15.0, ge=0, description="Per child run and round: model loads, MLflow, Prefect."
    )
    budget_minutes: float = Field(120.0, gt=0, description="Warn when the estimate exceeds this.")


class CompareNegativesConfig(Section):
    """The ``compare_negatives`` study: every arm on the same data, base model, steps, batch, lr and seeds.

    ``mining`` gives the hard arms' shared settings (teacher, margin, selection, window, negatives per pair);
    each arm sets its ``candidates`` and ``seed``, and ``bm25-old`` the old setting (model/evaluation/compare_negatives/plan.py).
    ``train`` gives the shared training settings, dev selection included where TrainConfig offers it; its
    ``seed``, ``towers`` and (in the sweep) ``batch_size``/``loss`` are set per run. Re-mined arms split
    ``train.max_steps`` over their rounds, so every trained arm takes the same number of optimizer steps.
    """

    workspace: Path | None = Field(None, description="None = DENSEFLOW_HOME or ./.denseflow")
    run_name: str | None = Field("compare-negatives", description="Name of the parent MLflow run.")
    arms: list[CompareArm] = Field(
        ["zero-shot", "bm25-alone", "random", "bm25-hard", "dense-hard", "dense-remined", "bm25-old"],
        min_length=1,
        description="Arms to run (docs/negatives_study.md).",
    )
    towers: list[Literal["siamese", "asymmetric", "query_only"]] = Field(
        ["query_only"], min_length=1, description="Tower types crossed with every trained arm (make run's: query_only)."
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Each trained arm runs once per seed.")
    dense_rounds: int = Field(
        2, ge=1, description="dense-remined / mix-hard: mine, train, re-mine with the round's best model, train ..."
    )
    mix_dense_share: float = Field(0.5, gt=0, lt=1, description="mix-hard: share of negatives mined densely.")
    batch_sizes: list[int] = Field(
        [],
        description="In-batch negatives sweep, e.g. [16, 32, 64, 128]: every trained arm at each size with "
        "cached_mnrl (GradCache, mini-batch train.mini_batch_size). Empty = train.batch_size and train.loss.",
    )
    permutations: int = Field(10_000, ge=100, description="Resamples of the paired randomisation test.")
    data: DataConfig = DataConfig()
    mining: MiningConfig = MiningConfig()
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**STUDY_TRAIN_DEFAULTS))
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    estimate: EstimateConfig = EstimateConfig()
    bm25: BM25Config = BM25Config()

    @field_validator("train", mode="before")
    @classmethod
    def _study_train_defaults(cls, value: object) -> object:
        # A YAML ``train:`` section overrides single keys; the study's defaults stay for the rest.
        return STUDY_TRAIN_DEFAULTS | value if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> CompareNegativesConfig:
        for name in ("arms", "towers", "seeds", "batch_sizes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: duplicate entries {values}")
        if any(size < 2 for size in self.batch_sizes):
            raise ValueError("batch_sizes: every size must be at least 2")
        if self.train.max_steps <= 0:
            raise ValueError("train.max_steps must be > 0: every arm trains the same number of steps")
        if {"dense-remined", "mix-hard"} & set(self.arms) and self.train.max_steps < self.dense_rounds:
            raise ValueError(f"train.max_steps ({self.train.max_steps}) < dense_rounds ({self.dense_rounds})")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> CompareNegativesConfig:
        return cls.model_validate(load_yaml(path))


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: configuration file not found")
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return content


def flatten(config: BaseModel) -> dict[str, str]:
    """``{"train.batch_size": "32", ...}``: the whole configuration as MLflow params."""
    return dict(_flatten_dict(config.model_dump(mode="json"), ""))


def _flatten_dict(value: dict, prefix: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, sub in value.items():
        if isinstance(sub, dict):
            items.extend(_flatten_dict(sub, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", str(sub)))
    return items


def describe(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[tuple[str, str, str]]:
    """``(key, default, description)`` of every setting, nested sections flattened: the reference docs.

    A section's defaults come from the enclosing default where it sets its own (the study's ``train``
    is a TrainConfig with shorter sequences and fewer steps), else from the section's class.
    """
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        default = getattr(defaults, name) if defaults is not None else info.get_default(call_default_factory=True)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section_defaults = default if isinstance(default, BaseModel) else None
            rows.extend(describe(annotation, f"{prefix}{name}.", section_defaults))
            continue
        shown = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
        rows.append((f"{prefix}{name}", json.dumps(shown, default=str), info.description or ""))
    return rows
