from __future__ import annotations

from denseflow.model.evaluation.query_depth import QueryDepthRow, query_depth_choice, query_depth_table

ROWS = [
    QueryDepthRow(2, 0.700, 0.690, 0.650, 1.1),
    QueryDepthRow(3, 0.718, 0.705, 0.670, 1.6),
    QueryDepthRow(6, 0.720, 0.712, 0.680, 2.9),
]


def test_the_choice_record_names_the_shallowest_depth_within_the_tolerance_and_dev_best() -> None:
    choice = query_depth_choice(ROWS, 6, 0.005, can_choose=True, dev_split="dev", dev_queries=120)
    assert (choice.used, choice.prior, choice.dev_winner, choice.queries) == ("3", "6", "6", 120)


def test_a_small_dev_split_keeps_the_full_tower_and_says_why() -> None:
    choice = query_depth_choice(ROWS, 6, 0.03, can_choose=False, dev_split="dev", dev_queries=40)
    assert choice.used == "6"
    assert "too few dev queries" in choice.reason


def test_without_dev_the_full_tower_ships() -> None:
    rows = [QueryDepthRow(row.layers, None, row.test_ndcg, row.test_unseen_ndcg, None) for row in ROWS]
    choice = query_depth_choice(rows, 6, 0.03, can_choose=True, dev_split=None, dev_queries=0)
    assert choice.used == "6"
    assert "no dev split" in choice.reason


def test_a_row_logs_only_the_figures_it_has() -> None:
    assert QueryDepthRow(3, None, 0.7, None, None).metrics() == {"test_served_ndcg_at_10": 0.7}


def test_the_table_marks_the_depth_that_ships_and_shows_missing_figures_as_dashes() -> None:
    table = query_depth_table([*ROWS[:2], QueryDepthRow(6, None, 0.712, None, None)], 3, "3 layers: within")
    assert "| 3 (ships) | 0.7180 |" in table
    assert "| 6 | – | 0.7120 | – | – |" in table
