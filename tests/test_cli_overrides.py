"""One merge for every command: YAML, then flags, then --set; sections merge, values keep their YAML types."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from denseflow.cli import overrides
from denseflow.cli.main import build_parser
from denseflow.model.config import PublishConfig, RetrainConfig


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


def test_deploy_serve_merges_the_same_way() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "deploy" / "serve.py"
    spec = importlib.util.spec_from_file_location("deploy_serve", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = module.serve_options(
        {"name": "x", "parameters": {"config": {"data": {"path": "p"}}}}, {"data": {"corpus": "c"}}
    )
    assert options["parameters"]["config"] == {"data": {"path": "p", "corpus": "c"}}
