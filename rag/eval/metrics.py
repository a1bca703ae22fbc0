"""Retrieval and answer metrics. Pure functions: no I/O, no models.

Ranks are 1-based positions of the first relevant source in a deduplicated ranking; ``None``
means the gold was not retrieved at all. Averages over an empty list are NaN, not 0, so an
empty run never looks like a measured zero.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Rank = int | None


def dedupe_sources(retrieved_source_ids: Sequence[str]) -> list[str]:
    """Merge chunks that share a source id; each source keeps the rank of its best chunk."""
    return list(dict.fromkeys(retrieved_source_ids))


def gold_matches(gold: str, retrieved: str) -> bool:
    """True if ``retrieved`` is ``gold`` or, when gold names a whole file, a fragment of it.

    ``faq/faq.csv`` matches ``faq/faq.csv#row-3``; ``a.md#fees`` matches only itself; the
    XQuAD-R paragraph id ``art/p3`` matches its sentences ``art/p3#s1``.
    """
    if retrieved == gold:
        return True
    return "#" not in gold and retrieved.partition("#")[0] == gold


def first_hit_rank(golds: Iterable[str], ranked_sources: Sequence[str]) -> Rank:
    """1-based rank of the first retrieved source that matches any gold, over the deduped ranking."""
    gold_ids = tuple(golds)
    for rank, source in enumerate(dedupe_sources(ranked_sources), start=1):
        if any(gold_matches(gold, source) for gold in gold_ids):
            return rank
    return None


def recall_at_k(ranks: Sequence[Rank], k: int) -> float:
    """Share of questions whose gold is within the top ``k``."""
    return _mean([1.0 if r is not None and r <= k else 0.0 for r in ranks])


def mrr_at_k(ranks: Sequence[Rank], k: int) -> float:
    """Mean reciprocal rank, counting a hit below ``k`` as a miss."""
    return _mean([1.0 / r if r is not None and r <= k else 0.0 for r in ranks])


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


# --- answer text --------------------------------------------------------------------------------

_ENGLISH_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> list[str]:
    """SQuAD-style tokens: lowercase, ё->е, no punctuation, no English articles, split on whitespace."""
    text = text.lower().replace("ё", "е")
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    return _ENGLISH_ARTICLES.sub(" ", text).split()


def _is_punctuation(ch: str) -> bool:
    # Unicode punctuation as in MLQA's multilingual evaluation (so «», —, … go too), plus ASCII
    # string.punctuation, which also holds the symbols $ + < = > ^ ` | ~ that SQuAD strips.
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 between an answer and the reference, as in the SQuAD evaluation script.

    When either side normalises to no tokens, the score is 1.0 only if both do (SQuAD 2.0 rule).
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Percentiles by linear interpolation between closest ranks (numpy's default method).

    Keys are ``p50``, ``p95``, ``p99.9``...; an empty input gives NaN for every key.
    """
    data = np.asarray(list(values), dtype=float)
    keys = [f"p{p:g}" for p in ps]
    if data.size == 0:
        return dict.fromkeys(keys, math.nan)
    results = np.percentile(data, list(ps), method="linear")
    return {key: float(v) for key, v in zip(keys, results, strict=True)}


_REPORT_KEYS = frozenset({"n", "recall@1", "recall@5", "mrr@10"})


@dataclass
class RetrievalReport:
    """Headline retrieval numbers for one run; ``extras`` adds keys to the JSON (latency, name...)."""

    n: int
    recall_at_1: float
    recall_at_5: float
    mrr_at_10: float
    extras: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = _REPORT_KEYS & self.extras.keys()
        if clash:
            raise ValueError(f"extras must not override report keys: {sorted(clash)}")

    @classmethod
    def from_ranks(cls, ranks: Sequence[Rank], extras: Mapping[str, object] | None = None) -> RetrievalReport:
        return cls(
            n=len(ranks),
            recall_at_1=recall_at_k(ranks, 1),
            recall_at_5=recall_at_k(ranks, 5),
            mrr_at_10=mrr_at_k(ranks, 10),
            extras=dict(extras or {}),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "recall@1": self.recall_at_1,
            "recall@5": self.recall_at_5,
            "mrr@10": self.mrr_at_10,
            "n": self.n,
            **self.extras,
        }
