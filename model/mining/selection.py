"""Mining, part 3: which of the surviving candidates become negatives.

- ``top`` (the default): the highest-ranked survivors. DPR trained on the top BM25 passage that is not a
  positive (Karpukhin et al., 2020); NV-Retriever's TopK-PercPos takes the top survivors of its teacher
  filter; sentence-transformers' ``mine_hard_negatives`` defaults to ``sampling_strategy="top"``.
- ``sampled``: uniform over the survivors of the rank window. Milder negatives (the expected rank sits in
  the middle of the window); kept for the study's old-setting control arm and for noisy collections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np

Selection = Literal["top", "sampled"]
T = TypeVar("T")


def select(survivors: Sequence[T], count: int, selection: Selection, rng: np.random.Generator) -> list[T]:
    """At most ``count`` of ``survivors`` (given best-ranked first), in rank order."""
    if count <= 0 or not survivors:
        return []
    if selection == "top":
        return list(survivors[:count])
    if selection == "sampled":
        picked = sorted(rng.choice(len(survivors), size=min(count, len(survivors)), replace=False))
        return [survivors[i] for i in picked]
    raise ValueError(f"unknown selection {selection!r} (top or sampled)")
