"""The documents a published version indexes (id, title, text), so search answers with text, not bare ids.

One SQLite file beside ``index.faiss``, written once at publication and covered by the manifest's checksums like
every other file of the version; opened read-only (``immutable``) for serving, where a lookup of ten ids by
primary key costs microseconds. Pyserini's ``--hits`` with stored documents and Elasticsearch's ``_source``
play the same role.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

DOCS_FILE = "docs.sqlite"


def write_documents(path: Path, rows: Iterable[tuple[str, str, str]]) -> Path:
    """Write ``(doc_id, title, text)`` rows to a new SQLite file at ``path`` (whole or not at all)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    connection = sqlite3.connect(partial)
    try:
        connection.execute("CREATE TABLE documents (doc_id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL)")
        connection.executemany("INSERT INTO documents VALUES (?, ?, ?)", rows)
        connection.commit()
    finally:
        connection.close()
    os.replace(partial, path)
    return path


def read_full_texts(path: Path) -> Iterator[str]:
    """Every stored document's ``title + " " + text`` (what encoders and BM25 read), in the order written."""
    connection = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)
    try:
        for title, text in connection.execute("SELECT title, text FROM documents ORDER BY rowid"):
            yield f"{title} {text}".strip()
    finally:
        connection.close()


class DocumentStore:
    """Read-only lookups of stored documents by id; safe to share between the service's threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: stored documents not found")
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro&immutable=1", uri=True)
            self._local.connection = connection
        return connection

    def get_many(self, doc_ids: list[str]) -> dict[str, tuple[str, str]]:
        """``{doc_id: (title, text)}`` for the ids that are stored."""
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        rows = self._connection().execute(
            f"SELECT doc_id, title, text FROM documents WHERE doc_id IN ({marks})", doc_ids
        )
        return {doc_id: (title, text) for doc_id, title, text in rows}

    def count(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM documents").fetchone()[0])
