"""The ingest and mine tasks with a click-log source: the dataset input in MLflow, skip-above in the examples."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from denseflow.model.config import DataConfig, MiningConfig, TrackingConfig
from denseflow.model.context import RunContext
from denseflow.model.data.assemble import query_id
from denseflow.model.data.ingest import REJECTS_FILE
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.tracking import configure_tracking
from tests.click_logs import page, write_jsonl


def test_clicks_source_through_ingest_and_mine_tasks(tmp_path, tiny_beir_dir):
    rows = []
    for i, topic in enumerate(["heart", "brain", "gene"]):
        docs = [f"{topic}-d{j}" for j in range(4)]
        rows += page(f"{topic} study question", docs, {3: 60.0}, f"i{i}")
    rows.append("{broken")
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    uri = configure_tracking(
        TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"), tmp_path
    )
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("t").experiment_id).info.run_id
    data = DataConfig(
        source="clicks", path=log, corpus=tiny_beir_dir, judged_eval=True, splits={"train": 1.0}, min_usable_share=0.5
    )

    result = ingest.fn(data, tmp_path / "run", run_id)

    assert result.train_queries == 3
    assert result.eval_queries == 12
    assert result.skip_above_queries == 3
    assert result.reject_reasons == {"malformed row": 1}
    run = client.get_run(run_id)
    inputs = run.inputs.dataset_inputs
    contexts = {tag.value for item in inputs for tag in item.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"training", "evaluation"}  # the UI's Datasets panel: what the run trained and was judged on
    for dataset_input in inputs:
        assert dataset_input.dataset.digest == result.fingerprint == run.data.tags["dataset_fingerprint"]
        assert dataset_input.dataset.name.startswith("clicks.jsonl/")
    assert run.data.metrics["ingest.clicks.usable_share"] == 12 / 13
    assert json.loads((tmp_path / "run" / REJECTS_FILE).read_text())["line"] == 13

    mining = MiningConfig(strategy="bm25", num_negatives=2, rank_start=0, rank_end=10)
    context = RunContext(workspace=tmp_path, run_id=run_id, precision="fp32", max_seq_length=32)
    mined = mine.fn(result.dataset_dir, mining, "train", "test", context, out_dir=tmp_path / "run")
    examples = [json.loads(line) for line in open(mined.examples_path)]
    assert len(examples) == 3
    for example in examples:
        topic = next(t for t in ("heart", "brain", "gene") if example["query_id"] == query_id(f"{t} study question"))
        first, second = example["negatives"]
        assert first["source"] == "skip_above"
        assert first["doc_id"] in {f"{topic}-d0", f"{topic}-d1"}
        assert second["source"] == "bm25"
        assert second["doc_id"] != first["doc_id"]
    assert client.get_run(run_id).data.metrics["mine.negatives_skip_above"] == 3
