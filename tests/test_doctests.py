"""Docstrings of the public modules: their examples run and every public name is documented.

Covered: the library modules ``full``, ``diag``, ``kron``, ``maps``, ``optim``, ``spd``,
``nes``, ``numpy``, ``baselines``, ``backends`` (the dispatch table; it imports no
framework) and ``experiments.matching``, plus the framework adapters ``torch``, ``optax`` and
``distributed``. The CLI and benchmark tooling (``cli``, ``reproduce``, ``bench.*``) is not
library API and is exempt.

One pytest case per module runs the module's doctests (``doctest.DocTestFinder`` +
``doctest.DocTestRunner`` with ``ELLIPSIS | NORMALIZE_WHITESPACE``) and fails with the runner's
report; for a package, those of its private submodules too (``optax._scale`` …: where the
names it re-exports are defined, which the finder does not follow). A second case per module
lists its public functions and classes (``__all__``, or the public names defined in the
module when it has none) and checks that each has a docstring
citing a section of the mathematics, ``math §x`` (``docs/math.md``; the former ``SPEC §x`` is
accepted until the citation sweep), itself or through its module docstring, and that every
section cited there has its anchor in ``docs/math.md``. The framework modules (``torch``,
``optax``, ``distributed``) are skipped when their framework is not installed. A third case
checks that every one of those public functions and classes carries a ``>>>`` example in its
own docstring.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

CORE = (
    "full",
    "diag",
    "kron",
    "maps",
    "optim",
    "spd",
    "nes",
    "numpy",
    "baselines",
    "backends",
    "experiments.matching",
)
FRAMEWORK = {"torch": "torch", "optax": "optax", "distributed": "torch"}
MODULES = CORE + tuple(FRAMEWORK)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MATH = Path(__file__).resolve().parent.parent / "docs" / "math.md"
# ``math §4.1``: a numbered section of docs/math.md
CITE = re.compile(r"\bmath §(\d+(?:\.\d+)*)")


def _math_anchors() -> set[str]:
    """Explicit heading anchors of docs/math.md (``{#s4-1}`` for §4.1)."""
    return set(re.findall(r"^#{2,6} .*\{#([\w-]+)\}\s*$", MATH.read_text(encoding="utf-8"), re.M))


def _module(name: str) -> ModuleType:
    """Import ``spectral_curv.<name>``, skipping when its framework is missing."""
    if name in FRAMEWORK:
        pytest.importorskip(FRAMEWORK[name])
    return importlib.import_module(f"spectral_curv.{name}")


def _public(mod: ModuleType) -> dict[str, object]:
    """Public functions and classes of ``mod``: its ``__all__``, or those it defines."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == mod.__name__
        ]
    objs = {n: getattr(mod, n) for n in names}
    return {n: o for n, o in objs.items() if inspect.isfunction(o) or inspect.isclass(o)}


def _with_private_submodules(mod: ModuleType) -> list[ModuleType]:
    """``mod`` and, for a package, its private submodules (``_name``)."""
    if not hasattr(mod, "__path__"):
        return [mod]
    subs = pkgutil.iter_modules(mod.__path__, f"{mod.__name__}.")
    private = [s.name for s in subs if s.name.rsplit(".", 1)[-1].startswith("_")]
    return [mod, *(importlib.import_module(n) for n in sorted(private))]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    mod = _module(name)
    finder = doctest.DocTestFinder()
    tests = [t for m in _with_private_submodules(mod) for t in finder.find(m, m.__name__)]
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{mod.__name__} has no doctest examples"
    assert result.failed == 0, f"{result.failed} doctest failure(s):\n{out.getvalue()}"


@pytest.mark.parametrize("name", MODULES)
def test_public_docstrings(name: str) -> None:
    mod = _module(name)
    module_cites = bool(CITE.search(mod.__doc__ or ""))
    public = _public(mod)
    assert public, f"{mod.__name__} exposes no public functions or classes"
    missing = sorted(n for n, o in public.items() if not (o.__doc__ or "").strip())
    assert not missing, f"{mod.__name__}: public names without a docstring: {missing}"
    uncited = sorted(
        n for n, o in public.items() if not module_cites and not CITE.search(o.__doc__ or "")
    )
    assert not uncited, f"{mod.__name__}: public names citing no math §: {uncited}"
    anchors = _math_anchors()
    docs = {"<module>": mod.__doc__ or "", **{n: o.__doc__ or "" for n, o in public.items()}}
    dangling = sorted(
        f"{n}: §{num}"
        for n, doc in docs.items()
        for num in CITE.findall(doc)
        if "s" + num.replace(".", "-") not in anchors
    )
    assert not dangling, f"{mod.__name__}: cited sections missing from docs/math.md: {dangling}"


@pytest.mark.parametrize("name", MODULES)
def test_public_examples(name: str) -> None:
    mod = _module(name)
    public = _public(mod)
    without = sorted(n for n, o in public.items() if ">>>" not in (o.__doc__ or ""))
    assert not without, f"{mod.__name__}: public names without a >>> example: {without}"
