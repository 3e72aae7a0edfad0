"""Plots people would rather see than read; PNG files, drawn without a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def plot_recall_curves(curves: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Recall@k for k = 1..len(curve), one line per system, k on a log axis."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, label=label, linewidth=1.8)
    axes.set_xscale("log")
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
