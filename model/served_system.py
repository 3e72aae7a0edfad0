"""What search serves for a registered version, as one typed record: the registry holds it, publication, the
gate and ``denseflow compare`` read it, ``denseflow models show`` prints it, and a published index's manifest
carries it beside the index version.

A version's figures are those of a *system*: its query tower, the document tower's corpus embeddings at a given
length, BM25 with a given analyzer and k1/b, and the fusion method and weight that join the two. Scattered tags
named some of these; a search built from them could not reproduce the registered figure. The record is written
as a version tag (``served.system``, JSON) and as the artifact ``<model>_served_system.json`` of the version's run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from denseflow.model.index.bm25 import LEGACY_BM25, BM25Settings

SCHEMA_VERSION = 1
# What versions registered before the record existed were evaluated with.
LEGACY_DOCUMENT_LENGTH = 128


class ServedSystemError(ValueError):
    """A served-system record that this version of denseflow cannot read."""


@dataclass(frozen=True)
class ServedSystem:
    mode: Literal["dense", "hybrid"]
    fusion_method: str
    fusion_weight: float
    bm25: BM25Settings
    query_max_seq_length: int
    document_max_seq_length: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self) | {"bm25": self.bm25.describe(), "schema": SCHEMA_VERSION}
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedSystem:
        if data.get("schema") != SCHEMA_VERSION:
            raise ServedSystemError(
                f"served-system record schema {data.get('schema')!r}; this denseflow reads schema {SCHEMA_VERSION}"
            )
        try:
            bm25 = data["bm25"]
            return cls(
                mode=data["mode"],
                fusion_method=data["fusion_method"],
                fusion_weight=float(data["fusion_weight"]),
                bm25=BM25Settings.from_tokenizer(bm25["tokenizer"], float(bm25["k1"]), float(bm25["b"])),
                query_max_seq_length=int(data["query_max_seq_length"]),
                document_max_seq_length=int(data["document_max_seq_length"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ServedSystemError(f"served-system record unreadable: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> ServedSystem:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ServedSystemError(f"served-system record is not JSON: {err}") from err

    @classmethod
    def legacy(cls, mode: str, method: str, weight: float) -> ServedSystem:
        """A version registered before the record: BM25 unstemmed (k1 1.5, b 0.75), documents at 128 tokens."""
        return cls(
            "hybrid" if mode == "hybrid" else "dense",
            method,
            weight,
            LEGACY_BM25,
            LEGACY_DOCUMENT_LENGTH,
            LEGACY_DOCUMENT_LENGTH,
        )
