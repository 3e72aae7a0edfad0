"""One merge for every command: YAML, then flags, then --set; sections merge, values keep their YAML types."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from denseflow.cli import overrides
from denseflow.cli.main import build_parser
from denseflow.model.config import PublishConfig, RetrainConfig
from tests.conftest import REPO


def test_set_values_are_read_as_yaml() -> None:
    assert overrides.parse_set("train.max_steps=40") == {"train": {"max_steps": 40}}
    assert overrides.parse_set("data.judged_eval=true") == {"data": {"judged_eval": True}}
    assert overrides.parse_set("data.splits={train: 0.9, dev: 0.1}") == {"data": {"splits": {"train": 0.9, "dev": 0.1}}}


@pytest.mark.parametrize("item", ["train.max_steps", "train..x=1", "=3"])
def test_a_malformed_set_names_itself(item: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--set"):
        overrides.parse_set(item)


def test_yaml_then_flags_then_set_later_wins_and_sections_merge(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  path: /from/yaml\n  eval_split: test\nencode:\n  precision: bf16\n")
    flags = {"encode.precision": "fp32", "index.name": None}
    raw = overrides.build(config, flags, [overrides.parse_set("encode.shard_size=7")])
    assert raw["data"] == {"path": "/from/yaml", "eval_split": "test"}
    assert raw["encode"] == {"precision": "fp32", "shard_size": 7}
    assert "index" not in raw


def test_merge_leaves_its_inputs_alone() -> None:
    base = {"data": {"path": "a"}}
    merged = overrides.merge(base, {"data": {"corpus": "b"}})
    assert merged == {"data": {"path": "a", "corpus": "b"}}
    assert base == {"data": {"path": "a"}}


def test_retrain_and_publish_take_set(tmp_path: Path) -> None:
    from denseflow.cli.index import _publish_config

    parser = build_parser()
    args = parser.parse_args(["retrain", "--set", "train.max_steps=3", "--set", "train.batch_size=4"])
    config = RetrainConfig.model_validate(overrides.build(args.config, sets=args.overrides))
    assert config.train.max_steps == 3
    assert config.train.batch_size == 4

    args = parser.parse_args(["publish", "--precision", "fp32", "--set", "encode.shard_size=5", "--name", "n1"])
    published: PublishConfig = _publish_config(args)
    assert published.encode.precision == "fp32"
    assert published.encode.shard_size == 5
    assert published.index.name == "n1"


def test_deploy_schedule_merges_the_same_way() -> None:
    import importlib.util

    path = REPO / "deploy" / "schedule.py"
    spec = importlib.util.spec_from_file_location("deploy_schedule", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = module.serve_options(
        {"name": "x", "parameters": {"config": {"data": {"path": "p"}}}}, {"data": {"corpus": "c"}}
    )
    assert options["parameters"]["config"] == {"data": {"path": "p", "corpus": "c"}}


def config_table(capsys: pytest.CaptureFixture, *argv: str) -> dict[str, str]:
    from denseflow.cli.main import main

    assert main(["config", *argv]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    return {row[0].strip("| `"): row[1].strip("`") for row in rows}


def test_config_prints_the_settings_a_run_with_these_arguments_would_use(capsys, tmp_path: Path) -> None:
    shown = config_table(capsys, "retrain", "--set", "mining.rank_end=20")
    assert shown["mining.rank_end"] == "20"
    assert shown["mining.teacher"] == '"none"'  # the flow's own default, not MiningConfig's
    path = tmp_path / "retrain.yaml"
    path.write_text("train:\n  learning_rate: 2.0e-05\n")
    shown = config_table(capsys, "retrain", "--config", str(path), "--set", "eval.batch_size=8")
    assert (shown["train.learning_rate"], shown["eval.batch_size"], shown["train.epochs"]) == ("2e-05", "8", "2.0")


@pytest.mark.parametrize(
    ("flow", "setting", "value", "untouched", "expected"),
    [
        ("retrain", "data.dev_share", "0.2", "data.min_dev_queries", "30"),
        ("retrain", "train.epochs", "1.0", "train.learning_rate", "0.0001"),
        ("retrain", "promotion.margin", "0.01", "promotion.mode", '"auto"'),
        ("publish", "index.keep_versions", "5", "index.hnsw_m", "32"),
        ("publish", "encode.batch_size", "8", "encode.precision", '"auto"'),
        ("compare-negatives", "train.seed", "3", "train.max_steps", "52"),
        ("compare-negatives", "mining.rank_end", "20", "mining.teacher", '"base"'),
    ],
)
def test_one_key_of_a_section_changes_that_key_and_nothing_else(
    capsys, flow: str, setting: str, value: str, untouched: str, expected: str
) -> None:
    shown = config_table(capsys, flow, "--set", f"{setting}={value}")
    assert shown[setting] == value
    assert shown[untouched] == expected
