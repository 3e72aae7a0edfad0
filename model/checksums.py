"""sha256 of files, of folders and of a model folder: the one model checksum.

The same checksum names a model everywhere: in an index manifest (``model.checksum``, checked before a
published index is paired with the model that encodes queries) and in embedding cache keys. It is computed
from the per-file hashes, so a manifest's ``files`` map yields it without reading the model again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

_CHECKPOINT_PREFIX = "checkpoint-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``folder``, except the paths in ``skip``."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in skip
    }


def model_checksum(file_hashes: Mapping[str, str]) -> str:
    """One sha256 over a model folder's ``{relative path: sha256}`` (paths and contents, in path order)."""
    digest = hashlib.sha256()
    for rel, sha in sorted(file_hashes.items()):
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """The checksum of a saved model folder. Training checkpoints (``checkpoint-*``) are not the model:
    they are left out here as they are left out of a published index's ``model/`` copy."""
    files = folder_checksums(Path(model_dir))
    return model_checksum(
        {rel: sha for rel, sha in files.items() if not any(p.startswith(_CHECKPOINT_PREFIX) for p in rel.split("/"))}
    )
