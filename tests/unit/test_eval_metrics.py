import json
import math

import pytest

from rag.eval.metrics import (
    RetrievalReport,
    dedupe_sources,
    first_hit_rank,
    gold_matches,
    mrr_at_k,
    percentiles,
    recall_at_k,
    token_f1,
)


def test_dedupe_keeps_first_occurrence_order() -> None:
    ranked = ["a.md#x", "b.md", "a.md#x", "c.md", "b.md", "a.md#y"]
    assert dedupe_sources(ranked) == ["a.md#x", "b.md", "c.md", "a.md#y"]


@pytest.mark.parametrize(
    ("gold", "retrieved", "expected"),
    [
        ("faq/faq.csv", "faq/faq.csv", True),
        ("faq/faq.csv", "faq/faq.csv#row-3", True),
        ("faq/faq.csv", "faq/faq.csv.bak", False),
        ("faq/faq.csv", "other/faq.csv", False),
        ("a.md#fees", "a.md#fees", True),
        ("a.md#fees", "a.md#fees-2", False),
        ("a.md#fees", "a.md", False),
        ("a.md#fees", "a.md#other", False),
        ("art/p3", "art/p3#s1", True),
        ("art/p3", "art/p30#s1", False),
        ("art/p3#s1", "art/p3#s2", False),
    ],
)
def test_gold_matches(gold: str, retrieved: str, expected: bool) -> None:
    assert gold_matches(gold, retrieved) is expected


def test_first_hit_rank_counts_over_deduped_ranking() -> None:
    # The two chunks of x.md take one rank, so the gold is 2nd, not 3rd.
    ranked = ["x.md#a", "x.md#a", "faq.csv#row-2", "y.md"]
    assert first_hit_rank(["faq.csv"], ranked) == 2


def test_first_hit_rank_takes_the_best_of_several_golds() -> None:
    ranked = ["z.md", "b.md#k", "a.md"]
    assert first_hit_rank(["a.md", "b.md"], ranked) == 2


def test_first_hit_rank_miss_is_none() -> None:
    assert first_hit_rank(["a.md#fees"], ["a.md#fees-2", "a.md"]) is None
    assert first_hit_rank(["a.md"], []) is None


def test_recall_and_mrr_on_known_ranks() -> None:
    ranks = [1, None, 3]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranks, 5) == pytest.approx(2 / 3)
    assert mrr_at_k(ranks, 10) == pytest.approx((1 + 1 / 3) / 3)


def test_mrr_ignores_hits_below_k() -> None:
    assert mrr_at_k([2, 11], 10) == pytest.approx(0.25)
    assert recall_at_k([10, 11], 10) == pytest.approx(0.5)


def test_empty_ranks_give_nan_not_zero() -> None:
    assert math.isnan(recall_at_k([], 5))
    assert math.isnan(mrr_at_k([], 10))


def test_token_f1_partial_overlap() -> None:
    # pred tokens {paris, france}, ref {paris}: precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)


def test_token_f1_strips_articles_punctuation_and_case() -> None:
    assert token_f1("The Eiffel tower!", "eiffel  tower") == 1.0


def test_token_f1_cyrillic_with_yo_and_guillemets() -> None:
    assert token_f1("«Ёлка» — зелёная", "елка зеленая") == 1.0
    # pred {в, москве, 1147}, ref {москве}: precision 1/3, recall 1 -> F1 0.5
    assert token_f1("в Москве, 1147", "Москве") == pytest.approx(0.5)


def test_token_f1_counts_repeated_tokens_once_per_match() -> None:
    # pred [x, x, y] vs ref [x, y, z]: the second x has no partner, so common = 2 -> P = R = 2/3
    assert token_f1("x x y", "x y z") == pytest.approx(2 / 3)


def test_token_f1_no_overlap_and_empty() -> None:
    assert token_f1("Берлин", "Москва") == 0.0
    assert token_f1("", "Москва") == 0.0
    assert token_f1("the", "") == 1.0  # both normalise to nothing


def test_percentiles_linear_interpolation() -> None:
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    result = percentiles(values)
    assert result == pytest.approx({"p50": 5.5, "p95": 9.55, "p99": 9.91})


def test_percentiles_custom_ps_keys() -> None:
    assert percentiles([3.0], ps=(0, 99.9)) == {"p0": 3.0, "p99.9": 3.0}


def test_percentiles_empty_is_nan() -> None:
    result = percentiles([])
    assert set(result) == {"p50", "p95", "p99"}
    assert all(math.isnan(v) for v in result.values())


def test_report_from_ranks_to_json() -> None:
    report = RetrievalReport.from_ranks([1, None, 3])
    data = report.to_json()
    assert set(data) == {"recall@1", "recall@5", "mrr@10", "n"}
    assert data["n"] == 3
    assert data["recall@1"] == pytest.approx(1 / 3)
    assert data["recall@5"] == pytest.approx(2 / 3)
    assert data["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    json.dumps(data)


def test_report_extras_are_added_but_cannot_override() -> None:
    report = RetrievalReport.from_ranks([1], extras={"dataset": "xquad-r-ru", "latency_ms": {"p50": 3.0}})
    assert report.to_json()["dataset"] == "xquad-r-ru"
    assert report.to_json()["recall@1"] == 1.0
    with pytest.raises(ValueError, match="recall@1"):
        RetrievalReport(n=1, recall_at_1=1.0, recall_at_5=1.0, mrr_at_10=1.0, extras={"recall@1": 0.0})
