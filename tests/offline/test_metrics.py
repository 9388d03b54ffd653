"""Ranking metrics against hand-computed values (Recommenders' definitions)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.offline.evaluation import metrics


def _rel(rows: list[list[int]], n_items: int = 10) -> sp.csr_matrix:
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [x for row in rows for x in row]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def test_hand_computed_values():
    # user 0: relevant {1, 3, 7}; recommended [1, 2, 3, -1] at k=4 -> hits at ranks 1 and 3.
    # user 1: relevant {5}; recommended [0, 2, 4, 6] -> no hit.
    rec = np.array([[1, 2, 3, -1], [0, 2, 4, 6]])
    rel = _rel([[1, 3, 7], [5]])
    per = metrics.ranking_metrics(rec, rel, k=4)
    assert per["precision"] == pytest.approx([2 / 4, 0.0])
    assert per["recall"] == pytest.approx([2 / 3, 0.0])
    dcg = 1 / math.log(2) + 1 / math.log(4)
    idcg = 1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)
    assert per["ndcg"] == pytest.approx([dcg / idcg, 0.0])
    # AP normalised by all relevant items (3), not by min(k, 3).
    assert per["map"] == pytest.approx([(1 / 1 + 2 / 3) / 3, 0.0])
    assert per["hit_rate"] == pytest.approx([1.0, 0.0])
    assert per["mrr"] == pytest.approx([1.0, 0.0])


def test_ideal_dcg_caps_at_k_and_perfect_ranking_scores_one():
    rec = np.array([[4, 3, 2]])
    rel = _rel([[2, 3, 4, 5, 6]])
    per = metrics.ranking_metrics(rec, rel, k=3)
    assert per["ndcg"][0] == pytest.approx(1.0)
    assert per["precision"][0] == pytest.approx(1.0)
    assert per["recall"][0] == pytest.approx(3 / 5)
    assert per["mrr"][0] == pytest.approx(1.0)


def test_late_first_hit_mrr_and_short_lists_count_against_precision():
    rec = np.array([[9, 8, 1]])
    per = metrics.ranking_metrics(rec, _rel([[1]]), k=5)
    assert per["mrr"][0] == pytest.approx(1 / 3)
    assert per["precision"][0] == pytest.approx(1 / 5)


def test_users_without_relevant_items_are_nan_and_ignored_by_summary():
    rec = np.array([[1, 2], [1, 2]])
    per = metrics.ranking_metrics(rec, _rel([[1], []]), k=2)
    assert np.isnan(per["ndcg"][1])
    assert metrics.summarize(per)["ndcg"] == pytest.approx(1.0)


def test_row_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.ranking_metrics(np.zeros((3, 2), int), _rel([[1]]), k=2)


def test_coverage_and_novelty():
    rec = np.array([[0, 1], [1, -1]])
    assert metrics.coverage(rec, n_items=4, k=2) == pytest.approx(0.5)
    # item 0 seen by 1 of 4 users (2 bits), item 1 by 4 of 4 (0 bits).
    nov = metrics.novelty(rec, item_users=np.array([1, 4, 0, 0]), n_users=4, k=2)
    assert nov == pytest.approx([1.0, 0.0])


def test_evaluate_recommendations_keys_and_means():
    rec = np.array([[1, 2], [3, 4]])
    means, per = metrics.evaluate_recommendations(
        rec, _rel([[1], [4]]), k=2, item_users=np.ones(10), n_train_users=2
    )
    assert set(per) == {f"{m}@2" for m in metrics.PER_USER_METRICS} | {"novelty@2"}
    assert means["hit_rate@2"] == pytest.approx(1.0)
    assert means["precision@2"] == pytest.approx(0.5)
    assert means["coverage@2"] == pytest.approx(0.4)


def test_history_length_buckets_used_for_segments():
    from features.history import length_bucket_labels, length_buckets

    assert length_bucket_labels() == ["0", "1-4", "5-19", "20+"]
    assert length_buckets(np.array([0, 1, 4, 5, 19, 20, 300])).tolist() == [0, 1, 1, 2, 2, 3, 3]
