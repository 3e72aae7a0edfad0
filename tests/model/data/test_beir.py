"""BEIR ingestion: every bad row is rejected with file, line, field and reason; nothing good is lost."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from denseflow.model.data.beir import (
    DataError,
    RejectLog,
    assert_no_leak,
    bundled_scifact_dir,
    fingerprint,
    load_beir,
    remove_evaluation_leaks,
    write_beir,
)
from denseflow.model.data.io import (
    BAD_SCORE,
    DUPLICATE_ID,
    DUPLICATE_JUDGMENT,
    EMPTY_TEXT,
    EVAL_LEAK,
    LINE_TOO_LONG,
    MALFORMED,
    MISSING_FIELD,
    NOT_UTF8,
    UNKNOWN_DOC,
    UNKNOWN_QUERY,
)


def write_lines(path: Path, lines: list[str | bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for line in lines:
            out.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


def test_tiny_dataset_loads_clean(tiny_beir_dir):
    rejects = RejectLog()
    dataset = load_beir(tiny_beir_dir, ["train", "test"], rejects)
    assert (len(dataset.corpus), len(dataset.queries), len(rejects)) == (36, 36, 0)
    assert len(dataset.qrels["train"]) == 24
    assert len(dataset.qrels["test"]) == 12


def test_every_bad_row_is_rejected_with_its_reason(tmp_path):
    folder = tmp_path / "bad"
    write_lines(
        folder / "corpus.jsonl",
        [
            json.dumps({"_id": "d1", "title": "t", "text": "good one"}),
            "{not json",
            json.dumps({"title": "no id", "text": "x"}),
            json.dumps({"_id": "d2", "title": "no text"}),
            json.dumps({"_id": "d3", "title": " ", "text": "  "}),
            json.dumps({"_id": "d1", "title": "dup", "text": "again"}),
            b'{"_id": "d4", "text": "caf\xe9"}',
            json.dumps(["a", "list"]),
            json.dumps({"_id": "d5", "text": "\ufffd is a real character, not a decoding error"}),
        ],
    )
    write_lines(
        folder / "queries.jsonl",
        [json.dumps({"_id": "q1", "text": "query one"}), json.dumps({"_id": "q2", "text": ""})],
    )
    write_lines(
        folder / "qrels" / "test.tsv",
        ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q9\td1\t1", "q1\td9\t1", "q1\td5\tone", "q1\td5", "q1\td1\t1"],
    )
    rejects = RejectLog()
    dataset = load_beir(folder, ["test"], rejects)

    assert set(dataset.corpus) == {"d1", "d5"}
    assert dataset.qrels["test"] == {"q1": {"d1": 1}}
    reasons = [(Path(row["file"]).name, row["line"], row["field"], row["reason"]) for row in rejects.rows]
    assert reasons == [
        ("corpus.jsonl", 2, None, MALFORMED),
        ("corpus.jsonl", 3, "_id", MISSING_FIELD),
        ("corpus.jsonl", 4, "text", MISSING_FIELD),
        ("corpus.jsonl", 5, "text", EMPTY_TEXT),
        ("corpus.jsonl", 6, "_id", DUPLICATE_ID),
        ("corpus.jsonl", 7, None, NOT_UTF8),
        ("corpus.jsonl", 8, None, MALFORMED),
        ("queries.jsonl", 2, "text", EMPTY_TEXT),
        ("test.tsv", 3, "query-id", UNKNOWN_QUERY),
        ("test.tsv", 4, "corpus-id", UNKNOWN_DOC),
        ("test.tsv", 5, "score", BAD_SCORE),
        ("test.tsv", 6, None, MALFORMED),
        ("test.tsv", 7, "corpus-id", DUPLICATE_JUDGMENT),
    ]
    written = rejects.write(tmp_path / "rejects.jsonl").read_text().splitlines()
    assert len(written) == 13
    assert json.loads(written[0])["raw"].endswith(": {not json")
    assert json.loads(written[5])["raw"].startswith("byte 26: ")


def test_gzipped_files_are_read(tiny_beir_dir, tmp_path):
    folder = tmp_path / "gz"
    shutil.copytree(tiny_beir_dir, folder)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
        (folder / name).unlink()
    dataset = load_beir(folder, ["train"], RejectLog())
    assert len(dataset.corpus) == 36


def test_missing_file_and_empty_result_name_the_path(tmp_path, tiny_beir_dir):
    with pytest.raises(DataError, match="not-there: dataset folder not found"):
        load_beir(tmp_path / "not-there", ["test"], RejectLog())
    with pytest.raises(DataError, match=r"qrels/dev.tsv: file not found"):
        load_beir(tiny_beir_dir, ["dev"], RejectLog())
    (tiny_beir_dir / "corpus.jsonl").write_text("{broken\n")
    with pytest.raises(DataError, match=r"corpus.jsonl: no usable documents"):
        load_beir(tiny_beir_dir, ["test"], RejectLog())


def test_evaluation_queries_never_reach_training(tiny_beir_dir):
    rejects = RejectLog()
    dataset = load_beir(tiny_beir_dir, ["train", "test"], rejects)
    # Leak one test query into train by id, and one by text under another id.
    dataset.qrels["train"]["heart-q4"] = {"heart-d0": 1}
    dataset.queries["copy"] = dataset.queries["brain-q5"].upper()
    dataset.qrels["train"]["copy"] = {"brain-d0": 1}
    with pytest.raises(DataError, match="2 training queries|1 training queries"):
        assert_no_leak(dataset.qrels["train"], dataset, "test")

    removed = remove_evaluation_leaks(dataset, "train", ["test"], rejects)

    assert removed == 2
    assert not {"heart-q4", "copy"} & set(dataset.qrels["train"])
    assert_no_leak(dataset.qrels["train"], dataset, "test")
    assert [row["reason"] for row in rejects.rows] == [EVAL_LEAK] * 2


def test_written_dataset_reads_back_with_the_same_fingerprint(tiny_beir_dir, tmp_path):
    dataset = load_beir(tiny_beir_dir, ["train", "test"], RejectLog())
    copy = load_beir(write_beir(dataset, tmp_path / "copy"), ["train", "test"], RejectLog())
    assert fingerprint(copy) == fingerprint(dataset)
    copy.queries["heart-q0"] += " changed"
    assert fingerprint(copy) != fingerprint(dataset)


def test_bundled_scifact_is_complete():
    rejects = RejectLog()
    dataset = load_beir(bundled_scifact_dir(), ["train", "test"], rejects)
    assert (len(dataset.corpus), len(dataset.queries), len(rejects)) == (5183, 1109, 0)
    assert (len(dataset.qrels["train"]), len(dataset.qrels["test"])) == (809, 300)


def test_lines_over_max_line_bytes_are_rejected_unread(tiny_beir_dir):
    """A 5 MB corpus line used to be parsed whole: BEIR files now honour data.max_line_bytes like every source."""
    huge = json.dumps({"_id": "huge", "title": "", "text": "x" * 5_000_000})
    with (tiny_beir_dir / "corpus.jsonl").open("a") as out:
        out.write(huge + "\n")
    rejects = RejectLog()
    dataset = load_beir(tiny_beir_dir, ["test"], rejects, max_line_bytes=1_048_576)
    assert "huge" not in dataset.corpus
    assert [(Path(row["file"]).name, row["line"], row["reason"]) for row in rejects.rows] == [
        ("corpus.jsonl", 37, LINE_TOO_LONG)
    ]
    assert len(rejects.rows[0]["raw"]) <= 200
    assert "huge" in load_beir(tiny_beir_dir, ["test"], RejectLog()).corpus  # no limit given: read whole
