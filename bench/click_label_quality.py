"""How many judged positives does a click rule recover? Precision and recall of click positives vs the qrels.

Simulates a SYNTHETIC position-biased user over the SciFact train queries (``model/data/simulate.py``: BM25 top 10,
examination (1/position)^eta, noisy clicks, relevance-dependent dwell), ingests the log with each rule, and
compares the (query, document) positives each rule yields with SciFact's judgments. The recall ceiling is the
share of judged pairs BM25 ever shows in its top 10: clicks cannot find what users never see.

    nice -n 10 .venv/bin/python bench/click_label_quality.py --out /tmp/click-demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from denseflow.model.config import DataConfig  # noqa: E402
from denseflow.model.data.assemble import read_skip_above  # noqa: E402
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir, normalise_text  # noqa: E402
from denseflow.model.data.ingest import ingest  # noqa: E402
from denseflow.model.data.simulate import ClickModel, label_quality, simulate_clicks  # noqa: E402

RULES: dict[str, dict] = {
    "dwell >= 30 s": {"rule": "dwell", "dwell_threshold": 30},
    "dwell >= 60 s": {"rule": "dwell", "dwell_threshold": 60},
    "CTR >= 0.3, >= 5 impressions": {"rule": "ctr", "ctr_threshold": 0.3, "min_impressions": 5},
    "CTR >= 0.1, >= 5 impressions": {"rule": "ctr", "ctr_threshold": 0.1, "min_impressions": 5},
    "IPS-CTR >= 0.5, >= 5 impressions": {
        "rule": "ctr",
        "ctr_threshold": 0.5,
        "min_impressions": 5,
        "propensity": "power",
    },
    "IPS-CTR >= 0.5, >= 15 impressions": {
        "rule": "ctr",
        "ctr_threshold": 0.5,
        "min_impressions": 15,
        "propensity": "power",
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--queries", type=int, help="sample this many train queries (default: all 809)")
    parser.add_argument("--impressions-per-query", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"# {datetime.now(UTC).isoformat(timespec='seconds')}  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )

    judged = load_beir(bundled_scifact_dir(), ["train", "test"], RejectLog())
    log = args.out / "clicks.jsonl.gz"
    start = time.perf_counter()
    model = ClickModel(impressions_per_query=args.impressions_per_query, seed=args.seed)
    sim = simulate_clicks(judged, "train", log, model, max_queries=args.queries)  # the same log for every rule
    print(
        f"simulated {sim.rows:,} rows, {sim.impressions:,} pages, {sim.clicks:,} clicks, {sim.sessions:,} sessions "
        f"over {sim.queries} train queries in {time.perf_counter() - start:.1f} s -> {log}"
    )
    print(f"recall ceiling (judged pairs BM25 shows in its top {model.top_k}): {sim.shown_share:.3f}")

    results = {}
    print(
        "| rule | click positives | precision | recall | queries with a positive "
        "| skip-above pairs (share judged relevant) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rule in RULES.items():
        config = DataConfig(
            source="clicks", path=log, judged_eval=True, splits={"train": 1.0}, clicks=rule, min_usable_share=0.9
        )
        result = ingest(config, args.out / name.replace(" ", "_").replace(">=", "ge").replace(",", ""))
        dataset = load_beir(result.folder, ["train"], RejectLog())
        quality = label_quality(dataset.queries, dataset.qrels["train"], judged, "train", sim.query_ids)
        wrong = skip_above_judged_relevant(result.folder, dataset, judged)
        pairs = result.report.skip_above_pairs
        results[name] = quality | {"skip_above_pairs": pairs, "skip_above_judged_relevant": wrong}
        print(
            f"| {name} | {int(quality['click_positives'])} | {quality['precision']:.3f} | {quality['recall']:.3f} | "
            f"{int(quality['queries_with_click_positive'])} | {pairs} ({wrong / max(pairs, 1):.1%}) |"
        )
    (args.out / "label_quality.json").write_text(
        json.dumps({"simulation": sim.shown_share, "rules": results}, indent=2) + "\n"
    )
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


def skip_above_judged_relevant(folder: Path, dataset, judged) -> int:  # noqa: ANN001
    """Skip-above negatives that the qrels call relevant: false negatives the click log would teach."""
    by_text = {normalise_text(judged.queries[qid]): qid for qid in judged.qrels["train"]}
    wrong = 0
    for qid, doc_ids in read_skip_above(folder).items():
        relevant = judged.qrels["train"].get(by_text.get(normalise_text(dataset.queries[qid]), ""), {})
        wrong += sum(1 for doc_id in doc_ids if relevant.get(doc_id, 0) > 0)
    return wrong


if __name__ == "__main__":
    sys.exit(main())
