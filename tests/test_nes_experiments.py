"""The experiment modules owned with ``nes`` / ``spd``: ``experiments.nes`` (the Fig. 3 / 9
benchmark, moved from ``nes``) and ``experiments.spd_step_timing``. Their doctests run and
every public name is documented with a ``math §`` citation and an example (the checks of
tests/test_doctests.py, whose module list does not include them)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import io

import pytest

MODULES = ("experiments.nes", "experiments.spd_step_timing")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_doctests_and_docstrings(name: str) -> None:
    mod = importlib.import_module(f"spectral_curv.{name}")
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for t in sorted(doctest.DocTestFinder().find(mod, mod.__name__), key=lambda t: t.name):
        runner.run(t, out=out.write)
    res = runner.summarize(verbose=False)
    assert res.attempted > 0 and res.failed == 0, out.getvalue()
    public = {n: getattr(mod, n) for n in mod.__all__}
    public = {n: o for n, o in public.items() if inspect.isfunction(o) or inspect.isclass(o)}
    assert public
    module_cites = "math §" in (mod.__doc__ or "")
    for n, o in public.items():
        doc = o.__doc__ or ""
        assert ">>>" in doc, n
        assert module_cites or "math §" in doc, n


def test_benchmark_runs_every_method_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from spectral_curv.experiments import nes as ex

    res = ex.benchmark(
        ["rosenbrock"], dim=2, seeds=1, methods=("spectral", "xnes", "cholesky"), log=None
    )
    assert set(res["runs"]["rosenbrock"]) == {"spectral", "xnes", "cholesky"}
    rows = ex.summarise(res)
    assert {r["method"] for r in rows} == {"spectral", "xnes", "cholesky"}
    ex._plot(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
