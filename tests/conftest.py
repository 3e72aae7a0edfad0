"""Shared fixtures: a tiny random BERT built offline and a tiny synthetic BEIR dataset."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# The repository root, for tests that read its files (docs, deploy configs) from any depth of tests/.
REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = {
    "heart": "cardiac artery blood pressure heart failure",
    "brain": "neuron cortex synapse memory brain",
    "cancer": "tumor oncology chemotherapy metastasis cancer",
    "virus": "viral infection immune antibody virus",
    "gene": "dna mutation genome expression gene",
    "bone": "skeletal fracture osteoporosis calcium bone",
}


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-dim random BERT with all-MiniLM-L6-v2's tokenizer, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from denseflow.model.encoder import bundled_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    hf_dir = folder / "hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()], device="cpu"
    )
    model.save(str(folder / "model"))
    return folder / "model"


def write_tiny_beir(folder: Path, seed: int = 0) -> Path:
    """6 topics × 6 documents; 4 train and 2 test queries per topic, each judged relevant to one document."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    docs, queries, train, test = [], [], [], []
    for topic, words in TOPICS.items():
        vocabulary = words.split()
        for i in range(6):
            text = " ".join(rng.choice(vocabulary) for _ in range(12))
            docs.append({"_id": f"{topic}-d{i}", "title": f"{topic} study {i}", "text": text})
        for j in range(6):
            query_id = f"{topic}-q{j}"
            queries.append({"_id": query_id, "text": f"what about {topic} {rng.choice(vocabulary)} {j}"})
            (train if j < 4 else test).append((query_id, f"{topic}-d{j}", 1))
    with (folder / "corpus.jsonl").open("w") as out:
        out.writelines(json.dumps(doc) + "\n" for doc in docs)
    with (folder / "queries.jsonl").open("w") as out:
        out.writelines(json.dumps(query) + "\n" for query in queries)
    for split, rows in (("train", train), ("test", test)):
        with (folder / "qrels" / f"{split}.tsv").open("w") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            out.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def tiny_beir_dir(tmp_path: Path) -> Path:
    return write_tiny_beir(tmp_path / "tiny-beir")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole suite: starting one per test would cost more than most tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite MLflow store with experiment ``test``: copying it is ms, creating one takes seconds."""
    import mlflow

    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import configure_tracking

    folder = tmp_path_factory.mktemp("store")
    configure_tracking(TrackingConfig(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="test"), folder)
    mlflow.set_tracking_uri(None)
    return folder / "mlflow.db"


@pytest.fixture()
def sqlite_registry(tmp_path: Path, template_store: Path):
    """A fresh copy of the template store as MLflow's tracking and registry URI for one test, reset after it.

    Yields ``uri``, ``client``, ``experiment`` (the id of ``test``), ``workspace`` and ``tmp`` (the test's folder).
    """
    import shutil
    import tempfile
    from types import SimpleNamespace

    import mlflow
    from mlflow.tracking import MlflowClient

    # Each registry call commits: on tmpfs a commit costs microseconds instead of an fsync.
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path
    shutil.copy(template_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("test").experiment_id
    yield SimpleNamespace(uri=uri, workspace=tmp_path / "ws", client=client, experiment=experiment, tmp=tmp_path)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    if folder != tmp_path:
        shutil.rmtree(folder, ignore_errors=True)
