from rag.sparse import Bm25Encoder, average_length, term_id, tokenize


def test_russian_word_forms_meet_at_one_stem() -> None:
    assert len({*tokenize("карта"), *tokenize("карты"), *tokenize("картой"), *tokenize("карту")}) == 1


def test_yo_is_folded_and_stopwords_dropped() -> None:
    assert tokenize("ещё счёт") == tokenize("счет")
    assert tokenize("как и что") == []
    assert tokenize("what is the fee") == tokenize("fee")


def test_english_is_stemmed_with_the_english_stemmer() -> None:
    assert tokenize("transfers") == tokenize("transfer")


def test_numbers_and_mixed_tokens_are_kept() -> None:
    assert "152" in tokenize("152-ФЗ")
    assert "3g" in tokenize("3G")


def test_document_weights_saturate_and_normalise_by_length() -> None:
    enc = Bm25Encoder(avg_len=4)
    one = enc.encode_document("вклад")
    three = enc.encode_document("вклад вклад вклад")
    assert one.indices == three.indices
    assert three.values[0] > one.values[0]
    assert three.values[0] < 3 * one.values[0]  # term frequency saturates
    long_doc = enc.encode_document("вклад " + " ".join(f"слово{i}" for i in range(40)))
    pos = long_doc.indices.index(one.indices[0])
    assert long_doc.values[pos] < one.values[0]  # a long chunk weighs each term less


def test_query_vector_counts_each_term_once() -> None:
    q = Bm25Encoder().encode_query("вклад вклады вкладом ставка")
    assert sorted(q.indices) == q.indices
    assert q.values == [1.0, 1.0]
    assert set(q.indices) == {term_id("вклад"), term_id(tokenize("ставка")[0])}


def test_average_length() -> None:
    assert average_length(["вклад ставка", "карта"]) == 1.5
    assert average_length([]) > 0


def test_stopwords_with_yo_are_dropped() -> None:
    assert tokenize("моё всё") == []
