"""One way to build a configuration from a YAML file, flags and ``--set key=value`` overrides.

Every command that takes a configuration (``retrain``, ``publish``, ``compare-negatives``, ``ingest``'s data
section) and ``deploy/schedule.py`` merge the same way, in this order, later winning:

1. the YAML file (``--config``), or nothing;
2. the command's own flags, each naming one dotted setting (``--precision`` is ``encode.precision``);
3. ``--set section.key=value`` pairs, for any setting without a flag of its own. The value is read as YAML
   (``--set train.max_steps=40``, ``--set data.splits={train: 0.9, dev: 0.1}``), so numbers, booleans, lists and
   mappings keep their types and pydantic validates them with the rest.

Mappings merge section by section (an override of ``data.path`` keeps the file's other ``data`` settings);
anything else replaces.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, section by section; neither is modified."""
    out = dict(base)
    for key, value in override.items():
        current = out.get(key)
        out[key] = merge(current, value) if isinstance(value, Mapping) and isinstance(current, Mapping) else value
    return out


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """``nest("encode.precision", "bf16")`` is ``{"encode": {"precision": "bf16"}}``."""
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"{dotted!r}: expected a dotted setting name such as train.max_steps")
    nested: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested


def parse_set(item: str) -> dict[str, Any]:
    """One ``key=value`` as a nested mapping; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {item!r}: expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    try:
        return nest(key.strip(), value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--set {item!r}: {err}") from err


def build(
    path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[Mapping[str, Any]] = (),
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``base``, then the YAML at ``path``, then ``flags`` (dotted names; None means not given), then ``sets``."""
    from denseflow.model.config import load_yaml

    raw = merge(base or {}, load_yaml(path) if path else {})
    for dotted, value in (flags or {}).items():
        if value is not None:
            raw = merge(raw, nest(dotted, value))
    for override in sets:
        raw = merge(raw, override)
    return raw


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=parse_set,
        action="append",
        default=[],
        help="override one setting, e.g. --set train.max_steps=40 (repeatable; the value is read as YAML)",
    )
