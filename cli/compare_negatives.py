"""``denseflow compare-negatives [--config FILE] [--plan [--measure]]``: the negatives study from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _config(args: argparse.Namespace):  # noqa: ANN202 - denseflow.model.config.CompareNegativesConfig
    from denseflow.model.config import CompareNegativesConfig

    config = CompareNegativesConfig.from_yaml(args.config) if args.config else CompareNegativesConfig()
    if args.workspace:
        config = config.model_copy(update={"workspace": args.workspace})
    return config


def cmd_compare_negatives(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.plan:
        return print_plan(config, measure=args.measure)
    from denseflow.flows.compare_negatives import compare_negatives

    result = compare_negatives(config)
    print(Path(result["markdown"]).read_text(encoding="utf-8"))
    print(json.dumps({key: result[key] for key in ("mlflow_run_id", "markdown", "csv", "plot")}, indent=2))
    return 0


def print_plan(config, measure: bool = False) -> int:  # noqa: ANN001 - denseflow.model.config.CompareNegativesConfig
    """The runs and their estimated minutes on this CPU, from the data's size; nothing is trained.

    Without ``measure`` the rates are the config's for this CPU class (native bf16 or not); with it, a few
    real training steps and an encoding batch are timed here first (a minute or two on a slow CPU).
    """
    from denseflow.model.data.beir import RejectLog
    from denseflow.model.data.ingest import load_run_source
    from denseflow.model.encoder import document_length, resolve_base_model
    from denseflow.model.evaluation.compare_negatives.plan import cpu_rates, estimate_study, measure_rates, plan_study

    dataset = load_run_source(config.data, RejectLog()).dataset
    specs = plan_study(config)
    rates = measure_rates(config, dataset) if measure else cpu_rates(config)
    texts = [document.full_text for document in dataset.corpus.values()]
    base_model = resolve_base_model(config.train.base_model)
    length, _ = document_length(base_model, texts, config.eval.document_max_seq_length)
    estimate = estimate_study(
        config,
        len(dataset.corpus),
        len(dataset.qrels.get(config.data.train_split, {})),
        len(dataset.qrels.get(config.data.eval_split, {})),
        specs,
        rates,
        length,
    )
    budget = config.estimate.budget_minutes
    verdict = "within" if estimate.total_seconds <= budget * 60 else "OVER"
    print(f"{len(specs)} runs; {verdict} the {budget:.0f} min budget on this CPU\n{estimate.describe()}")
    if verdict == "OVER":
        reduced = reduced_config(config)
        minutes = (
            estimate_study(
                reduced,
                len(dataset.corpus),
                len(dataset.qrels.get(config.data.train_split, {})),
                len(dataset.qrels.get(config.data.eval_split, {})),
                plan_study(reduced),
                rates,
                length,
            ).total_seconds
            / 60
        )
        fits = "fits" if minutes <= budget else "does not fit either"
        print(
            f"\nreduced plan ({len(plan_study(reduced))} runs, {minutes:.0f} min: {fits}): a config file with\n"
            f"  arms: {json.dumps(reduced.arms)}\n  seeds: {json.dumps(reduced.seeds)}"
        )
    return 0


REDUCED_ARMS = ["zero-shot", "bm25-alone", "random", "bm25-hard", "dense-remined", "bm25-old"]


def reduced_config(config):  # noqa: ANN001, ANN201 - CompareNegativesConfig in, CompareNegativesConfig out
    """The plan to run where the whole one does not fit: seeds 0 and 1 of the arms the verdict needs."""
    arms = [arm for arm in config.arms if arm in REDUCED_ARMS] or REDUCED_ARMS
    return config.model_copy(update={"arms": arms, "seeds": config.seeds[:2]})


def add_compare_negatives_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare-negatives", help="study: zero-shot, BM25, random vs BM25 vs dense negatives (parent + child runs)"
    )
    parser.add_argument("--config", type=Path, help="YAML CompareNegativesConfig (defaults: the SciFact study)")
    parser.add_argument("--workspace", type=Path, help="workspace folder (default DENSEFLOW_HOME or ./.denseflow)")
    parser.add_argument("--plan", action="store_true", help="print the runs and the time estimate, run nothing")
    parser.add_argument(
        "--measure", action="store_true", help="with --plan: time a few training steps on this CPU for the estimate"
    )
    parser.set_defaults(handler=cmd_compare_negatives)
