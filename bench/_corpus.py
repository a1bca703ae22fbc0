"""Generated text for synthetic corpora: words drawn from the sample knowledge base's own vocabulary.

Words are sampled per language with the frequencies they have in ``examples/kb`` (so BM25
sees a realistic mix of frequent and rare terms, stop words included), and chunk lengths are
sampled from the KB's real chunk lengths; the Russian/English mix is the KB's too. The text
is word salad — fine for timing, meaningless for quality.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

from _common import REPO

from rag.chunking import chunk_document
from rag.parsing import SUPPORTED_SUFFIXES, parse_file

KB = REPO / "examples" / "kb"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)


class KbVocabulary:
    def __init__(self, seed: int) -> None:
        words: dict[str, Counter[str]] = {"ru": Counter(), "en": Counter()}
        lengths: dict[str, list[int]] = {"ru": [], "en": []}
        for path in sorted(KB.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            doc = parse_file(path, max_bytes=50 << 20)
            for chunk in chunk_document(doc, doc_id=path.relative_to(KB).as_posix()):
                lang = "en" if chunk.language == "en" else "ru"
                tokens = _WORD.findall(chunk.text)
                lengths[lang].append(len(tokens))
                words[lang].update(t.lower() for t in tokens if bool(_CYRILLIC.search(t)) == (lang == "ru"))
        self.rng = random.Random(seed)
        self._vocab = {lang: list(c) for lang, c in words.items()}
        self._cum = {lang: list(itertools.accumulate(c.values())) for lang, c in words.items()}
        self._lengths = lengths
        self.ru_share = len(lengths["ru"]) / (len(lengths["ru"]) + len(lengths["en"]))
        self.vocab_size = {lang: len(v) for lang, v in self._vocab.items()}
        self.mean_words = {lang: sum(v) / len(v) for lang, v in lengths.items()}

    def language(self) -> str:
        return "ru" if self.rng.random() < self.ru_share else "en"

    def words(self, lang: str, n: int) -> list[str]:
        return self.rng.choices(self._vocab[lang], cum_weights=self._cum[lang], k=n)

    def phrase(self, lang: str, n: int = 3) -> str:
        return " ".join(self.words(lang, n)).capitalize()

    def sentences(self, lang: str, n_words: int) -> str:
        """About ``n_words`` words cut into sentences of 6–16 words."""
        tokens = self.words(lang, n_words)
        out, i = [], 0
        while i < len(tokens):
            n = self.rng.randint(6, 16)
            out.append(" ".join(tokens[i : i + n]).capitalize() + ".")
            i += n
        return " ".join(out)

    def chunk_text(self, lang: str) -> str:
        """A chunk as long as a real KB chunk of that language (length sampled from the KB)."""
        return self.sentences(lang, self.rng.choice(self._lengths[lang]))
