"""Bytes of a text file to ``str``: UTF-8 first, then the legacy encodings Russian users have."""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

from rag.errors import DocumentError

# Order matters only for ties; charset-normalizer scores each by how coherent the result
# is as Russian or English text. cp866 is old DOS text, still found in exported logs.
_LEGACY_ENCODINGS = ["cp1251", "koi8_r", "cp866", "cp1252"]
# Control characters (but not tab, line feed, form feed, carriage return), replacement
# characters and private-use code points: what junk bytes decode to.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff]")
# Share of characters that may be unprintable before we call the file binary.
_MAX_UNPRINTABLE = 0.05


def decode_text(data: bytes, name: str, *, declared: str | None = None) -> str:
    """Decode a text file; ``declared`` is an encoding named inside the file (HTML meta).

    Raises DocumentError for binary content or bytes that no candidate decodes credibly.
    """
    if data.startswith(codecs.BOM_UTF8):
        text = _strict(data[len(codecs.BOM_UTF8):], "utf-8")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = _strict(data, "utf-16")
    elif b"\x00" in data:
        # NUL is valid UTF-8, but no text file has it unless it is UTF-16 without a BOM.
        text = _utf16_without_bom(data)
        if text is None:
            raise DocumentError(f"binary content in {name}")
    else:
        text = _strict(data, "utf-8")
        if text is None and declared:
            text = _strict(data, declared)
        if text is None:
            text = _detect(data)
    if text is None:
        raise DocumentError(f"cannot decode {name}: not UTF-8, UTF-16, cp1251, koi8-r or cp866")
    if _looks_binary(text):
        raise DocumentError(f"binary content in {name}")
    return text


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _utf16_without_bom(data: bytes) -> str | None:
    # In UTF-16 text the NUL bytes are the high bytes of ASCII characters, so they all sit
    # on one parity; in binary files they are everywhere.
    even = data[0::2].count(0)
    odd = data[1::2].count(0)
    if len(data) % 2 or min(even, odd) > 0.01 * (even + odd):
        return None
    return _strict(data, "utf-16-le" if odd > even else "utf-16-be")


def _detect(data: bytes) -> str | None:
    best = from_bytes(data, cp_isolation=_LEGACY_ENCODINGS).best()
    return None if best is None else str(best)


def _looks_binary(text: str) -> bool:
    return len(_UNPRINTABLE.findall(text)) > _MAX_UNPRINTABLE * len(text)
