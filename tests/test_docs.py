"""The code blocks of the user docs run and their assertions hold (``docs/embedding.md``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FILES = ["embedding.md", "guide/optax.md", "guide/numpy.md"]


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for name in FILES:
        text = (DOCS / name).read_text()
        for i, m in enumerate(re.finditer(r"```python\n(.*?)```", text, flags=re.S)):
            out.append((name, i, m.group(1)))
    return out


@pytest.mark.parametrize(
    ("name", "index", "code"), _blocks(), ids=[f"{n}-{i}" for n, i, _ in _blocks()]
)
def test_doc_block_runs(name, index, code):
    for mod in ("torch", "jax", "optax", "equinox"):
        if re.search(rf"^\s*(import|from) {mod}\b", code, flags=re.M):
            pytest.importorskip(mod)
    exec(compile(code, f"{name}[{index}]", "exec"), {"__name__": f"docs_{index}"})


def test_blocks_found():
    assert len(_blocks()) >= 3
