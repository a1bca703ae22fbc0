import pytest

from rag.language import detect_language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Как вернуть товар, купленный в интернет-магазине?", "ru"),
        ("How do I return an item bought online?", "en"),
        ("Перезагрузите router и проверьте Wi-Fi, затем позвоните нам.", "ru"),
        ("Please call the офис before noon tomorrow.", "en"),
        ("12345 — +7 (495) 000-00-00", "unknown"),
        ("", "unknown"),
    ],
)
def test_majority_script_decides(text: str, expected: str) -> None:
    assert detect_language(text) == expected


def test_urls_and_code_do_not_outvote_russian_prose() -> None:
    text = "Откройте https://example.com/account/settings/security/password и `reset_password_now()`"
    assert detect_language(text) == "ru"


def test_tie_goes_to_russian() -> None:
    assert detect_language("abc где") == "ru"


def test_min_letters_makes_short_text_unknown() -> None:
    assert detect_language("OK", min_letters=10) == "unknown"
    assert detect_language("OK") == "en"
