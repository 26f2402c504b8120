"""The Python blocks of README.md, each with where it runs (`<!-- readme-test: host|lab ... -->`
on the line before its fence). Every Python block must say; tests run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (\w+)[^>]*-->\n)?```python\n(.*?)```", re.S)


def python_blocks() -> list[tuple[str | None, int, str]]:
    """(where, line number, code) for every ```python block; `where` is None if unmarked."""
    text = README.read_text()
    return [(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in _BLOCK.finditer(text)]
