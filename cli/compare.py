"""``denseflow compare-negatives [--config FILE] [--plan]``: the negatives study from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _config(args: argparse.Namespace):  # noqa: ANN202 - denseflow.model.config.CompareConfig
    from denseflow.model.config import CompareConfig

    config = CompareConfig.from_yaml(args.config) if args.config else CompareConfig()
    if args.workspace:
        config = config.model_copy(update={"workspace": args.workspace})
    return config


def cmd_compare_negatives(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.plan:
        return print_plan(config)
    from denseflow.flows.compare_negatives import compare_negatives

    result = compare_negatives(config)
    print(Path(result["markdown"]).read_text(encoding="utf-8"))
    print(json.dumps({key: result[key] for key in ("mlflow_run_id", "markdown", "csv", "plot")}, indent=2))
    return 0


def print_plan(config) -> int:  # noqa: ANN001 - denseflow.model.config.CompareConfig
    """The runs and their estimated minutes, from the data's size; nothing is trained."""
    from denseflow.model.data.beir import RejectLog
    from denseflow.model.evaluation.study import estimate_study, plan_study
    from denseflow.tasks.ingest import load_source

    dataset = load_source(config.data, RejectLog()).dataset
    specs = plan_study(config)
    estimate = estimate_study(
        config,
        len(dataset.corpus),
        len(dataset.qrels.get(config.data.train_split, {})),
        len(dataset.qrels.get(config.data.eval_split, {})),
        specs,
    )
    print(f"{len(specs)} runs; estimated on the rates in the config's estimate: section\n{estimate.describe()}")
    return 0


def add_compare_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare-negatives", help="study: zero-shot, BM25, random vs BM25 vs dense negatives (parent + child runs)"
    )
    parser.add_argument("--config", type=Path, help="YAML CompareConfig (defaults: the ~75 min SciFact study)")
    parser.add_argument("--workspace", type=Path, help="workspace folder (default DENSEFLOW_HOME or ./.denseflow)")
    parser.add_argument("--plan", action="store_true", help="print the runs and the time estimate, run nothing")
    parser.set_defaults(handler=cmd_compare_negatives)
