"""Train: fine-tune the bi-encoder on mined examples; resumable, and reused when nothing changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.mining.negatives import read_examples
from denseflow.model.training.trainer import train_bi_encoder
from denseflow.tasks.tracking import log_artifact, log_metrics
from mlflow.tracking import MlflowClient
from prefect import task


def training_key(examples_path: Path, settings: TrainConfig) -> str:
    """Same examples and settings → same folder, so a re-run resumes its checkpoints or reuses the model."""
    digest = hashlib.sha256(Path(examples_path).read_bytes())
    digest.update(settings.model_dump_json().encode())
    return digest.hexdigest()[:16]


@task(name="train")
def train(
    dataset_dir: Path,
    examples_path: Path,
    settings: TrainConfig,
    train_split: str,
    workspace: Path,
    run_id: str,
    metric_prefix: str = "train.",
) -> str:
    """Returns the trained model folder."""
    output_dir = Path(workspace) / "training" / training_key(Path(examples_path), settings)
    result_path = output_dir / "train_result.json"
    if not result_path.is_file():
        dataset = load_beir(Path(dataset_dir), [train_split], RejectLog())
        result = train_bi_encoder(read_examples(Path(examples_path)), dataset, settings, output_dir)
        result_path.write_text(result.to_json())
    record = json.loads(result_path.read_text())
    log_metrics(
        run_id,
        {
            "steps": record["steps"],
            "seconds": record["seconds"],
            "median_step_seconds": record["median_step_seconds"],
        },
        prefix=metric_prefix,
    )
    client = MlflowClient()
    for step, loss in record["loss_history"]:
        client.log_metric(run_id, f"{metric_prefix}loss", loss, step=step)
    log_artifact(run_id, result_path)
    return record["model_dir"]
