"""SECURITY.md names the tests that verify each hardening case: every one of them must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = 17


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_case_is_mapped_and_every_named_test_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| (.+) \|$", text, flags=re.MULTILINE)
    assert sorted(int(n) for n, _ in rows) == list(range(1, CASES + 1))
    for number, tests in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", tests)
        assert refs, f"case {number} names no test"
        for path, name in refs:
            file = ROOT / path
            assert file.is_file(), f"case {number}: {path} does not exist"
            if name:
                assert name in _functions(file), f"case {number}: {path}::{name} does not exist"
