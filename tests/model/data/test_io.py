"""Reading rows: CSV and JSONL read alike, ragged rows are rejected, a BOM is dropped, a cut .gz is one error."""

from __future__ import annotations

import csv
import gzip

import pytest

from denseflow.model.data import io as reasons
from denseflow.model.data.assemble import (
    query_id,
)
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.data.clicks import load_clicks
from tests.click_logs import click_config, page, write_jsonl


def test_csv_log_reads_like_jsonl_and_rejects_ragged_rows(tmp_path, tiny_beir_dir):
    rows = page("gene mutation", ["gene-d0", "gene-d1", "gene-d2"], {2: 70.0}, "i1")
    rows += page("gene mutation", ["gene-d0", "gene-d1"], {2: 70.0}, "i2")
    jsonl = write_jsonl(tmp_path / "clicks.jsonl", rows)
    csv_path = tmp_path / "clicks.csv.gz"
    with gzip.open(csv_path, "wt", newline="") as out:
        writer = csv.DictWriter(out, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        out.write("gene mutation,gene-d2\n")
    from_json = load_clicks(click_config(jsonl, tiny_beir_dir), RejectLog())
    rejects = RejectLog()
    config = click_config(csv_path, tiny_beir_dir).model_copy(update={"min_usable_share": 0.5})
    from_csv = load_clicks(config, rejects)
    assert from_csv.fingerprint == from_json.fingerprint
    assert from_csv.skip_above == from_json.skip_above == {query_id("gene mutation"): ["gene-d0"]}
    assert [(r["line"], r["reason"]) for r in rejects.rows] == [(7, reasons.MALFORMED)]


def test_a_utf8_bom_at_the_start_of_a_file_is_not_part_of_the_first_row(tmp_path):
    """Windows editors start files with a byte order mark; json.loads refuses it, so the first row was rejected."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "d1", "text": "first"}\n{"_id": "d2", "text": "\xef\xbb\xbf kept inside"}\n')
    rejects = RejectLog()
    rows = [row for _, row in reasons.iter_jsonl(path, rejects)]
    assert rows[0] == {"_id": "d1", "text": "first"}
    assert rows[1]["text"] == "\ufeff kept inside"  # only the file's first bytes are a BOM
    assert rejects.rows == []


def test_a_truncated_gzip_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    whole = gzip.compress(b"".join(b'{"_id": "d%d", "text": "row %d"}\n' % (i, i) for i in range(2000)))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(reasons.DataError, match=r"corpus.jsonl.gz: truncated or corrupt gzip file \(EOFError"):
        list(reasons.iter_lines(path, RejectLog()))
    path.write_bytes(b"not gzip at all\n")
    with pytest.raises(reasons.DataError, match="corpus.jsonl.gz: truncated or corrupt gzip file"):
        list(reasons.iter_lines(path, RejectLog()))


def test_reject_reasons_are_constant_so_counts_group_by_reason(tmp_path):
    """Ids and details go to ``raw``: two unknown ids are one reason counted twice, not two reasons."""
    folder = tmp_path / "beir"
    folder.mkdir()
    write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "text": "a"}, "{bad", "[1]"])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\nq8\td1\t1\nq9\td1\t1\nq1\td7\t1\nq1\td1\nq1\td1\tx\n")
    rejects = RejectLog()
    load_beir(folder, ["test"], rejects)
    assert set(rejects.counts()) <= set(reasons.REASONS)
    assert rejects.counts() == {
        reasons.MALFORMED: 3,
        reasons.DUPLICATE_ID: 1,
        reasons.UNKNOWN_QUERY: 2,
        reasons.UNKNOWN_DOC: 1,
        reasons.BAD_SCORE: 1,
    }
    assert [row["raw"] for row in rejects.rows if row["reason"] == reasons.UNKNOWN_QUERY] == ["q8\td1\t1", "q9\td1\t1"]
