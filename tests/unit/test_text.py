from rag.text import normalize_text, slugify


def test_nfkc_folds_compatibility_forms() -> None:
    assert normalize_text("ﬁle № 1\u00a0000") == "file No 1 000"


def test_removes_zero_width_and_bidi_characters() -> None:
    hidden = "па\u200bро\u200cль\u200d \u2060is\ufeff \u200eсек\u200fрет \u202aa\u202eb\u2066c\u2069"
    assert normalize_text(hidden) == "пароль is секрет abc"


def test_strips_control_characters_but_keeps_newlines_and_tabs() -> None:
    assert normalize_text("a\x00b\x07c\td\ne\x1b") == "abc\td\ne"


def test_collapses_spaces_and_blank_runs_but_keeps_paragraphs() -> None:
    text = "Первый   абзац.  \r\n\r\n\r\n\n   \nВторой\tабзац   здесь."
    assert normalize_text(text) == "Первый абзац.\n\nВторой\tабзац здесь."


def test_keeps_leading_indentation_of_code() -> None:
    assert normalize_text("def f():\n    return  1") == "def f():\n    return 1"


def test_unicode_line_separators_become_newlines() -> None:
    assert normalize_text("a\u2028b\u2029c") == "a\nb\n\nc"


def test_normalize_is_idempotent() -> None:
    once = normalize_text("  x \u200b  y\r\n\n\n\nz  ")
    assert normalize_text(once) == once == "x y\n\nz"


def test_slugify_keeps_cyrillic_lowercased() -> None:
    assert slugify("Оплата и Доставка!") == "оплата-и-доставка"


def test_slugify_mixed_scripts_digits_and_punctuation() -> None:
    assert slugify("  Тариф «Pro» — 2024_v2 ") == "тариф-pro-2024-v2"


def test_slugify_of_punctuation_only_is_empty() -> None:
    assert slugify("?!— …") == ""


def test_slugify_ignores_invisible_characters() -> None:
    assert slugify("Воз\u200bврат") == "возврат"
