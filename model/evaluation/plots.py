"""Plots people would rather see than read; PNG files, drawn without a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

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


def plot_negatives(series: Mapping[str, Sequence], path: Path, title: str) -> Path:
    """Chosen negatives, one line per series: their miner ranks, and their teacher score over the positive's.

    ``series`` maps a label to a list of :class:`denseflow.model.mining.negatives.TrainExample`. Random
    negatives have no rank and appear only in the right panel; without a teacher the right panel is empty.
    """
    from denseflow.model.mining.negatives import teacher_ratios

    figure, (ranks_axes, ratio_axes) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for label, examples in series.items():
        ranks = [neg.rank for example in examples for neg in example.negatives if neg.rank is not None]
        if ranks:
            bins = np.arange(0.5, max(ranks) + 1.5, max(1, (max(ranks) + 1) // 50))
            ranks_axes.hist(ranks, bins=bins, histtype="step", linewidth=1.6, label=f"{label} ({len(ranks)})")
        ratios = teacher_ratios(examples)
        if ratios:
            ratio_axes.hist(ratios, bins=40, histtype="step", linewidth=1.6, label=f"{label} ({len(ratios)})")
    ranks_axes.set_xlabel("miner rank of the chosen negative")
    ranks_axes.set_ylabel("negatives")
    ratio_axes.set_xlabel("teacher score: negative / positive")
    for axes in (ranks_axes, ratio_axes):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_dev_selection(
    steps: Sequence[tuple[int, float]],
    alphas: Sequence[tuple[float, float]],
    path: Path,
    title: str,
    used_step: int | None = None,
    used_alpha: float | None = None,
) -> Path:
    """The two choices made on dev: nDCG@10 by training step (the checkpoint), and by WiSE-FT α (the merge), each
    marked where the run's choice fell: the prior unless dev's paired test overruled it, so not always the top."""
    figure, (by_step, by_alpha) = plt.subplots(1, 2, figsize=(10, 3.8))
    if steps:
        by_step.plot([s for s, _ in steps], [v for _, v in steps], marker="o")
        if used_step is not None:
            by_step.axvline(used_step, color="grey", linestyle=":", label=f"used step {used_step}")
            by_step.legend()
    by_step.set(xlabel="training step (0 = base model)", ylabel="dev nDCG@10 (candidate corpus)", title="checkpoint")
    if alphas:
        by_alpha.plot([a for a, _ in alphas], [v for _, v in alphas], marker="o", color="tab:orange")
        if used_alpha is not None:
            by_alpha.axvline(used_alpha, color="grey", linestyle=":", label=f"used α {used_alpha:g}")
            by_alpha.legend()
    by_alpha.set(xlabel="α (0 = base model, 1 = fine-tuned)", ylabel="dev nDCG@10 (candidate corpus)", title="merge")
    for axis in (by_step, by_alpha):
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
