"""Recipe sweep: training recipes compared through the pipeline itself, on dev, test read once per recipe.

Each recipe is one ``retrain`` flow run (the project's ingest, mining, ``train_bi_encoder`` and evaluation; the
gate and publication off) with ``--set``-style overrides, so what is measured is exactly what ``make run`` would
do with those settings. A queue file holds one recipe a line, ``name key=value ...`` with dotted settings
(``train.learning_rate=2e-5 train.interpolation=1.0``); results append one JSON line per recipe to
``OUT/results.jsonl``, and a recipe already there is skipped, so the sweep resumes after a kill.

    .venv/bin/python bench/recipe_sweep.py OUT queue.txt          # run the queue
    .venv/bin/python bench/recipe_sweep.py OUT --report           # the README table

Every figure of the table: dev (document-grouped: every dev query is unseen-document) trained and served, test
all / unseen-document / seen-document, trained and served, the base model's own system, minutes. The candidate
corpus figure (``dev cand.``) is the best checkpoint's, on the training-time candidate corpus, beside the
whole-corpus dev figure it stands in for.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    extras = [flag for flag in ("avx512_bf16", "amx_bf16", "amx_int8") if flag in flags.split()]
    return f"{names[0] if names else '?'} ({', '.join(extras) or 'no native bf16'})"


def parse_recipe(line: str) -> tuple[str, dict]:
    from denseflow.cli.overrides import merge, parse_set

    name, *items = line.split()
    overrides: dict = {}
    for item in items:
        overrides = merge(overrides, parse_set(item))
    return name, overrides


def part(entry: dict, metric: str = "ndcg@10") -> float | None:
    return entry["metrics"][metric] if entry.get("metrics") else None


def run_recipe(name: str, overrides: dict, out: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from denseflow.cli.overrides import merge
    from denseflow.flows.retrain import retrain
    from denseflow.model.config import RetrainConfig

    fixed = {
        "workspace": str(out / "workspace"),
        "run_name": f"sweep-{name}",
        "tracking": {"experiment": "recipe-sweep"},
        "promotion": {"enabled": False, "publish_on_promotion": False},
    }
    config = RetrainConfig.model_validate(merge(fixed, overrides))
    started = time.perf_counter()
    summary = retrain(config)
    minutes = (time.perf_counter() - started) / 60
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    served = "hybrid" if summary["served_mode"] == "hybrid" else "trained"
    base = "zero-shot+bm25" if summary["base_served_mode"] == "hybrid" else "zero-shot"
    row = {
        "name": name,
        "overrides": overrides,
        "minutes": round(minutes, 2),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "served_mode": summary["served_mode"],
        "base_served_mode": summary["base_served_mode"],
        "steps": run.data.metrics.get("train.steps"),
        "best_step": run.data.metrics.get("train.best_step"),
        "dev_candidates": run.data.metrics.get("train.best_dev_ndcg_at_10"),
        "interpolation": run.data.metrics.get("train.interpolation"),
        "selection": run.data.tags.get("train.selection"),
        "dev": {label: metrics["ndcg@10"] for label, metrics in summary["dev_metrics"].items()},
        "dev_intervals": summary["dev_intervals"],
        "test": {label: metrics["ndcg@10"] for label, metrics in summary["metrics"].items()},
        "test_unseen": {label: part(parts["unseen_docs"]) for label, parts in summary["partitions"].items()},
        "test_seen": {label: part(parts["seen_docs"]) for label, parts in summary["partitions"].items()},
        "attractors_unseen": {
            label: parts["unseen_docs"].get("training_positives_in_top10")
            for label, parts in summary["partitions"].items()
        },
        "served": served,
        "base": base,
        "mlflow_run_id": summary["mlflow_run_id"],
        # Every choice made on evidence, and what it used (the prior unless dev's paired test overruled it).
        "choices": {choice["key"]: choice["used"] for choice in summary.get("choices", [])},
        "choice_p_values": {choice["key"]: choice["p_value"] for choice in summary.get("choices", [])},
        "document_max_seq_length": (summary.get("parts") or {}).get("document_max_seq_length"),
        # A shallow query tower's rows (train.query_layers): served dev/test per depth and encode p50.
        "query_layers": {key: value for key, value in run.data.metrics.items() if key.startswith("query_layers.")},
    }
    return row


def report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    print(
        "| recipe | α | dev cand. | dev trained | dev served | test trained all / unseen | "
        "test served all / unseen (mode) | top-10 train positives, unseen | min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['name']} | failed: {row['error'][:80]} |")
            continue
        served = row["served"]
        cand = f"{row['dev_candidates']:.4f}" if row.get("dev_candidates") else "–"
        alpha = f"{row['interpolation']:g}" if row.get("interpolation") is not None else "–"
        print(
            f"| {row['name']} | {alpha} | {cand} | {row['dev']['trained']:.4f} | {row['dev'][served]:.4f} | "
            f"{row['test']['trained']:.4f} / {row['test_unseen']['trained']:.4f} | "
            f"{row['test'][served]:.4f} / {row['test_unseen'][served]:.4f} ({row['served_mode']}) | "
            f"{row['attractors_unseen']['trained']:.2f} | {row['minutes']:.1f} |"
        )
    chosen = [row for row in rows if row.get("choices")]
    if chosen:
        print("\n| recipe | choices made (used; the prior unless dev's paired test overruled it) |\n|---|---|")
        for row in chosen:
            shown = "; ".join(f"{key}: {used}" for key, used in row["choices"].items())
            print(f"| {row['name']} | {shown} |")
    if rows and "error" not in rows[0]:
        first = rows[0]
        print(
            f"\nBase model's systems: zero-shot dev {first['dev']['zero-shot']:.4f}, test "
            f"{first['test']['zero-shot']:.4f} / unseen {first['test_unseen']['zero-shot']:.4f} "
            f"(top-10 train positives {first['attractors_unseen']['zero-shot']:.2f}); zero-shot + BM25 dev "
            f"{first['dev']['zero-shot+bm25']:.4f}, test {first['test']['zero-shot+bm25']:.4f} / unseen "
            f"{first['test_unseen']['zero-shot+bm25']:.4f}; CPU {first['cpu']}"
        )


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    if argv[1:] == ["--report"]:
        report(out)
        return 0
    queue = [line for line in Path(argv[1]).read_text().splitlines() if line.strip() and not line.startswith("#")]
    results = out / "results.jsonl"
    done = {json.loads(line)["name"] for line in results.read_text().splitlines()} if results.is_file() else set()
    for line in queue:
        name, overrides = parse_recipe(line)
        if name in done:
            continue
        print(f"== {name}: {yaml.safe_dump(overrides, default_flow_style=True).strip()}", flush=True)
        try:
            row = run_recipe(name, overrides, out)
        except Exception as err:  # one failed recipe must not lose the others
            row = {"name": name, "overrides": overrides, "error": f"{type(err).__name__}: {err}"}
        with results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
