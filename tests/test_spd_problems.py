"""The SPD default-settings benchmark (``spectral_curv.experiments.spd_problems``; math §6.4)."""

from __future__ import annotations

import doctest

import pytest

from spectral_curv.experiments import spd_problems as sp


def test_module_doctests():
    res = doctest.testmod(sp, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted > 0


@pytest.fixture(scope="module")
def probs():
    return sp.problems()


@pytest.mark.parametrize("name", list(sp.problems()))
def test_every_problem_converges_with_defaults(probs, name):
    """docs/spd.md table: the spectral method and RGD-expm reach rel. error 1e-6 with their
    defaults (no lr) on every problem, within the measured iteration counts + slack (the
    geodesic step, 3 sweeps; the paper's step, ``sweeps=0``, took 36 / 14 / 11 / 12)."""
    prob = probs[name]
    measured = {"metric nearness": 30, "log-det": 8, "Karcher mean": 5, "Gaussian ML + trace": 9}
    for method in ("spectral", "rgd_expm"):
        out = sp.run_spd(prob, method)
        assert out["reached"], (method, out["message"])
    out = sp.run_spd(prob, "spectral")
    assert out["iters"] <= measured[name] + 2, out


@pytest.mark.parametrize("name", list(sp.problems()))
def test_against_pymanopt_cg(probs, name):
    """Spectral iterations within 1.5× pymanopt CG's on every problem (issue 16's goal; with
    the paper's step, ``sweeps=0``, log-det took 14 vs 9, docs/spd.md)."""
    pytest.importorskip("pymanopt")
    prob = probs[name]
    cg = sp.run_pymanopt(prob)
    ours = sp.run_spd(prob, "spectral")
    assert cg["reached"] and ours["reached"]
    assert ours["iters"] <= 1.5 * cg["iters"], (ours["iters"], cg["iters"])
