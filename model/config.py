"""The one validated configuration every flow takes; loadable from YAML.

Defaults run the bundled SciFact dataset with the bundled all-MiniLM-L6-v2 model on one machine, with
no server. Unknown keys are errors, so a typo in a YAML file fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Section):
    source: Literal["beir", "clicks", "qa"] = "beir"
    path: Path | None = Field(None, description="BEIR folder or source file; None = the bundled SciFact.")
    train_split: str = "train"
    eval_split: str = "test"


class MiningConfig(Section):
    strategy: Literal["random", "bm25", "dense"] = "bm25"
    num_negatives: int = Field(1, ge=1, le=3, description="Mined negatives per (query, positive) pair.")
    rank_start: int = Field(3, ge=0, description="Skip the top ranks: likely unjudged positives.")
    rank_end: int = Field(50, ge=1, description="Draw negatives from ranks [rank_start, rank_end).")
    relative_margin: float | None = Field(
        0.95, gt=0, le=1, description="Drop candidates scoring above this share of the positive's score."
    )
    seed: int = 42

    @model_validator(mode="after")
    def _window(self) -> MiningConfig:
        if self.rank_end - self.rank_start < self.num_negatives:
            raise ValueError(f"rank window [{self.rank_start}, {self.rank_end}) is smaller than num_negatives")
        return self


class TrainConfig(Section):
    base_model: str | None = Field(None, description="Model folder or name; None = bundled all-MiniLM-L6-v2.")
    towers: Literal["siamese", "asymmetric"] = "siamese"
    loss: Literal["mnrl", "cached_mnrl"] = "mnrl"
    mini_batch_size: int = Field(16, ge=1, description="GradCache mini-batch of cached_mnrl.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many steps (overrides epochs when > 0).")
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_seq_length: int = Field(256, ge=8)
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps; a re-run resumes from the last.")
    seed: int = 42


class EvalConfig(Section):
    ks: list[int] = [1, 5, 10, 20, 100]
    batch_size: int = 64
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    baselines: bool = Field(True, description="Also evaluate the zero-shot base model and BM25.")


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="None = MLFLOW_TRACKING_URI or sqlite in the workspace.")
    experiment: str = "denseflow"
    registered_model: str = "retriever"


class RetrainConfig(Section):
    workspace: Path | None = Field(None, description="None = DENSEFLOW_HOME or ./.denseflow")
    run_name: str | None = None
    data: DataConfig = DataConfig()
    mining: MiningConfig = MiningConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()

    @classmethod
    def from_yaml(cls, path: Path) -> RetrainConfig:
        return cls.model_validate(load_yaml(path))


class EncodeConfig(Section):
    batch_size: int = Field(64, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto = bf16 only on CPUs with native bf16; bf16 is kept only if it matches fp32 on a sample.",
    )
    bf16_min_cosine: float = Field(
        0.99, gt=0, le=1, description="Least bf16-vs-fp32 cosine on the sample to keep bf16."
    )
    max_seq_length: int | None = Field(None, ge=8, description="None = the model's own setting.")
    shard_size: int = Field(512, ge=1, description="Documents per encoding task (the unit mapped over workers).")


class IndexConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    type: Literal["flat", "hnsw", "ivf"] = "flat"
    factory: str | None = Field(None, description="A faiss.index_factory string overriding type (expert use).")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nlist: int | None = Field(None, ge=1, description="None = about 4·sqrt(n) lists.")
    ivf_nprobe: int = Field(32, ge=1)
    recall_floor: float = Field(0.99, ge=0, le=1, description="Least recall@10 vs exact for approximate indexes.")
    verify_queries: int = Field(200, ge=1)
    keep_versions: int = Field(3, ge=1)

    def spec(self):  # noqa: ANN201 - model.index.IndexSpec, imported lazily so configs load without faiss
        from model.index import IndexSpec

        fields = self.model_dump(include={"type", "factory", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"})
        return IndexSpec(**fields, ivf_nlist=self.ivf_nlist, ivf_nprobe=self.ivf_nprobe)


class RunnerConfig(Section):
    kind: Literal["local", "dask"] = Field("local", description="local = Prefect's default runner.")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster; None = start one.")
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)


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

    @classmethod
    def from_yaml(cls, path: Path) -> PublishConfig:
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
