"""BM25 term weights as Qdrant sparse vectors.

Qdrant's IDF modifier supplies the inverse document frequency at query time, so a stored
vector carries only the BM25 term-frequency part, tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)),
and a query vector carries 1 per distinct term. Words are stemmed with the Snowball
stemmer of their script (Russian for Cyrillic, English for Latin), so «карты», «картой» and
«карту» meet at one term. Terms are hashed to 31-bit ids: collisions are rare enough at a
knowledge base's vocabulary size and keep the encoder stateless.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CYRILLIC = re.compile(r"[а-яё]")

# Function words that carry no topic; IDF would mostly discount them anyway, but removing
# them keeps question words («как», «сколько», "how") from matching every passage.
_STOPWORD_TEXT = """
какой какая какое какие каких каким какую сколько хочу хотел хотела хотим нужно нужен нужна нужны
скажите подскажите пожалуйста подскажи скажи вообще просто очень также ещё либо мой моя мои моё свой
what's whats i'm im does doesn't don't please tell need want much many any some
и в во не что он на я с со как а то все она так его но да ты к у же вы за бы по только ее мне
было вот от меня еще нет о из ему теперь когда даже ну вдруг ли если уже или ни быть был него
до вас нибудь опять уж вам ведь там потом себя ничего ей может они тут где есть надо ней для мы
тебя их чем была сам чтоб без будто чего раз тоже себе под будет ж тогда кто этот того потому
этого какой совсем ним здесь этом один почти мой тем чтобы нее сейчас были куда зачем всех
никогда можно при наконец два об другой хоть после над больше тот через эти нас про всего них
какая много разве три эту моя впрочем хорошо свою этой перед иногда лучше чуть том нельзя такой
им более всегда конечно всю между это ли бы a an the and or but if of to in on at by for with
about as into from is are was were be been being do does did have has had i you he she it we
they me my your our their this that these those what which who whom how why when where there
here can could would should will shall may might must not no so than too very just s t
"""
# Folded like the text they are matched against («моё» → «мое»).
_STOPWORDS = frozenset(_STOPWORD_TEXT.replace("ё", "е").split())

# Bump when tokenisation or weighting changes: stored document vectors of another version
# would silently disagree with the queries.
ENCODER_VERSION = "bm25-snowball-1"


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@lru_cache(maxsize=1)
def _stemmers() -> tuple[snowballstemmer.stemmer, snowballstemmer.stemmer]:
    return snowballstemmer.stemmer("russian"), snowballstemmer.stemmer("english")


def tokenize(text: str) -> list[str]:
    """Lower-cased, ё→е, stop words dropped, each word stemmed by its own script."""
    ru, en = _stemmers()
    out: list[str] = []
    for word in _WORD.findall(text.lower().replace("ё", "е")):
        if word in _STOPWORDS:
            continue
        if _CYRILLIC.search(word):
            out.append(ru.stemWord(word))
        elif word.isascii() and word.isalpha():
            out.append(en.stemWord(word))
        else:
            out.append(word)  # numbers and mixed tokens («3g», «152-фз» parts) stay as they are
    return out


def term_id(term: str) -> int:
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


class Bm25Encoder:
    """Turns text into BM25 sparse vectors for documents and queries."""

    def __init__(self, *, avg_len: float = 64.0, k1: float = 1.2, b: float = 0.75) -> None:
        if avg_len <= 0:
            raise ValueError("avg_len must be positive")
        self.avg_len, self.k1, self.b = avg_len, k1, b

    def encode_document(self, text: str) -> SparseVector:
        terms = tokenize(text)
        counts = Counter(term_id(t) for t in terms)
        norm = self.k1 * (1 - self.b + self.b * len(terms) / self.avg_len)
        ids = sorted(counts)
        return SparseVector(ids, [counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in ids])

    def encode_query(self, text: str) -> SparseVector:
        ids = sorted({term_id(t) for t in tokenize(text)})
        return SparseVector(ids, [1.0] * len(ids))


def average_length(texts: list[str]) -> float:
    """The mean token count a collection's BM25 length normalisation is fixed to."""
    if not texts:
        return 64.0
    return max(1.0, sum(len(tokenize(t)) for t in texts) / len(texts))
