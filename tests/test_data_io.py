"""Reading rows: CSV and JSONL read alike, ragged rows are rejected."""

from __future__ import annotations

import csv
import gzip

from denseflow.model.data import io as reasons
from denseflow.model.data.assemble import (
    query_id,
)
from denseflow.model.data.beir import RejectLog
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
