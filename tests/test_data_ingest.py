"""The ingest entry point through the CLI: a BEIR folder, its report and skip-above negatives."""

from __future__ import annotations

import json

from denseflow.cli.main import main
from denseflow.model.data.assemble import (
    dataset_fingerprint,
    query_id,
    read_skip_above,
)
from denseflow.model.data.beir import RejectLog, load_beir

from tests.click_logs import page, write_jsonl


def test_cli_ingest_writes_a_beir_folder(tmp_path, tiny_beir_dir, capsys):
    rows = page("heart", ["heart-d0", "heart-d1", "heart-d2"], {3: 50.0}, "i1")
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    out = tmp_path / "out"
    args = ["ingest", "--source", "clicks", "--path", str(log), "--corpus", str(tiny_beir_dir), "--out", str(out)]
    assert main(args + ["--judged-eval"]) == 0
    report = json.loads(capsys.readouterr().out)
    dataset = load_beir(out, ["train", "test"], RejectLog())
    assert report["fingerprint"] == dataset_fingerprint(dataset, read_skip_above(out))
    assert read_skip_above(out) == {query_id("heart"): ["heart-d0", "heart-d1"]}
    assert json.loads((out / "ingest_report.json").read_text())["usable_rows"] == 3

    assert main(args + ["--judged-eval", "--min-usable-share", "1.0", "--max-line-bytes", "64"]) == 2
    assert "below data.min_usable_share" in capsys.readouterr().err

    beir_out = tmp_path / "beir"
    assert main(["ingest", "--source", "beir", "--path", str(tiny_beir_dir), "--out", str(beir_out)]) == 0
    assert (
        load_beir(beir_out, ["train", "test"], RejectLog()).qrels
        == load_beir(tiny_beir_dir, ["train", "test"], RejectLog()).qrels
    )
