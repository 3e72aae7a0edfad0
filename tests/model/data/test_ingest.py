"""The ingest entry point through the CLI: a BEIR folder, its report and skip-above negatives."""

from __future__ import annotations

import gzip
import json

import pytest

from denseflow.cli.main import main
from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import (
    dataset_fingerprint,
    query_id,
    read_skip_above,
)
from denseflow.model.data.beir import DataError, RejectLog, load_beir
from denseflow.model.data.ingest import ingest, load_run_source
from denseflow.model.data.io import EVAL_LEAK, LINE_TOO_LONG, MALFORMED
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


def test_beir_ingest_counts_rows_and_holds_them_to_min_usable_share(tmp_path, tiny_beir_dir):
    """36 good rows among 1,000 garbage lines used to pass with a report saying 'rows: 0'."""
    clean = ingest(DataConfig(path=tiny_beir_dir), tmp_path / "clean")
    # 36 documents + 36 queries + 24 train and 12 test judgments; the qrels headers are not rows.
    assert (clean.report.rows, clean.report.usable_rows, clean.report.rejected_rows) == (108, 108, 0)
    assert json.loads((tmp_path / "clean" / "ingest_report.json").read_text())["usable_share"] == 1.0

    with (tiny_beir_dir / "corpus.jsonl").open("a") as out:
        out.writelines(f"garbage {i}\n" for i in range(1000))
    with pytest.raises(DataError, match=r"only 108 of 1108 rows usable \(9.7%\), below data.min_usable_share 80%"):
        ingest(DataConfig(path=tiny_beir_dir), tmp_path / "garbage")
    assert len((tmp_path / "garbage" / "rejects.jsonl").read_text().splitlines()) == 1000
    lenient = ingest(DataConfig(path=tiny_beir_dir, min_usable_share=0.05), tmp_path / "lenient")
    assert lenient.report.reject_reasons == {MALFORMED: 1000}


def test_retrain_preflight_applies_the_same_beir_limits(tiny_beir_dir):
    """retrain reads BEIR folders through model/data/ingest.load_run_source: the same line limit and usable-share floor."""
    with (tiny_beir_dir / "queries.jsonl").open("a") as out:
        out.write(json.dumps({"_id": "long", "text": "y" * 2000}) + "\n")
    rejects = RejectLog()
    loaded = load_run_source(DataConfig(path=tiny_beir_dir, max_line_bytes=1024), rejects)
    assert "long" not in loaded.dataset.queries
    assert rejects.counts() == {LINE_TOO_LONG: 1}
    with pytest.raises(DataError, match="below data.min_usable_share 100%"):
        load_run_source(DataConfig(path=tiny_beir_dir, max_line_bytes=1024, min_usable_share=1.0), RejectLog())


def test_cli_ingest_removes_evaluation_leaks_like_retrain(tmp_path, tiny_beir_dir, capsys):
    """A training query that is also a test query (by id or by text) never reaches the written train split."""
    test_text = load_beir(tiny_beir_dir, ["test"], RejectLog()).queries["heart-q4"]
    with (tiny_beir_dir / "queries.jsonl").open("a") as out:
        out.write(json.dumps({"_id": "copy2", "text": test_text.upper()}) + "\n")
    with (tiny_beir_dir / "qrels" / "train.tsv").open("a") as out:
        out.write("heart-q5\theart-d5\t1\ncopy2\theart-d4\t1\n")
    out_dir = tmp_path / "out"
    assert main(["ingest", "--source", "beir", "--path", str(tiny_beir_dir), "--out", str(out_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["leaked_queries_removed"] == 2
    train = load_beir(out_dir, ["train"], RejectLog()).qrels["train"]
    assert not {"heart-q5", "copy2"} & set(train)
    assert len(train) == 24
    rejected = [json.loads(line) for line in (out_dir / "rejects.jsonl").read_text().splitlines()]
    assert sorted(row["raw"] for row in rejected if row["reason"] == EVAL_LEAK) == ["copy2", "heart-q5"]


def test_cli_ingest_of_a_truncated_gzip_is_one_line(tmp_path, tiny_beir_dir, capsys):
    corpus = tiny_beir_dir / "corpus.jsonl"
    whole = gzip.compress(corpus.read_bytes() * 50)
    (tiny_beir_dir / "corpus.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    corpus.unlink()
    assert main(["ingest", "--source", "beir", "--path", str(tiny_beir_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "corpus.jsonl.gz: truncated or corrupt gzip file (EOFError" in err
