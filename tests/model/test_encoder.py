"""Siamese and asymmetric encoders: towers, encoding by role, and an asymmetric model's round trip through MLflow."""

from __future__ import annotations

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from denseflow.model.config import TrackingConfig
from denseflow.model.encoder import encode, is_asymmetric, load_encoder, make_asymmetric, tower_type

TEXTS = ["heart failure and blood pressure", "tumor metastasis after chemotherapy"]


def perturb_document_tower(model) -> None:  # noqa: ANN001 - SentenceTransformer with a Router
    """Make the towers diverge the way training would: change only the document tower's weights."""
    router = model[0]
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in router.sub_modules["document"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


def test_siamese_encodes_queries_and_documents_alike(tiny_model_dir):
    model = load_encoder(tiny_model_dir, 32)
    assert tower_type(model) == "siamese"
    query, document = encode(model, TEXTS, "query"), encode(model, TEXTS, "document")
    assert query.dtype == np.float32 and query.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(query, document, atol=1e-6)


def test_asymmetric_towers_start_equal_and_route_by_role(tiny_model_dir):
    siamese = load_encoder(tiny_model_dir, 32)
    model = make_asymmetric(load_encoder(tiny_model_dir, 32))
    assert is_asymmetric(model) and tower_type(model) == "asymmetric"
    assert make_asymmetric(model) is model
    # Both towers are copies of the base model: until training moves them, every role encodes alike.
    np.testing.assert_allclose(encode(model, TEXTS, "query"), encode(siamese, TEXTS, "query"), atol=1e-5)
    np.testing.assert_allclose(encode(model, TEXTS, "document"), encode(siamese, TEXTS, "document"), atol=1e-5)
    query_before = encode(model, TEXTS, "query")
    perturb_document_tower(model)
    np.testing.assert_allclose(encode(model, TEXTS, "query"), query_before, atol=1e-6)  # query tower untouched
    assert not np.allclose(encode(model, TEXTS, "query"), encode(model, TEXTS, "document"), atol=1e-3)


def test_asymmetric_model_round_trips_through_mlflow(tiny_model_dir, tmp_path, monkeypatch):
    import mlflow.sentence_transformers

    from denseflow.registry.resolve import resolve_model
    from denseflow.tasks.registry import register
    from denseflow.tasks.tracking import configure_tracking

    # MLflow infers pip requirements by loading the model again in a subprocess (~20 s here); the flavour's
    # default requirements are what it falls back to anyway, and the weights' round trip is what is tested.
    monkeypatch.setattr(
        mlflow.sentence_transformers, "infer_pip_requirements", lambda *args, fallback=None, **kwargs: fallback
    )
    model = make_asymmetric(load_encoder(tiny_model_dir, 32))
    perturb_document_tower(model)
    saved = tmp_path / "asymmetric"
    model.save(str(saved))
    query, document = encode(model, TEXTS, "query"), encode(model, TEXTS, "document")
    assert not np.allclose(query, document, atol=1e-3)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(TrackingConfig(tracking_uri=uri, experiment="encoder-test"), tmp_path / "ws")
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("encoder-test").experiment_id).info.run_id
    version = register.fn(str(saved), run_id, "retriever", {"ndcg@10": 0.5}, "fingerprint")

    found = client.get_model_version("retriever", version)
    assert found.tags["towers"] == "asymmetric"
    assert client.get_run(run_id).data.tags["towers"] == "asymmetric"
    resolved = resolve_model("retriever@candidate", tmp_path / "ws")
    assert resolved.version == version and resolved.run_id == run_id
    loaded = load_encoder(resolved.local_dir, 32)
    assert tower_type(loaded) == "asymmetric"
    loaded_query, loaded_document = encode(loaded, TEXTS, "query"), encode(loaded, TEXTS, "document")
    np.testing.assert_allclose(loaded_query, query, atol=1e-5)
    np.testing.assert_allclose(loaded_document, document, atol=1e-5)
    assert not np.allclose(loaded_query, loaded_document, atol=1e-3)
    # And each tower is the one that was saved: the query tower still encodes like the untouched base model.
    base = load_encoder(tiny_model_dir, 32)
    np.testing.assert_allclose(loaded_query, encode(base, TEXTS, "query"), atol=1e-5)
    assert not np.allclose(loaded_document, encode(base, TEXTS, "document"), atol=1e-3)


