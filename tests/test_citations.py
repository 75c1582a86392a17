"""Citations of the mathematics resolve, and the project cites nothing outside itself.

``docs/math.md`` numbers its sections ``§1 … §6`` (and subsections ``§4.1`` …) with explicit
anchors ``{#s4-1}`` (``s`` + the number, ``.`` → ``-``). Docstrings cite ``math §4.1``; the
other documentation pages link ``[math §4.1](math.md#s4-1)``. Checked here:

* every heading of math.md carries the anchor of its number, and numbers are unique;
* every ``§x`` in ``src/**/*.py`` (they all cite math.md) and every ``math §x`` / ``math.md#…``
  link in ``docs/**/*.md`` resolves to an anchor of math.md, and a link's text matches its
  anchor; math.md's own ``(#…)`` links resolve;
* no file in ``src/`` or ``docs/`` (or the README) mentions the former external
  specification (``SPEC §``, ``SPEC.md``, ``shared/``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src"
MATH = DOCS / "math.md"

NUM = r"(\d+(?:\.\d+)*)"
HEADING = re.compile(r"^(#{2,6}) (.*?)\s*\{#([\w-]+)\}\s*$", re.M)
CITE_MATH = re.compile(rf"\bmath §{NUM}")
CITE_ANY = re.compile(rf"§{NUM}")
LINK = re.compile(r"\[([^\]]*)\]\(((?:\.\./)*math\.md)?#([\w-]+)\)")
FORBIDDEN = re.compile(r"SPEC §|SPEC\.md|\bshared/|\bSPEC\b")


def anchor(num: str) -> str:
    """The anchor of section number ``num`` (``"4.1"`` → ``"s4-1"``)."""
    return "s" + num.replace(".", "-")


def math_anchors() -> set[str]:
    """The explicit anchors of the headings of docs/math.md."""
    return {m.group(3) for m in HEADING.finditer(MATH.read_text(encoding="utf-8"))}


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}"


def _py_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _md_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_math_headings_numbered_and_anchored():
    text = MATH.read_text(encoding="utf-8")
    headings = HEADING.findall(text)
    numbered = [(lvl, title, a) for lvl, title, a in headings if title.startswith("§")]
    assert len(numbered) >= 6
    seen = set()
    for lvl, title, a in numbered:
        num = re.match(rf"§{NUM}\b", title).group(1)
        assert a == anchor(num), f"heading {title!r} has anchor {a!r}, expected {anchor(num)!r}"
        # §n is a level-2 heading, §n.m level 3
        assert len(lvl) == 2 + num.count("."), f"heading {title!r} at level {len(lvl)}"
        assert a not in seen, f"duplicate section {num}"
        seen.add(a)
    assert {anchor(str(i)) for i in range(1, 7)} <= seen
    # every numbered section is a heading with an explicit anchor (none without one)
    bare = [ln for ln in text.splitlines() if re.match(r"#{2,6} §", ln) and not HEADING.match(ln)]
    assert not bare, f"numbered headings without an explicit anchor: {bare}"


def test_math_internal_links_resolve():
    text = MATH.read_text(encoding="utf-8")
    anchors = math_anchors()
    bad = []
    for m in LINK.finditer(text):
        label, target, a = m.groups()
        if target is not None:
            continue  # math.md linking math.md by name: checked as a docs link below
        if a not in anchors:
            bad.append(f"{_where(MATH, text, m.start())}: #{a}")
        num = re.fullmatch(rf"(?:math )?§{NUM}", label)
        if num and anchor(num.group(1)) != a:
            bad.append(f"{_where(MATH, text, m.start())}: [{label}] → #{a}")
    assert not bad, "unresolved or mislabelled links in math.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _py_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_src_citations_resolve(path: Path):
    """Every ``§x`` in the library's sources cites a section of math.md (``math §x``)."""
    anchors = math_anchors()
    text = path.read_text(encoding="utf-8")
    bad = [
        f"{_where(path, text, m.start())}: §{m.group(1)}"
        for m in CITE_ANY.finditer(text)
        if anchor(m.group(1)) not in anchors
    ]
    assert not bad, "citations without a section in docs/math.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _md_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_citations_resolve(path: Path):
    """``math §x`` and links into math.md resolve; a link's ``§x`` text matches its anchor."""
    anchors = math_anchors()
    text = path.read_text(encoding="utf-8")
    bad = []
    for m in CITE_MATH.finditer(text):
        if anchor(m.group(1)) not in anchors:
            bad.append(f"{_where(path, text, m.start())}: math §{m.group(1)}")
    for m in LINK.finditer(text):
        label, target, a = m.groups()
        if target is None and path != MATH:
            continue  # an in-page link of another page: mkdocs --strict checks those
        if a not in anchors:
            bad.append(f"{_where(path, text, m.start())}: {target or ''}#{a}")
        num = re.fullmatch(rf"(?:math )?§{NUM}", label)
        if num and anchor(num.group(1)) != a:
            bad.append(f"{_where(path, text, m.start())}: [{label}] → #{a}")
    assert not bad, "unresolved or mislabelled citations of docs/math.md:\n" + "\n".join(bad)


def test_citation_checks_see_citations():
    """Guard against a vacuous pass: the sources do cite sections."""
    cites = sum(len(CITE_ANY.findall(p.read_text(encoding="utf-8"))) for p in _py_files())
    assert cites >= 50


OWNED_CLEAN = [MATH, DOCS / "index.md", DOCS / "contributing.md", ROOT / "README.md"]


@pytest.mark.parametrize("path", OWNED_CLEAN, ids=lambda p: str(p.relative_to(ROOT)))
def test_self_contained_pages(path: Path):
    """The mathematics page, the home page, contributing and the README cite nothing outside."""
    text = path.read_text(encoding="utf-8")
    hits = [f"{_where(path, text, m.start())}: {m.group(0)}" for m in FORBIDDEN.finditer(text)]
    assert not hits, "\n".join(hits)


def test_no_external_spec():
    """No file in src/ or docs/ cites the external ``shared/SPEC.md`` (cite ``math §x``)."""
    hits = []
    for path in [*_py_files(), *_md_files(), ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        hits += [f"{_where(path, text, m.start())}: {m.group(0)}" for m in FORBIDDEN.finditer(text)]
    assert not hits, f"{len(hits)} reference(s) to the external spec:\n" + "\n".join(hits[:40])
