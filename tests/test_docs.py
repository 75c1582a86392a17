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


#: blocks that take seconds (jax compilations): run under `slow` only (CI runs them)
SLOW = {("embedding.md", 2), ("guide/optax.md", 0)}


@pytest.mark.parametrize(
    ("name", "index", "code"),
    [
        pytest.param(n, i, c, id=f"{n}-{i}", marks=[pytest.mark.slow] if (n, i) in SLOW else [])
        for n, i, c in _blocks()
    ],
)
def test_doc_block_runs(name, index, code):
    for mod in ("torch", "jax", "optax", "equinox"):
        if re.search(rf"^\s*(import|from) {mod}\b", code, flags=re.M):
            pytest.importorskip(mod)
    exec(compile(code, f"{name}[{index}]", "exec"), {"__name__": f"docs_{index}"})


def test_blocks_found():
    assert len(_blocks()) >= 3


ROOT = DOCS.parent
PKG = ROOT / "src" / "spectral_curv"


def test_module_map_lists_every_module():
    """docs/contributing.md's module map names every module and subpackage of the package."""
    text = (DOCS / "contributing.md").read_text(encoding="utf-8")
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    (tree,) = re.findall(r"```\n(.*?)```", section, flags=re.S)
    names = {p.name for p in PKG.iterdir() if p.suffix == ".py" and p.name != "_version.py"}
    names |= {f"{p.name}/" for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted(n for n in names if not re.search(rf"(?<![\w/]){re.escape(n)}", tree))
    assert not missing, f"modules missing from the module map in docs/contributing.md: {missing}"


def test_install_from_checkout_while_unreleased():
    """While CHANGELOG calls the version unreleased, no page tells users to install from PyPI."""
    from spectral_curv import __version__

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    if not re.search(rf"^## {re.escape(__version__)} — unreleased", changelog, flags=re.M):
        pytest.skip(f"{__version__} is released")
    for path in (ROOT / "README.md", DOCS / "index.md"):
        text = path.read_text(encoding="utf-8")
        blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
        pypi = [
            line
            for line in blocks.splitlines()
            if re.match(r"\s*pip install \"?spectral-curv(\[[\w,]+\])?\"?(?!\s*@)(\s|$)", line)
        ]
        assert not pypi, f"{path.name} installs the unreleased package from PyPI: {pypi}"
        assert "pip install ." in blocks, f"{path.name} does not say how to install a checkout"