def test_asymmetric_training_moves_both_towers_apart(tiny_model_dir, tiny_beir_dir, tmp_path):
    """GradCache's loss with a Router (plain MNRL with asymmetric towers runs in tests/flows/test_compare_negatives.py)."""
    from denseflow.model.config import TrainConfig
    from denseflow.model.data.beir import RejectLog, load_beir
    from denseflow.model.mining.negatives import mine_negatives
    from denseflow.model.training.trainer import train_bi_encoder

    dataset = load_beir(tiny_beir_dir, ["train"], RejectLog())
    examples, _ = mine_negatives(dataset, "train", num_negatives=1, seed=0)
    settings = TrainConfig(
        base_model=str(tiny_model_dir), towers="asymmetric", loss="cached_mnrl", mini_batch_size=4, batch_size=8,
        max_steps=2, learning_rate=1e-3, warmup_ratio=0, max_seq_length=32, precision="fp32",
    )  # fmt: skip
    result = train_bi_encoder(examples, dataset, settings, tmp_path / "train", progress=False)
    trained = load_encoder(result.model_dir, 32)
    base = load_encoder(tiny_model_dir, 32)
    assert tower_type(trained) == "asymmetric" and result.steps == 2
    query, document = encode(trained, TEXTS, "query"), encode(trained, TEXTS, "document")
    # router_mapping sends anchors to the query tower and passages to the document tower: both learn, apart.
    assert not np.allclose(query, encode(base, TEXTS, "query"), atol=1e-4)
    assert not np.allclose(document, encode(base, TEXTS, "document"), atol=1e-4)
    assert not np.allclose(query, document, atol=1e-4)


def test_cached_corpus_embeddings_follow_the_callers_document_order(tiny_model_dir, tiny_beir_dir, tmp_path):
    from denseflow.model.data.beir import RejectLog, load_beir
    from denseflow.model.encoder import cached_corpus_embeddings

    corpus = load_beir(tiny_beir_dir, ["test"], RejectLog()).corpus
    ids, first = cached_corpus_embeddings(tiny_model_dir, corpus, tmp_path, progress=False)
    reordered = dict(reversed(list(corpus.items())))
    # Every text is cached by its content, so this call is served from the cache written above.
    reordered_ids, second = cached_corpus_embeddings(tiny_model_dir, reordered, tmp_path, progress=False)
    assert reordered_ids == ids[::-1]
    assert len(list(tmp_path.rglob("seg-*.npz"))) == 1
    np.testing.assert_array_equal(second, first[::-1])


def test_a_query_tower_only_model_shares_its_base_models_corpus_embeddings(tiny_model_dir, tmp_path):
    """The document encoder's fingerprint ignores the query tower, so the corpus embeddings cache is shared."""
    import torch

    from denseflow.model.encoder import document_encoder_fingerprint, load_encoder, make_asymmetric

    model = make_asymmetric(load_encoder(tiny_model_dir, max_seq_length=16))  # saved at a training length
    model.save(str(tmp_path / "same-documents"))
    with torch.no_grad():
        for parameter in model[0].sub_modules["query"].parameters():
            parameter.add_(0.01)
    model.save(str(tmp_path / "query-moved"))
    for parameter in model[0].sub_modules["document"].parameters():
        parameter.data.add_(0.01)
    model.save(str(tmp_path / "documents-moved"))
    base = document_encoder_fingerprint(tiny_model_dir)
    assert document_encoder_fingerprint(tmp_path / "same-documents") == base
    assert document_encoder_fingerprint(tmp_path / "query-moved") == base
    assert document_encoder_fingerprint(tmp_path / "documents-moved") != base


def test_a_wise_ft_merge_with_a_frozen_document_tower_keeps_its_corpus_embeddings(tiny_model_dir, tmp_path):
    """lerp turns a frozen tower's -0.0 weights into 0.0: the fingerprint must not see a new document tower."""
    import torch

    from denseflow.model.encoder import document_encoder_fingerprint, load_encoder, make_asymmetric
    from denseflow.model.training.trainer import interpolate

    base = load_encoder(tiny_model_dir)
    with torch.no_grad():
        next(base.parameters()).view(-1)[:4] = -0.0
    base.save(str(tmp_path / "base"))
    tuned = make_asymmetric(load_encoder(tmp_path / "base"))
    with torch.no_grad():
        for parameter in tuned[0].sub_modules["query"].parameters():
            parameter.add_(0.01)
    interpolate(make_asymmetric(load_encoder(tmp_path / "base")), tuned, 0.2).save(str(tmp_path / "merged"))
    assert document_encoder_fingerprint(tmp_path / "merged") == document_encoder_fingerprint(tmp_path / "base")
