from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from denseflow.model.evaluation import plots


def test_dev_selection_marks_the_alpha_and_step_used_not_the_dev_best(tmp_path: Path, monkeypatch) -> None:
    # The prior α 0.5 kept over dev's best 0.2 (no significant difference) must be drawn as the one used.
    legends: list[str] = []
    close = plt.close

    def record_then_close(figure) -> None:
        legends.extend(text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().texts)
        close(figure)

    monkeypatch.setattr(plots.plt, "close", record_then_close)
    path = plots.plot_dev_selection(
        [(0, 0.68), (13, 0.66), (52, 0.63)],
        [(0.0, 0.68), (0.2, 0.69), (0.5, 0.678), (1.0, 0.66)],
        tmp_path / "selection.png",
        "choices",
        used_step=52,
        used_alpha=0.5,
    )
    assert path.stat().st_size > 0
    assert legends == ["used step 52", "used α 0.5"]


@pytest.mark.parametrize("curves", [([], []), ([(0, 0.5)], [])])
def test_dev_selection_draws_whatever_curves_a_run_has(tmp_path: Path, curves) -> None:
    path = plots.plot_dev_selection(*curves, tmp_path / "selection.png", "choices")
    assert path.is_file()
